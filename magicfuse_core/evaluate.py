"""Evaluation of fusion results on a folder of frames: metrics, tables and a visual report.

What is scored (docs/METRICS.md has the metric definitions):
- fusion metrics (`metrics.FusionScorer`) of every fused result folder and of three
  automatic baselines against the source pair A = clean visible (or the input
  visible when no clean one is given) and B = real infrared;
- generated-infrared results (a result named "ckg" or flagged as such) against
  the real infrared with `metrics.ir_similarity` (standard PSNR, SSIM, CC);
- segmentation result folders (MFNet class-id PNGs): data-set-level per-class IoU
  and mIoU against label PNGs, and/or a weak box-level proxy against YOLO person
  boxes (see `box_proxy_counts`).

Baselines (made from the INPUT visible frame, the one a method would see):
- "visible": the input visible frame itself;
- "avg_fusion": per-pixel, per-channel average of the input visible and the real IR;
- "maxlum_fusion": luma Y replaced by max(Y, IR), visible chroma (Cb, Cr) kept.
The last two use the real infrared image, so they are oracle fusions, not
single-image methods: they show what the metrics give to plain two-image fusion.

Frames are matched across folders by file stem. A frame with a missing,
unreadable or differently sized input is reported and skipped (for every
method, so that all means are over the same frames); the run fails only when no
frame is left. Outputs in the output folder: metrics.json, per_frame.csv (+
per_frame_ir.csv / per_frame_seg.csv when applicable), metrics_bars.png and the
self-contained report.html.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import metrics
from .data import YOLO_TO_MFNET, Box, boxes_to_mask, index_images, read_names, read_yolo_boxes
from .imageio import read_label, read_rgb
from .palette import MFNET_CLASSES, NUM_CLASSES, colorize

BASELINES: tuple[str, ...] = ("visible", "avg_fusion", "maxlum_fusion")
# A result with this name is a generated infrared image (the CKG stream output).
GENERATED_IR_NAME = "ckg"
IGNORE_INDEX = 255
PERSON_ID = MFNET_CLASSES.index("person")
YOLO_PERSON = next(k for k, v in YOLO_TO_MFNET.items() if v == PERSON_ID)
IR_METRICS: tuple[str, ...] = ("PSNR", "SSIM", "CC")
BOX_METRICS: tuple[str, ...] = ("person_box_coverage", "person_mask_precision")
THUMB_WIDTH = 200  # px, width of the sample-grid thumbnails in the HTML report


@dataclass
class EvalConfig:
    """Everything one evaluation run needs. Paths are folders unless noted."""

    vis: Path                                   # input visible frames (what a method sees)
    ir: Path                                    # real infrared frames (source B)
    out: Path                                   # output folder (created)
    clean_vis: Path | None = None               # clean visible frames: source A when given
    results: dict[str, Path] = field(default_factory=dict)  # method name -> folder of outputs
    generated_ir: tuple[str, ...] = ()          # result names that are generated IR (besides "ckg")
    seg: dict[str, Path] = field(default_factory=dict)      # name -> folder of MFNet id PNGs
    names_file: Path | None = None              # file: one stem per line; default: all stems of `vis`
    labels: Path | None = None                  # MFNet label PNGs (ids 0..8, 255 ignored)
    det: Path | None = None                     # YOLO txt boxes (or a folder with infrared/ inside)
    max_grid: int = 6                           # sample frames shown in the report
    jobs: int = 1                               # worker processes for scoring
    progress: bool = True                       # tqdm bar on stderr
    command_line: str | None = None             # shown in the report's run settings

    def generated_ir_names(self) -> tuple[str, ...]:
        """Result names scored as generated infrared, in result order."""
        flagged = set(self.generated_ir) | {GENERATED_IR_NAME}
        return tuple(name for name in self.results if name in flagged)

    def fusion_result_names(self) -> tuple[str, ...]:
        """Result names scored with the fusion metrics (all but generated IR)."""
        gen = set(self.generated_ir_names())
        return tuple(name for name in self.results if name not in gen)


@dataclass
class FrameTask:
    """Paths of one frame's inputs (None = absent). Picklable, for worker processes."""

    name: str
    vis: Path | None
    ir: Path | None
    clean_vis: Path | None
    results: dict[str, Path | None]
    seg: dict[str, Path | None]
    label: Path | None
    det_txt: Path | None
    want_clean: bool
    want_label: bool
    fusion_names: tuple[str, ...]
    gen_ir_names: tuple[str, ...]


