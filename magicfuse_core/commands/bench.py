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
import datetime
import json
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CPU_SMOKE = dict(profiles=["tiny"], sizes=[(64, 64)], batches=[1], steps=[2], runs=3, warmup=1)


def _size(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 480x640), got {text!r}")
    return int(h), int(w)


def register(subparsers) -> None:
    """Add the `bench` sub-command."""
    p = subparsers.add_parser("bench", help="benchmark backends: ms/frame, FLOPs, TFLOP/s, peak memory, drift",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", action="append", metavar="SPEC",
                   help="NAME[:KEY=VALUE,...], e.g. torch:precision=bf16,cuda_graph=1 (repeatable; default torch)")
    p.add_argument("--profile", action="append", choices=("tiny", "like", "paper"),
                   help="random-weight model profile (repeatable; default tiny)")
    p.add_argument("--model", type=Path, help="a model folder instead of random profile weights")
    p.add_argument("--size", action="append", type=_size, metavar="HxW", help="input frame size (default 240x320)")
    p.add_argument("--inference-size", type=_size, metavar="HxW", help="run the networks at this size (resize in/out)")
    p.add_argument("--batch", action="append", type=int, help="batch size (repeatable; default 1)")
    p.add_argument("--steps", action="append", type=int, help="DDIM steps (repeatable; default 25)")
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


# ---- measurements ------------------------------------------------------------------------------
def measure_peak_tflops(device, seconds: float = 0.5, windows: int = 3) -> dict:
    """Sustained matmul throughput, best of `windows` timing windows (other load only slows
    a window down): bf16 8192^2 on CUDA, fp32 1024^2 on CPU."""
    import torch  # noqa: PLC0415

    device = torch.device(device)
    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    return max((_matmul_window(a, b, cuda, seconds / windows) for _ in range(windows)),
               key=lambda r: r["tflops"]) | {"kind": f"{str(dtype).split('.')[-1]} matmul {n}x{n}",
                                              "device": _device_name(device)}


def _matmul_window(a, b, cuda: bool, seconds: float) -> dict:
    import torch  # noqa: PLC0415

    n = a.shape[0]
    reps, elapsed = 0, 0.0
    while elapsed < seconds:
        batch = max(1, reps or 1)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(batch):
                a @ b
            end.record()
            end.synchronize()
            elapsed += start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            for _ in range(batch):
                a @ b
            elapsed += time.perf_counter() - t0
        reps += batch
    return {"tflops": 2 * n**3 * reps / elapsed / 1e12}


def _device_name(device) -> str:
    import torch  # noqa: PLC0415

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def meta_twin(model):
    """A copy of the model's architecture on the meta device (no memory, no compute)."""
    import torch  # noqa: PLC0415

    from ..checkpoint import MagicFuseModel  # noqa: PLC0415

    with torch.device("meta"):
        return MagicFuseModel(*(type(m)(m.config) for m in (model.autoencoder, model.ikr, model.ckg, model.fusion)),
                              schedule=model.schedule, tau=model.tau, thermal_classes=model.thermal_classes)


