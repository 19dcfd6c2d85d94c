"""The flow objective of `cinn-sr train`: maximum likelihood, after the SRFlow paper (sec. 3).

loss = mean over the batch of model.nll(lr, hr + noise), in bits per dimension, where the
dequantisation noise is Gaussian with sigma = (4 / sqrt(3)) / 255 (the paper), uniform
U(-0.5, 0.5) / 32 (the reference code's unused path) or none. Adam, lr halved at 50, 75, 90
and 95 % of the iterations (the paper's recipe); a pre-trained encoder (`encoder`) is frozen
for the first `freeze_encoder_fraction` of them. `cinn_sr.driver` runs it.

NCSR's training (`noise_max_std` > 0, the ncsr presets' recipe): per image a std drawn
uniformly in [0, noise_max_std], Gaussian noise of that std added to the HR and its
MATLAB-style downscale to the LR, the HR-size noise itself the model's noise map
(`SRFlow.condition(lr, noise=...)`). Validation, sampling and evaluation use zero maps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from cinn_sr.checkpoint import save_checkpoint
from cinn_sr.config import GAUSSIAN_NOISE_SIGMA, TrainConfig
from cinn_sr.datasets import OptionError, imresize
from cinn_sr.loop import Task, adam
from cinn_sr.memory import set_memory_saving
from cinn_sr.metrics import lr_psnr, psnr
from cinn_sr.model import DEFAULT_TEMPERATURE, SRFlow
from cinn_sr.validation import (
    GRID_ROWS,
    batches_of_equal_size,
    mean_of_finite,
    upscale_lr,
    write_grid,
)

SAMPLE_TEMPERATURES = (0.0, 0.5, DEFAULT_TEMPERATURE)
"""The temperatures of a validation grid's samples; LR-PSNR is measured on the last."""


def dequantize(hr: Tensor, noise: str) -> Tensor:
    """HR plus dequantisation noise: "gaussian" (paper), "uniform" (reference) or "none"."""
    if noise == "gaussian":
        return hr + torch.randn_like(hr) * GAUSSIAN_NOISE_SIGMA
    if noise == "uniform":
        return hr + (torch.rand_like(hr) - 0.5) / 32
    return hr


def add_ncsr_noise(hr: Tensor, lr: Tensor, max_std: float, scale: int) -> tuple[Tensor, ...]:
    """(hr + eps, lr + imresize(eps, 1 / scale), eps) with eps = N(0, 1) * std, one std per
    image drawn uniformly in [0, max_std] (NCSR's "softflow" training with LR noise)."""
    std = torch.rand(hr.shape[0], 1, 1, 1, device=hr.device, dtype=hr.dtype) * max_std
    eps = torch.randn_like(hr) * std
    return hr + eps, lr + imresize(eps, 1 / scale), eps


class FlowObjective(nn.Module):
    """forward(hr, lr) -> NLL in bits per dimension per image, HR dequantised (and, with
    `noise_max_std` > 0, NCSR's training noise added, its map given to the model).

    With `encoder_bf16` (CUDA only) the encoder runs under bfloat16 autocast and its
    conditions are cast back to float32, so the flow itself stays in float32.
    """

    def __init__(self, model: SRFlow, noise: str, encoder_bf16: bool = False,
                 noise_max_std: float = 0.0) -> None:
        super().__init__()
        self.model, self.noise, self.encoder_bf16 = model, noise, encoder_bf16
        self.noise_max_std = noise_max_std

    def batch(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The (HR, LR, conditions) the model is trained on for this data batch."""
        noise_map = None
        if self.noise_max_std > 0:
            hr, lr, noise_map = add_ncsr_noise(hr, lr, self.noise_max_std,
                                               self.model.config.scale)
        if self.encoder_bf16 and lr.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                cond = self.model.condition(lr, noise=noise_map)
            cond = [c.float() for c in cond]
        else:
            cond = self.model.condition(lr, noise=noise_map)
        return dequantize(hr, self.noise), lr, cond

    def forward(self, hr: Tensor, lr: Tensor) -> Tensor:
        hr, lr, cond = self.batch(hr, lr)
        return self.model.nll(lr, hr, cond=cond)

    @torch.no_grad()
    def initialize(self, hr: Tensor, lr: Tensor) -> None:
        """The ActNorms' data-dependent initialisation on a training batch."""
        hr, lr, cond = self.batch(hr, lr)
        self.model.initialize(lr, hr, cond=cond)


class FlowValidation:
    """Validation NLL, PSNR at temperature 0, LR-PSNR at the default 0.9 and a sample grid.

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
                consistency.append(lr_psnr(safe[DEFAULT_TEMPERATURE][i], lr[i], scale))
                if len(rows) < GRID_ROWS:
                    up = upscale_lr(lr[i : i + 1], scale)[0]
                    rows.append([up, *(safe[t][i] for t in SAMPLE_TEMPERATURES), hr[i]])
        if self.samples_dir is not None and rows:
            write_grid(self.samples_dir / f"step_{step:07d}.png", rows)
        return {
            "val_nll_bpd": mean_of_finite(nll),
            "val_psnr_t0": mean_of_finite(psnr_t0),
            "val_lr_psnr": mean_of_finite(consistency),
            "val_nonfinite": float(nonfinite),
        }


def build_flow_task(model: SRFlow, config: TrainConfig, items, out: Path | None) -> Task:
    """The flow-training task: objective, the paper's recipe, validation, checkpointing."""
    from cinn_sr.fastpath import compile_flow

    if config.noise_max_std > 0 and not model.config.noise_levels:
        raise OptionError("noise_max_std (NCSR's training noise) needs a model with noise "
                          "couplings: an ncsr preset or [model] noise_steps")
    set_memory_saving(model, config.memory_saving)
    objective = FlowObjective(
        model, config.noise, config.encoder_bf16 and next(model.parameters()).is_cuda,
        config.noise_max_std,
    )
    milestones = [max(1, round(f * config.iterations)) for f in config.lr_milestones]
    frozen = config.encoder is not None and config.freeze_encoder_fraction > 0
    return Task(
        name="train",
        model=model,
        objective=objective,
        initialize=objective.initialize,
        make_optimizer=lambda params: adam(
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
