"""`magicfuse bench`: speed, FLOPs, hardware share, memory and output drift per backend.

For every combination of --backend x --profile x --size x --batch x --steps it
builds the pipeline (random weights of the profile, or --model), applies the
backend, warms up, and times whole frames (encode + sampling + decode + copy to
host) with CUDA events on a GPU and perf_counter on the CPU. Per row:

- ms/frame: median over the timed runs, divided by the batch;
- GFLOP/frame: counted by torch.utils.flop_counter.FlopCounterMode on meta tensors
  (no compute: the count needs no GPU and is exact for convolutions, matmuls and
  attention; element-wise ops are not counted);
- TFLOP/s achieved and its share of the measured peak (a large bf16 matmul on
  CUDA, an fp32 matmul on CPU: what this device really sustains, not a datasheet);
- peak memory: torch.cuda.max_memory_allocated on CUDA (torch allocations only:
  ONNX Runtime / TensorRT workspaces are not seen), peak RSS growth on CPU;
- drift against the group's reference row (same profile, size and batch; the
  first --backend and first --steps listed): relative L2 error of MagImg and the
  fraction of segmentation labels that change. List `--steps 25 10 8` to get the
  quality cost of fewer steps, or `--backend torch --backend torch:precision=bf16`
  to get the fast path's deviation from fp32.

    magicfuse bench --cpu-smoke --json bench.json
    magicfuse bench --device cuda --profile paper --size 480x640 --size 240x320 \\
        --backend torch --backend torch:precision=bf16,channels_last=1,cuda_graph=1 --json h200.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import parse_size

CPU_SMOKE = dict(profile=["tiny"], size=[(64, 64)], batch=[1], steps=[2], runs=3, warmup=1)
def register(subparsers) -> None:
    """Add the `bench` sub-command."""
    p = subparsers.add_parser("bench", help="benchmark backends: ms/frame, FLOPs, TFLOP/s, peak memory, drift",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", action="append", metavar="SPEC",
                   help="NAME[:KEY=VALUE,...], e.g. torch:precision=bf16,cuda_graph=1 (repeatable; default torch)")
    p.add_argument("--profile", action="append", choices=("tiny", "like", "paper"),
                   help="random-weight model profile (repeatable; default tiny)")
    p.add_argument("--model", type=Path, help="a model folder instead of random profile weights")
    p.add_argument("--size", action="append", type=parse_size, metavar="HxW", help="input frame size (default 240x320)")
    p.add_argument("--inference-size", type=parse_size, metavar="HxW", help="run the networks at this size (resize in/out)")
    p.add_argument("--batch", action="append", type=int, help="batch size (repeatable; default 1)")
    p.add_argument("--steps", action="append", type=int, help="DDIM steps (repeatable; default 25)")
    p.add_argument("--outputs", default=None, metavar="LIST",
                   help="pipeline outputs per call, e.g. magimg,seg (what the node publishes); default: all images")
    p.add_argument("--runs", type=int, default=5, help="timed runs per row (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (for onnxruntime pass onnxruntime:threads=N); "
                                               "1 gives stable CPU figures on a shared machine")
    p.add_argument("--frames", type=Path, help="folder of RGB frames to use instead of random ones (e.g. MSRS vis)")
    p.add_argument("--names", type=Path, help="file of frame stems in --frames (e.g. val.txt); first --batch used")
    p.add_argument("--flops-only", action="store_true", help="only count FLOPs (meta tensors, nothing is run)")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-throughput measurement")
    p.add_argument("--cpu-smoke", action="store_true", help="CI size: tiny profile, 64x64, 2 steps, 3 runs")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..benchmark import BenchSpec, bench, format_table  # noqa: PLC0415 (torch loads only here)

    if args.cpu_smoke:
        for key in ("profile", "size", "batch", "steps"):
            setattr(args, key, getattr(args, key) or CPU_SMOKE[key])
        args.runs, args.warmup = min(args.runs, CPU_SMOKE["runs"]), min(args.warmup, CPU_SMOKE["warmup"])
    spec = BenchSpec(backend=args.backend or ["torch"], profile=args.profile or ["tiny"], model=args.model,
                     size=args.size or [(240, 320)], inference_size=args.inference_size, batch=args.batch or [1],
                     steps=args.steps or [25], outputs=args.outputs, runs=args.runs, warmup=args.warmup,
                     device=args.device, frames=args.frames, names=args.names, flops_only=args.flops_only,
                     no_peak=args.no_peak)
    if min(spec.batch) < 1 or min(spec.steps) < 1 or spec.runs < 1 or spec.warmup < 0:
        raise ValueError("--batch, --steps and --runs must be >= 1, --warmup >= 0")
    if args.threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    report = bench(spec)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