def count_flops(model, height: int, width: int, batch: int = 1, steps: int = 25) -> dict:
    """FLOPs of one pipeline call (encode, `steps` fused steps, decode of 3 streams) per frame.

    Counted on a meta-device twin of `model` at the padded size the pipeline uses.
    Returns totals and a per-network breakdown (per step for the three sampler nets).
    """
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    from ..export import example_inputs, latent_size  # noqa: PLC0415

    meta = model if next(model.ikr.parameters()).is_meta else meta_twin(model)
    h, w = latent_size(height, width)
    ae = meta.autoencoder

    def flops(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    def meta_inputs(component):
        return [v.to("meta") for v in example_inputs(meta, component, batch, h, w).values()]

    per_step = {c: flops(lambda c=c: getattr(meta, c)(*meta_inputs(c))) for c in ("ikr", "ckg", "fusion")}
    image = torch.empty(batch, 3, 4 * h, 4 * w, device="meta")
    noise = torch.empty(batch, ae.config.noise_channels, h, w, device="meta")
    encoder = flops(lambda: ae.encode(image, noise=noise))
    decoder = flops(lambda: ae.decode(torch.empty(3 * batch, ae.config.latent_channels, h, w, device="meta")))
    # Every step costs the same (the sampler's own arithmetic is element-wise, which
    # the counter does not count): tests/test_bench.py checks this against a counted loop.
    loop = steps * sum(per_step.values())
    total = encoder + loop + decoder
    return {"per_frame": total / batch, "per_step_per_frame": {k: v / batch for k, v in per_step.items()},
            "encoder_per_frame": encoder / batch, "decoder_per_frame": decoder / batch,
            "sampling_per_frame": loop / batch, "latent_size": [h, w], "padded_size": [4 * h, 4 * w]}


class _RSSPeak:
    """Peak resident-set growth of this process (Linux /proc), for CPU rows."""

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = self._status("VmHWM") - self.start if self.resettable else None
        return False


def _frames(args, batch: int, size: tuple[int, int]) -> np.ndarray:
    if args.frames is None:
        return (np.random.default_rng(0).random((batch, *size, 3)) * 255).astype(np.uint8)
    from ..imageio import list_images, read_rgb  # noqa: PLC0415

    if args.names is not None:
        stems = [s.strip() for s in args.names.read_text().split() if s.strip()]
        paths = [next(args.frames.glob(f"{stem}.*")) for stem in stems[:batch]]
    else:
        paths = list_images(args.frames)[:batch]
    if len(paths) < batch:
        raise ValueError(f"--frames has {len(paths)} frames, --batch asks for {batch}")
    images = [read_rgb(p) for p in paths]
    if images[0].shape[:2] != tuple(size):
        import cv2  # noqa: PLC0415

        images = [cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in images]
    return np.stack(images)


@dataclass
class Row:
    backend: str
    profile: str
    size: str
    inference_size: str
    batch: int
    steps: int
    ms_per_frame: float | None
    gflop_per_frame: float
    tflops: float | None
    peak_share: float | None
    peak_mem_mb: float | None
    magimg_rel_err: float | None
    seg_changed: float | None
    runs: int
    notes: str = ""


def _time_calls(pipe, frames, steps: int, runs: int, warmup: int, cuda: bool) -> tuple[list[float], object]:
    import torch  # noqa: PLC0415

    result = None
    for _ in range(warmup):
        result = pipe(frames, seed=0, steps=steps)
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = pipe(frames, seed=0, steps=steps)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            result = pipe(frames, seed=0, steps=steps)
            times.append((time.perf_counter() - t0) * 1000.0)
    return times, result


def bench(args) -> dict:
    """Run every configuration; returns the report (also what --json writes)."""
    import torch  # noqa: PLC0415

    from ..checkpoint import load_model, random_model  # noqa: PLC0415
    from ..pipeline import MagicFusePipeline  # noqa: PLC0415
    from ..runtime import apply_backend, parse_backend_spec  # noqa: PLC0415

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    specs = args.backend or ["torch"]
    parsed = [parse_backend_spec(s) for s in specs]
    profiles = [str(args.model)] if args.model else (args.profile or ["tiny"])
    peak = None if args.no_peak or args.flops_only else measure_peak_tflops(device)
    rows: list[Row] = []
    flop_cache: dict = {}
    for profile in profiles:
        model_src = (lambda: load_model(args.model)) if args.model else (lambda p=profile: random_model(p, seed=0))
        arch = None  # the architecture FLOPs are counted on (meta tensors for random profiles: no memory)
        if not args.model:
            with torch.device("meta"):
                arch = random_model(profile, seed=0)
        for size in args.size:
            infer = args.inference_size or size
            for batch in args.batch:
                reference = None
                for steps in args.steps:
                    key = (profile, infer, batch, steps)
                    if key not in flop_cache:
                        arch = arch or model_src()
                        flop_cache[key] = count_flops(arch, *infer, batch=batch, steps=steps)
                    flop = flop_cache[key]["per_frame"]
                    for spec, (name, opts) in zip(specs, parsed):
                        row = Row(spec, Path(profile).name, f"{size[0]}x{size[1]}", f"{infer[0]}x{infer[1]}", batch,
                                  steps, None, flop / 1e9, None, None, None, None, None, 0)
                        rows.append(row)
                        if args.flops_only:
                            continue
                        pipe = MagicFusePipeline(model_src(), device=device, steps=steps,
                                                 inference_size=args.inference_size)
                        apply_backend(pipe, name, **opts)
                        notes = getattr(pipe, "backend_info", None)
                        row.notes = "; ".join(notes.notes) if notes else ""
                        frames = _frames(args, batch, size)
                        if cuda:
                            torch.cuda.synchronize(device)
                            torch.cuda.reset_peak_memory_stats(device)
                        with _RSSPeak() as rss:
                            times, result = _time_calls(pipe, frames, steps, args.runs, args.warmup, cuda)
                        row.runs = len(times)
                        row.ms_per_frame = statistics.median(times) / batch
                        row.tflops = flop / (row.ms_per_frame / 1000.0) / 1e12
                        row.peak_share = row.tflops / peak["tflops"] if peak else None
                        row.peak_mem_mb = (torch.cuda.max_memory_allocated(device) if cuda else rss.peak or 0) / 2**20
                        if reference is None:
                            reference = result
                        row.magimg_rel_err, row.seg_changed = drift(result, reference)
                        del pipe
                        if cuda:
                            torch.cuda.empty_cache()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "device": _device_name(device),
        "torch": torch.__version__,
        "peak": peak,
        "flops": {f"{Path(k[0]).name} {k[1][0]}x{k[1][1]} b{k[2]} s{k[3]}": v for k, v in flop_cache.items()},
        "rows": [asdict(r) for r in rows],
    }


