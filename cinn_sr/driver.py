"""Running `cinn-sr train` and `cinn-sr pretrain`: what the two commands share.

    run_command(kind, ...)   resolve the configuration (or the one of a resumed checkpoint),
                             then train in this process or launch torchrun
    run_task(config, ...)    process group, data, model and its starting weights, the run
                             folder, then `cinn_sr.loop.run_loop` on the kind's `Task`

`cinn_sr.train` and `cinn_sr.pretrain` hold only their objective, validation and recipe (a
`Task`); this module picks one by the configuration's class.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cinn_sr.checkpoint import CheckpointError, load_checkpoint, load_weights
from cinn_sr.config import (
    FULL_PRESETS,
    ConfigError,
    PretrainConfig,
    RunConfig,
    TrainConfig,
    read_toml,
    resolve,
    to_toml_dict,
    write_toml,
)
from cinn_sr.datasets.patch_dataset import PatchDataset
from cinn_sr.default_data import default_patches
from cinn_sr.distributed import (
    LaunchFailed,
    LaunchInterrupted,
    ProcessInfo,
    broadcast_object,
    init_process,
    launch,
    launched_by_torchrun,
    resolve_device,
    shutdown,
)
from cinn_sr.loop import LoopSettings, ResumeState, TrainingStopped, run_loop
from cinn_sr.model import SRFlow
from cinn_sr.presets import PRESETS
from cinn_sr.pretrain import build_pretrain_task
from cinn_sr.rng import seed_everything
from cinn_sr.runs import (
    RunFolderError,
    RunFolderLock,
    latest_checkpoint_step,
    new_run_folder,
    prepare_run_folder,
    read_metrics,
)
from cinn_sr.start_weights import load_encoder_weights, read_encoder_file, read_model_file
from cinn_sr.train import build_flow_task
from cinn_sr.validation import validation_items

KINDS = {"train": TrainConfig, "pretrain": PretrainConfig}
"""The command of each configuration class."""
BUILDERS = {TrainConfig: build_flow_task, PretrainConfig: build_pretrain_task}


@dataclass
class RunResult:
    """Where a run wrote its files, how far it got, its last validation metrics and (when
    trained in this process) the model. `reporting`: this process reports the run (rank 0)."""

    kind: str
    out: Path
    step: int
    skipped: int
    validation: dict[str, float]
    model: SRFlow | None = None
    reporting: bool = True

    def summary(self) -> str:
        """The one line the command prints at the end."""
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in self.validation.items())
        line = (f"{self.kind}: {self.step} steps ({self.skipped} skipped) in {self.out}: "
                "last.pt, best.pt, metrics.jsonl, samples/")
        return line + (f"; last validation: {metrics}" if metrics else "")


def run_command(
    kind: str, config_file: str | None, options: dict[str, Any], resume: str | None
) -> RunResult | None:
    """`cinn-sr train` / `pretrain`: configuration from the defaults, the preset, the
    `config_file` and the command-line `options`; `resume` is a checkpoint or "last".
    Returns the result to report, None where another process reports it."""
    cls = KINDS[kind]
    file = read_toml(config_file) if config_file else None
    name = str(config_file) if config_file else "config file"
    checkpoint, payload = None, None
    if resume is not None:
        checkpoint = resume_path(resume, options.get("out") or (file or {}).get("out"))
        config, payload = resolve_for_resume(cls, checkpoint, file, options, name)
    else:
        config = resolve(cls, file, options, file_name=name)
    if config.nproc > 1 and not launched_by_torchrun():
        launch_processes(config, checkpoint)
        return None  # rank 0 of the launched processes reported
    result = run_task(config, checkpoint, payload)
    return result if result.reporting else None


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
    return run_task(config, resume, payload, stop_at, info)


def pretrain(
    config: PretrainConfig,
    resume: Path | None = None,
    payload: dict | None = None,
    stop_at: int | None = None,
    info: ProcessInfo | None = None,
) -> RunResult:
    """Pre-train the RRDB encoder as `config` says (arguments as `train`)."""
    return run_task(config, resume, payload, stop_at, info)


# ---- resuming --------------------------------------------------------------------------


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
    kind = _kind(cls)
    payload = load_checkpoint(checkpoint)
    if "training" not in payload or payload.get("kind") != kind:
        raise CheckpointError(f"{checkpoint}: not a `cinn-sr {kind}` checkpoint, cannot resume it")
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


def _kind(cls: type[RunConfig]) -> str:
    return next(kind for kind, known in KINDS.items() if known is cls)


# ---- one run in this process -----------------------------------------------------------


def run_task(
    config: RunConfig,
    resume: Path | None = None,
    payload: dict | None = None,
    stop_at: int | None = None,
    info: ProcessInfo | None = None,
) -> RunResult:
    """Process group, data, model, folder, loop; a failed start leaves no new run folder."""
    own_group = info is None
    if info is None:
        try:
            info = init_process(config.device)
        except ValueError as error:
            raise ConfigError(f"device: {error}") from None
    out, lock, new_folder = None, None, False
    try:
        train_set, default_val = training_data(config, info)
        model = _starting_model(config, resume, payload)
        model.to(info.device)
        if info.is_main:
            warn_if_slow_on_cpu(config, model, info.device)
        seed_everything(config.seed + 1 + info.rank)
        val = config.val or default_val
        items = validation_items(val, train_set, config.val_count, model.config.scale)
        new_folder = config.out is None or not Path(config.out).exists()
        out, lock = setup_run(config, info, payload is not None)  # after the inputs are read
        task = BUILDERS[type(config)](model, config, items, out if info.is_main else None)
        if val is None:
            task.best_key = None
        state = ResumeState.from_checkpoint(payload) if payload is not None else None
        summary = run_loop(task, loop_settings(config), info, train_set,
                           out if info.is_main else None, state, stop_at)
        return RunResult(_kind(type(config)), out, summary["step"], summary["skipped"],
                         summary["validation"], model, info.is_main)
    except BaseException:
        if info.is_main and out is not None and new_folder and not (out / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)  # a failed start leaves no run folder
        raise
    finally:
        if lock is not None:
            lock.release()
        if own_group:
            shutdown(info)


def training_data(config: RunConfig, info: ProcessInfo) -> tuple[PatchDataset, str | None]:
    """The training patches and the default validation set (held-out photo) if any.

    Without `config.data` rank 0 packs the embedded default (once, cached) first.
    """
    scale = config.model_config().scale
    if config.data is not None:
        try:
            return PatchDataset(config.data, augment=False, scale=scale), None
        except ValueError as error:
            raise ConfigError(f"patch file: {error}") from None
    paths = default_patches(scale, progress=True) if info.is_main else None
    train, val = broadcast_object(paths, info)
    return PatchDataset(train, augment=False), str(val)


def _starting_model(config: RunConfig, resume: Path | None, payload: dict | None) -> SRFlow:
    """The model at step 0 (seeded init, then `--init` or `--encoder` weights) or at the
    resumed checkpoint. The files are read before the model is built: they may set
    representation fields of `config.model`."""
    whole = payload["model"] if payload is not None else None
    if whole is None and isinstance(config, TrainConfig) and config.init is not None:
        whole = read_model_file(config.init, config)
    encoder_file = config.encoder if isinstance(config, TrainConfig) else config.init
    encoder_state = None
    if payload is None and encoder_file is not None:
        encoder_state = read_encoder_file(encoder_file, config)
    seed_everything(config.seed)
    model = SRFlow(config.model_config())
    if whole is not None:
        load_weights(model, whole, resume or config.init)
    elif encoder_state is not None:
        load_encoder_weights(model, encoder_state, encoder_file)
    return model


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


def setup_run(
    config: RunConfig, info: ProcessInfo, resuming: bool
) -> tuple[Path, RunFolderLock | None]:
    """Rank 0 picks/creates the run folder, locks it and writes config.toml; all ranks learn
    the folder. Returns it and rank 0's lock."""
    lock = None
    if info.is_main:
        out = Path(config.out) if config.out else new_run_folder(_run_label(config))
        lock = RunFolderLock(out)
        prepare_run_folder(out, resuming, lock)
        config.out = str(out)
        write_toml(config, out / "config.toml")
    config.out = broadcast_object(config.out, info)
    return Path(config.out), lock


