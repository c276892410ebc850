"""Networks from a config's specs: {"profile": NAME, "config": {overrides}} -> the network."""
from __future__ import annotations

import torch

from magicfuse_core.checkpoint import build_component
from magicfuse_core.models.autoencoder import Autoencoder
from magicfuse_core.models.fusion import PROFILES as FUSION_PROFILES
from magicfuse_core.models.fusion import FusionNet
from magicfuse_core.models.unet import ConditionalUNet, unet_config
from magicfuse_core.schedule import DDIMSchedule
from training.checkpoints import load_trained_module
from training.config import repo_path


def build_unet(spec: dict) -> ConditionalUNet:
    """{"profile": "tiny"} or {"config": {...UNetConfig fields}} (profile fields overridden by config)."""
    cfg = unet_config(spec["profile"]).to_dict() if spec.get("profile") else {}
    cfg.update(spec.get("config") or {})
    return build_component("unet", cfg)


def build_fusion(spec: dict) -> FusionNet:
    """{"profile": "tiny"} or {"config": {...FusionConfig fields}} (profile fields overridden by config)."""
    cfg = FUSION_PROFILES[spec["profile"]].to_dict() if spec.get("profile") else {}
    cfg.update(spec.get("config") or {})
    return build_component("fusion", cfg)


def build_autoencoder(spec: dict) -> Autoencoder:
    """The autoencoder the diffusion phases use, frozen: `checkpoint` (ours, from phase 1),
    else `official` (the authors' ae.pth), else random weights of `config` (tests only)."""
    if spec.get("checkpoint"):
        ae = load_trained_module(repo_path(spec["checkpoint"]))
    elif spec.get("official"):
        from magicfuse_core.official import load_autoencoder  # noqa: PLC0415
        ae = load_autoencoder(repo_path(spec["official"]))
    else:
        torch.manual_seed(int(spec.get("seed", 0)))
        ae = build_component("autoencoder", spec.get("config") or {})
    return ae.eval().requires_grad_(False)


def sampling_schedule(phase2: dict) -> DDIMSchedule:
    """The DDIM schedule of phase 2's rollouts: `sampling_timesteps` (an explicit descending list, e.g.
    [800, 400]) or else `sampling_steps` with the leading spacing. F and S are conditioned on the timestep,
    so this is also what an exported model samples with unless `export.timesteps` picks some of them."""
    listed = phase2.get("sampling_timesteps")
    if listed is None:
        return DDIMSchedule(num_inference_steps=int(phase2.get("sampling_steps", 25)))
    try:
        schedule = DDIMSchedule(custom_timesteps=tuple(listed))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"phase2.sampling_timesteps: {exc}") from exc
    steps = phase2.get("sampling_steps")
    if steps is not None and int(steps) != schedule.num_inference_steps:
        raise ValueError(f"phase2.sampling_steps {steps} disagrees with phase2.sampling_timesteps {list(listed)} "
                         f"({schedule.num_inference_steps} steps): set one of them")
    return schedule


def export_schedule(phase2: dict, timesteps) -> DDIMSchedule:
    """What an exported model samples with: phase 2's rollout schedule, or `timesteps` (export.timesteps), which
    must be among the rollout timesteps: F and S never saw any other (a refusal, not a silent quality loss)."""
    trained = sampling_schedule(phase2)
    if timesteps is None:
        return trained
    try:
        chosen = trained.with_timesteps(timesteps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"export.timesteps: {exc}") from exc
    unseen = [t for t in chosen.timesteps if t not in trained.timesteps]
    if unseen:
        raise ValueError(f"export.timesteps {list(chosen.timesteps)}: F/S were trained on the rollout timesteps "
                         f"{list(trained.timesteps)} only, not on {unseen}")
    return chosen
