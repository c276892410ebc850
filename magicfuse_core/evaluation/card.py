"""What the model card measures for a single-image method on one frame, and the means over frames.

The card (tools/evaluate_demo_model.py -> docs/MODEL_CARD.md) compares MagImg
with what a user could have instead, all made from the same degraded frame:
- "degraded VIS": the input itself;
- "CLAHE": the classical CPU answer (`baselines.clahe`);
- "IKR only": the restoration stream alone;
- "image-level fusion": IKR and CKG fused after sampling (`baselines.image_level_fusion`),
  the paper's ablation of the per-step noise fusion;
- "MagImg": the method.
Each candidate gets the fusion metrics against (clean visible, real IR) and the
two thermal-target contrasts (`targets.person_contrast`, `targets.hottest_contrast`);
the generated IR, the real IR and the clean frame get the contrasts too. The
segmentation map gets the weak-mask figures of `targets.segmentation_counts`.
"""
from __future__ import annotations

import math

import numpy as np

from ..data import Box
from .baselines import clahe, image_level_fusion
from .metrics import METRIC_NAMES, FusionScorer
from .scoring import mean_table
from .targets import (PERSON_ID, SEG_COUNT_KEYS, hottest_contrast, person_contrast, person_regions,
                      segmentation_counts, segmentation_scores)

DEGRADED, CLAHE, IKR, IMAGE_FUSION, MAGIMG = "degraded VIS", "CLAHE", "IKR only", "image-level fusion", "MagImg"
CKG, REAL_IR, CLEAN = "CKG (generated IR)", "real IR", "(clean VIS, reference)"
# Fusion-table rows, in order; the clean frame is a reference no method sees.
CANDIDATES: tuple[str, ...] = (DEGRADED, CLAHE, IKR, IMAGE_FUSION, MAGIMG)
CONTRASTS: tuple[str, ...] = ("person", "hottest")
# Metrics where MagImg must keep at least RATIO_TARGET of what IKR alone scores:
# fusing in thermal knowledge must not cost the visible detail.
RATIO_METRICS: tuple[str, ...] = ("MI", "Qabf", "VIF")
RATIO_TARGET = 0.97
# The quality targets of the bundled model, on MSRS val with this protocol (docs/MODEL_CARD.md).
PERSON_CONTRAST_TARGET = 10.0      # grey levels, MagImg
PERSON_IOU_TARGET = 0.30           # S against the infrared-silhouette person masks
OUTSIDE_OBJECT_MAX = 0.05          # pixels outside every box labelled car, person or bike
# The CKG image must stay at least as close to the real IR as the 25-step release (commit 96b52f3).
CKG_REFERENCE = {"PSNR": 19.16, "SSIM": 0.579, "CC": 0.193}
RADIATION_KEYS: tuple[str, ...] = ("person-box pixels labelled person (%)", "mean w_r inside person boxes",
                                   "mean w_r elsewhere")


def candidate_images(degraded: np.ndarray, ikr: np.ndarray, ckg: np.ndarray, magimg: np.ndarray) -> dict[str, np.ndarray]:
    """CANDIDATES -> (H, W, 3) uint8 images of one frame. ckg: the CKG stream's RGB output."""
    return {DEGRADED: degraded, CLAHE: clahe(degraded), IKR: ikr,
            IMAGE_FUSION: image_level_fusion(ikr, ckg), MAGIMG: magimg}


def fusion_scores(images: dict[str, np.ndarray], clean: np.ndarray, ir: np.ndarray) -> dict[str, dict[str, float]]:
    """{name: all fusion metrics} of every image and of the clean frame (CLEAN) against (clean, ir)."""
    scorer = FusionScorer(clean, ir)
    return {**{name: scorer.score(image) for name, image in images.items()}, CLEAN: scorer.score(clean)}


def contrast_scores(images: dict[str, np.ndarray], ir: np.ndarray, boxes: list[Box]) -> dict[str, dict[str, float]]:
    """{name: {"person": person-box contrast (NaN without people), "hottest": hottest-tenth contrast}}."""
    return {name: {"person": person_contrast(image, boxes), "hottest": hottest_contrast(image, ir)}
            for name, image in images.items()}


