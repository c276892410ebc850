"""Writing an evaluation down: metrics.json values, the per-frame CSVs, the HTML report and a text table."""
from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import numpy as np

from ..palette import MFNET_CLASSES
from . import metrics
from .baselines import BASELINES
from .figures import THUMB_WIDTH
from .scoring import IR_METRICS, FrameScores, best_methods
from .targets import BOX_METRICS, box_proxy_scores


def jsonable(value):
    """Recursively make `value` JSON-safe: non-finite floats become "NaN" / "Infinity" strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
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


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(json.dumps(jsonable(v)))}</td></tr>"
                   for k, v in settings.items())
    parts += ["<h2>Run settings</h2>", f"<table>{rows}</table>", "</body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- entry point

def format_means(summary: dict) -> str:
    """Plain-text table of the fusion means (methods x metrics) for the terminal and docs."""
    means = summary["fusion"]["mean"]
    keys = metrics.METRIC_NAMES
    width = max(len(m) for m in means) + 2
    lines = ["method".ljust(width) + " ".join(k.rjust(8) for k in keys)]
    for method, values in means.items():
        lines.append(method.ljust(width) + " ".join(_fmt(values[k], 2 if k == "PSNR" else 4).rjust(8) for k in keys))
    return "\n".join(lines)
