"""SRFlow model configuration (`SRFlowConfig`) and the named presets (`PRESETS`)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

SCALE_FUNCTIONS = ("sigmoid", "softclamp")
RRDB_SKIPS = ("trunk", "input")
INVCONV_PARAMETERIZATIONS = ("lu", "full")


@dataclass(frozen=True)
class SRFlowConfig:
    """Every shape and option of an SRFlow model; a checkpoint stores it as a dict.

    Level l (1-based, from the HR side) works at HR / 2^l, i.e. at `scale / 2^l` times the LR
    size; its condition is the encoder feature at that resolution (`nf` channels) concatenated
    with the stacked trunk block outputs (`nf` channels each), so `cond_channels` is
    `nf * (1 + len(stack_blocks))` (320 for the paper's models).

    scale: upscaling factor (a power of two).  L: number of flow levels.  K: conditional flow
    steps per level.  n_rrdb, nf, gc: RRDB encoder blocks, feature width and growth channels.
    stack_blocks: 0-based trunk blocks whose outputs join every condition.  hidden: width of
    the injector/coupling subnetworks.  split_every_level: split after every level but the
    last (the paper's figure) instead of the reference code's levels 1..L-2.  scale_fn:
    "sigmoid" (the paper's `sigmoid(s + 2) + 1e-4`) or "softclamp" (`exp(clamp * tanh(s /
    clamp))`, stable when sampling at high temperature).  invconv: "lu" (Glow's LU
    parameterisation, fast) or "full" (the reference code's full matrix).
    n_transitions: ActNorm + 1x1-conv steps after each squeeze.  rrdb_skip: the encoder's
    global skip, "trunk" (SRFlow's RRDBNet: last block output + trunk_conv of it) or "input"
    (ESRGAN/BasicSR: conv_first output + trunk_conv of the last block output).
    noise_steps: NCSR (Kim and Son, 2021): per level, how many of its last conditional steps
    also have a coupling conditioned on a noise map (`cinn_sr.blocks.NCSR_STEP`); empty for
    SRFlow.  name: the preset the config derives from (informative only: not compared, not
    part of the model).
    """

    scale: int = 4
    L: int = 3
    K: int = 16
    n_rrdb: int = 23
    nf: int = 64
    gc: int = 32
    stack_blocks: tuple[int, ...] = (1, 8, 15, 22)
    hidden: int = 64
    split_every_level: bool = False
    scale_fn: str = "sigmoid"
    clamp: float = 2.0
    invconv: str = "lu"
    in_channels: int = 3
    n_transitions: int = 2
    rrdb_skip: str = "trunk"
    noise_steps: tuple[int, ...] = ()
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "stack_blocks", tuple(int(b) for b in self.stack_blocks))
        object.__setattr__(self, "noise_steps", tuple(int(s) for s in self.noise_steps))
        if self.scale < 2 or self.scale & (self.scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {self.scale}")
        if self.L < 1:
            raise ValueError(f"L must be >= 1, got {self.L}")
        if self.K < 0 or self.n_transitions < 0:
            raise ValueError("K and n_transitions must be >= 0")
        if min(self.nf, self.gc, self.hidden, self.in_channels) < 1 or self.clamp <= 0:
            raise ValueError("nf, gc, hidden, in_channels and clamp must be positive")
        if self.n_rrdb < 1:
            raise ValueError(f"n_rrdb must be >= 1, got {self.n_rrdb}")
        bad = [b for b in self.stack_blocks if not 0 <= b < self.n_rrdb]
        if bad:
            raise ValueError(f"stack_blocks {bad} outside the {self.n_rrdb} trunk blocks")
        if self.scale_fn not in SCALE_FUNCTIONS:
            raise ValueError(f"scale_fn must be one of {SCALE_FUNCTIONS}, got {self.scale_fn!r}")
        if self.rrdb_skip not in RRDB_SKIPS:
            raise ValueError(f"rrdb_skip must be one of {RRDB_SKIPS}, got {self.rrdb_skip!r}")
        if self.invconv not in INVCONV_PARAMETERIZATIONS:
            raise ValueError(
                f"invconv must be one of {INVCONV_PARAMETERIZATIONS}, got {self.invconv!r}"
            )
        if self.noise_steps and (len(self.noise_steps) != self.L
                                 or not all(0 <= s <= self.K for s in self.noise_steps)):
            raise ValueError(f"noise_steps must give one count in 0..K={self.K} per level "
                             f"(L={self.L}), got {list(self.noise_steps)}")

    def _check_types(self) -> None:
        """ValueError naming the field for a value of the wrong kind (16.5 for `hidden`)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            if kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                ok = ok and math.isfinite(value)
            elif kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "str":
                ok = isinstance(value, str)
            else:  # stack_blocks, noise_steps: a sequence of integers
                ok = not isinstance(value, (str, bytes)) and all(
                    isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in value
                )
            if not ok:
                expected = {
                    "int": "an integer", "float": "a finite number", "bool": "true or false",
                    "str": "a string",
                }.get(kind, "a list of integers")
                raise ValueError(f"{f.name} must be {expected}, got {value!r}")

    @property
    def cond_channels(self) -> int:
        """Channels of every level's condition: base feature plus the stacked blocks."""
        return self.nf * (1 + len(self.stack_blocks))

    @property
    def noise_levels(self) -> list[int]:
        """1-based levels with NCSR noise couplings, each with its own noise-map condition."""
        return [level for level, n in enumerate(self.noise_steps, start=1) if n > 0]

    @property
    def n_up(self) -> int:
        """Number of x2 upsampling convs of the ESRGAN head (log2 scale)."""
        return int(math.log2(self.scale))

    @property
    def level_factors(self) -> list[float]:
        """Resolution of each level's condition relative to the LR image, HR side first."""
        return [self.scale / 2**level for level in range(1, self.L + 1)]

    @property
    def split_levels(self) -> list[int]:
        """1-based levels after which half of the channels leave the flow."""
        last = self.L - 1 if self.split_every_level else self.L - 2
        return list(range(1, last + 1))

    @property
    def hr_multiple(self) -> int:
        """The HR height and width must be multiples of this (2^L squeezes)."""
        return 2**self.L

    @property
    def lr_multiple(self) -> int:
        """The LR height and width must be multiples of this: 2^L / scale (at least 1), which
        also makes the below-LR-resolution conditions (x0.5, ...) exact."""
        return max(1, self.hr_multiple // self.scale)

    def to_dict(self) -> dict:
        """A plain dict (lists, no tuples) that `from_dict` turns back into this config."""
        d = dataclasses.asdict(self)
        d["stack_blocks"] = list(self.stack_blocks)
        d["noise_steps"] = list(self.noise_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SRFlowConfig:
        """Rebuild a config; unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SRFlowConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **overrides) -> SRFlowConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, SRFlowConfig] = {
    "div2k-4x": SRFlowConfig(
        name="div2k-4x", scale=4, L=3, K=16, n_rrdb=23, stack_blocks=(1, 8, 15, 22)
    ),
    "div2k-8x": SRFlowConfig(
        name="div2k-8x", scale=8, L=4, K=16, n_rrdb=23, stack_blocks=(1, 3, 5, 7)
    ),
    "celeba-8x": SRFlowConfig(
        name="celeba-8x", scale=8, L=4, K=16, n_rrdb=8, stack_blocks=(1, 3, 5, 7)
    ),
    # NCSR (NTIRE 2021 Learning the SR Space winner): SRFlow's networks with a noise-map
    # coupling in the last S[l] steps of each level (code/confs/4X.yml, 8X.yml).
    "ncsr-4x": SRFlowConfig(
        name="ncsr-4x", scale=4, L=3, K=16, n_rrdb=23, stack_blocks=(1, 8, 15, 22),
        noise_steps=(0, 16, 16),
    ),
    "ncsr-8x": SRFlowConfig(
        name="ncsr-8x", scale=8, L=4, K=20, n_rrdb=23, stack_blocks=(1, 8, 15, 22),
        noise_steps=(0, 0, 16, 16),
    ),
    # The shipped CPU-trained model (cinn_sr/models/small-4x.pt, recipes/small-4x/): the
    # paper's structure at a width that trains on 2 CPU cores in about two hours; softclamp
    # because the sigmoid scale's 1e-4 floor blows samples up at high temperature.
    "small-4x": SRFlowConfig(
        name="small-4x", scale=4, L=3, K=4, n_rrdb=4, nf=32, gc=16, stack_blocks=(0, 1, 2, 3),
        hidden=32, scale_fn="softclamp",
    ),
    "tiny-4x": SRFlowConfig(
        name="tiny-4x", scale=4, L=3, K=2, n_rrdb=2, nf=16, gc=8, stack_blocks=(0, 1), hidden=16
    ),
    "tiny-8x": SRFlowConfig(
        name="tiny-8x", scale=8, L=4, K=2, n_rrdb=2, nf=16, gc=8, stack_blocks=(0, 1), hidden=16
    ),
}


def preset(name: str, **overrides) -> SRFlowConfig:
    """The named preset's config with `overrides` applied; unknown names raise KeyError."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
