"""Networks from a config's specs: {"profile": NAME, "config": {overrides}} -> the network."""
from __future__ import annotations

import torch

from magicfuse_core.checkpoint import build_component
from magicfuse_core.models.autoencoder import Autoencoder
from magicfuse_core.models.fusion import PROFILES as FUSION_PROFILES
from magicfuse_core.models.fusion import FusionNet
from magicfuse_core.models.unet import ConditionalUNet, unet_config
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