def _run_label(config: RunConfig) -> str:
    """Middle part of a new run folder's name: the preset, prefixed by "pretrain-" there."""
    return f"pretrain-{config.preset}" if isinstance(config, PretrainConfig) else config.preset


def loop_settings(config: RunConfig) -> LoopSettings:
    """What the step loop needs of a run configuration; checkpoints record all of it."""
    names = [f.name for f in dataclasses.fields(LoopSettings) if f.name != "record"]
    return LoopSettings(**{n: getattr(config, n) for n in names}, record=to_toml_dict(config))


# ---- several processes -----------------------------------------------------------------


def launch_processes(config: RunConfig, resume: Path | None) -> RunResult:
    """`--nproc N`: create the run folder, write the resolved config there and run the same
    command under torchrun with N processes, each reading that config (so all agree)."""
    kind = _kind(type(config))
    try:
        device = resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if device.type == "cuda" and config.nproc > torch.cuda.device_count():
        raise ConfigError(
            f"nproc {config.nproc} is more than the {torch.cuda.device_count()} CUDA devices"
        )
    out = Path(config.out) if config.out else new_run_folder(_run_label(config))
    prepare_run_folder(out, resuming=resume is not None)
    config.out = str(out)
    resolved = out / "config.toml"
    write_toml(config, resolved)
    argv = [kind, "--config", str(resolved)]
    if resume is not None:
        argv += ["--resume", str(resume)]
    try:
        launch(config.nproc, argv)
    except LaunchInterrupted:
        done = latest_checkpoint_step(out)
        where = f"{out / 'last.pt'} holds step {done}" if done else "no checkpoint was written"
        raise TrainingStopped(f"interrupted: {where}; continue with --resume --out {out}") from None
    except LaunchFailed:
        raise TrainingStopped(f"a {kind} process failed (its error is shown above)") from None
    return _result_from_log(kind, out)


def _result_from_log(kind: str, out: Path) -> RunResult:
    """A finished run's result read back from its metrics.jsonl."""
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    validation = [r for r in records if any(k.startswith("val_") for k in r)]
    last = {k: v for k, v in validation[-1].items() if k != "step"} if validation else {}
    step, skipped = (steps[-1]["step"], steps[-1]["skipped"]) if steps else (0, 0)
    return RunResult(kind, out, step, skipped, last)