@dataclass
class FrameScores:
    """Scores of one frame."""

    name: str
    fusion: dict[str, dict[str, float]]          # method -> {metric: value}
    ir_similarity: dict[str, dict[str, float]]   # generated-IR name -> {PSNR, SSIM, CC}
    confusion: dict[str, np.ndarray]             # seg name -> (NUM_CLASSES, NUM_CLASSES) int64
    box_counts: dict[str, dict[str, int]]        # seg name -> pixel counts (see box_proxy_counts)
    person_boxes: int                            # number of person boxes (-1 without --det)


class FrameError(Exception):
    """A frame cannot be scored; the message says why."""


# --------------------------------------------------------------------------- baselines


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> Y, Cb, Cr each (H, W) float64 in [0, 1].

    Same definition as the training loss (losses.rgb_to_ycbcr, SPEC section 5),
    in numpy because evaluation must not need torch tensors:
    Y = 0.299 R + 0.587 G + 0.114 B, Cb = (B - Y) 0.564 + 0.5, Cr = (R - Y) 0.713 + 0.5.
    """
    x = rgb.astype(np.float64) / 255.0
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return y, (x[..., 2] - y) * 0.564 + 0.5, (x[..., 0] - y) * 0.713 + 0.5


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_ycbcr`: three (H, W) floats -> (H, W, 3) uint8 (clipped, rounded)."""
    r = y + (cr - 0.5) / 0.713
    b = y + (cb - 0.5) / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    rgb = np.stack([r, g, b], axis=-1)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def baseline_average(vis_rgb: np.ndarray, ir_gray: np.ndarray) -> np.ndarray:
    """Pixel average of visible (H, W, 3) and IR (H, W) uint8 -> (H, W, 3) uint8 (halves round up)."""
    total = vis_rgb.astype(np.uint16) + ir_gray.astype(np.uint16)[..., None]
    return ((total + 1) // 2).astype(np.uint8)


def baseline_max_luminance(vis_rgb: np.ndarray, ir_gray: np.ndarray) -> np.ndarray:
    """Max-luminance fusion: Y' = max(Y_vis, IR), visible Cb/Cr kept. (H, W, 3) uint8 out."""
    y, cb, cr = rgb_to_ycbcr(vis_rgb)
    return ycbcr_to_rgb(np.maximum(y, ir_gray.astype(np.float64) / 255.0), cb, cr)


def make_baselines(vis_rgb: np.ndarray, ir_gray: np.ndarray) -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 for every entry of BASELINES."""
    return {
        "visible": vis_rgb,
        "avg_fusion": baseline_average(vis_rgb, ir_gray),
        "maxlum_fusion": baseline_max_luminance(vis_rgb, ir_gray),
    }


# --------------------------------------------------------------------------- segmentation proxies


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
    def ratio(num: int, den: int) -> float:
        return num / den if den else math.nan
    return {"person_box_coverage": ratio(counts["covered_px"], counts["box_px"]),
            "person_mask_precision": ratio(counts["pred_in_box_px"], counts["pred_px"])}


def resolve_det_dir(det: Path) -> Path:
    """The folder holding NAME.txt files: `det` itself, or det/infrared for the MSRS layout.

    MSRS ships det/{visible,infrared,fusion}/; its infrared boxes list the most
    people (data/README.md), so that sub-folder is the default.
    """
    if not det.is_dir():
        raise FileNotFoundError(f"--det folder not found: {det}")
    # classes.txt sits beside the sub-folders in that layout: it is not a frame.
    has_frames = any(p.name != "classes.txt" for p in det.glob("*.txt"))
    if not has_frames and (det / "infrared").is_dir():
        return det / "infrared"
    return det


# --------------------------------------------------------------------------- one frame


def _read_gray_u8(path: Path) -> np.ndarray:
    """Read an image as (H, W) uint8 grey with MATLAB rgb2gray weights (the metrics' convention)."""
    return metrics.to_gray(read_rgb(path), str(path)).astype(np.uint8)


def _load(path: Path | None, what: str, reader, shape: tuple[int, int] | None):
    """Read one input of a frame or raise FrameError saying what is wrong with it."""
    if path is None:
        raise FrameError(f"missing {what}")
    try:
        image = reader(path)
    except (FileNotFoundError, ValueError) as exc:
        raise FrameError(f"unreadable {what}: {exc}") from exc
    if shape is not None and image.shape[:2] != shape:
        raise FrameError(f"{what} is {image.shape[1]}x{image.shape[0]}, the visible frame {shape[1]}x{shape[0]}")
    return image


def load_frame(task: FrameTask) -> dict:
    """Read and check every input of one frame. Raises FrameError.

    Returns a dict: vis (H, W, 3), ir (H, W), clean (H, W, 3) or None, results
    {name: (H, W, 3)}, seg {name: (H, W)}, label (H, W) or None, boxes list or None.
    """
    vis = _load(task.vis, "visible image", read_rgb, None)
    shape = vis.shape[:2]
    if min(shape) < metrics.MIN_SIDE:
        raise FrameError(f"frame is {shape[1]}x{shape[0]}, smaller than {metrics.MIN_SIDE}x{metrics.MIN_SIDE}")
    frame = {
        "vis": vis,
        "ir": _load(task.ir, "infrared image", _read_gray_u8, shape),
        "clean": _load(task.clean_vis, "clean visible image", read_rgb, shape) if task.want_clean else None,
        "results": {n: _load(p, f"result '{n}'", read_rgb, shape) for n, p in task.results.items()},
        "seg": {n: _load(p, f"segmentation '{n}'", read_label, shape) for n, p in task.seg.items()},
        "label": _load(task.label, "label", read_label, shape) if task.want_label else None,
        "boxes": None,
    }
    if task.det_txt is not None:
        try:
            frame["boxes"] = read_yolo_boxes(task.det_txt)  # a missing file means no boxes
        except ValueError as exc:
            raise FrameError(str(exc)) from exc
    for name, seg in frame["seg"].items():
        bad = (seg >= NUM_CLASSES) & (seg != IGNORE_INDEX)
        if bad.any():
            raise FrameError(f"segmentation '{name}' has ids outside 0..{NUM_CLASSES - 1}: {sorted(set(seg[bad].tolist()))[:5]}")
    return frame


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


# --------------------------------------------------------------------------- gathering


def frame_names(config: EvalConfig) -> list[str]:
    """Names to evaluate: the --names file in its order, else all image stems of --vis, sorted."""
    if config.names_file is not None:
        names = read_names(config.names_file)
        if not names:
            raise ValueError(f"names list {config.names_file} is empty")
        return list(dict.fromkeys(names))  # drop repeats, keep order
    names = sorted(index_images(config.vis))
    if not names:
        raise FileNotFoundError(f"no images in the visible folder {config.vis}")
    return names


def _folder_index(folder: Path, what: str) -> dict[str, Path]:
    """stem -> path of one folder, with a clear error when the folder does not exist."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    return index_images(Path(folder))


def build_tasks(config: EvalConfig, names: list[str]) -> list[FrameTask]:
    """One FrameTask per name, with None for inputs that a folder lacks."""
    vis = _folder_index(config.vis, "visible")
    ir = _folder_index(config.ir, "infrared")
    clean = _folder_index(config.clean_vis, "clean visible") if config.clean_vis else {}
    results = {n: _folder_index(p, f"result '{n}'") for n, p in config.results.items()}
    seg = {n: _folder_index(p, f"segmentation '{n}'") for n, p in config.seg.items()}
    labels = _folder_index(config.labels, "labels") if config.labels else {}
    det = resolve_det_dir(Path(config.det)) if config.det else None
    fusion_names, gen_names = config.fusion_result_names(), config.generated_ir_names()
    return [
        FrameTask(
            name=name, vis=vis.get(name), ir=ir.get(name), clean_vis=clean.get(name),
            results={n: idx.get(name) for n, idx in results.items()},
            seg={n: idx.get(name) for n, idx in seg.items()},
            label=labels.get(name), det_txt=None if det is None else det / f"{name}.txt",
            want_clean=config.clean_vis is not None, want_label=config.labels is not None,
            fusion_names=fusion_names, gen_ir_names=gen_names,
        )
        for name in names
    ]


def validate_config(config: EvalConfig) -> None:
    """Raise ValueError for inconsistent options (before any frame is read)."""
    for name in config.results:
        if name in BASELINES:
            raise ValueError(f"result name {name!r} is reserved for a baseline ({', '.join(BASELINES)})")
        if not name or "=" in name:
            raise ValueError(f"bad result name {name!r}")
    unknown = [n for n in config.generated_ir if n not in config.results]
    if unknown:
        raise ValueError(f"--generated-ir names no --result: {', '.join(unknown)}")
    if config.seg and not (config.labels or config.det):
        raise ValueError("--seg needs --labels (mIoU) or --det (box proxy) to be scored against")
    if config.max_grid < 0 or config.jobs < 1:
        raise ValueError("--max-grid must be >= 0 and --jobs >= 1")


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


def _mean_table(per_frame: list[dict[str, dict[str, float]]], keys: tuple[str, ...]) -> dict:
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
    fusion = _mean_table([s.fusion for s in scores], metrics.METRIC_NAMES)
    fusion["best"] = best_methods(fusion["mean"], metrics.METRIC_NAMES, metrics.LOWER_IS_BETTER)
    fusion["methods"] = list(fusion["mean"])
    fusion["baselines"] = list(BASELINES)
    summary["fusion"] = fusion
    if config.generated_ir_names():
        ir = _mean_table([s.ir_similarity for s in scores], IR_METRICS)
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
            total = {k: sum(s.box_counts[name][k] for s in scores) for k in ("box_px", "covered_px", "pred_px", "pred_in_box_px")}
            proxy[name] = {**box_proxy_scores(total), **total}
        summary["box_proxy"] = {
            "definition": "person_box_coverage = sum(person pixels inside person boxes) / sum(person-box area); "
                          "person_mask_precision = sum(person pixels inside person boxes) / sum(person pixels); "
                          f"person = MFNet id {PERSON_ID}, boxes = YOLO class {YOLO_PERSON}, sums over all frames",
            "frames_with_person_boxes": sum(s.person_boxes > 0 for s in scores),
            "scores": proxy,
        }
    return summary


# --------------------------------------------------------------------------- writing


def _jsonable(value):
    """Recursively make `value` JSON-safe: non-finite floats become "NaN" / "Infinity" strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_csvs(out: Path, scores: list[FrameScores]) -> list[Path]:
    """per_frame.csv (frame, method, 13 metrics) and, when present, per_frame_ir.csv / per_frame_seg.csv."""
    written = []
    path = out / "per_frame.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["frame", "method", *metrics.METRIC_NAMES])
        for s in scores:
            for method, values in s.fusion.items():
                writer.writerow([s.name, method, *(repr(values[k]) for k in metrics.METRIC_NAMES)])
    written.append(path)
    if scores and scores[0].ir_similarity:
        path = out / "per_frame_ir.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["frame", "result", *IR_METRICS])
            for s in scores:
                for name, values in s.ir_similarity.items():
                    writer.writerow([s.name, name, *(repr(values[k]) for k in IR_METRICS)])
        written.append(path)
    if scores and (scores[0].confusion or scores[0].box_counts):
        path = out / "per_frame_seg.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["frame", "seg", "mIoU_frame", "person_boxes", *BOX_METRICS])
            for s in scores:
                for name in sorted(set(s.confusion) | set(s.box_counts)):
                    miou = metrics.iou_from_confusion(s.confusion[name])[1] if name in s.confusion else ""
                    box = box_proxy_scores(s.box_counts[name]) if name in s.box_counts else {}
                    writer.writerow([s.name, name, repr(miou) if miou != "" else "", s.person_boxes,
                                     *(repr(box[k]) if k in box else "" for k in BOX_METRICS)])
        written.append(path)
    return written


def _png_bytes(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def bar_chart_png(table: dict[str, dict[str, float]], keys: tuple[str, ...], title: str,
                  lower_better=frozenset(), baselines=(), dpi: int = 80) -> bytes:
    """Small-multiples bar chart: one panel per key, one bar per method. Returns PNG bytes.

    table: {method: {key: mean}}. Baselines are hatched; the best bar of each panel has a thick outline.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    methods = list(table)
    cols = min(len(keys), 5)
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows + 0.6), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(len(methods)) % 10)
    best = best_methods(table, keys, lower_better)
    for ax, key in zip(axes.flat, keys):
        values = [table[m][key] for m in methods]
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(methods)), heights, color=colours)
        for i, (bar, method) in enumerate(zip(bars, methods)):
            if method in baselines:
                bar.set_hatch("//")
            if method in best.get(key, ()):
                bar.set_edgecolor("black")
                bar.set_linewidth(2.0)
            if not math.isfinite(values[i]):
                # x in data units, y in axes units: stays inside the panel whatever the y range.
                ax.text(i, 0.03, "NaN" if math.isnan(values[i]) else "inf", ha="center", va="bottom", fontsize=8,
                        transform=ax.get_xaxis_transform())
        ax.set_title(f"{key} {'(lower better)' if key in lower_better else '(higher better)'}", fontsize=9)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
        finite = [h for h, v in zip(heights, values) if math.isfinite(v)]
        if finite and min(finite) > 0:
            lo, hi = min(finite), max(finite)
            # Zoom on the spread when values sit far from 0 (PSNR ~60 dB), else start at 0.
            ax.set_ylim(max(0.0, lo - (hi - lo) * 0.6 - 1e-9) if lo > 0.5 * hi else 0.0, hi + (hi - lo) * 0.15 + 1e-9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i], hatch="//" if m in baselines else None) for i, m in enumerate(methods)]
    fig.legend(handles, methods, loc="lower center", ncol=min(len(methods), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _thumbnail(image: np.ndarray, width: int = THUMB_WIDTH) -> bytes:
    """Resize (H, W[, 3]) uint8 to `width` px wide (aspect kept) and return PNG bytes."""
    pil = Image.fromarray(image)
    height = max(1, round(pil.height * width / pil.width))
    return _png_bytes(np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR)))


def seg_overlay(vis_rgb: np.ndarray, seg: np.ndarray, in_box: np.ndarray | None = None) -> np.ndarray:
    """Palette colours of `seg` blended 50 % over the visible frame (class 0 left as is); person boxes outlined in white."""
    colour = colorize(seg).astype(np.float64)
    out = vis_rgb.astype(np.float64)
    labelled = (seg > 0) & (seg < NUM_CLASSES)
    out[labelled] = 0.5 * out[labelled] + 0.5 * colour[labelled]
    out = out.astype(np.uint8)
    if in_box is not None and in_box.any():
        # Outline = box pixels with a 4-neighbour outside the box union.
        pad = np.pad(in_box, 1)
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        out[in_box & ~inner] = 255
    return out


def grid_rows(config: EvalConfig, tasks: list[FrameTask], names: list[str]) -> tuple[list[str], list[tuple[str, list[bytes]]]]:
    """Sample grid: column titles and, per frame, thumbnails (PNG bytes) in column order.

    Columns: input visible, clean visible (if any), real IR, generated IR results,
    fused results (or the baselines when there are none), segmentation overlays, label overlay.
    """
    by_name = {t.name: t for t in tasks}
    fusion_names = config.fusion_result_names()
    # Without results, show the two fusion baselines ("visible" is already the first column).
    show_fused = fusion_names if fusion_names else tuple(b for b in BASELINES if b != "visible")
    columns = ["input visible"] + (["clean visible"] if config.clean_vis else []) + ["real IR"]
    columns += [f"{n} (generated IR)" for n in config.generated_ir_names()]
    columns += [f"{n}" + (" (baseline)" if n in BASELINES else "") for n in show_fused]
    columns += [f"{n} segmentation" for n in config.seg] + (["label"] if config.labels else [])
    rows = []
    for name in names:
        frame = load_frame(by_name[name])
        vis = frame["vis"]
        in_box = None if frame["boxes"] is None else person_box_mask(frame["boxes"], *vis.shape[:2])
        images = [vis] + ([frame["clean"]] if config.clean_vis else []) + [frame["ir"]]
        images += [frame["results"][n] for n in config.generated_ir_names()]
        baselines = make_baselines(vis, frame["ir"]) if not fusion_names else {}
        images += [frame["results"][n] if n in frame["results"] else baselines[n] for n in show_fused]
        images += [seg_overlay(vis, frame["seg"][n], in_box) for n in config.seg]
        if config.labels:
            images.append(seg_overlay(vis, np.where(frame["label"] == IGNORE_INDEX, 0, frame["label"]), in_box))
        rows.append((name, [_thumbnail(im) for im in images]))
    return columns, rows


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and abs(value) < 10.0 ** -digits * 50:
        return f"{value:.2e}"  # tiny values (Nabf) would otherwise all read 0.0000
    return f"{value:.{digits}f}"


def _html_table(means: dict[str, dict[str, float]], keys: tuple[str, ...], best: dict[str, list[str]],
                lower_better=frozenset(), baselines=(), digits=None) -> str:
    """HTML table: methods as rows, keys as columns, best cell per column bold with a star."""
    head = "".join(f"<th>{html.escape(k)} {'&darr;' if k in lower_better else '&uarr;'}</th>" for k in keys)
    if len(means) < 2:
        best = {}  # nothing to compare with
    body = []
    for method, values in means.items():
        cells = []
        for k in keys:
            text = _fmt(values[k], (digits or {}).get(k, 4))
            cells.append(f'<td class="best">{text}&#9733;</td>' if method in best.get(k, ()) else f"<td>{text}</td>")
        label = html.escape(method) + (' <span class="tag">baseline</span>' if method in baselines else "")
        body.append(f"<tr><th>{label}</th>{''.join(cells)}</tr>")
    return f'<table><tr><th>method</th>{head}</tr>{"".join(body)}</table>'


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;font-size:13px}
th{background:#f3f3f3} td.best{font-weight:bold;background:#e5f5e0}
.tag{font-size:10px;color:#777;font-weight:normal}
.grid td{text-align:center;vertical-align:top;padding:2px} .grid img{display:block}
.small{font-size:12px;color:#555} code{background:#f6f6f6}
"""


def write_html(path: Path, summary: dict, settings: dict, frames: dict, charts: dict[str, bytes],
               grid: tuple[list[str], list[tuple[str, list[bytes]]]] | None) -> Path:
    """Write the self-contained report (all images inline as base64 PNG)."""
    fusion = summary["fusion"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>MagicFuse evaluation</title><style>{_CSS}</style></head><body>",
             "<h1>MagicFuse evaluation</h1>",
             f"<p>{frames['scored']} of {frames['requested']} frames scored"
             + (f", {len(frames['skipped'])} skipped (listed below)" if frames["skipped"] else "") + ".</p>",
             "<h2>Fusion metrics (mean over frames)</h2>",
             "<p class='small'>Sources: A = " + ("clean visible" if settings["clean_vis"] else "input visible")
             + ", B = real infrared. Convention: Tang's toolbox (PSNR = standard + 48.13 dB, MI in bits, VIF summed over A and B), "
             "Nabf after Kumar, SSIM = mean of Wang 2004 SSIM(A,F), SSIM(B,F); see docs/METRICS.md. "
             "&#9733; = best mean; NaN means undefined in every frame (e.g. SCD when F equals A).</p>",
             _html_table(fusion["mean"], metrics.METRIC_NAMES, fusion["best"], metrics.LOWER_IS_BETTER,
                         BASELINES, {"PSNR": 2, "SD": 2, "SF": 2, "AG": 3})]
    if "fusion" in charts:
        parts.append(f"<img alt='fusion metric bar charts' src='{_data_uri(charts['fusion'])}'>")
    if "ir_similarity" in summary:
        ir = summary["ir_similarity"]
        parts += ["<h2>Generated infrared vs real infrared</h2>",
                  "<p class='small'>PSNR: standard 10 log10(255&sup2;/MSE) in dB; SSIM: Wang 2004; CC: Pearson.</p>",
                  _html_table(ir["mean"], IR_METRICS, best_methods(ir["mean"], IR_METRICS), digits={"PSNR": 2})]
    if "segmentation" in summary:
        seg = summary["segmentation"]
        means = {n: {"mIoU": v["mIoU"], **v["per_class_IoU"]} for n, v in seg.items()}
        keys = ("mIoU", *MFNET_CLASSES)
        parts += ["<h2>Segmentation: IoU vs labels</h2>",
                  "<p class='small'>Data-set-level confusion matrix (all frames summed), label 255 ignored; "
                  "mIoU = mean over the 9 MFNet classes present in label or prediction.</p>",
                  _html_table(means, keys, best_methods(means, keys))]
    if "box_proxy" in summary:
        proxy = summary["box_proxy"]
        means = {n: {k: v[k] for k in BOX_METRICS} for n, v in proxy["scores"].items()}
        parts += ["<h2>Segmentation: weak person-box proxy</h2>",
                  f"<p class='small'>{html.escape(proxy['definition'])}. "
                  f"{proxy['frames_with_person_boxes']} frames have person boxes. A box also holds background, "
                  "so coverage stays well below 1 even for a perfect mask: a comparison between methods, not a recall.</p>",
                  _html_table(means, BOX_METRICS, best_methods(means, BOX_METRICS))]
    if grid and grid[1]:
        columns, rows = grid
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td><img src='{_data_uri(p)}' width='{THUMB_WIDTH}'></td>" for p in pngs) + "</tr>"
            for name, pngs in rows)
        parts += ["<h2>Sample frames</h2>",
                  "<p class='small'>Segmentation overlays: MFNet palette at 50 % over the input; white outlines = person boxes.</p>",
                  f"<table class='grid'><tr><th>frame</th>{head}</tr>{body}</table>"]
    if frames["skipped"]:
        items = "".join(f"<li><code>{html.escape(s['name'])}</code>: {html.escape(s['reason'])}</li>" for s in frames["skipped"])
        parts += ["<h2>Skipped frames</h2>", f"<ul>{items}</ul>"]
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(json.dumps(_jsonable(v)))}</td></tr>"
                   for k, v in settings.items())
    parts += ["<h2>Run settings</h2>", f"<table>{rows}</table>", "</body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- entry point


def run_settings(config: EvalConfig, elapsed_s: float | None = None) -> dict:
    """What the report and metrics.json record about the run."""
    import scipy

    settings = {k: v for k, v in asdict(config).items() if k not in ("progress",)}
    settings["source_A"] = "clean_vis" if config.clean_vis else "vis"
    settings["source_B"] = "ir"
    settings["fusion_results"] = list(config.fusion_result_names())
    settings["generated_ir_results"] = list(config.generated_ir_names())
    settings["baselines"] = list(BASELINES)
    settings["date_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    settings["versions"] = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
    if elapsed_s is not None:
        settings["elapsed_s"] = round(elapsed_s, 2)
    return settings


def run_evaluation(config: EvalConfig) -> dict:
    """Score all frames, write metrics.json, the CSVs, the chart and report.html into config.out.

    Returns the metrics.json content (with floats, not strings, for NaN/inf).
    Raises FileNotFoundError / ValueError for bad options or folders and
    RuntimeError when no frame could be scored.
    """
    t0 = time.perf_counter()
    validate_config(config)
    names = frame_names(config)
    tasks = build_tasks(config, names)
    scores, skipped = score_all(tasks, config.jobs, config.progress)
    if not scores:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
        raise RuntimeError(f"no frame could be scored ({len(skipped)} skipped: {reasons}{' ...' if len(skipped) > 3 else ''})")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = aggregate(config, scores)
    frames = {"requested": len(names), "scored": len(scores), "names": [s.name for s in scores], "skipped": skipped}

    charts = {"fusion": bar_chart_png(summary["fusion"]["mean"], metrics.METRIC_NAMES,
                                      f"Fusion metrics, mean over {len(scores)} frames",
                                      metrics.LOWER_IS_BETTER, BASELINES)}
    (out / "metrics_bars.png").write_bytes(charts["fusion"])
    grid = grid_rows(config, tasks, [s.name for s in scores][: config.max_grid]) if config.max_grid else None

    settings = run_settings(config, time.perf_counter() - t0)
    result = {"settings": settings, "frames": frames, **summary}
    (out / "metrics.json").write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    write_csvs(out, scores)
    write_html(out / "report.html", summary, settings, frames, charts, grid)
    return result


def format_means(summary: dict) -> str:
    """Plain-text table of the fusion means (methods x metrics) for the terminal and docs."""
    means = summary["fusion"]["mean"]
    keys = metrics.METRIC_NAMES
    width = max(len(m) for m in means) + 2
    lines = ["method".ljust(width) + " ".join(k.rjust(8) for k in keys)]
    for method, values in means.items():
        lines.append(method.ljust(width) + " ".join(_fmt(values[k], 2 if k == "PSNR" else 4).rjust(8) for k in keys))
    return "\n".join(lines)
