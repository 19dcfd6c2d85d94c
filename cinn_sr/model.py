"""`SRFlow`: the RRDB conditioning encoder and the conditional flow behind one API.

Inputs are RGB in [0, 1], NCHW, HR = scale x LR. Any LR size works: the LR is
reflect-padded (bottom/right) to a multiple of `config.lr_multiple` and the HR by `scale`
times as much; outputs are cropped back. Latents, conditions and NLLs refer to the padded
pair (no padding happens for sizes that need none, e.g. the 160 x 160 training patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cinn_sr.blocks import ConditionCache
from cinn_sr.datasets import scaled_size_mismatch
from cinn_sr.encoder import RRDBEncoder
from cinn_sr.flow import build_flow, latent_shapes, named_flow_modules
from cinn_sr.level_maps import check_temperature_map, map_at_level, pad_to
from cinn_sr.presets import SRFlowConfig, preset

LOG_2PI = math.log(2 * math.pi)
DEFAULT_TEMPERATURE = 0.9
"""The sampling temperature of the SRFlow paper's DIV2K results (section 5)."""


def _pad(x: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Pad bottom/right by reflection (replicate where the image is too small to reflect)."""
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def standard_normal_logp(latents: list[Tensor]) -> Tensor:
    """Sum over all latents of log N(z; 0, I), per image [B]."""
    return sum(
        (-0.5 * (z.flatten(1) ** 2 + LOG_2PI)).sum(1) for z in latents
    )


def check_temperature(temperature: float) -> None:
    """ValueError unless `temperature` is a finite number >= 0 (nan passes a plain `< 0`)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")


@dataclass
class PreparedLR:
    """What sampling needs of one LR batch, computed once (`SRFlow.prepare`): the encoder's
    conditions and a cache of the flow's condition-only terms, filled by the first decode.
    Pass it as `cond=` to `sample` and `decode` (and the editing functions) with that LR;
    it is for inference (its tensors carry no gradients)."""

    lr: Tensor
    cond: list[Tensor]
    cache: ConditionCache = field(default_factory=ConditionCache)


Conditions = list[Tensor] | PreparedLR
"""`cond=` of the model's methods: the conditions of `condition(lr)`, or a `PreparedLR`."""


class SRFlow(nn.Module):
    """SRFlow (Lugmayr et al., ECCV 2020): p(HR | LR) as a conditional normalizing flow.

    `encoder` maps the LR image to one condition per level; `flow` (a GraphINN) maps the HR
    image to standard-normal latents given them. The ActNorm layers are initialised from
    the first `nll`/`encode` batch (or `initialize`); `sample`/`decode` refuse a model that
    was never initialised, loaded or trained.
    """

    def __init__(self, config: SRFlowConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = RRDBEncoder(config)
        self.flow = build_flow(config)
        self.memory_saving = None
        """The flow's memory-saving runner while `cinn_sr.memory` has it switched on (it runs
        the plain flow itself without grad)."""

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SRFlow:
        """A freshly initialised model of the named preset (`PRESETS`), fields overridden."""
        return cls(preset(name, **overrides))

    # ---- shapes and padding -------------------------------------------------------------

    def _lr_padding(self, lr: Tensor) -> tuple[int, int]:
        m = self.config.lr_multiple
        return (-lr.shape[-2]) % m, (-lr.shape[-1]) % m

    def _check_image(self, name: str, x: Tensor) -> None:
        """ValueError for a tensor that is not an N x C x H x W float batch of [0, 1] images."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be N x C x H x W, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor in [0, 1], got {x.dtype}")
        if x.shape[0] == 0 or x.shape[-1] == 0 or x.shape[-2] == 0:
            raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"{name} has {x.shape[1]} channels, the model takes {self.config.in_channels}"
            )
        low, high = float(x.min()), float(x.max())
        if low < -0.5 or high > 1.5:  # dequantisation noise and restore inputs stay near [0, 1]
            hint = ": a 0-255 image? divide it by 255" if high > 2 else ""
            raise ValueError(f"{name} values must lie in [0, 1], got [{low:.4g}, {high:.4g}]{hint}")

    def _check_latents(self, lr: Tensor, latents: list[Tensor]) -> None:
        s = self.config.scale
        shapes = self.latent_shapes(lr.shape[-2] * s, lr.shape[-1] * s)
        given = [tuple(z.shape) for z in latents]
        batch = given[0][0] if given and len(given[0]) == 4 else 0
        expected = [(batch, *shape) for shape in shapes]
        if given != expected or batch == 0 or batch % lr.shape[0]:
            raise ValueError(
                f"latents for an LR of {lr.shape[-2]}x{lr.shape[-1]} must have the shapes "
                f"N x {', N x '.join(' x '.join(map(str, shape)) for shape in shapes)} with N a "
                f"multiple of the LR batch {lr.shape[0]}, got {given}"
            )

    def _check_noise(self, lr: Tensor, noise: Tensor) -> None:
        s, c = self.config.scale, self.config.in_channels
        expected = (lr.shape[0], c, lr.shape[-2] * s, lr.shape[-1] * s)
        if not self.config.noise_levels:
            raise ValueError("a noise map was given to a model without noise couplings "
                             "(noise_steps)")
        if not isinstance(noise, Tensor) or tuple(noise.shape) != expected:
            got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(f"the noise map must be {' x '.join(map(str, expected))} "
                             f"(the HR size), got {got}")

    def _check_pair(self, lr: Tensor, hr: Tensor) -> None:
        s = self.config.scale
        self._check_image("LR", lr)
        self._check_image("HR", hr)
        if lr.dim() != 4 or hr.dim() != 4:
            raise ValueError(
                f"expected NCHW tensors, got LR {tuple(lr.shape)}, HR {tuple(hr.shape)}"
            )
        if scaled_size_mismatch(s, lr.shape[-2:], hr.shape[-2:]) is not None:
            raise ValueError(
                f"HR size {tuple(hr.shape[-2:])} is not {s}x the LR size {tuple(lr.shape[-2:])}"
            )
        if hr.shape[0] != lr.shape[0]:
            raise ValueError(f"batch sizes differ: LR {lr.shape[0]}, HR {hr.shape[0]}")

    def padded_hr_size(self, lr_h: int, lr_w: int) -> tuple[int, int]:
        """The HR size the flow works at for an LR of lr_h x lr_w (after padding)."""
        m = self.config.lr_multiple
        return self.config.scale * -(-lr_h // m) * m, self.config.scale * -(-lr_w // m) * m

    def latent_shapes(self, hr_h: int, hr_w: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent, HR side first, for an HR image of hr_h x hr_w.

        Sizes that are not a multiple of 2^L are first padded as `nll`/`sample` pad them.
        """
        s = self.config.scale
        return latent_shapes(self.config, *self.padded_hr_size(-(-hr_h // s), -(-hr_w // s)))

    # ---- conditioning -------------------------------------------------------------------

    def condition(self, lr: Tensor, noise: Tensor | None = None) -> list[Tensor]:
        """The flow's conditions for the (padded) LR batch, reusable via cond=: the encoder's
        per-level features, then for NCSR (`config.noise_levels`) the noise map of each noise
        level. `noise` is an HR-size map [B, C, scale * H, scale * W], padded like the HR and
        resized bicubically to each level (NCSR's training noise); None gives zero maps, what
        NCSR samples and evaluates with."""
        self._check_image("LR", lr)
        if noise is not None:
            self._check_noise(lr, noise)
        return self._features(lr, noise)

    def _features(self, lr: Tensor, noise: Tensor | None = None) -> list[Tensor]:
        pad_h, pad_w = self._lr_padding(lr)
        features = self.encoder(_pad(lr, pad_h, pad_w))
        sizes = [features[level - 1].shape[-2:] for level in self.config.noise_levels]
        if noise is None:
            c = self.config.in_channels
            return features + [features[0].new_zeros(lr.shape[0], c, *size) for size in sizes]
        s = self.config.scale
        noise = _pad(noise, pad_h * s, pad_w * s).to(features[0])
        return features + [F.interpolate(noise, size=size, mode="bicubic", align_corners=False)
                           for size in sizes]

    @torch.inference_mode()
    def prepare(self, lr: Tensor) -> PreparedLR:
        """The conditions of `lr` and an empty condition cache, for many `sample`/`decode`
        calls with that LR (the encoder and the condition-only work of the flow run once).
        Valid while the weights stay as they are."""
        self._check_image("LR", lr)
        return PreparedLR(lr, self._features(lr))

    def _condition(self, lr: Tensor, cond: Conditions | None) -> list[Tensor]:
        """`cond`, or the features of an LR the caller has already checked."""
        if isinstance(cond, PreparedLR):
            same = cond.lr is lr or (cond.lr.shape == lr.shape and cond.lr.device == lr.device
                                     and torch.equal(cond.lr, lr))
            if not same:
                raise ValueError("cond was prepared for another LR image: prepare this one")
            return cond.cond
        return list(cond) if cond is not None else self._features(lr)

    # ---- density ------------------------------------------------------------------------

    def _forward_flow(
        self, lr: Tensor, hr: Tensor, cond, jac: bool = True
    ) -> tuple[list[Tensor], Tensor]:
        self._check_pair(lr, hr)
        pad_h, pad_w = self._lr_padding(lr)
        s = self.config.scale
        hr = _pad(hr, pad_h * s, pad_w * s)
        flow = self.flow if self.memory_saving is None else self.memory_saving
        latents, logdet = flow(hr, c=self._condition(lr, cond), jac=jac)
        return list(latents), logdet

    def nll(self, lr: Tensor, hr: Tensor, cond: list[Tensor] | None = None) -> Tensor:
        """Negative log-likelihood of HR given LR in bits per dimension, per image [B].

        nll = -(sum_latents log N(z; 0, I) + log|det df/dy|) / (ln 2 * C * H * W),
        a continuous density (no dequantisation term): it can be negative.
        """
        latents, logdet = self._forward_flow(lr, hr, cond)
        c, h, w = self.config.in_channels, *self.padded_hr_size(*lr.shape[-2:])
        return -(standard_normal_logp(latents) + logdet) / (math.log(2) * c * h * w)

    def encode(self, lr: Tensor, hr: Tensor, cond: list[Tensor] | None = None) -> list[Tensor]:
        """Latents z = f(hr; g(lr)), HR side first (shapes: `latent_shapes`)."""
        return self._forward_flow(lr, hr, cond, jac=False)[0]

    @torch.no_grad()
    def initialize(self, lr: Tensor, hr: Tensor, cond: list[Tensor] | None = None) -> None:
        """Initialise the ActNorms that are not yet initialised from this batch (one forward
        pass, no gradients; `cond`: its conditions, as `nll` takes them); initialised ones
        are never changed."""
        self._forward_flow(lr, hr, cond, jac=False)

    @property
    def is_initialized(self) -> bool:
        """Whether every ActNorm layer has been initialised (or loaded)."""
        return all(getattr(m, "is_initialized", True) for m in self.flow.modules())

    # ---- generation ---------------------------------------------------------------------

    def _require_initialized(self) -> None:
        if not self.is_initialized:
            raise RuntimeError(
                "SRFlow's ActNorm layers are not initialised: load a checkpoint, train, or "
                "call model.initialize(lr, hr) before sampling or decoding"
            )

    def decode(self, lr: Tensor, latents: list[Tensor], cond: Conditions | None = None) -> Tensor:
        """HR = f^-1(latents; g(lr)), cropped to scale x the LR size.

        The latent batch may be n times the LR batch: latent row i uses LR image i // n.
        """
        self._require_initialized()
        self._check_image("LR", lr)
        self._check_latents(lr, list(latents))
        return self._decode(lr, list(latents), cond)

    def _decode(self, lr: Tensor, latents: list[Tensor], cond: Conditions | None) -> Tensor:
        features = self._condition(lr, cond)
        if isinstance(cond, PreparedLR):
            with cond.cache.active(self.flow):
                out, _ = self.flow(latents, c=features, rev=True, jac=False)
        else:
            out, _ = self.flow(latents, c=features, rev=True, jac=False)
        s = self.config.scale
        return out[0][..., : lr.shape[-2] * s, : lr.shape[-1] * s]

    def sample(
        self,
        lr: Tensor,
        temperature: float | Tensor = DEFAULT_TEMPERATURE,
        n: int = 1,
        generator: torch.Generator | None = None,
        cond: Conditions | None = None,
    ) -> Tensor:
        """n SR samples per LR image: [B * n, C, scale * H, scale * W], rows b*n .. b*n+n-1
        belong to image b. Latents ~ N(0, temperature^2 I) drawn with `generator`;
        temperature 0 gives the mode path (all latents zero, splits at their prior mean).
        The encoder runs once per call (never with a `PreparedLR`). Outputs are not clamped.

        `temperature` is a number or a map of one value >= 0 per HR pixel ([H, W] or
        [B|1, 1, H, W]): each latent entry is drawn at the largest temperature of the HR
        pixels it covers (`cinn_sr.level_maps`). The same generator draws the same noise for
        a number and a map, so a constant map gives the number's samples exactly.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self._require_initialized()
        self._check_image("LR", lr)
        with torch.inference_mode():
            scale = self.config.scale
            shapes = self.latent_shapes(lr.shape[-2] * scale, lr.shape[-1] * scale)
            temperatures = self.level_temperatures(temperature, lr, n)
            features = self._condition(lr, cond)
            device, dtype = features[0].device, features[0].dtype
            batch = lr.shape[0] * n
            if all(isinstance(t, float) and t == 0 for t in temperatures):
                latents = [torch.zeros(batch, *s, device=device, dtype=dtype) for s in shapes]
            else:
                draw_device = generator.device if generator is not None else device
                latents = [
                    torch.randn(batch, *s, generator=generator, device=draw_device, dtype=dtype)
                    .to(device) * (t.to(device, dtype) if isinstance(t, Tensor) else t)
                    for s, t in zip(shapes, temperatures, strict=True)
                ]
            return self._decode(lr, latents, cond if cond is not None else features)

    def level_temperatures(
        self, temperature: float | Tensor, lr: Tensor, n: int = 1
    ) -> list[float | Tensor]:
        """The temperature of each latent level for `lr`: the number, or the map padded like
        the HR and max-pooled to the level ([B * n | 1, 1, h, w]); latents = eps * it."""
        s = self.config.scale
        shapes = self.latent_shapes(lr.shape[-2] * s, lr.shape[-1] * s)
        if isinstance(temperature, np.ndarray):
            temperature = torch.from_numpy(temperature)
        if isinstance(temperature, Tensor) and temperature.dim() == 0:
            temperature = float(temperature)
        if not isinstance(temperature, Tensor):
            check_temperature(temperature)
            return [float(temperature)] * len(shapes)
        t = check_temperature_map(temperature, (lr.shape[-2] * s, lr.shape[-1] * s))
        if t.shape[0] not in (1, lr.shape[0]):
            raise ValueError(
                f"temperature map has {t.shape[0]} rows for an LR batch of {lr.shape[0]}"
            )
        t = pad_to(t, self.padded_hr_size(*lr.shape[-2:]))
        levels = [map_at_level(t, shape[1:]) for shape in shapes]
        return [level.repeat_interleave(n, dim=0) if level.shape[0] > 1 else level
                for level in levels]

    def sr(self, lr: Tensor) -> Tensor:
        """The encoder's own ESRGAN SR output (the RRDB pre-training path)."""
        return self.encoder.sr(lr)

    def flow_modules(self) -> dict[str, nn.Module]:
        """{node name: module} of the flow in HR -> latent order (see `cinn_sr.flow`)."""
        return named_flow_modules(self.flow)
