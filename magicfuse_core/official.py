"""Import of the authors' released checkpoints (the reference implementation's layouts).

    ae = load_autoencoder("ae.pth")
    ikr = load_denoiser("ikr.pth", {"MODEL_CHANNELS": 64, "NUM_HEADS": 4, ...})
    fusion = load_fusion("fusion.pth")
    out = fused_sample(ikr, ckg, fusion, ae, cond_latent, z_T, seg_T)

Loading is strict: a missing or unexpected key, or a shape mismatch, raises a
ValueError naming the keys. `convert_official` writes the same networks in our
format (safetensors + JSON per component), see `magicfuse convert-official`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .checkpoint import MagicFuseModel, load_state_dict_strict, save_model
from .models.autoencoder import Autoencoder
from .models.fusion import FusionConfig, FusionModule, FusionNet
from .models.unet import ConditionalUNet, UNetConfig, unet_config
from .palette import DEFAULT_TAU, DEFAULT_THERMAL_CLASSES
from .sampler import fused_sample as _fused_sample
from .schedule import DDIMSchedule

# Reference YAML key -> our UNetConfig field. Keys that only select code paths the
# released networks do not use must hold the values below, or we refuse the config.
_UNET_KEYS = {
    "IN_CHANNELS": "in_channels", "OUT_CHANNELS": "out_channels", "MODEL_CHANNELS": "model_channels",
    "NUM_HEADS": "num_heads", "NUM_RES_BLOCKS": "num_res_blocks",
    "ATTENTION_RESOLUTIONS": "attention_resolutions", "CHANNEL_MULT": "channel_mult",
}
_FIXED_KEYS = {"CONV_RESAMPLE": True, "DIMS": 2, "USE_SCALE_SHIFT_NORM": False, "RESBLOCK_UPDOWN": False,
               "USE_SPATIAL_TRANSFORMER": True, "TRANSFORMER_DEPTH": 1, "DISABLE_MIDDLE_SELF_ATTN": False,
               "USE_LINEAR_IN_TRANSFORMER": False}
_IGNORED_KEYS = {"NAME", "PRETRAINED_PATH", "USE_CHECKPOINT"}


def _read(src, what: str):
    if isinstance(src, Mapping):
        return src
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise ValueError(f"cannot read {what} checkpoint {path}: {exc}") from exc


def _state_dict(obj, what: str) -> Mapping[str, torch.Tensor]:
    # Training checkpoints sometimes wrap the weights; accept the common wrappers.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{what} checkpoint is not a state_dict of tensors")
    return {k.removeprefix("module."): v.float() for k, v in obj.items()}


def unet_config_from_reference(config: Mapping) -> UNetConfig:
    """Map the reference YAML keys (IN_CHANNELS, ...) to our UNetConfig."""
    unknown = set(config) - set(_UNET_KEYS) - set(_FIXED_KEYS) - _IGNORED_KEYS
    if unknown:
        raise ValueError(f"unknown denoiser config keys: {sorted(unknown)}")
    for key, value in _FIXED_KEYS.items():
        if key in config and config[key] != value:
            raise ValueError(f"denoiser config {key}={config[key]!r} is not supported (the released nets use {value!r})")
    missing = [k for k in ("MODEL_CHANNELS", "NUM_HEADS", "ATTENTION_RESOLUTIONS", "CHANNEL_MULT") if k not in config]
    if missing:
        raise ValueError(f"denoiser config lacks {missing}")
    kwargs = {ours: config[ref] for ref, ours in _UNET_KEYS.items() if ref in config}
    for k in ("attention_resolutions", "channel_mult"):
        kwargs[k] = tuple(int(v) for v in kwargs[k])
    return UNetConfig(**kwargs)


def reference_config(config: UNetConfig) -> dict:
    """Our UNetConfig in the reference YAML keys (the inverse of unet_config_from_reference)."""
    d = config.to_dict()
    return {ref: d[ours] for ref, ours in _UNET_KEYS.items()}


def paper_reference_config(denoiser: str) -> dict:
    """The paper's Ψ ("ikr") or Φ ("ckg") in the reference YAML keys, from our one definition of them."""
    return reference_config(unet_config(f"{denoiser}_paper"))


