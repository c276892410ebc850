"""Measurements behind `magicfuse bench`: ms/frame, FLOPs, hardware share, memory, output drift.

A library (the CLI in commands/bench.py only parses options): benchmarks/ scripts
and tests call `bench(BenchSpec(...))` and `format_table` directly.
"""
from __future__ import annotations

import datetime
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io_contract import latent_size


@dataclass
class BenchSpec:
    """What to measure: every backend x profile x size x batch x steps combination."""

    backend: list[str] = field(default_factory=lambda: ["torch"])
    profile: list[str] = field(default_factory=lambda: ["tiny"])
    model: Path | None = None              # a model folder instead of random profile weights
    size: list[tuple[int, int]] = field(default_factory=lambda: [(240, 320)])
    inference_size: tuple[int, int] | None = None
    batch: list[int] = field(default_factory=lambda: [1])
    steps: list[int] = field(default_factory=lambda: [25])
    outputs: str | None = None             # pipeline outputs per call (default: the pipeline's)
    runs: int = 5
    warmup: int = 2
    device: str = "cpu"
    frames: Path | None = None             # folder of RGB frames instead of random ones
    names: Path | None = None              # stems in `frames` to use
    flops_only: bool = False
    no_peak: bool = False


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

    from .checkpoint import MagicFuseModel  # noqa: PLC0415

    with torch.device("meta"):
        return MagicFuseModel(*(type(m)(m.config) for m in (model.autoencoder, model.ikr, model.ckg, model.fusion)),
                              schedule=model.schedule, tau=model.tau, thermal_classes=model.thermal_classes,
                              radiation_map=model.radiation_map, radiation_shift=model.radiation_shift)


def count_flops(model, height: int, width: int, batch: int = 1, steps: int = 25, decoded: int = 3) -> dict:
    """FLOPs of one pipeline call (encode, `steps` fused steps, `decoded` decoder passes) per frame.

    Counted on a meta-device twin of `model` at the padded size the pipeline uses.
    Returns totals and a per-network breakdown (per step for the three sampler nets).
    """
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    from .backends.onnx_export import example_inputs  # noqa: PLC0415

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
    decoder = flops(lambda: ae.decode(torch.empty(decoded * batch, ae.config.latent_channels, h, w, device="meta"))) \
        if decoded else 0
    # Every step costs the same (the sampler's own arithmetic is element-wise, which
    # the counter does not count): tests/core/test_bench.py checks this against a counted loop.
    loop = steps * sum(per_step.values())
    total = encoder + loop + decoder
    return {"per_frame": total / batch, "per_step_per_frame": {k: v / batch for k, v in per_step.items()},
            "encoder_per_frame": encoder / batch, "decoder_per_frame": decoder / batch,
            "sampling_per_frame": loop / batch, "latent_size": [h, w], "padded_size": [4 * h, 4 * w]}


class RSSPeak:
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


def bench_frames(args, batch: int, size: tuple[int, int]) -> np.ndarray:
    if args.frames is None:
        return (np.random.default_rng(0).random((batch, *size, 3)) * 255).astype(np.uint8)
    from .imageio import list_images, read_rgb  # noqa: PLC0415

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


def time_calls(pipe, frames, steps: int, runs: int, warmup: int, cuda: bool, outputs=None) -> tuple[list[float], object]:
    """Per-call wall times in ms (CUDA events on a GPU) and the last result."""
    import torch  # noqa: PLC0415

    result = None
    for _ in range(warmup):
        result = pipe(frames, seed=0, steps=steps, outputs=outputs)
    times = []
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = pipe(frames, seed=0, steps=steps, outputs=outputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            result = pipe(frames, seed=0, steps=steps, outputs=outputs)
            times.append((time.perf_counter() - t0) * 1000.0)
    return times, result


def bench(args: BenchSpec) -> dict:
    """Run every configuration; returns the report (also what --json writes)."""
    import torch  # noqa: PLC0415

    from .backends import parse_backend_spec  # noqa: PLC0415
    from .checkpoint import load_model, random_model  # noqa: PLC0415
    from .pipeline import IMAGE_OUTPUTS, MagicFusePipeline, parse_outputs  # noqa: PLC0415

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    specs = args.backend or ["torch"]
    for spec in specs:
        parse_backend_spec(spec)  # a typo fails before any measurement
    outputs = parse_outputs(args.outputs)
    decoded = sum(k in outputs for k in IMAGE_OUTPUTS)
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
                        flop_cache[key] = count_flops(arch, *infer, batch=batch, steps=steps, decoded=decoded)
                    flop = flop_cache[key]["per_frame"]
                    for spec in specs:
                        row = Row(spec, Path(profile).name, f"{size[0]}x{size[1]}", f"{infer[0]}x{infer[1]}", batch,
                                  steps, None, flop / 1e9, None, None, None, None, None, 0)
                        rows.append(row)
                        if args.flops_only:
                            continue
                        pipe = MagicFusePipeline(model_src(), device=device, steps=steps,
                                                 inference_size=args.inference_size).use_backend(spec)
                        row.notes = "; ".join(pipe.backend_info.notes)
                        frames = bench_frames(args, batch, size)
                        if cuda:
                            torch.cuda.synchronize(device)
                            torch.cuda.reset_peak_memory_stats(device)
                        with RSSPeak() as rss:
                            times, result = time_calls(pipe, frames, steps, args.runs, args.warmup, cuda, outputs)
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
        "commit": git_commit(),
        "device": _device_name(device),
        "torch": torch.__version__,
        "peak": peak,
        "flops": {f"{Path(k[0]).name} {k[1][0]}x{k[1][1]} b{k[2]} s{k[3]}": v for k, v in flop_cache.items()},
        "rows": [asdict(r) for r in rows],
    }


def drift(result, reference) -> tuple[float | None, float | None]:
    """(relative L2 error of MagImg, fraction of segmentation labels that differ) vs the reference."""
    rel = changed = None
    if result.magimg is not None and reference.magimg is not None:
        a = result.magimg.astype(np.float64)
        b = reference.magimg.astype(np.float64)
        rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
    if result.seg_labels is not None and reference.seg_labels is not None:
        changed = float((result.seg_labels != reference.seg_labels).mean())
    return rel, changed


def git_commit() -> str:
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
