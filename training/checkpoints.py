"""The training checkpoint (RUN_DIR/<component>/last.pt): everything needed to continue a run exactly.

It holds the network's weights and what only training needs (optimizer, LR schedule, EMA, each rank's
RNG state, step, config); `training.export_model` turns finished ones into the shipped format of
`magicfuse_core.checkpoint` (safetensors + JSON per component). The network is described with that
module's vocabulary (`component_kind`, `build_component`) and loaded with its strict loader.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from magicfuse_core.checkpoint import build_component, component_kind, load_component, load_state_dict_strict
from training.distributed import Dist, barrier, unwrap
from training.ema import EMA
from training.rng import gather_rng_states, restore_rng_states

# Checkpoints written before `kind` was recorded name the network's class instead.
_KIND_OF_CLASS = {"Autoencoder": "autoencoder", "ConditionalUNet": "unet", "FusionNet": "fusion"}


def save_checkpoint(path: Path, *, ctx: Dist, step: int, model: nn.Module, optimizer, scheduler=None,
                    ema: EMA | None = None, config: dict | None = None, extra: dict | None = None) -> Path:
    """Write weights, optimizer, LR schedule, EMA, every rank's RNG state and the step to `path`.

    Every rank calls it (the RNG states are gathered); rank 0 writes, the others wait for the file.
    Written to a temporary file and renamed, so a crash never leaves a half checkpoint.
    """
    path = Path(path)
    rng = gather_rng_states(ctx)
    if ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        module = unwrap(model)
        state = {
            "step": step,
            "model": module.state_dict(),
            "kind": component_kind(module),
            "model_config": module.config.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng,  # indexed by rank
            "world_size": ctx.world_size,
            "config": config,
            "extra": extra or {},
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
    barrier(ctx)
    return path


def load_checkpoint(path: Path, *, ctx: Dist, seed: int, model: nn.Module, optimizer=None, scheduler=None,
                    ema: EMA | None = None) -> dict:
    """Restore a `save_checkpoint` file into the given objects and this rank's RNGs (see
    `training.rng.restore_rng_states`); returns the raw state (step, extra, ...) plus `rng_note`."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    load_state_dict_strict(unwrap(model), state["model"], f"checkpoint {path}")
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])  # onto the device of the model's weights
    state["rng_note"] = restore_rng_states(state["rng"], ctx, seed, int(state["step"]))
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    path = Path(run_dir) / "last.pt"
    return path if path.is_file() else None


def resume_if_any(run_dir: Path, fresh: bool, log, *, ctx: Dist, seed: int, **states) -> tuple[int, float]:
    """Load RUN_DIR's latest checkpoint into `states` (model=, optimizer=, ...) unless `fresh`.

    Returns (step, wall seconds of the runs resumed); (0, 0.0) for a new run.
    """
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or fresh:
        return 0, 0.0
    state = load_checkpoint(ckpt, ctx=ctx, seed=seed, **states)
    log.info(f"resumed from {ckpt} at step {state['step']}")
    if state["rng_note"]:
        log.info(state["rng_note"])
    return state["step"], float(state["extra"].get("wall_s", 0.0))


def load_trained_module(path: Path, use_ema: bool = True) -> nn.Module:
    """A phase checkpoint (EMA weights when present) or a component of an exported model folder
    (`models/demo/ckg.safetensors`: fine-tune on top of a shipped model) -> the network, eval mode, CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_component(path.parent, path.stem)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    kind = state.get("kind") or _KIND_OF_CLASS[state["model_kind"]]
    module = build_component(kind, state["model_config"])
    load_state_dict_strict(module, state["model"], f"checkpoint {path}")
    if use_ema and state.get("ema") is not None:
        weights = module.state_dict()
        for k, v in state["ema"]["shadow"].items():
            weights[k].copy_(v)
    return module.eval()
