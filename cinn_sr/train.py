"""Maximum-likelihood training of SRFlow (`cinn-sr train`), the recipe of SPEC 1.4.

loss = mean over the batch of model.nll(lr, hr + noise), in bits per dimension, where the
dequantisation noise is Gaussian with sigma = (4 / sqrt(3)) / 255 (the paper), uniform
U(-0.5, 0.5) / 32 (the reference code's unused path) or none. Adam, lr halved at 50, 75, 90
and 95 % of the iterations; a pre-trained encoder (`encoder`) is frozen for the first
`freeze_encoder_fraction` of them. See `cinn_sr.loop` for everything the loop does.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cinn_sr.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from cinn_sr.config import (
    FULL_PRESETS,
    GAUSSIAN_NOISE_SIGMA,
    ConfigError,
    PretrainConfig,
    RunConfig,
    TrainConfig,
    resolve,
    write_toml,
)
from cinn_sr.datasets import imresize, write_image
from cinn_sr.datasets.folder_pairs import ImageFolderPairs
from cinn_sr.datasets.patch_dataset import PatchDataset
from cinn_sr.default_data import default_patches
from cinn_sr.distributed import ProcessInfo, broadcast_object, init_process, shutdown
from cinn_sr.loop import ResumeState, Task, TrainingStopped, run_loop, seed_everything
from cinn_sr.metrics import lr_psnr, psnr
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS
from cinn_sr.runs import (
    RunFolderError,
    RunFolderLock,
    latest_checkpoint_step,
    new_run_folder,
    prepare_run_folder,
)

SAMPLE_TEMPERATURES = (0.0, 0.5, 0.9)
GRID_ROWS = 4


def dequantize(hr: Tensor, noise: str) -> Tensor:
    """HR plus dequantisation noise: "gaussian" (paper), "uniform" (reference) or "none"."""
    if noise == "gaussian":
        return hr + torch.randn_like(hr) * GAUSSIAN_NOISE_SIGMA
    if noise == "uniform":
        return hr + (torch.rand_like(hr) - 0.5) / 32
    return hr


class FlowObjective(nn.Module):
    """forward(hr, lr) -> NLL in bits per dimension per image, HR dequantised.

    With `encoder_bf16` (CUDA only) the encoder runs under bfloat16 autocast and its
    conditions are cast back to float32, so the flow itself stays in float32.
    """

    def __init__(self, model: SRFlow, noise: str, encoder_bf16: bool = False) -> None:
        super().__init__()
        self.model, self.noise, self.encoder_bf16 = model, noise, encoder_bf16

    def forward(self, hr: Tensor, lr: Tensor) -> Tensor:
        if self.encoder_bf16 and lr.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                cond = self.model.condition(lr)
            cond = [c.float() for c in cond]
        else:
            cond = self.model.condition(lr)
        return self.model.nll(lr, dequantize(hr, self.noise), cond=cond)


# ---- data -----------------------------------------------------------------------------


def training_data(config: RunConfig, info: ProcessInfo) -> tuple[PatchDataset, str | None]:
    """The training patches and the default validation set (held-out photo) if any.

    Without `config.data` rank 0 packs the embedded default (once, cached) first.
    """
    scale = _model_config(config).scale
    if config.data is not None:
        try:
            return PatchDataset(config.data, augment=False, scale=scale), None
        except ValueError as error:
            raise ConfigError(f"patch file: {error}") from None
    paths = default_patches(scale, progress=True) if info.is_main else None
    train, val = broadcast_object(paths, info)
    return PatchDataset(train, augment=False), str(val)


class _FolderPairs(Dataset):
    """ImageFolderPairs without the names: (hr, lr)."""

    def __init__(self, folder: str, scale: int) -> None:
        self.pairs = ImageFolderPairs(folder, scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.pairs[index][1:]


def validation_items(
    val: str | None, train_set: Dataset, count: int, scale: int
) -> list[tuple[Tensor, Tensor]]:
    """Up to `count` (hr, lr) pairs: from a patch file, an HR folder, or the training set;
    an unusable file, folder or image of `val` is a ConfigError."""
    try:
        if val is None:
            source: Dataset = train_set
        elif Path(val).is_dir():
            source = _FolderPairs(val, scale)
        else:
            source = PatchDataset(val, augment=False, scale=scale)
        return [source[i] for i in range(min(count, len(source)))]
    except ValueError as error:
        raise ConfigError(f"val: {error}") from None


def batches_of_equal_size(items: list[tuple[Tensor, Tensor]]):
    """Consecutive items of the same size, stacked: (hr [B,3,H,W], lr [B,3,h,w])."""
    group: list[tuple[Tensor, Tensor]] = []
    for item in items:
        if group and item[0].shape != group[0][0].shape:
            yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])
            group = []
        group.append(item)
    if group:
        yield torch.stack([g[0] for g in group]), torch.stack([g[1] for g in group])


def write_grid(path: Path, rows: list[list[Tensor]]) -> None:
    """A PNG of images [3, H, W] in [0, 1]: one row per list, padded to the widest row."""
    lines = [torch.cat([img.clamp(0, 1) for img in row], dim=-1) for row in rows]
    width = max(line.shape[-1] for line in lines)
    lines = [torch.nn.functional.pad(line, (0, width - line.shape[-1])) for line in lines]
    write_image(path, torch.cat(lines, dim=-2))


def upscale_lr(lr: Tensor, scale: int) -> Tensor:
    """The LR batch resized to HR size with MATLAB-style bicubic (for the grids)."""
    return imresize(lr, scale).clamp(0, 1)


class FlowValidation:
    """Validation NLL, PSNR at temperature 0, LR-PSNR at 0.9 and a sample grid.

    Samples use a fixed generator, so grids of different steps show the same latents.
    val_nonfinite counts samples (at any temperature) with a NaN or inf.
    """

    def __init__(self, model: SRFlow, items, samples_dir: Path | None) -> None:
        self.model, self.items, self.samples_dir = model, items, samples_dir

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        model, scale = self.model, self.model.config.scale
        device = next(model.parameters()).device
        nll, psnr_t0, consistency, nonfinite, rows = [], [], [], 0, []
        generator = torch.Generator().manual_seed(0)
        for hr, lr in batches_of_equal_size(self.items):
            hr, lr = hr.to(device), lr.to(device)
            nll.extend(model.nll(lr, hr).tolist())
            samples = {
                t: model.sample(lr, temperature=t, generator=generator).float()
                for t in SAMPLE_TEMPERATURES
            }
            for s in samples.values():
                nonfinite += int((~torch.isfinite(s).flatten(1).all(1)).sum())
            safe = {t: s.nan_to_num(0.0, 1.0, 0.0).clamp(0, 1).cpu() for t, s in samples.items()}
            hr, lr = hr.cpu(), lr.cpu()
            for i in range(hr.shape[0]):
                psnr_t0.append(psnr(safe[0.0][i], hr[i]))
                consistency.append(lr_psnr(safe[0.9][i], lr[i], scale))
                if len(rows) < GRID_ROWS:
                    up = upscale_lr(lr[i : i + 1], scale)[0]
                    rows.append([up, *(safe[t][i] for t in SAMPLE_TEMPERATURES), hr[i]])
        if self.samples_dir is not None and rows:
            write_grid(self.samples_dir / f"step_{step:07d}.png", rows)
        return {
            "val_nll_bpd": _mean(nll),
            "val_psnr_t0": _mean(psnr_t0),
            "val_lr_psnr": _mean(consistency),
            "val_nonfinite": float(nonfinite),
        }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


# ---- models and checkpoints -----------------------------------------------------------


def _model_config(config: RunConfig):
    from cinn_sr.presets import preset

    return preset(config.preset, **config.model)


def read_encoder_file(path: str | Path, config: RunConfig):
    """Pre-trained RRDB weights for `config`'s model, via `cinn_sr.interop.load_encoder_state`.

    Accepts cinn-sr checkpoints (`pretrain`/`train`), official RRDB/SRFlow files and ESRGAN /
    BasicSR files. The file's global-skip style (`rrdb_skip`) goes into `config.model`; other
    architecture fields must match the preset (a one-line CheckpointError otherwise).
    """
    from cinn_sr.interop import load_encoder_state

    weights = load_encoder_state(path)
    target = _model_config(config)
    for key in ("n_rrdb", "nf", "gc", "in_channels"):
        if key in weights.fields and weights.fields[key] != getattr(target, key):
            raise CheckpointError(
                f"{path}: encoder has {key}={weights.fields[key]}, preset {config.preset} needs "
                f"{getattr(target, key)}: choose a matching --preset"
            )
    if weights.fields.get("scale", target.scale) > target.scale:
        raise CheckpointError(
            f"{path}: a x{weights.fields['scale']} encoder does not fit the x{target.scale} "
            f"preset {config.preset}"
        )
    skip = weights.fields.get("rrdb_skip")
    if skip is not None and hasattr(target, "rrdb_skip") and skip != target.rrdb_skip:
        config.model = {**config.model, "rrdb_skip": skip}
    return weights.state_dict


REPRESENTATION_FIELDS = ("invconv", "rrdb_skip", "scale_fn", "clamp")
"""Fields a whole-model file (`train --init`) sets; the rest must match the preset."""


def read_model_file(path: str | Path, config: TrainConfig) -> dict[str, Tensor]:
    """Weights of a whole model to fine-tune (`train --init`): a cinn-sr checkpoint or a
    released SRFlow file (anything `cinn_sr.load` reads). Its architecture must be the
    preset's; how it is represented or computed (REPRESENTATION_FIELDS) is taken from the
    file into `config.model`.
    """
    from cinn_sr.checkpoint import load

    model = load(path)
    loaded, target = model.config, _model_config(config)
    differ = [
        f"{k}={getattr(loaded, k)!r} (preset: {getattr(target, k)!r})"
        for k in loaded.to_dict()
        if k not in (*REPRESENTATION_FIELDS, "name") and getattr(loaded, k) != getattr(target, k)
    ]
    if differ:
        raise CheckpointError(
            f"{path}: not a {config.preset} model: {', '.join(differ[:3])}; choose its --preset"
        )
    config.model = {
        **config.model,
        **{k: getattr(loaded, k) for k in REPRESENTATION_FIELDS
           if getattr(loaded, k) != getattr(target, k)},
    }
    return model.state_dict()


def load_encoder_weights(model: SRFlow, state: dict[str, Tensor], path: str | Path) -> None:
    """Copy RRDB weights into `model.encoder`; a file of a smaller scale lacks upconvs only."""
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    wrong = unexpected + [k for k in missing if not k.startswith("upconv")]
    if wrong:
        raise CheckpointError(
            f"{path}: encoder weights do not fit preset {model.config.name} "
            f"({len(wrong)} tensors differ, e.g. {wrong[0]})"
        )


def resume_path(resume: str, out: str | None) -> Path:
    """`--resume` with no value ("last") means OUT/last.pt."""
    if resume != "last":
        return Path(resume)
    if out is None:
        raise ConfigError(
            "--resume without a checkpoint needs --out DIR (resumes DIR/last.pt)",
            from_command_line=True,
        )
    return Path(out) / "last.pt"


def resolve_for_resume(
    cls: type[RunConfig], checkpoint: Path, file: dict | None, cli: dict, file_name: str
) -> tuple[RunConfig, dict[str, Any]]:
    """Configuration of a resumed run: the checkpoint's < the --config file < command line.

    Without an `out` given, the run continues in the folder that holds the checkpoint.
    """
    payload = load_checkpoint(checkpoint)
    if "training" not in payload or payload.get("kind") != _KIND[cls]:
        raise CheckpointError(
            f"{checkpoint}: not a `cinn-sr {_KIND[cls]}` checkpoint, cannot resume it"
        )
    base = dict(payload["run_config"])
    if cli.get("out") is None and (file or {}).get("out") is None:
        folder = checkpoint.parent
        base["out"] = str(folder.parent if folder.name == "checkpoints" else folder)
    config = resolve(cls, file, cli, base=base, file_name=file_name)
    step = payload["training"].get("step", 0) if isinstance(payload["training"], dict) else 0
    if isinstance(step, int) and config.iterations <= step:
        raise ConfigError(
            f"{checkpoint} is at step {step}: iterations {config.iterations} leaves nothing to "
            "train; give a larger --iterations"
        )
    latest = latest_checkpoint_step(Path(config.out))
    if isinstance(step, int) and latest is not None and latest > step:
        raise RunFolderError(
            f"{checkpoint} is at step {step} but {config.out} holds checkpoints up to step "
            f"{latest}: continuing there would drop the newer steps; resume "
            f"{Path(config.out) / 'last.pt'}, or fork this one into a new folder with --out"
        )
    return config, payload


_KIND = {TrainConfig: "train", PretrainConfig: "pretrain"}


def run_label(config: RunConfig) -> str:
    """Middle part of a new run folder's name: the preset, prefixed by "pretrain-" there."""
    return f"pretrain-{config.preset}" if isinstance(config, PretrainConfig) else config.preset


