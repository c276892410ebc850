"""Random streams of a run: per-step generators and the per-rank global RNG states a checkpoint keeps.

Reproducibility contract: every random draw of training step `s` on rank `r` comes from
`step_generator(seed, s, r)` (plus the dataset's own (seed, epoch, index) streams), so a run
resumed at step s continues exactly as the uninterrupted run would have (tests/training/test_training.py).
What still reads the global RNGs (DataLoader worker seeds, dropout) is covered by saving each
rank's global RNG state in the checkpoint and giving it back to the same rank on resume. A run
resumed on a different number of processes cannot have that; each rank then gets a fresh
state derived from (seed, step, rank): deterministic, different per rank, and noted in the log.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist

from training.distributed import Dist


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of all random draws of one training step on one rank."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return g


def rng_state(device: torch.device) -> dict:
    """This process's global RNG states: torch CPU, numpy, python, and the CUDA state of `device`
    (None when the run is not on CUDA)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore `rng_state(device)` output in this process."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(ctx: Dist) -> list[dict]:
    """Every rank's `rng_state`, indexed by rank (a collective: all ranks call it)."""
    own = rng_state(ctx.device)
    if not ctx.enabled:
        return [own]
    states: list = [None] * ctx.world_size
    dist.all_gather_object(states, own)
    return states


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed the global torch (CPU and CUDA), numpy and python RNGs from (seed, step, rank)."""
    value = int(np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def restore_rng_states(saved: list | dict, ctx: Dist, seed: int, step: int) -> str | None:
    """Give this rank its own saved RNG state when the checkpoint comes from the same world size;
    otherwise `reseed(seed, step, rank)`. Returns a note for the log when it reseeded, else None.

    saved: the checkpoint's per-rank list; a dict is the older single-state format (rank 0 of
    the run that wrote it, CUDA states of every visible device), read as a world size of 1.
    """
    if isinstance(saved, dict):  # older checkpoints: one state, taken on rank 0
        saved = [{**saved, "cuda": _this_devices_state(saved.get("cuda"), ctx.device)}]
    if len(saved) == ctx.world_size:
        set_rng_state(saved[ctx.rank], ctx.device)
        return None
    reseed(seed, step, ctx.rank)
    return (f"the checkpoint holds the RNG states of {len(saved)} process(es), this run has {ctx.world_size}: "
            f"each rank's global RNGs are reseeded from (seed {seed}, step {step}, its rank) (the per-step "
            f"generators do not depend on them)")


def _this_devices_state(per_device: list | None, device: torch.device) -> torch.Tensor | None:
    """From an older checkpoint's CUDA states of every visible device, the one of `device`."""
    index = device.index or 0
    if device.type != "cuda" or not per_device or index >= len(per_device):
        return None
    return per_device[index]
