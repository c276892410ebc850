"""Processes and devices: the environment torchrun sets, the process group, barriers, autocast.

A run with WORLD_SIZE > 1 joins a process group (NCCL on CUDA, gloo on CPU) whose collective
timeout is `ddp_timeout_min` (config, default 120 minutes): rank 0 alone builds the latent cache
while the other ranks wait in a barrier, and on a large data set that takes longer than the
10-30 minute defaults of torch, which would kill a healthy run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

DEFAULT_TIMEOUT_MIN = 120.0


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def collective_timeout(timeout_min: float | None) -> timedelta:
    """The process group's collective timeout from the config's `ddp_timeout_min` (None: the default)."""
    value = DEFAULT_TIMEOUT_MIN if timeout_min is None else timeout_min
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ddp_timeout_min must be a number of minutes > 0, got {value!r}") from None
    if not minutes > 0:
        raise ValueError(f"ddp_timeout_min must be a number of minutes > 0, got {value!r}")
    return timedelta(minutes=minutes)


def setup_distributed(device: str = "auto", timeout_min: float | None = None) -> Dist:
    """Read the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); nccl on CUDA, gloo on CPU.

    timeout_min: how long a collective (the barrier behind the latent-cache build, the checkpoint
    barrier) may wait before the run is declared hung; None = DEFAULT_TIMEOUT_MIN.
    """
    timeout = collective_timeout(timeout_min)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return Dist(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slow and not what we ship)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
