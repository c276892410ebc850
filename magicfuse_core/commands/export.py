"""`magicfuse export` (ONNX) and `magicfuse build-engines` (ahead-of-time TensorRT engines).

    magicfuse export --model models/magicfuse --out exports/480x640 --height 480 --width 640
    magicfuse export --profile tiny --out /tmp/tiny-onnx --verify        # random weights, checked vs torch
    magicfuse build-engines --model models/magicfuse --height 480 --width 640 --precision fp16

`export` writes NAME.onnx (+ NAME.onnx.data for weights over 2 GB) and
manifest.json per component (ikr, ckg, fusion, decoder, encoder by default).
`build-engines` exports the sampler's three networks (or reuses --onnx) and fills
the engine cache the `tensorrt` backend reads, so a robot starts without a
minutes-long build; it needs TensorRT and a GPU, and says so otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checkpoint import MODEL_PROFILES


def _load_model(args):
    from ..checkpoint import load_model, random_model  # noqa: PLC0415

    if args.model is not None:
        return load_model(args.model)
    return random_model(args.profile, seed=args.seed)


def _model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="model folder (model.json + safetensors)")
    src.add_argument("--profile", choices=sorted(MODEL_PROFILES), help="random weights of a profile instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (--profile)")
    p.add_argument("--height", type=int, default=480, help="image height the graphs are traced/built for (default 480)")
    p.add_argument("--width", type=int, default=640, help="image width (default 640)")


def register(subparsers) -> None:
    """Add the `export` and `build-engines` sub-commands."""
    p = subparsers.add_parser("export", help="export the networks to ONNX (dynamic batch and spatial size)",
                              description="Export the denoisers, the fusion network and the autoencoder to ONNX "
                                          "with a manifest (sha256, shapes, weight fingerprint).")
    _model_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch", type=int, default=1, help="batch size traced (the batch axis stays dynamic)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--components", default="ikr,ckg,fusion,decoder,encoder",
                   help="comma-separated subset of ikr,ckg,fusion,decoder,encoder")
    p.add_argument("--static", action="store_true", help="fix the spatial size to --height x --width")
    p.add_argument("--verify", action="store_true", help="compare ONNX Runtime (CPU) with torch after export")
    p.set_defaults(func=run_export)

    b = subparsers.add_parser("build-engines", help="build TensorRT engines ahead of time into the engine cache",
                              description="Export (or reuse) ONNX files of ikr, ckg and fusion and build TensorRT "
                                          "engines for one image size into the cache the tensorrt backend uses.")
    _model_args(b)
    b.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    b.add_argument("--max-batch", type=int, default=1, help="largest batch the engines accept (default 1)")
    b.add_argument("--cache-dir", type=Path, help="engine cache (default $MAGICFUSE_CACHE/engines)")
    b.add_argument("--onnx", type=Path, help="ONNX export folder to use or fill (default: cache by fingerprint)")
    b.add_argument("--workspace-gib", type=float, default=8.0, help="TensorRT builder workspace (default 8 GiB)")
    b.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    b.set_defaults(func=run_build_engines)


def run_export(args) -> int:
    from ..backends.onnx_export import export_model, verify_onnx  # noqa: PLC0415
    from ..io_contract import DEFAULT_COMPONENTS, NET_IO  # noqa: PLC0415

    components = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = [c for c in components if c not in NET_IO]
    if unknown or not components:
        raise ValueError(f"unknown component(s) {unknown}; choose from {','.join(DEFAULT_COMPONENTS)}")
    model = _load_model(args)
    manifest = export_model(model, args.out, height=args.height, width=args.width, batch=args.batch,
                            opset=args.opset, components=components, dynamic_spatial=not args.static)
    for name, entry in manifest["components"].items():
        print(f"{name:8s} {args.out / entry['file']}  sha256 {entry['sha256'][:16]}  inputs "
              + ", ".join(f"{k}{tuple(v)}" for k, v in entry["shapes"].items()))
    if args.verify:
        for name in components:
            res = verify_onnx(model, name, args.out / f"{name}.onnx", batch=args.batch, height=args.height,
                              width=args.width)
            print(f"verify {name:8s} max |onnxruntime - torch| = {res.max_abs_error:.3g} "
                  f"({res.max_rel_error:.3g} of the output range)")
    print(f"wrote {args.out / 'manifest.json'}")
    return 0


def run_build_engines(args) -> int:
    import torch  # noqa: PLC0415

    from ..backends.registry import check_backend, default_cache_dir  # noqa: PLC0415
    from ..backends.tensorrt_engines import TensorRTBuilder, tensorrt_hooks  # noqa: PLC0415

    device = torch.device(args.device)
    check_backend("tensorrt", device)
    model = _load_model(args).to(device)
    notes: list[str] = []
    cache_dir = args.cache_dir or default_cache_dir() / "engines"
    builder = TensorRTBuilder(precision=args.precision, workspace_gib=args.workspace_gib)
    tensorrt_hooks(model, device, cache_dir=cache_dir, onnx_dir=args.onnx, precision=args.precision,
                   height=args.height, width=args.width, max_batch=args.max_batch, builder=builder, notes=notes)
    for note in notes:
        print(note)
    print(json.dumps({"cache_dir": str(cache_dir), "height": args.height, "width": args.width,
                      "precision": args.precision, "max_batch": args.max_batch}))
    return 0
