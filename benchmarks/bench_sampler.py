"""Benchmark the MagicFuse sampler per backend: `magicfuse bench` as a plain script.

Runs from a bare checkout (e.g. on a rented GPU machine) without installing the
package; every option of `magicfuse bench --help` applies.

    python benchmarks/bench_sampler.py --cpu-smoke --json outputs/bench_smoke.json
    python benchmarks/bench_sampler.py --device cuda --profile paper --size 480x640 --size 240x320 \
        --backend torch --backend torch:precision=bf16,channels_last=1,cuda_graph=1 \
        --backend tensorrt:precision=fp16 --runs 10 --json outputs/bench_h200.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicfuse_core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
