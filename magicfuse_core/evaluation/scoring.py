"""Scoring the frames of a `magicfuse eval` run and summarising the scores over frames.

What is scored (docs/METRICS.md has the definitions):
- fusion metrics (`metrics.FusionScorer`) of every fused result and of the
  baselines against the source pair A = clean visible (or the input visible when
  no clean one is given) and B = real infrared;
- generated-infrared results against the real infrared (`metrics.ir_similarity`);
- segmentation results: a confusion matrix against label PNGs and/or the weak
  person-box proxy counts (`targets.box_proxy_counts`).
`score_all` runs `score_frame` over all frames, in a process pool when asked;
a frame that cannot be read is reported and skipped, never fatal.
"""
from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..palette import IGNORE_INDEX, MFNET_CLASSES, NUM_CLASSES
from . import metrics
from .baselines import BASELINES, make_baselines
from .config import EvalConfig
from .frames import FrameError, FrameTask, load_frame
from .targets import PERSON_ID, YOLO_PERSON, box_proxy_counts, box_proxy_scores, person_box_mask

IR_METRICS: tuple[str, ...] = ("PSNR", "SSIM", "CC")
BOX_COUNT_KEYS: tuple[str, ...] = ("box_px", "covered_px", "pred_px", "pred_in_box_px")


@dataclass
class FrameScores:
    """Scores of one frame."""

    name: str
    fusion: dict[str, dict[str, float]]          # method -> {metric: value}
    ir_similarity: dict[str, dict[str, float]]   # generated-IR name -> {PSNR, SSIM, CC}
    confusion: dict[str, np.ndarray]             # seg name -> (NUM_CLASSES, NUM_CLASSES) int64
    box_counts: dict[str, dict[str, int]]        # seg name -> pixel counts (see box_proxy_counts)
    person_boxes: int                            # number of person boxes (-1 without --det)


def score_frame(task: FrameTask) -> FrameScores:
    """Read one frame's inputs and compute every requested score. Raises FrameError."""
    frame = load_frame(task)
    vis, ir = frame["vis"], frame["ir"]
    source_vis = frame["clean"] if frame["clean"] is not None else vis
    scorer = metrics.FusionScorer(source_vis, ir)
    fused = make_baselines(vis, ir)
    fused.update((n, frame["results"][n]) for n in task.fusion_names)
    fusion = {name: scorer.score(image) for name, image in fused.items()}
    ir_sim = {name: metrics.ir_similarity(frame["results"][name], ir) for name in task.gen_ir_names}

    confusion, box_counts = {}, {}
    in_box = None if frame["boxes"] is None else person_box_mask(frame["boxes"], *vis.shape[:2])
    for name, seg in frame["seg"].items():
        if frame["label"] is not None:
            # Predicted 255 (if any) counts as "unlabelled" so it is penalised, not ignored.
            pred = np.where(seg == IGNORE_INDEX, 0, seg)
            try:
                confusion[name] = metrics.confusion_matrix(pred, frame["label"], NUM_CLASSES, IGNORE_INDEX)
            except ValueError as exc:
                raise FrameError(f"label: {exc}") from exc
        if in_box is not None:
            box_counts[name] = box_proxy_counts(seg, in_box)
    n_people = -1 if frame["boxes"] is None else sum(b.cls == YOLO_PERSON for b in frame["boxes"])
    return FrameScores(task.name, fusion, ir_sim, confusion, box_counts, n_people)


def _score_or_error(task: FrameTask) -> tuple[str, FrameScores | None, str | None]:
    """Worker entry point: (name, scores, None) or (name, None, reason)."""
    try:
        return task.name, score_frame(task), None
    except FrameError as exc:
        return task.name, None, str(exc)
    except (ValueError, OSError) as exc:  # anything else about the data: report, do not abort the run
        return task.name, None, f"{type(exc).__name__}: {exc}"


def score_all(tasks: list[FrameTask], jobs: int, progress: bool) -> tuple[list[FrameScores], list[dict]]:
    """Score every task (in a process pool when jobs > 1). Returns (scores in task order, skipped)."""
    scored: dict[str, FrameScores] = {}
    skipped: list[dict] = []
    bar = tqdm(total=len(tasks), desc="eval", unit="frame", disable=not progress, file=sys.stderr)

    def collect(name, scores, reason):
        if scores is None:
            skipped.append({"name": name, "reason": reason})
            tqdm.write(f"skipped {name}: {reason}", file=sys.stderr)
        else:
            scored[name] = scores
        bar.update(1)

    if jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for item in pool.map(_score_or_error, tasks, chunksize=1):
                collect(*item)
    else:
        for task in tasks:
            collect(*_score_or_error(task))
    bar.close()
    order = {t.name: i for i, t in enumerate(tasks)}
    skipped.sort(key=lambda s: order[s["name"]])
    return [scored[t.name] for t in tasks if t.name in scored], skipped


