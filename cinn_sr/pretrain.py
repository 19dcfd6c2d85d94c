"""L1 pre-training of the RRDB encoder with its ESRGAN head (`cinn-sr pretrain`).

loss = mean |encoder.sr(lr) - hr| per image; Adam (2e-4, betas (0.9, 0.99)), cosine
annealing with warm restarts every `restart_every` iterations down to `eta_min`. The
checkpoint is a regular cinn-sr checkpoint of the whole SRFlow (its flow untrained), so
`cinn-sr train --encoder CKPT` and `cinn_sr.load` both read it. The SRFlow paper
pre-trains its encoder this way, as ESRGAN's L1 super-resolution network; `cinn_sr.driver`
runs it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from cinn_sr.checkpoint import save_checkpoint
from cinn_sr.config import PretrainConfig
from cinn_sr.loop import Task, adam
from cinn_sr.metrics import psnr
from cinn_sr.model import SRFlow
from cinn_sr.validation import (
    GRID_ROWS,
    batches_of_equal_size,
    mean_of_finite,
    upscale_lr,
    write_grid,
)


class L1Objective(nn.Module):
    """forward(hr, lr) -> mean absolute error of the ESRGAN output per image."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, hr: Tensor, lr: Tensor) -> Tensor:
        return (self.encoder.sr(lr) - hr).abs().flatten(1).mean(1)


class RRDBValidation:
    """Validation L1 and PSNR of the RRDB output, and a grid: LR (upscaled) | RRDB | HR."""

    def __init__(self, model: SRFlow, items, samples_dir: Path | None) -> None:
        self.model, self.items, self.samples_dir = model, items, samples_dir

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        encoder, scale = self.model.encoder, self.model.config.scale
        device = next(encoder.parameters()).device
        l1, quality, rows = [], [], []
        for hr, lr in batches_of_equal_size(self.items):
            sr = encoder.sr(lr.to(device)).float().cpu()
            l1.extend((sr - hr).abs().flatten(1).mean(1).tolist())
            sr = sr.nan_to_num(0.0, 1.0, 0.0).clamp(0, 1)
            for i in range(hr.shape[0]):
                quality.append(psnr(sr[i], hr[i]))
                if len(rows) < GRID_ROWS:
                    rows.append([upscale_lr(lr[i : i + 1], scale)[0], sr[i], hr[i]])
        if self.samples_dir is not None and rows:
            write_grid(self.samples_dir / f"step_{step:07d}.png", rows)
        return {"val_l1": sum(l1) / len(l1), "val_psnr": mean_of_finite(quality)}


def build_pretrain_task(model: SRFlow, config: PretrainConfig, items, out: Path | None) -> Task:
    """The RRDB pre-training task: L1 objective, recipe, validation, checkpointing."""
    return Task(
        name="pretrain",
        model=model,
        objective=L1Objective(model.encoder),
        initialize=lambda hr, lr: None,
        make_optimizer=lambda params: adam(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        ),
        make_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=config.restart_every, eta_min=config.eta_min
        ),
        validate=RRDBValidation(model, items, out / "samples" if out else None),
        save=lambda path, extra: save_checkpoint(path, model, **extra),
        loss_unit="L1",
        best_key="val_l1",
    )