def radiation_figures(seg_labels: np.ndarray, weight: np.ndarray | None, boxes: list[Box]) -> dict[str, float]:
    """Where thermal knowledge can enter MagImg, inside the person boxes: RADIATION_KEYS -> value (NaN without people).

    seg_labels: (H, W) predicted ids; weight: (H, W) last step's w_r (1 = IKR, 0 = CKG) or None.
    """
    regions = person_regions(boxes, *seg_labels.shape)
    if regions is None:
        return dict.fromkeys(RADIATION_KEYS, math.nan)
    inside = regions[0]
    nan = math.nan
    return {RADIATION_KEYS[0]: 100.0 * float((seg_labels[inside] == PERSON_ID).mean()),
            RADIATION_KEYS[1]: nan if weight is None else float(weight[inside].mean()),
            RADIATION_KEYS[2]: nan if weight is None else float(weight[~inside].mean())}


def score_frame(degraded: np.ndarray, ikr: np.ndarray, ckg: np.ndarray, magimg: np.ndarray, generated_ir: np.ndarray,
                clean: np.ndarray, ir: np.ndarray, boxes: list[Box], seg_labels: np.ndarray,
                weight: np.ndarray | None = None) -> dict:
    """Every card score of one frame.

    degraded, ikr, ckg, magimg, clean: (H, W, 3) uint8; generated_ir, ir: (H, W) uint8;
    boxes: the frame's infrared YOLO boxes; seg_labels: (H, W) MFNet ids; weight: (H, W) w_r or None.
    Returns {"fusion": {name: metrics}, "contrast": {name: {"person", "hottest"}},
    "seg_counts": pixel counts, "radiation": RADIATION_KEYS -> value}.
    """
    images = candidate_images(degraded, ikr, ckg, magimg)
    contrast_images = {**images, CKG: generated_ir, REAL_IR: ir, CLEAN: clean}
    return {"fusion": fusion_scores(images, clean, ir),
            "contrast": contrast_scores(contrast_images, ir, boxes),
            "seg_counts": segmentation_counts(seg_labels, boxes, ir),
            "radiation": radiation_figures(seg_labels, weight, boxes)}


def magimg_ratios(fusion_means: dict[str, dict[str, float]]) -> dict[str, float]:
    """MagImg mean / IKR-only mean for RATIO_METRICS (NaN when IKR's mean is 0 or undefined)."""
    out = {}
    for key in RATIO_METRICS:
        num, den = fusion_means[MAGIMG][key], fusion_means[IKR][key]
        out[key] = num / den if den and math.isfinite(den) else math.nan
    return out


def summarise(frames: list[dict]) -> dict:
    """Means over frames of `score_frame` results.

    Returns {"fusion": {name: {metric: mean}}, "contrast": {"person": {name: mean},
    "hottest": {name: mean}}, "person_frames": frames with a person contrast,
    "segmentation": SEG_TARGET_METRICS from the summed counts (+ the counts),
    "radiation": {key: mean}, "ratios": `magimg_ratios`}. Means skip NaN frames.
    """
    if not frames:
        raise ValueError("no frame to summarise")
    fusion = mean_table([f["fusion"] for f in frames], METRIC_NAMES)["mean"]
    contrast_means = mean_table([f["contrast"] for f in frames], CONTRASTS)["mean"]
    contrast = {c: {name: values[c] for name, values in contrast_means.items()} for c in CONTRASTS}
    counts = {k: sum(f["seg_counts"][k] for f in frames) for k in SEG_COUNT_KEYS}
    radiation = mean_table([{"radiation": f["radiation"]} for f in frames], RADIATION_KEYS)["mean"]["radiation"]
    person_frames = sum(math.isfinite(f["contrast"][REAL_IR]["person"]) for f in frames)
    return {"fusion": fusion, "contrast": contrast, "person_frames": person_frames,
            "segmentation": {**segmentation_scores(counts), "counts": counts},
            "radiation": radiation, "ratios": magimg_ratios(fusion)}
