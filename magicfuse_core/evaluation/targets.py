"""Thermal targets: where people and hot things are in a frame, how much they stand out, and
how a segmentation map agrees with the weak masks made from the detection boxes.

Every measure here is a pair "per-frame value or pixel counts" + "data-set value
from the summed counts", so that means over frames are over pixels (like the
data-set-level mIoU) where that is the sensible reading. Boxes are YOLO boxes
(`data.Box`, classes of MSRS det/classes.txt); masks are made by
`data.boxes_to_mask`, the code that makes the training masks, so a box covers
exactly the pixels it covers there. docs/METRICS.md section 5 has the definitions.
"""
from __future__ import annotations

import math

import numpy as np

from ..data import YOLO_TO_MFNET, Box, boxes_to_mask
from ..palette import IGNORE_INDEX, MFNET_CLASSES
from .baselines import luma_u8

PERSON_ID = MFNET_CLASSES.index("person")
CAR_ID = MFNET_CLASSES.index("car")
BIKE_ID = MFNET_CLASSES.index("bike")
YOLO_PERSON = next(k for k, v in YOLO_TO_MFNET.items() if v == PERSON_ID)
BOX_METRICS: tuple[str, ...] = ("person_box_coverage", "person_mask_precision")
# Share of the frame's real-IR pixels taken as its hottest part.
HOT_FRACTION = 0.1
# Each person box grown by this fraction of its size on every side gives the ring around it.
RING_GROWTH = 0.5


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


# --------------------------------------------------------------------------- weak person-box proxy


def person_box_mask(boxes: list[Box], height: int, width: int) -> np.ndarray:
    """(H, W) bool: inside any person box (YOLO class 0), boxes rounded as in data.boxes_to_mask."""
    people = [b for b in boxes if b.cls == YOLO_PERSON]
    return boxes_to_mask(people, height, width, outside_box_label=0, class_map={YOLO_PERSON: 1}) > 0


def box_proxy_counts(seg: np.ndarray, in_box: np.ndarray) -> dict[str, int]:
    """Pixel counts for the weak person-box proxy of one frame.

    seg: (H, W) predicted MFNet ids; in_box: (H, W) bool person-box union.
    Returns box_px (box area), covered_px (box pixels predicted person),
    pred_px (pixels predicted person) and pred_in_box_px (= covered_px).
    Summed over frames: person_box_coverage = covered / box, person_mask_precision
    = pred_in_box / pred. Boxes hold background too, so coverage cannot reach 1
    for a perfect mask: compare methods with it, do not read it as recall.
    """
    person = seg == PERSON_ID
    covered = int(np.count_nonzero(person & in_box))
    return {"box_px": int(np.count_nonzero(in_box)), "covered_px": covered,
            "pred_px": int(np.count_nonzero(person)), "pred_in_box_px": covered}


def box_proxy_scores(counts: dict[str, int]) -> dict[str, float]:
    """Ratios from summed `box_proxy_counts`; NaN where the denominator is 0."""
    return {"person_box_coverage": _ratio(counts["covered_px"], counts["box_px"]),
            "person_mask_precision": _ratio(counts["pred_in_box_px"], counts["pred_px"])}


# --------------------------------------------------------------------------- contrast of thermal targets


def region_contrast(image: np.ndarray, inside: np.ndarray, around: np.ndarray) -> float:
    """Mean luma (0..255) of `image` on `inside` minus its mean on `around`; NaN if either is empty.

    image: (H, W) grey or (H, W, 3) RGB uint8 (BT.601 luma); inside, around: (H, W) bool.
    """
    if image.shape[:2] != inside.shape or inside.shape != around.shape:
        raise ValueError(f"sizes differ: image {image.shape[:2]}, masks {inside.shape} and {around.shape}")
    if not inside.any() or not around.any():
        return math.nan
    y = luma_u8(image)
    return float(y[inside].mean() - y[around].mean())


def person_regions(boxes: list[Box], height: int, width: int,
                   growth: float = RING_GROWTH) -> tuple[np.ndarray, np.ndarray] | None:
    """(inside, ring) (H, W) bool masks of the person boxes; None when the frame has no person box.

    inside: the union of the person boxes; ring: the boxes grown by `growth` times
    their width/height on every side, minus every person box (None if that is empty).
    """
    people = [b for b in boxes if b.cls == YOLO_PERSON]
    if not people:
        return None
    scale = 1.0 + 2.0 * growth
    grown = [Box(b.cls, b.cx, b.cy, b.w * scale, b.h * scale) for b in people]
    inside = person_box_mask(people, height, width)
    ring = person_box_mask(grown, height, width) & ~inside
    return (inside, ring) if ring.any() else None


def person_contrast(image: np.ndarray, boxes: list[Box]) -> float:
    """Person-box contrast: mean luma inside the person boxes minus that of the ring around them.

    image: (H, W[, 3]) uint8. NaN when the frame has no person box (or no ring pixel).
    """
    regions = person_regions(boxes, *image.shape[:2])
    return math.nan if regions is None else region_contrast(image, *regions)


