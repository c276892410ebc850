"""Evaluation of fusion results: metrics, baselines, per-frame scoring, reports and the model card's measures.

Modules, one job each (docs/METRICS.md has the definitions):
- `metrics`: fusion metrics (Tang's toolbox convention), generated-IR similarity, segmentation IoU;
- `baselines`: images a method is compared with (eval baselines, CLAHE, image-level fusion);
- `targets`: thermal-target contrasts and segmentation figures against the weak box masks;
- `config`, `frames`: what a `magicfuse eval` run is given, and reading its frames;
- `scoring`: per-frame scoring, the process pool, means over frames;
- `figures`, `report`: charts, thumbnails, image grids; CSV, metrics.json, HTML;
- `runner`: `run_evaluation`, the `magicfuse eval` run from config to files;
- `card`: what the model card (tools/evaluate_demo_model.py) measures per frame and over frames.

The public entry of `magicfuse eval`: build an `EvalConfig`, call
`run_evaluation(config)`, print `format_means(result)`.
"""
from __future__ import annotations

from .config import EvalConfig
from .report import format_means
from .runner import run_evaluation

__all__ = ["EvalConfig", "format_means", "run_evaluation"]