def setup_run(
    config: RunConfig, info: ProcessInfo, resuming: bool
) -> tuple[Path, RunFolderLock | None]:
    """Rank 0 picks/creates the run folder, locks it and writes config.toml; all ranks learn
    the folder. Returns it and rank 0's lock."""
    lock = None
    if info.is_main:
        out = Path(config.out) if config.out else new_run_folder(run_label(config))
        lock = RunFolderLock(out)
        prepare_run_folder(out, resuming, lock)
        config.out = str(out)
        write_toml(config, out / "config.toml")
    config.out = broadcast_object(config.out, info)
    return Path(config.out), lock


@dataclass
class RunResult:
    """Where a run wrote its files, how far it got, its last validation metrics and (when
    trained in this process) the model."""

    out: Path
    step: int
    skipped: int
    validation: dict[str, float]
    model: SRFlow | None = None


def run_task(
    config: RunConfig,
    build: Callable[[SRFlow, RunConfig, list, Path | None], Task],
    resume: Path | None = None,
    payload: dict | None = None,
    stop_at: int | None = None,
    info: ProcessInfo | None = None,
) -> RunResult:
    """Shared driver of `train` and `pretrain`: process group, data, model, folder, loop."""
    own_group = info is None
    if info is None:
        try:
            info = init_process(config.device)
        except ValueError as error:
            raise ConfigError(f"device: {error}") from None
    out, lock, new_folder = None, None, False
    try:
        train_set, default_val = training_data(config, info)
        whole = payload["model"] if payload is not None else None
        if whole is None and isinstance(config, TrainConfig) and config.init is not None:
            whole = read_model_file(config.init, config)
        encoder_file = config.encoder if isinstance(config, TrainConfig) else config.init
        encoder_state = None
        if payload is None and encoder_file is not None:
            encoder_state = read_encoder_file(encoder_file, config)
        seed_everything(config.seed)
        model = SRFlow(_model_config(config))
        if whole is not None:
            load_weights(model, whole, resume or config.init)
        elif encoder_state is not None:
            load_encoder_weights(model, encoder_state, encoder_file)
        model.to(info.device)
        if info.is_main:
            warn_if_slow_on_cpu(config, model, info.device)
        seed_everything(config.seed + 1 + info.rank)
        val = config.val or default_val
        items = validation_items(val, train_set, config.val_count, model.config.scale)
        new_folder = config.out is None or not Path(config.out).exists()
        out, lock = setup_run(config, info, payload is not None)  # after the inputs are read
        task = build(model, config, items, out if info.is_main else None)
        if val is None:
            task.best_key = None
        state = ResumeState.from_checkpoint(payload) if payload is not None else None
        summary = run_loop(
            task, config, info, train_set, out if info.is_main else None, state, stop_at
        )
        return RunResult(
            out, summary["step"], summary["skipped"], summary["validation"], model
        )
    except BaseException:
        if info.is_main and out is not None and new_folder and not (out / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # a failed start leaves no run folder
        raise
    finally:
        if lock is not None:
            lock.release()
        if own_group:
            shutdown(info)


def warn_if_slow_on_cpu(config: RunConfig, model: SRFlow, device: torch.device) -> None:
    """A full-size preset on the CPU takes days: say so (a warning) and name the small ones."""
    if device.type != "cpu" or config.preset not in FULL_PRESETS:
        return
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    small = ", ".join(name for name in PRESETS if name not in FULL_PRESETS)
    warnings.warn(
        f"{config.preset} ({millions:.1f} M parameters, {config.iterations} steps) on the CPU "
        f"takes days; the small presets ({small}) train on a CPU in minutes to hours",
        stacklevel=2,
    )


def build_flow_task(model: SRFlow, config: TrainConfig, items, out: Path | None) -> Task:
    """The flow-training task (SPEC 1.4): objective, recipe, validation, checkpointing."""
    from cinn_sr.fastpath import compile_flow

    objective = FlowObjective(
        model, config.noise, config.encoder_bf16 and next(model.parameters()).is_cuda
    )
    milestones = [max(1, round(f * config.iterations)) for f in config.lr_milestones]
    frozen = config.encoder is not None and config.freeze_encoder_fraction > 0
    return Task(
        name="train",
        model=model,
        objective=objective,
        initialize=lambda hr, lr: model.initialize(lr, dequantize(hr, config.noise)),
        make_optimizer=lambda params: torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        ),
        make_scheduler=lambda opt: torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=milestones, gamma=config.lr_gamma
        ),
        validate=FlowValidation(model, items, out / "samples" if out else None),
        save=lambda path, extra: save_checkpoint(path, model, **extra),
        loss_unit="bpd",
        best_key="val_nll_bpd",
        after_init=(lambda: compile_flow(model)) if config.compile else None,
        frozen=list(model.encoder.parameters()) if frozen else [],
        frozen_until=round(config.freeze_encoder_fraction * config.iterations) if frozen else 0,
    )


