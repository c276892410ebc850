"""Time the fusion metrics on one 640x480 triple, one CPU core.

Usage: PYTHONPATH=. .venv/bin/python benchmarks/bench_metrics.py [--repeat N]

Prints the median wall time of each metric computed on its own (including the
edge maps / pyramids it needs) and of `compute_all`, which shares the fused
image's intermediate results between metrics. Uses the shared 480x640 reference
triple when ../shared is present, else a synthetic one.
"""
from __future__ import annotations

import os

# One core: pin the BLAS/OpenMP pools before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from magicfuse_core.evaluation import metrics as m  # noqa: E402

SHARED_TRIPLE = Path(__file__).resolve().parents[1].parent / "shared" / "metrics" / "syn_480x640_lowcontrast"


def load_triple() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(F, A, B) uint8 (480, 640) and a description of where they came from."""
    if SHARED_TRIPLE.is_dir():
        from magicfuse_core.imageio import read_gray

        f, a, b = (read_gray(SHARED_TRIPLE / n) for n in ("F_fused.png", "A_vis.png", "B_ir.png"))
        return f, a, b, str(SHARED_TRIPLE)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (480, 640), dtype=np.uint8)
    b = rng.integers(0, 256, (480, 640), dtype=np.uint8)
    f = ((a.astype(np.uint16) + b) // 2).astype(np.uint8)
    return f, a, b, "synthetic random 480x640"


def per_metric_callables(f, a, b):
    """name -> zero-argument callable computing that one metric from grey float64 images."""
    win = m._gaussian_1d(m.SSIM_WINDOW, m.SSIM_SIGMA)
    return {
        "EN": lambda: m.entropy(f),
        "SD": lambda: m.standard_deviation(f),
        "SF": lambda: m.spatial_frequency(f),
        "AG": lambda: m.average_gradient(f),
        "MI": lambda: m._mutual_information(a, f, m.entropy(a), m.entropy(f))
        + m._mutual_information(b, f, m.entropy(b), m.entropy(f)),
        "SCD": lambda: m._pearson(f - b, a) + m._pearson(f - a, b),
        "VIF": lambda: m._vifp(m._vif_pyramid(a), m._vif_pyramid(f)) + m._vifp(m._vif_pyramid(b), m._vif_pyramid(f)),
        "Qabf": lambda: m._qabf(m._qabf_edges(a), m._qabf_edges(b), m._qabf_edges(f)),
        "Nabf": lambda: m._nabf(m._nabf_edges(a), m._nabf_edges(b), m._nabf_edges(f)),
        "SSIM": lambda: 0.5 * (m.ssim(a, f) + m.ssim(b, f)),
        "PSNR/MSE": lambda: 0.5 * (np.mean((f - a) ** 2) + np.mean((f - b) ** 2)),
        "CC": lambda: 0.5 * (m._pearson(a, f) + m._pearson(b, f)),
    }


def median_time(fn, repeat: int) -> float:
    """Median wall time of fn() in seconds over `repeat` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    f8, a8, b8, origin = load_triple()
    f, a, b = (m.to_gray(x) for x in (f8, a8, b8))
    print(f"triple: {origin} ({f.shape[1]}x{f.shape[0]}), median of {args.repeat} runs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    total_separate = 0.0
    for name, fn in per_metric_callables(f, a, b).items():
        t = median_time(fn, args.repeat)
        total_separate += t
        print(f"  {name:9s} {t * 1000:8.1f} ms")
    print(f"  {'sum':9s} {total_separate * 1000:8.1f} ms  (each metric alone)")
    t_all = median_time(lambda: m.compute_all(f8, a8, b8), args.repeat)
    print(f"  {'compute_all':9s} {t_all * 1000:6.1f} ms  (all 13, shared intermediates, incl. input checks)")
    scorer = m.FusionScorer(a8, b8)
    t_score = median_time(lambda: scorer.score(f8), args.repeat)
    print(f"  {'FusionScorer.score':18s} {t_score * 1000:6.1f} ms  (one more method on the same sources)")


if __name__ == "__main__":
    main()