# --------------------------------------------------------------------------- aggregation


def mean_table(per_frame: list[dict[str, dict[str, float]]], keys: tuple[str, ...]) -> dict:
    """Means over frames ignoring NaN, with std and the number of NaN frames per value.

    per_frame: list (frames) of {method: {key: value}}. Returns {"mean", "std",
    "nan_frames"}, each {method: {key: value}}; a value that is NaN in every frame
    stays NaN (e.g. SCD of the "visible" baseline when it equals source A).
    """
    methods = list(per_frame[0]) if per_frame else []
    mean, std, nans = {}, {}, {}
    for method in methods:
        values = np.array([[frame[method][k] for k in keys] for frame in per_frame], dtype=np.float64)
        finite_or_inf = ~np.isnan(values)
        count = finite_or_inf.sum(axis=0)
        with np.errstate(invalid="ignore"):
            m = np.where(count > 0, np.nansum(np.where(finite_or_inf, values, 0.0), axis=0) / np.maximum(count, 1), np.nan)
            dev = np.where(finite_or_inf, values - m, 0.0)
            s = np.where(count > 0, np.sqrt((dev ** 2).sum(axis=0) / np.maximum(count, 1)), np.nan)
        mean[method] = dict(zip(keys, m.tolist()))
        std[method] = dict(zip(keys, s.tolist()))
        nans[method] = dict(zip(keys, (len(per_frame) - count).tolist()))
    return {"mean": mean, "std": std, "nan_frames": nans}


def best_methods(means: dict[str, dict[str, float]], keys: tuple[str, ...], lower_better=frozenset()) -> dict[str, list[str]]:
    """key -> methods with the best finite mean (ties all listed); absent when no finite value."""
    best = {}
    for key in keys:
        values = {m: v[key] for m, v in means.items() if v[key] is not None and math.isfinite(v[key])}
        if not values:
            continue
        target = (min if key in lower_better else max)(values.values())
        best[key] = [m for m, v in values.items() if v == target]
    return best


def aggregate(config: EvalConfig, scores: list[FrameScores]) -> dict:
    """Summaries of all frame scores: fusion means, IR similarity, mIoU, box proxy."""
    summary: dict = {}
    fusion = mean_table([s.fusion for s in scores], metrics.METRIC_NAMES)
    fusion["best"] = best_methods(fusion["mean"], metrics.METRIC_NAMES, metrics.LOWER_IS_BETTER)
    fusion["methods"] = list(fusion["mean"])
    fusion["baselines"] = list(BASELINES)
    summary["fusion"] = fusion
    if config.generated_ir_names():
        ir = mean_table([s.ir_similarity for s in scores], IR_METRICS)
        ir["psnr_convention"] = "standard 10*log10(255^2/MSE) on 0..255 (no +48.13 dB)"
        summary["ir_similarity"] = ir
    if config.seg and config.labels:
        seg = {}
        for name in config.seg:
            cm = sum((s.confusion[name] for s in scores), np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
            per_class, miou = metrics.iou_from_confusion(cm)
            seg[name] = {"mIoU": miou, "per_class_IoU": dict(zip(MFNET_CLASSES, per_class.tolist())),
                         "confusion": cm.tolist()}
        summary["segmentation"] = seg
    if config.seg and config.det:
        proxy = {}
        for name in config.seg:
            total = {k: sum(s.box_counts[name][k] for s in scores) for k in BOX_COUNT_KEYS}
            proxy[name] = {**box_proxy_scores(total), **total}
        summary["box_proxy"] = {
            "definition": "person_box_coverage = sum(person pixels inside person boxes) / sum(person-box area); "
                          "person_mask_precision = sum(person pixels inside person boxes) / sum(person pixels); "
                          f"person = MFNet id {PERSON_ID}, boxes = YOLO class {YOLO_PERSON}, sums over all frames",
            "frames_with_person_boxes": sum(s.person_boxes > 0 for s in scores),
            "scores": proxy,
        }
    return summary