def train(
    config: TrainConfig,
    resume: Path | None = None,
    payload: dict | None = None,
    stop_at: int | None = None,
    info: ProcessInfo | None = None,
) -> RunResult:
    """Train the flow as `config` says.

    `resume`/`payload`: the checkpoint to continue from (see `resolve_for_resume`);
    `stop_at`: stop (with a checkpoint) at this step instead of `config.iterations`.
    """
    return run_task(config, build_flow_task, resume, payload, stop_at, info)


def launch_processes(
    cls: type[RunConfig], config: RunConfig, resume: Path | None
) -> RunResult:
    """`--nproc N`: create the run folder, write the resolved config there and run the same
    command under torchrun with N processes, each reading that config (so all agree)."""
    from cinn_sr.distributed import LaunchInterrupted, launch, resolve_device
    from cinn_sr.runs import read_metrics

    try:
        device = resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if device.type == "cuda" and config.nproc > torch.cuda.device_count():
        raise ConfigError(
            f"nproc {config.nproc} is more than the {torch.cuda.device_count()} CUDA devices"
        )

    out = Path(config.out) if config.out else new_run_folder(run_label(config))
    prepare_run_folder(out, resuming=resume is not None)
    config.out = str(out)
    resolved = out / "config.toml"
    write_toml(config, resolved)
    argv = [_KIND[cls], "--config", str(resolved)]
    if resume is not None:
        argv += ["--resume", str(resume)]
    try:
        launch(config.nproc, argv)
    except LaunchInterrupted:
        done = latest_checkpoint_step(out)
        where = f"{out / 'last.pt'} holds step {done}" if done else "no checkpoint was written"
        raise TrainingStopped(f"interrupted: {where}; continue with --resume --out {out}") from None
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    validation = [r for r in records if any(k.startswith("val_") for k in r)]
    last = {k: v for k, v in validation[-1].items() if k != "step"} if validation else {}
    return RunResult(out, steps[-1]["step"] if steps else 0, steps[-1]["skipped"] if steps else 0,
                     last)
