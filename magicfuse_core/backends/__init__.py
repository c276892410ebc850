"""Inference backends: how the pipeline's five networks are executed.

Per DDIM step the pipeline calls three hooks (`ikr_denoiser(x16, t)`,
`ckg_denoiser(x16, t)`, `fusion_net(x24, eps_ikr, eps_ckg, t, seg_state)`), and
per frame the `encoder(image, noise)` once and the `decoder(latent)` once per
decoded output. A backend supplies callables with those signatures (the I/O
contract in `magicfuse_core.io_contract`); the pipeline attaches them with
`MagicFusePipeline.use_backend`. Everything around the hooks (the schedule
arithmetic, the radiation correction, the noise mix) stays in fp32 torch. Every
hook returns fp32 tensors on the pipeline's device.

    pipe.use_backend("auto")        # default: onnxruntime on CPU, the torch fast path on CUDA
    pipe.use_backend("torch")       # eager fp32
    pipe.use_backend("torch", precision="bf16", channels_last=True, cuda_graph=True)
    pipe.use_backend("torch-compiled", mode="max-autotune")
    pipe.use_backend("onnxruntime")
    pipe.use_backend("onnxruntime:sampler_nets=torch-bf16")  # autoencoder in ORT, step nets in torch bf16
    pipe.use_backend("tensorrt", precision="fp16", height=480, width=640)

Modules: `registry` (names, availability, spec strings), `torch_fast`,
`onnx_export`, `onnx_runtime`, `tensorrt_engines` with `engine_cache`.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from ..io_contract import AUTOENCODER_COMPONENTS, DEFAULT_COMPONENTS, SAMPLER_COMPONENTS
from .registry import (BACKENDS, DEFAULT_BACKEND, OPTIONS, BackendInfo, BackendUnavailable, available_backends,
                       check_backend, cpu_has_native_bf16, default_cache_dir, parse_backend_spec)

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "BackendInfo", "BackendUnavailable", "available_backends", "build_hooks",
           "check_backend", "parse_backend_spec", "resolve_auto"]

log = logging.getLogger(__name__)

# What `auto` picks on CUDA: bf16 weights (GroupNorm and the eps conversion stay fp32), NHWC
# convolutions and one CUDA graph per network and input shape (docs/PERFORMANCE.md: the step loop issues
# tens of thousands of small kernels).
CUDA_FAST_PATH = {"precision": "bf16", "channels_last": True, "cuda_graph": True}


def resolve_auto(device: torch.device, native_bf16: bool | None = None) -> tuple[str, dict, str]:
    """(backend, options, why) that `auto` stands for on `device` (`native_bf16`: default, ask the CPU)."""
    if device.type == "cuda":
        return "torch", dict(CUDA_FAST_PATH), "CUDA: the torch fast path (bf16, channels_last, CUDA graphs)"
    try:
        check_backend("onnxruntime", device)
    except BackendUnavailable as exc:
        return "torch", {}, f"CPU: ONNX Runtime unavailable ({exc}); eager torch"
    if cpu_has_native_bf16() if native_bf16 is None else native_bf16:
        # Measured at 640x480 on 2 cores (docs/PERFORMANCE.md): Ψ+Φ+F per step 167 ms in torch bf16 NHWC
        # against 303 ms in ONNX Runtime fp32; the InstanceNorm autoencoder loses 8 % in bf16, so it stays fp32.
        return "onnxruntime", {"sampler_nets": "torch-bf16"}, (
            "CPU with native bf16 (AMX / AVX512-BF16): ONNX Runtime fp32 for the encoder and decoder, "
            "torch bf16 channels_last for the step networks")
    return "onnxruntime", {}, "CPU: ONNX Runtime (fused CPU kernels, faster than eager torch on these networks)"


def build_hooks(model, device: torch.device, spec: str = DEFAULT_BACKEND, *,
                inference_size: tuple[int, int] | None = None, **opts) -> tuple[dict[str, Callable], BackendInfo]:
    """The five hooks of backend `spec` for `model` on `device`, and what was chosen.

    `spec` is a name or "NAME:KEY=VALUE,..." (as the CLI's --backend and the node's
    `backend` parameter pass it); keyword options override the spec's. Options:
      torch:          precision (fp32 | bf16 | fp16), channels_last, cuda_graph, cpu_precision
      torch-compiled: mode (None | "reduce-overhead" | "max-autotune" | ...), compile_backend, precision,
                      channels_last, cpu_precision
      onnxruntime:    onnx_dir, providers, io_binding, threads, sampler_nets (onnxruntime | torch-bf16)
      tensorrt:       precision (fp16 | bf16 | fp32), height, width (image size the engines are built for;
                      default the pipeline's inference_size or 480x640), max_batch, cache_dir, onnx_dir,
                      workspace_gib
    Unknown options raise ValueError; an unusable backend raises BackendUnavailable.
    """
    from .torch_fast import autoencoder_hooks, restore_fp32, torch_hooks  # noqa: PLC0415 (loaded on demand)

    device = torch.device(device)
    name, spec_opts = parse_backend_spec(spec)
    opts = {**spec_opts, **opts}
    requested, notes = name, []
    if name == "auto":
        if opts:
            raise ValueError(f"backend 'auto' takes no options (got {sorted(opts)}); name a backend to set them")
        name, opts, why = resolve_auto(device)
        notes.append(why)
    check_backend(name, device, **opts)
    unknown = set(opts) - OPTIONS[name]
    if unknown:
        raise ValueError(f"unknown option(s) for backend {name!r}: {sorted(unknown)}; allowed: {sorted(OPTIONS[name])}")
    fixed_size = None
    if name in ("torch", "torch-compiled"):
        hooks = torch_hooks(model, device, precision=opts.get("precision", "fp32"),
                            channels_last=bool(opts.get("channels_last", False)),
                            cuda_graph=bool(opts.get("cuda_graph", False)) and name == "torch",
                            cpu_precision=bool(opts.get("cpu_precision", False)),
                            compile_mode=opts.get("mode") if name == "torch-compiled" else None,
                            compile_backend=(opts.get("compile_backend", "inductor")
                                             if name == "torch-compiled" else None),
                            notes=notes)
    else:
        for component in ("ikr", "ckg", "fusion"):
            restore_fp32(getattr(model, component))  # exports need the fp32 weights
        if name == "onnxruntime":
            from .onnx_runtime import onnxruntime_hooks  # noqa: PLC0415

            step_nets_in_torch = opts.get("sampler_nets", "onnxruntime") == "torch-bf16"
            components = AUTOENCODER_COMPONENTS if step_nets_in_torch else DEFAULT_COMPONENTS
            hooks = onnxruntime_hooks(model, device, onnx_dir=opts.get("onnx_dir"), providers=opts.get("providers"),
                                      io_binding=opts.get("io_binding"), threads=opts.get("threads"),
                                      components=components, notes=notes)
            if step_nets_in_torch:
                step_hooks = torch_hooks(model, device, precision="bf16", channels_last=True, cpu_precision=True,
                                         notes=notes)
                hooks.update({c: step_hooks[c] for c in SAMPLER_COMPONENTS})
        else:
            from .tensorrt_engines import TensorRTBuilder, tensorrt_hooks  # noqa: PLC0415

            fixed_size = (int(opts["height"]), int(opts["width"])) if "height" in opts else (
                inference_size or (480, 640))
            builder = TensorRTBuilder(precision=opts.get("precision", "fp16"),
                                      workspace_gib=float(opts.get("workspace_gib", 8.0)))
            hooks = tensorrt_hooks(model, device, cache_dir=opts.get("cache_dir") or default_cache_dir() / "engines",
                                   onnx_dir=opts.get("onnx_dir"), height=fixed_size[0], width=fixed_size[1],
                                   max_batch=int(opts.get("max_batch", 1)), builder=builder, notes=notes)
            hooks = {**autoencoder_hooks(model), **hooks}  # the autoencoder stays on torch
    info = BackendInfo(name, dict(opts), notes, requested=requested, fixed_size=fixed_size)
    return hooks, info