def drift(result, reference) -> tuple[float, float]:
    """(relative L2 error of MagImg, fraction of segmentation labels that differ) vs the reference."""
    a = result.magimg.astype(np.float64)
    b = reference.magimg.astype(np.float64)
    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
    return rel, float((result.seg_labels != reference.seg_labels).mean())


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def format_table(report: dict) -> str:
    head = ["backend", "profile", "size", "infer", "batch", "steps", "ms/frame", "GFLOP/frame", "TFLOP/s",
            "% peak", "peak MB", "MagImg rel.err", "seg changed"]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [head]
    for r in report["rows"]:
        lines.append([r["backend"], r["profile"], r["size"], r["inference_size"], str(r["batch"]), str(r["steps"]),
                      fmt(r["ms_per_frame"], ".1f"), fmt(r["gflop_per_frame"], ".1f"), fmt(r["tflops"], ".3f"),
                      fmt(None if r["peak_share"] is None else 100 * r["peak_share"], ".1f"),
                      fmt(r["peak_mem_mb"], ".0f"), fmt(r["magimg_rel_err"], ".2e"),
                      fmt(None if r["seg_changed"] is None else 100 * r["seg_changed"], ".2f") +
                      ("" if r["seg_changed"] is None else "%")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    peak = report.get("peak")
    footer = f"device: {report['device']}, torch {report['torch']}, commit {report['commit']}, {report['date']}"
    if peak:
        footer += f"; measured peak {peak['tflops']:.3f} TFLOP/s ({peak['kind']})"
    return "\n".join(text + [footer])


def run(args) -> int:
    if args.cpu_smoke:
        args.profile = args.profile or CPU_SMOKE["profiles"]
        args.size = args.size or CPU_SMOKE["sizes"]
        args.batch = args.batch or CPU_SMOKE["batches"]
        args.steps = args.steps or CPU_SMOKE["steps"]
        args.runs, args.warmup = min(args.runs, CPU_SMOKE["runs"]), min(args.warmup, CPU_SMOKE["warmup"])
    args.size = args.size or [(240, 320)]
    args.batch = args.batch or [1]
    args.steps = args.steps or [25]
    if min(args.batch) < 1 or min(args.steps) < 1 or args.runs < 1 or args.warmup < 0:
        raise ValueError("--batch, --steps and --runs must be >= 1, --warmup >= 0")
    if args.threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    report = bench(args)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