def hottest_mask(ir: np.ndarray, fraction: float = HOT_FRACTION) -> np.ndarray:
    """(H, W) bool: the real-IR pixels at or above the frame's (1 - fraction) quantile.

    ir: (H, W) uint8 real infrared. Pixels tied with the threshold level are all
    kept, so the mask holds at least `fraction` of the frame (more when many
    pixels share that level, e.g. a saturated sky-free night frame).
    """
    ir = np.asarray(ir)
    if ir.ndim != 2 or ir.size == 0:
        raise ValueError(f"hottest_mask expects a non-empty (H, W) infrared image, got shape {ir.shape}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    threshold = np.quantile(ir, 1.0 - fraction, method="higher")
    return ir >= threshold


def hottest_contrast(image: np.ndarray, ir: np.ndarray, fraction: float = HOT_FRACTION) -> float:
    """Hottest-tenth contrast: mean luma of `image` on the hottest tenth of the real IR minus that on the rest.

    image: (H, W[, 3]) uint8; ir: (H, W) uint8 real infrared of the same frame.
    Positive when the image is brighter where the scene is hot; NaN when every
    pixel ties at the threshold (a constant IR frame leaves no "rest").
    """
    hot = hottest_mask(ir, fraction)
    return region_contrast(image, hot, ~hot)


# --------------------------------------------------------------------------- segmentation vs weak masks


SEG_COUNT_KEYS: tuple[str, ...] = (
    "person_tp", "person_fp", "person_fn", "car_inter", "car_union", "bike_inter", "bike_union",
    "outside_px", "outside_object_px",
)
SEG_TARGET_METRICS: tuple[str, ...] = (
    "person_IoU", "person_precision", "person_recall", "car_IoU", "bike_IoU", "outside_object_fraction",
)


def segmentation_counts(seg: np.ndarray, boxes: list[Box], ir: np.ndarray) -> dict[str, int]:
    """Pixel counts of a predicted MFNet map against the weak masks of one frame.

    seg: (H, W) predicted ids; boxes: the frame's YOLO boxes; ir: (H, W) uint8 real IR.
    - person: against the IR-silhouette person masks (`boxes_to_mask` with
      silhouette_classes = person, the training masks): the warm pixels of a
      person box are person, its colder rest is ignored (neither TP, FP nor FN),
      every pixel outside person boxes is not-person;
    - car, bike: against the filled box masks (intersection and union per class);
    - outside_px: pixels outside every box; outside_object_px: those of them
      labelled car, person or bike.
    Sum the counts over frames and pass them to `segmentation_scores`.
    """
    height, width = seg.shape
    if ir.shape != seg.shape:
        raise ValueError(f"sizes differ: segmentation {seg.shape}, infrared {ir.shape}")
    silhouettes = boxes_to_mask(boxes, height, width, outside_box_label=0, ir=ir, silhouette_classes=(PERSON_ID,))
    filled = boxes_to_mask(boxes, height, width, outside_box_label=IGNORE_INDEX)
    pred_person, scored = seg == PERSON_ID, silhouettes != IGNORE_INDEX
    true_person = silhouettes == PERSON_ID
    counts = {
        "person_tp": int(np.count_nonzero(pred_person & true_person)),
        "person_fp": int(np.count_nonzero(pred_person & ~true_person & scored)),
        "person_fn": int(np.count_nonzero(~pred_person & true_person)),
    }
    for name, class_id in (("car", CAR_ID), ("bike", BIKE_ID)):
        pred, true = seg == class_id, filled == class_id
        counts[f"{name}_inter"] = int(np.count_nonzero(pred & true))
        counts[f"{name}_union"] = int(np.count_nonzero(pred | true))
    outside = filled == IGNORE_INDEX
    objects = np.isin(seg, (PERSON_ID, CAR_ID, BIKE_ID))
    counts["outside_px"] = int(np.count_nonzero(outside))
    counts["outside_object_px"] = int(np.count_nonzero(outside & objects))
    return counts


def segmentation_scores(counts: dict[str, int]) -> dict[str, float]:
    """SEG_TARGET_METRICS from (summed) `segmentation_counts`; NaN where a denominator is 0."""
    tp, fp, fn = counts["person_tp"], counts["person_fp"], counts["person_fn"]
    return {
        "person_IoU": _ratio(tp, tp + fp + fn),
        "person_precision": _ratio(tp, tp + fp),
        "person_recall": _ratio(tp, tp + fn),
        "car_IoU": _ratio(counts["car_inter"], counts["car_union"]),
        "bike_IoU": _ratio(counts["bike_inter"], counts["bike_union"]),
        "outside_object_fraction": _ratio(counts["outside_object_px"], counts["outside_px"]),
    }
