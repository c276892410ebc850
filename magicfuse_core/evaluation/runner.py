"""`run_evaluation`: one `magicfuse eval` run from an `EvalConfig` to the files in its output folder.

Frames with a missing, unreadable or differently sized input are reported and
skipped for every method, so that all means are over the same frames; the run
fails only when no frame is left. Outputs in the output folder: metrics.json,
per_frame.csv (+ per_frame_ir.csv / per_frame_seg.csv when applicable),
metrics_bars.png and the self-contained report.html.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import metrics
from .baselines import BASELINES
from .config import EvalConfig, validate_config
from .figures import bar_chart_png, grid_rows
from .frames import build_tasks, frame_names
from .report import jsonable, write_csvs, write_html
from .scoring import aggregate, score_all


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
    (out / "metrics.json").write_text(json.dumps(jsonable(result), indent=1) + "\n")
    write_csvs(out, scores)
    write_html(out / "report.html", summary, settings, frames, charts, grid)
    return result


