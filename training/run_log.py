"""What a run reports: the rank-0 text log and TensorBoard (RunLogger), step rates, image grids.

(Named run_log, not logging, so that `import logging` keeps meaning the standard library.)
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from training.distributed import Dist


class RunLogger:
    """Rank-0 text log (stdout + run_dir/train.log) and TensorBoard scalars/images; no-op elsewhere."""

    def __init__(self, run_dir: Path, ctx: Dist, tensorboard: bool = True):
        self.ctx = ctx
        self.run_dir = run_dir
        self.writer = None
        self.log_file = None
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.log_file = open(run_dir / "train.log", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional at import time)
                self.writer = SummaryWriter(str(run_dir / "tb"))

    def info(self, message: str) -> None:
        if self.ctx.is_main:
            line = f"{time.strftime('%H:%M:%S')} {message}"
            print(line, flush=True)
            self.log_file.write(line + "\n")

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        """grid: (3, H, W) float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, grid.clamp(0, 1), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.log_file is not None:
            self.log_file.close()


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """rows of (B, 3, H, W) images in [0, 1] -> one (3, rows*H, B*W) grid."""
    return torch.cat([torch.cat(list(r.float().cpu()), dim=2) for r in rows], dim=1)


class Throughput:
    """Steps/s and samples/s over the last logging window."""

    def __init__(self):
        self.t0, self.steps, self.samples = time.time(), 0, 0

    def add(self, samples: int) -> None:
        self.steps += 1
        self.samples += samples

    def rates(self) -> dict[str, float]:
        dt = max(time.time() - self.t0, 1e-9)
        out = {"steps_per_s": self.steps / dt, "samples_per_s": self.samples / dt}
        self.t0, self.steps, self.samples = time.time(), 0, 0
        return out
