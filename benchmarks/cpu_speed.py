"""CPU speed, side by side in one run: the anchor commit's `magicfuse fuse` against today's default.

    python benchmarks/cpu_speed.py [--frames 6] [--anchor 96b52f3] [--json outputs/cpu_speed.json]

1. The first --frames MSRS val frames, degraded as the model card does (`degrade_seeded(vis, seed=i)`),
   are written to a temporary folder (640x480).
2. `magicfuse fuse` of the anchor commit (checked out with `git worktree`; 25 steps, torch, three
   decodes) and today's `magicfuse fuse --outputs magimg,seg` (the shipped defaults: what the node
   publishes) each run on 1 frame and on all frames; seconds per frame = the marginal cost
   (T_all - T_1) / (frames - 1), so start-up, model loading and exports are not counted. The
   total wall time is reported too.
3. The node's per-frame processing on the same frames: `magicfuse bag make` + `magicfuse bag replay`
   (the node's frame function, offline), its mean processing time.
4. Today's per-stage costs at 640x480: encoder, decoder (per image), Ψ, Φ, F per step, eager torch
   against ONNX Runtime and against `auto` (which on a CPU with native bf16 runs the step networks
   in torch bf16), each the best of 3 calls.
A benchmark, not a test: the figures go to docs/PERFORMANCE.md with the date and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "msrs"
ANCHOR = "96b52f3"


def write_frames(out: Path, count: int) -> list[str]:
    from magicfuse_core.degrade import degrade_seeded
    from magicfuse_core.imageio import read_rgb, write_png

    names = (SHARED / "val.txt").read_text().split()[:count]
    for i, name in enumerate(names):
        write_png(out / f"{name}.png", degrade_seeded(read_rgb(SHARED / "vis" / f"{name}.png"), seed=i, kind="random"))
    return names


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def per_frame(label: str, fuse_cmd, frames_dir: Path, one_dir: Path, count: int, env: dict, cwd: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t1 = timed(fuse_cmd(one_dir, Path(out) / "one"), env, cwd)
        tn = timed(fuse_cmd(frames_dir, Path(out) / "all"), env, cwd)
    row = {"label": label, "wall_1_frame_s": round(t1, 2), f"wall_{count}_frames_s": round(tn, 2),
           "s_per_frame": round((tn - t1) / (count - 1), 2)}
    print(json.dumps(row), flush=True)
    return row


def node_processing(frames_dir: Path, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "magicfuse_core.cli", "bag"]
        subprocess.run([*cli, "make", str(frames_dir), f"{tmp}/in", "--rate", "2"], env=env, cwd=REPO, check=True,
                       capture_output=True)
        out = subprocess.run([*cli, "replay", f"{tmp}/in", f"{tmp}/out"], env=env, cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
    summary = json.loads(out[out.index("{"):])
    row = {"label": "node frame function (magicfuse bag replay, defaults)",
           "mean_processing_ms": round(summary["mean_processing_ms"], 1), "frames": summary["frames_out"]}
    print(json.dumps(row), flush=True)
    return row


def stage_costs() -> dict:
    import numpy as np
    import torch

    from magicfuse_core.pipeline import MagicFusePipeline

    def best_ms(fn, n=3):
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return round(min(times), 1)

    g = torch.Generator().manual_seed(0)
    image, noise = torch.rand(1, 3, 480, 640, generator=g), torch.randn(1, 32, 120, 160, generator=g)
    latent, t = torch.rand(1, 8, 120, 160, generator=g), torch.tensor([480.0])
    x16, x24 = torch.randn(1, 16, 120, 160, generator=g), torch.randn(1, 24, 120, 160, generator=g)
    eps, seg = torch.randn(1, 8, 120, 160, generator=g), torch.randn(1, 9, 120, 160, generator=g)
    frame = (np.random.default_rng(0).random((1, 480, 640, 3)) * 255).astype(np.uint8)
    rows = {}
    for spec in ("torch", "onnxruntime", "auto"):
        pipe = MagicFusePipeline.from_pretrained(REPO / "models" / "demo").use_backend(spec)
        if spec == "auto":
            spec = f"auto ({pipe.backend_info.summary().split(';')[0]})"
        steps = pipe.steps
        with torch.inference_mode():
            rows[spec] = {
                "encoder": best_ms(lambda: pipe.encoder(image, noise)),
                "decoder (one image)": best_ms(lambda: pipe.decoder(latent)),
                "ikr per step": best_ms(lambda: pipe.ikr_denoiser(x16, t)),
                "ckg per step": best_ms(lambda: pipe.ckg_denoiser(x16, t)),
                "fusion per step": best_ms(lambda: pipe.fusion_net(x24, eps, eps, t, seg)),
                f"whole frame, {steps} steps, magimg+seg": best_ms(lambda: pipe(frame, outputs="magimg,seg"), 2),
            }
        print(json.dumps({spec: rows[spec]}), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--anchor", default=ANCHOR, help="commit to compare with (default: %(default)s)")
    parser.add_argument("--skip-anchor", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (SHARED / "val.txt").is_file():
        print(f"MSRS not found at {SHARED}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAGICFUSE_MODEL": str(REPO / "models" / "demo")}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip(), "cpu_count": os.cpu_count(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames_dir, one_dir = tmp / "frames", tmp / "one"
        names = write_frames(frames_dir, args.frames)
        one_dir.mkdir()
        (one_dir / f"{names[0]}.png").write_bytes((frames_dir / f"{names[0]}.png").read_bytes())
        now = [sys.executable, "-m", "magicfuse_core.cli", "fuse"]
        report["rows"].append(per_frame("now: magicfuse fuse --outputs magimg,seg (defaults)",
                                        lambda src, out: [*now, str(src), "--out", str(out), "--outputs", "magimg,seg"],
                                        frames_dir, one_dir, args.frames, env, REPO))
        if not args.skip_anchor:
            anchor_dir = tmp / "anchor"
            subprocess.run(["git", "worktree", "add", "--detach", str(anchor_dir), args.anchor], cwd=REPO, check=True,
                           capture_output=True)
            try:
                # The anchor with its own bundled model and settings (model.json: 25 steps).
                anchor_env = {**env, "PYTHONPATH": str(anchor_dir),
                              "MAGICFUSE_MODEL": str(anchor_dir / "models" / "demo")}
                report["rows"].append(per_frame(f"anchor {args.anchor}: magicfuse fuse (25 steps, torch, 3 decodes)",
                                                lambda src, out: [*now, str(src), "--out", str(out)],
                                                frames_dir, one_dir, args.frames, anchor_env, anchor_dir))
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(anchor_dir)], cwd=REPO, capture_output=True)
            report["speedup"] = round(report["rows"][1]["s_per_frame"] / report["rows"][0]["s_per_frame"], 1)
            print(f"speed-up of the default over the anchor: {report['speedup']}x", flush=True)
        report["rows"].append(node_processing(frames_dir, env))
    report["stages_ms_640x480"] = stage_costs()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
