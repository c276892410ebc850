"""Images a method is compared with: the `magicfuse eval` baselines and the model card's references.

`magicfuse eval` baselines (made from the INPUT visible frame, the one a method sees):
- "visible": the input visible frame itself;
- "avg_fusion": per-pixel, per-channel average of the input visible and the real IR;
- "maxlum_fusion": luma Y replaced by max(Y, IR), visible chroma (Cb, Cr) kept.
The last two use the real infrared image, so they are oracle fusions, not
single-image methods: they show what the metrics give to plain two-image fusion.

Model-card references (single-image, no real IR):
- `clahe`: contrast-limited adaptive histogram equalisation of the degraded frame's
  luma, the classical CPU answer to a dark or hazy frame;
- `image_level_fusion`: the IKR and CKG outputs fused after sampling (luma max,
  IKR chroma), the MagicFuse paper's "fuse after sampling" ablation.

All images are uint8; YCbCr is the one definition of `magicfuse_core.color`.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..color import luma, ycbcr_from_planes

BASELINES: tuple[str, ...] = ("visible", "avg_fusion", "maxlum_fusion")
# CLAHE settings: OpenCV's 8x8 tile grid with the clip limit most papers use (2.0,
# OpenCV's default of 40 barely limits anything and amplifies the noise of dark frames).
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> Y, Cb, Cr each (H, W) float64 in [0, 1] (`color.ycbcr_from_planes`)."""
    x = rgb.astype(np.float64) / 255.0
    return ycbcr_from_planes(x[..., 0], x[..., 1], x[..., 2])


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_ycbcr`: three (H, W) floats in [0, 1] -> (H, W, 3) uint8 (clipped, rounded)."""
    r = y + (cr - 0.5) / 0.713
    b = y + (cb - 0.5) / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def luma_u8(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 -> (H, W) float64 BT.601 luma in 0..255 (grey is returned as is)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float64)
    if image.ndim == 3 and image.shape[2] == 3:
        x = image.astype(np.float64)
        return luma(x[..., 0], x[..., 1], x[..., 2])
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def max_luminance_fusion(colour_rgb: np.ndarray, other_luma: np.ndarray) -> np.ndarray:
    """Y' = max(Y of colour_rgb, other_luma), Cb/Cr of colour_rgb kept. (H, W, 3) uint8 out.

    colour_rgb: (H, W, 3) uint8; other_luma: (H, W) float64 in [0, 1], same H, W.
    """
    if colour_rgb.shape[:2] != other_luma.shape:
        raise ValueError(f"sizes differ: colour image {colour_rgb.shape[:2]}, other image {other_luma.shape}")
    y, cb, cr = rgb_to_ycbcr(colour_rgb)
    return ycbcr_to_rgb(np.maximum(y, other_luma), cb, cr)


def baseline_average(vis_rgb: np.ndarray, ir_gray: np.ndarray) -> np.ndarray:
    """Pixel average of visible (H, W, 3) and IR (H, W) uint8 -> (H, W, 3) uint8 (halves round up)."""
    total = vis_rgb.astype(np.uint16) + ir_gray.astype(np.uint16)[..., None]
    return ((total + 1) // 2).astype(np.uint8)


def baseline_max_luminance(vis_rgb: np.ndarray, ir_gray: np.ndarray) -> np.ndarray:
    """Max-luminance fusion: Y' = max(Y_vis, IR), visible Cb/Cr kept. (H, W, 3) uint8 out."""
    return max_luminance_fusion(vis_rgb, ir_gray.astype(np.float64) / 255.0)


def make_baselines(vis_rgb: np.ndarray, ir_gray: np.ndarray) -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 for every entry of BASELINES."""
    return {
        "visible": vis_rgb,
        "avg_fusion": baseline_average(vis_rgb, ir_gray),
        "maxlum_fusion": baseline_max_luminance(vis_rgb, ir_gray),
    }


def image_level_fusion(ikr_rgb: np.ndarray, ckg_image: np.ndarray) -> np.ndarray:
    """Fuse after sampling: Y' = max(Y_IKR, Y_CKG), IKR's Cb/Cr kept. (H, W, 3) uint8 out.

    ikr_rgb: (H, W, 3) uint8 restored visible; ckg_image: (H, W, 3) or (H, W) uint8
    generated infrared (its BT.601 luma is used). The same rule as the
    `maxlum_fusion` baseline, with the generated infrared in place of the real one.
    """
    return max_luminance_fusion(ikr_rgb, luma_u8(ckg_image) / 255.0)


def clahe(rgb: np.ndarray, clip_limit: float = CLAHE_CLIP_LIMIT, tiles: tuple[int, int] = CLAHE_TILES) -> np.ndarray:
    """CLAHE on the luma of an (H, W, 3) uint8 frame, chroma kept. (H, W, 3) uint8 out.

    Y (rounded to uint8) is equalised by OpenCV's CLAHE (`clip_limit`, `tiles`
    = (columns, rows) of the tile grid); Cb and Cr are unchanged, as in
    `max_luminance_fusion`.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"clahe expects an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    y, cb, cr = rgb_to_ycbcr(rgb)
    y8 = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    equalised = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=tuple(int(t) for t in tiles)).apply(y8)
    return ycbcr_to_rgb(equalised.astype(np.float64) / 255.0, cb, cr)