def load_autoencoder(src) -> Autoencoder:
    """`src`: path to ae.pth or the dict it holds ({'encoder': sd, 'decoder': sd})."""
    obj = _read(src, "autoencoder")
    if not isinstance(obj, Mapping) or "encoder" not in obj or "decoder" not in obj:
        raise ValueError("autoencoder checkpoint must hold {'encoder': state_dict, 'decoder': state_dict}"
                         f"; found keys {sorted(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__}")
    ae = Autoencoder()
    load_state_dict_strict(ae.encoder, _state_dict(obj["encoder"], "autoencoder encoder"), "autoencoder encoder")
    load_state_dict_strict(ae.decoder, _state_dict(obj["decoder"], "autoencoder decoder"), "autoencoder decoder")
    return ae.eval()


def load_denoiser(src, config: Mapping) -> ConditionalUNet:
    """`src`: path to ikr.pth / ckg.pth or a state_dict; `config`: the reference YAML keys.

    The returned module is called as `net(x, t)`, x = concat(cond latent, x_t)
    (B, 16, h, w), float timesteps t (B,), and returns eps (B, 8, h, w).
    """
    net = ConditionalUNet(unet_config_from_reference(config))
    load_state_dict_strict(net, _state_dict(_read(src, "denoiser"), "denoiser"), "denoiser checkpoint")
    return net.eval()


def load_fusion(src, num_classes: int = 9, tau: float = DEFAULT_TAU, thermal_classes=DEFAULT_THERMAL_CLASSES) -> FusionModule:
    """Returns a module called as `net(x24, eps_ikr, eps_ckg, t, seg_state)` ->
    `(eps_fused, seg_logits_full, seg_state)`; `.net` is the bare FusionNet."""
    net = FusionNet(FusionConfig(num_classes=num_classes))
    load_state_dict_strict(net, _state_dict(_read(src, "fusion"), "fusion"), "fusion checkpoint")
    return FusionModule(net.eval(), tau=tau, thermal_classes=thermal_classes)


@torch.no_grad()
def fused_sample(ikr, ckg, fusion, autoencoder: Autoencoder, cond_latent: torch.Tensor, z_T: torch.Tensor,
                 seg_T: torch.Tensor, steps: int = 25) -> dict[str, torch.Tensor]:
    """The reference 25-step shared-noise sampler on given start tensors.

    Returns `magimg`, `ikr_image`, `ckg_image` (B, 3, 4h, 4w) in [0, 1],
    `seg_logits_full` (B, 9, 4h, 4w) and `seg_labels` (B, 4h, 4w) int64.
    """
    if isinstance(fusion, FusionModule):
        net, tau, classes = fusion.net, fusion.tau, fusion.thermal_classes
    else:
        net, tau, classes = fusion, DEFAULT_TAU, DEFAULT_THERMAL_CLASSES
    out = _fused_sample(ikr, ckg, net, cond_latent, z_T, seg_T, DDIMSchedule(num_inference_steps=steps),
                        tau=tau, thermal_classes=classes)
    images = autoencoder.decode_diffusion(torch.cat([out.z0_fused, out.z0_ikr, out.z0_ckg]))
    magimg, ikr_image, ckg_image = images.chunk(3)
    return {"magimg": magimg, "ikr_image": ikr_image, "ckg_image": ckg_image,
            "seg_logits_full": out.seg_logits_full, "seg_labels": out.seg_logits_full.argmax(dim=1)}


def convert_official(ae_src, ikr_src, ikr_config: Mapping, ckg_src, ckg_config: Mapping, fusion_src,
                     out_dir: Path, description: str = "converted from the MagicFuse reference checkpoints") -> Path:
    """Write the released networks in our format (safetensors + JSON per component)."""
    model = MagicFuseModel(
        autoencoder=load_autoencoder(ae_src),
        ikr=load_denoiser(ikr_src, ikr_config),
        ckg=load_denoiser(ckg_src, ckg_config),
        fusion=load_fusion(fusion_src).net,
        info={"trained": True, "source": "official", "description": description},
    )
    return save_model(model, Path(out_dir))
