"""Training losses of the two MagicFuse training phases.

- Phase 1: `eps_mse`, the epsilon-prediction MSE of Ψ and Φ.
- Phase 2: `visual_loss` on the decoded fused / IKR / CKG images (contrast,
  texture and colour terms on YCbCr) and `segmentation_loss`, a class-weighted
  cross-entropy on the segmentation logits.

Images are (B, 3, H, W) RGB in [0, 1]. Losses are computed in float32 whatever
the input precision, so they behave the same under bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .color import ycbcr_from_planes
from .palette import IGNORE_INDEX

# Weights of the visual terms (the paper's: contrast 6, texture 10, colour 5 + 5).
CONTRAST_WEIGHT = 6.0
TEXTURE_WEIGHT = 10.0
COLOR_WEIGHT = 5.0  # applied to Cr and to Cb separately
# Cross-entropy class weights for MFNet ids 0..8 (the reference's): rare classes weigh more.
MFNET_CLASS_WEIGHTS: tuple[float, ...] = (0.4, 0.8, 1.0, 2.0, 4.0, 1.8, 1.8, 1.5, 1.5)

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def rgb_to_ycbcr(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) RGB in [0, 1] -> (Y, Cb, Cr), each (B, 1, H, W), float32.

    Y = 0.299 R + 0.587 G + 0.114 B in [0, 1]; Cr = (R - Y) * 0.713 + 0.5 and
    Cb = (B - Y) * 0.564 + 0.5, both in [0, 1] for inputs in [0, 1].
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, got {tuple(images.shape)}")
    images = images.float()
    return ycbcr_from_planes(images[:, 0:1], images[:, 1:2], images[:, 2:3])


def sobel_magnitude(channel: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> |gx| + |gy| of the 3x3 Sobel filters, (B, 1, H, W), >= 0.

    Borders are replicated, not zero-padded: a zero border would invent an edge
    around every frame and give a flat image a texture.
    """
    kx = torch.tensor(_SOBEL_X, dtype=channel.dtype, device=channel.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3): x then y
    gradients = F.conv2d(F.pad(channel, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradients.abs().sum(dim=1, keepdim=True)


def visual_loss(fused: torch.Tensor, ikr: torch.Tensor, ckg: torch.Tensor,
                contrast_weight: float = CONTRAST_WEIGHT, texture_weight: float = TEXTURE_WEIGHT,
                color_weight: float = COLOR_WEIGHT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Phase-2 visual loss of the fused image against the IKR (visible) and CKG (infrared) images.

    fused, ikr, ckg: (B, 3, H, W) RGB in [0, 1].
    Terms (mean absolute errors over all pixels):
        contrast  = 6 * L1(Y_f, max(Y_ikr, Y_ckg))                         keep the brighter source
        texture   = 10 * L1(|sobel Y_f|, max(|sobel Y_ikr|, |sobel Y_ckg|))  keep the stronger edges
        color_cr  = 5 * L1(Cr_f, Cr_ikr), color_cb = 5 * L1(Cb_f, Cb_ikr)   colour comes from the visible stream
    Returns (total, parts) where parts holds the four weighted terms and total is their sum.
    """
    if not (fused.shape == ikr.shape == ckg.shape):
        raise ValueError(f"shape mismatch: fused {tuple(fused.shape)}, ikr {tuple(ikr.shape)}, ckg {tuple(ckg.shape)}")
    y_f, cb_f, cr_f = rgb_to_ycbcr(fused)
    y_i, cb_i, cr_i = rgb_to_ycbcr(ikr)
    y_c, _, _ = rgb_to_ycbcr(ckg)
    target_texture = torch.maximum(sobel_magnitude(y_i), sobel_magnitude(y_c))
    parts = {
        "contrast": contrast_weight * F.l1_loss(y_f, torch.maximum(y_i, y_c)),
        "texture": texture_weight * F.l1_loss(sobel_magnitude(y_f), target_texture),
        "color_cr": color_weight * F.l1_loss(cr_f, cr_i),
        "color_cb": color_weight * F.l1_loss(cb_f, cb_i),
    }
    total = parts["contrast"] + parts["texture"] + parts["color_cr"] + parts["color_cb"]
    return total, parts


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      class_weights: tuple[float, ...] | torch.Tensor = MFNET_CLASS_WEIGHTS) -> torch.Tensor:
    """Class-weighted cross-entropy (the reference's class weights).

    logits: (B, C, h, w) raw scores (C = 9 for MFNet); bilinearly up-sampled to
        the target size when smaller (the head works at latent size, H/4 x W/4).
    target: (B, H, W) int64 class ids, `ignore_index` for pixels without a label.
    The mean is weighted: sum(w[y] * nll) / sum(w[y]) over labelled pixels
    (PyTorch's convention). A batch with no labelled pixel gives 0 (not NaN),
    connected to the graph so that backward() still works.
    """
    if logits.ndim != 4 or target.ndim != 3:
        raise ValueError(
            f"expected logits (B, C, h, w) and target (B, H, W), got {tuple(logits.shape)}, {tuple(target.shape)}")
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    if weights.numel() != logits.shape[1]:
        raise ValueError(f"{weights.numel()} class weights for {logits.shape[1]} classes")
    target = target.long()
    # Weighted mean written out (rather than F.cross_entropy's reduction) so an
    # all-ignored batch gives 0 without a host sync to test for it.
    per_pixel = F.cross_entropy(logits, target, weight=weights, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    pixel_weights = weights[torch.where(valid, target, torch.zeros_like(target))] * valid
    return per_pixel.sum() / pixel_weights.sum().clamp_min(1e-12)


def eps_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Phase-1 loss: mean squared error between predicted and true noise, any equal shapes, float32."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    return F.mse_loss(pred.float(), target.float())
