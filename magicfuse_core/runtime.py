"""Inference backends: how the sampler's three networks are executed.

The pipeline calls three hooks per DDIM step (`pipe.ikr_denoiser(x16, t)`,
`pipe.ckg_denoiser(x16, t)`, `pipe.fusion_net(x24, eps_ikr, eps_ckg, t, seg_state)`);
a backend replaces them with callables of the same signatures. Everything around
the hooks (the schedule arithmetic, the radiation correction, the noise mix, the
encoder and the decoder) stays in fp32 torch: those are a handful of element-wise
ops per step and two autoencoder passes per frame, against three network
forwards per step. Every hook returns fp32 tensors on the pipeline's device.

    apply_backend(pipe, "torch")                                   # eager fp32 (default)
    apply_backend(pipe, "torch", precision="bf16", channels_last=True, cuda_graph=True)
    apply_backend(pipe, "torch-compiled", mode="max-autotune")     # torch.compile
    apply_backend(pipe, "onnxruntime")                             # CPU EP, or CUDA EP on a CUDA pipe
    apply_backend(pipe, "tensorrt", precision="fp16", height=480, width=640)

Torch fast path (options of "torch"; they take effect on CUDA only and are
ignored, with a note, on CPU, unless cpu_precision=True applies precision and
channels_last there too):
- precision="bf16" | "fp16": the three networks' weights are converted in place,
  except GroupNorm (whose inputs our modules up-cast to fp32 anyway, so its
  statistics and affine stay fp32); inputs are cast on the way in and outputs
  back to fp32 on the way out, so the schedule arithmetic stays fp32. Attention
  already goes through scaled_dot_product_attention (flash / memory-efficient
  kernels, no N x N score matrix in memory).
- channels_last=True: NHWC weights and inputs (tensor-core friendly convolutions).
- cuda_graph=True: each network is captured once per input shape into a CUDA
  graph and replayed (static input buffers, outputs cloned), removing the launch
  overhead of its hundreds of small kernels; deadline-aware sampling keeps
  working because the step loop itself stays in Python. `GraphedSampler` below
  captures the whole step loop instead (one replay per frame) for callers that
  run `fused_sample` directly with fixed shapes and no deadline.

ONNX Runtime and TensorRT export the networks with `export.py` first (into
`onnx_dir`, reused when its manifest says it came from the same weights).
TensorRT engines come from `engine_cache.EngineCache`, keyed by everything that
decides their bytes; they run on torch-owned CUDA buffers and torch's current
stream (`tensor.data_ptr()`, `torch.cuda.current_stream().cuda_stream`,
`set_tensor_address` + `execute_async_v3`), with no pycuda.

A backend that cannot run here raises `BackendUnavailable` (a RuntimeError) that
names what is missing and how to install it; nothing falls back silently.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .export import (NET_IO, SAMPLER_COMPONENTS, component_module, export_matches, export_model, latent_size,
                     load_manifest, model_fingerprint, ort_session)
from .sampler import SampleOutput, fused_sample

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compiled", "onnxruntime", "tensorrt")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HOOKS = {"ikr": "ikr_denoiser", "ckg": "ckg_denoiser", "fusion": "fusion_net"}


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run in this environment (message says why and how to fix it)."""


# ---- availability -------------------------------------------------------------------
def _require_module(module: str, backend: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {backend!r} needs the Python package '{module}', which is not "
                                 f"installed ({exc}). Install it with: {hint}") from exc


def check_backend(name: str, device: str | torch.device = "cpu", **opts) -> None:
    """Raise BackendUnavailable (or ValueError for an unknown name) unless `name` can run on `device`."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {' | '.join(BACKENDS)}")
    if name == "torch":
        return
    if name == "torch-compiled":
        if opts.get("compile_backend", "inductor") == "inductor" and device.type == "cpu":
            cxx = os.environ.get("CXX", "g++")
            if shutil.which(cxx) is None:
                raise BackendUnavailable(f"backend 'torch-compiled' (inductor) on CPU needs a C++ compiler ({cxx!r} "
                                         "not found on PATH): install one (e.g. `apt-get install g++`) or pass "
                                         "compile_backend='eager'")
        return
    if name == "onnxruntime":
        ort = _require_module("onnxruntime", name, "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)")
        _require_module("onnx", name, "pip install onnx")
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("backend 'onnxruntime' on a CUDA device needs the CUDA execution provider, "
                                     f"which this onnxruntime lacks (providers: {ort.get_available_providers()}). "
                                     "Install it with: pip uninstall onnxruntime && pip install onnxruntime-gpu")
        return
    if name == "tensorrt":
        if device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable("backend 'tensorrt' needs an NVIDIA GPU and a CUDA build of torch "
                                     f"(pipeline device: {device}, torch.cuda.is_available()="
                                     f"{torch.cuda.is_available()}); run it on a CUDA device (device='cuda', --device cuda)")
        _require_module("tensorrt", name, "pip install tensorrt (NVIDIA TensorRT 10.x Python wheels; needs a CUDA "
                                          "12 driver), see https://docs.nvidia.com/deeplearning/tensorrt/")
        _require_module("onnx", name, "pip install onnx")


def available_backends(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """{backend: None if usable here, else the reason it is not}."""
    out = {}
    for name in BACKENDS:
        try:
            check_backend(name, device)
            out[name] = None
        except BackendUnavailable as exc:
            out[name] = str(exc)
    return out


# ---- torch backend ---------------------------------------------------------------------
def cast_for_precision(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert a network's weights to `dtype` in place, keeping every GroupNorm in fp32.

    Our modules call GroupNorm on fp32 inputs (GroupNorm32 / _norm32), so its
    weights must stay fp32; every other layer computes in `dtype`.
    """
    for module in net.modules():
        if isinstance(module, nn.GroupNorm):
            module.float()
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(module, name, b.to(dtype))
    return net


class TorchNet:
    """A network as a hook: inputs cast to its compute dtype / memory format, outputs fp32."""

    def __init__(self, net: Callable, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        self.net = net
        self.dtype = dtype
        self.channels_last = channels_last

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return x  # timesteps stay fp32: the embeddings compute in fp32 and cast themselves
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, *args):
        out = self.net(*(self._prepare(a) for a in args))
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


class CUDAGraphNet:
    """Replays one CUDA graph per input signature instead of launching the net's kernels.

    Inputs are copied into static buffers, the graph is replayed on the current
    stream and the outputs are cloned (the static outputs are overwritten by the
    next replay). All graphs share one memory pool.
    """

    def __init__(self, fn: Callable, pool=None, warmup: int = 2):
        self.fn = fn
        self.pool = pool
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[Any, list[torch.Tensor], Any]] = {}

    @staticmethod
    def _signature(args) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device, a.is_contiguous(memory_format=torch.channels_last))
                     for a in args)

    def _capture(self, args):
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # lazy init (cuDNN plans, workspaces) must happen outside capture
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out

    @torch.inference_mode()
    def __call__(self, *args):
        sig = self._signature(args)
        if sig not in self.graphs:
            self.graphs[sig] = self._capture(args)
        graph, static_in, static_out = self.graphs[sig]
        for dst, src in zip(static_in, args):
            dst.copy_(src)
        graph.replay()
        if isinstance(static_out, tuple):
            return tuple(o.clone() for o in static_out)
        return static_out.clone()


class GraphedSampler:
    """`fused_sample` with the whole step loop captured as one CUDA graph per shape/setting.

    Same call signature as `fused_sample`. Falls back to the eager loop (same
    results) when not on CUDA, or when a time budget or a callback asks for
    per-step decisions that a graph cannot make. Only for fixed shapes: each new
    (shapes, steps, tau, classes) combination is captured once.
    """

    def __init__(self, warmup: int = 1):
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def __call__(self, ikr_denoiser, ckg_denoiser, fusion_net, cond_latent, z_T, seg_T, schedule, *, tau=0.4,
                 thermal_classes=(2,), return_weights=False, time_budget_s=None, clock=time.perf_counter,
                 callback=None) -> SampleOutput:
        if any(isinstance(h, CUDAGraphNet) for h in (ikr_denoiser, ckg_denoiser, fusion_net)):
            raise ValueError("GraphedSampler captures the whole loop: give it plain hooks (cuda_graph=False), "
                             "CUDA graphs cannot be captured inside each other")
        if cond_latent.device.type != "cuda" or time_budget_s is not None or callback is not None:
            return fused_sample(ikr_denoiser, ckg_denoiser, fusion_net, cond_latent, z_T, seg_T, schedule, tau=tau,
                                thermal_classes=thermal_classes, return_weights=return_weights,
                                time_budget_s=time_budget_s, clock=clock, callback=callback)
        key = (tuple(cond_latent.shape), tuple(seg_T.shape), cond_latent.dtype, schedule.timesteps,
               schedule.num_train_timesteps, schedule.beta_start, schedule.beta_end, schedule.beta_schedule,
               float(tau), tuple(thermal_classes), bool(return_weights),
               id(ikr_denoiser), id(ckg_denoiser), id(fusion_net))
        if key not in self.graphs:
            self.pool = self.pool or torch.cuda.graph_pool_handle()
            static = [cond_latent.clone(), z_T.clone(), seg_T.clone()]

            def run():  # no synchronising clock inside a capture
                return fused_sample(ikr_denoiser, ckg_denoiser, fusion_net, *static, schedule, tau=tau,
                                    thermal_classes=thermal_classes, return_weights=return_weights,
                                    clock=time.perf_counter)

            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = run()
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for dst, src in zip(static, (cond_latent, z_T, seg_T)):
            dst.copy_(src)
        graph.replay()
        return SampleOutput(out.z0_fused.clone(), out.z0_ikr.clone(), out.z0_ckg.clone(), out.seg_state.clone(),
                            out.seg_logits_full.clone(), out.steps_run, False,
                            [w.clone() for w in out.weights], [w.clone() for w in out.corrected_weights])


def torch_hooks(model, device: torch.device, *, precision: str = "fp32", channels_last: bool = False,
                cuda_graph: bool = False, compile_mode: str | None = None, compile_backend: str | None = None,
                cpu_precision: bool = False, notes: list[str] | None = None) -> dict[str, Callable]:
    """Hooks running the model's own networks, optionally reduced-precision / NHWC / graphed / compiled.

    On CPU, precision and channels_last are ignored unless cpu_precision=True (bf16 is
    fast on CPUs with AVX512-BF16 / AMX; fp16 is emulated and slow); it also lets the
    benchmark measure the reduced-precision numerics without a GPU. cuda_graph is CUDA only.
    """
    notes = notes if notes is not None else []
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    on_cuda = device.type == "cuda"
    if not on_cuda and cuda_graph:
        notes.append("cuda_graph takes effect on CUDA only")
        cuda_graph = False
    if not on_cuda and not cpu_precision and (precision != "fp32" or channels_last):
        notes.append(f"precision={precision}, channels_last={channels_last} take effect on CUDA only "
                     "(cpu_precision=1 applies them on CPU): running fp32 on CPU")
        precision, channels_last = "fp32", False
    dtype = PRECISIONS[precision]
    pool = torch.cuda.graph_pool_handle() if cuda_graph else None
    hooks = {}
    for component in SAMPLER_COMPONENTS:
        net = getattr(model, component)
        if dtype == torch.float32:
            _restore_fp32(net)
        else:
            cast_for_precision(net, dtype)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        fn: Callable = net
        if compile_mode is not None or compile_backend is not None:
            fn = torch.compile(net, mode=compile_mode, backend=compile_backend or "inductor", dynamic=False)
        fn = TorchNet(fn, dtype, channels_last)
        hooks[component] = CUDAGraphNet(fn, pool) if cuda_graph else fn
    return hooks


def _restore_fp32(net: nn.Module) -> None:
    if any(p.dtype != torch.float32 for p in net.parameters()):
        log.warning("converting %s back to fp32 from reduced precision (precision already lost; reload the "
                    "model for exact fp32 results)", type(net).__name__)
        net.float()


# ---- ONNX Runtime backend -----------------------------------------------------------------
def _output_shapes(component: str, args) -> list[tuple[int, ...]]:
    b, c, h, w = args[0].shape
    if component in ("ikr", "ckg"):
        return [(b, c // 2, h, w)]  # x = concat(condition, x_t): eps has half the channels
    if component == "fusion":
        return [(b, args[1].shape[1], h, w), tuple(args[4].shape)]
    raise ValueError(component)


class OrtNet:
    """An ONNX Runtime session as a hook (torch tensors in, fp32 torch tensors out).

    io_binding=True binds the torch tensors' memory directly (inputs and
    preallocated outputs, via data_ptr) instead of copying through numpy: on CUDA
    this keeps everything on the GPU; it also works on CPU.
    """

    def __init__(self, session, component: str, device: torch.device, io_binding: bool = False):
        self.session = session
        self.component = component
        self.inputs = NET_IO[component].inputs
        self.outputs = NET_IO[component].outputs
        self.device = device
        self.io_binding = io_binding

    def __call__(self, *args):
        if len(args) != len(self.inputs):
            raise TypeError(f"{self.component} takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {len(args)}")
        if not self.io_binding:
            feed = {n: a.detach().float().cpu().numpy() for n, a in zip(self.inputs, args)}
            outs = self.session.run(list(self.outputs), feed)
            res = tuple(torch.from_numpy(o).to(self.device) for o in outs)
            return res if len(res) > 1 else res[0]
        binding = self.session.io_binding()
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        index = (self.device.index or 0) if kind == "cuda" else 0
        keep = [a.detach().float().contiguous() for a in args]
        for n, a in zip(self.inputs, keep):
            binding.bind_input(n, kind, index, np.float32, tuple(a.shape), a.data_ptr())
        outs = [torch.empty(s, dtype=torch.float32, device=self.device) for s in _output_shapes(self.component, keep)]
        for n, o in zip(self.outputs, outs):
            binding.bind_output(n, kind, index, np.float32, tuple(o.shape), o.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream().synchronize()  # inputs written by torch must be complete
        self.session.run_with_iobinding(binding)
        return tuple(outs) if len(outs) > 1 else outs[0]


def prepare_onnx(model, onnx_dir: str | Path | None, *, height: int, width: int, batch: int = 1,
                 dynamic_spatial: bool = True, opset: int = 17, notes: list[str] | None = None) -> tuple[Path, dict]:
    """Reuse onnx_dir's export when it comes from these weights, else export the sampler's nets there.

    Default onnx_dir: $MAGICFUSE_CACHE/onnx/<fingerprint of the three networks>
    (~/.cache/magicfuse by default), so a model is exported once per machine.
    """
    fingerprints = {c: model_fingerprint(component_module(model, c)) for c in SAMPLER_COMPONENTS}
    if onnx_dir is None:
        combined = hashlib.sha256("".join(fingerprints[c] for c in SAMPLER_COMPONENTS).encode()).hexdigest()
        onnx_dir = default_cache_dir() / "onnx" / combined[:20]
    onnx_dir = Path(onnx_dir)
    try:
        manifest = load_manifest(onnx_dir)
        if export_matches(manifest, model, fingerprints=fingerprints) and (dynamic_spatial or manifest["latent_size"] == list(latent_size(height, width))):
            if notes is not None:
                notes.append(f"reusing ONNX export in {onnx_dir}")
            return onnx_dir, manifest
    except (FileNotFoundError, ValueError, KeyError):
        pass
    manifest = export_model(model, onnx_dir, height=height, width=width, batch=batch, opset=opset,
                            components=SAMPLER_COMPONENTS, dynamic_spatial=dynamic_spatial)
    if notes is not None:
        notes.append(f"exported ONNX to {onnx_dir}")
    return onnx_dir, manifest


def onnxruntime_hooks(model, device: torch.device, *, onnx_dir=None, providers=None, io_binding: bool | None = None,
                      threads: int | None = None, height: int = 64, width: int = 64,
                      notes: list[str] | None = None) -> dict[str, Callable]:
    """Export (or reuse) the three networks and wrap ONNX Runtime sessions as hooks."""
    onnx_dir, _ = prepare_onnx(model, onnx_dir, height=height, width=width, notes=notes)
    if providers is None:
        if device.type == "cuda":
            options = {"device_id": device.index or 0}
            stream = torch.cuda.current_stream(device).cuda_stream
            if stream:  # a non-default torch stream: let ONNX Runtime queue its kernels on it
                options["user_compute_stream"] = str(stream)
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
    io_binding = device.type == "cuda" if io_binding is None else io_binding
    return {c: OrtNet(ort_session(onnx_dir / f"{c}.onnx", providers, threads), c, device, io_binding)
            for c in SAMPLER_COMPONENTS}


# ---- TensorRT backend ----------------------------------------------------------------------
@dataclass(frozen=True)
class GPUEnvironment:
    """What, besides the network, decides an engine's bytes."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    @classmethod
    def detect(cls, device: torch.device) -> "GPUEnvironment":
        import tensorrt as trt  # noqa: PLC0415

        return cls(trt.__version__, torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))


def engine_shapes(model, component: str, *, height: int, width: int, max_batch: int = 1,
                  opt_batch: int | None = None) -> dict[str, tuple]:
    """TensorRT optimisation profile: fixed spatial size, batch 1..max_batch."""
    from .export import input_shapes  # noqa: PLC0415

    h, w = latent_size(height, width)
    opt_batch = opt_batch or 1
    lo = input_shapes(model, component, 1, h, w)
    opt = input_shapes(model, component, opt_batch, h, w)
    hi = input_shapes(model, component, max_batch, h, w)
    return {name: (lo[name], opt[name], hi[name]) for name in lo}


@dataclass
class TensorRTBuilder:
    """Builds a serialized engine from an ONNX file with the TensorRT Python API (TensorRT 10)."""

    precision: str = "fp16"
    workspace_gib: float = 8.0
    fp32_norms: bool = True       # keep normalisation layers (and their reductions) in fp32
    tf32: bool = False
    opt_level: int = 3            # builder optimisation level 0..5

    def flags(self) -> dict:
        return {"workspace_gib": self.workspace_gib, "fp32_norms": self.fp32_norms, "tf32": self.tf32,
                "opt_level": self.opt_level}

    def build(self, onnx_path: Path, shapes: dict[str, tuple]) -> bytes:
        import tensorrt as trt  # noqa: PLC0415

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):  # follows NAME.onnx.data external weights
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_gib * (1 << 30)))
        config.builder_optimization_level = self.opt_level
        if not self.tf32:
            config.clear_flag(trt.BuilderFlag.TF32)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        elif self.precision != "fp32":
            raise ValueError(f"TensorRT precision must be fp16 | bf16 | fp32, got {self.precision!r}")
        if self.precision != "fp32" and self.fp32_norms:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if _keep_fp32(trt, layer):
                    layer.precision = trt.float32
                    for j in range(layer.num_outputs):
                        layer.set_output_type(j, trt.float32)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
        return bytes(serialized)


def _keep_fp32(trt, layer) -> bool:
    """Layers that must not run in fp16/bf16: normalisation statistics, and the timestep
    embedding (sin/cos of t * freq with t up to 999: fp16 cannot resolve those angles),
    recognised as unary ops and element-wise ops on 1-D / 2-D (B, C) tensors."""
    if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE):
        return True
    if layer.type in (trt.LayerType.UNARY, trt.LayerType.ELEMENTWISE) and layer.num_outputs:
        return len(layer.get_output(0).shape) <= 2
    return False


class TensorRTNet:
    """A deserialized engine as a hook, on torch-owned buffers and torch's current CUDA stream."""

    def __init__(self, data: bytes, component: str, device: torch.device):
        import tensorrt as trt  # noqa: PLC0415

        self.trt = trt
        self.component = component
        self.device = device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError("deserialize_cuda_engine returned None (corrupt engine or other TensorRT version)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        io = NET_IO[component]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self.inputs) != sorted(io.inputs) or sorted(self.outputs) != sorted(io.outputs):
            raise RuntimeError(f"engine tensors {names} do not match {component}'s {io.inputs + io.outputs}")
        self.inputs, self.outputs = list(io.inputs), list(io.outputs)
        self.context = self.engine.create_execution_context()

    def _torch_dtype(self, name: str) -> torch.dtype:
        dt = self.engine.get_tensor_dtype(name)
        table = {self.trt.float32: torch.float32, self.trt.float16: torch.float16}
        if hasattr(self.trt, "bfloat16"):  # TensorRT >= 9
            table[self.trt.bfloat16] = torch.bfloat16
        if dt not in table:
            raise RuntimeError(f"{self.component}: engine tensor {name} has unsupported dtype {dt}")
        return table[dt]

    def __call__(self, *args):
        keep = []
        for name, a in zip(self.inputs, args):
            a = a.to(device=self.device, dtype=self._torch_dtype(name)).contiguous()
            keep.append(a)
            if not self.context.set_input_shape(name, tuple(a.shape)):
                raise ValueError(f"{self.component}: input {name} shape {tuple(a.shape)} is outside the engine's "
                                 "profile; rebuild engines for this size (magicfuse build-engines --height --width)")
            self.context.set_tensor_address(name, a.data_ptr())
        outs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype(name),
                              device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.component}: TensorRT execution failed")
        outs = [o.float() for o in outs]  # async on the same stream: ordered, no host sync
        return tuple(outs) if len(outs) > 1 else outs[0]


def tensorrt_hooks(model, device: torch.device, *, cache_dir, onnx_dir=None, precision: str = "fp16",
                   height: int = 480, width: int = 640, max_batch: int = 1, builder=None,
                   load: Callable[[bytes, str], Any] | None = None, env: GPUEnvironment | None = None,
                   notes: list[str] | None = None) -> dict[str, Callable]:
    """Export the three nets, get engines from the cache (building what is missing), wrap them as hooks.

    builder (`.build(onnx_path, shapes) -> bytes`, `.flags() -> dict`, `.precision`),
    load (`(bytes, component) -> hook`) and env are injectable: tests pass fakes,
    so the export -> key -> cache -> load chain runs without TensorRT.
    """
    from .engine_cache import EngineCache, EngineKey  # noqa: PLC0415

    builder = builder or TensorRTBuilder(precision=precision)
    load = load or (lambda data, component: TensorRTNet(data, component, device))
    env = env or GPUEnvironment.detect(device)
    onnx_dir, manifest = prepare_onnx(model, onnx_dir, height=height, width=width, batch=max_batch, notes=notes)
    cache = EngineCache(Path(cache_dir))
    hooks = {}
    for component in SAMPLER_COMPONENTS:
        onnx_path = onnx_dir / f"{component}.onnx"
        shapes = engine_shapes(model, component, height=height, width=width, max_batch=max_batch)
        key = EngineKey.create(manifest["components"][component]["sha256"], env.tensorrt_version, env.gpu_name,
                               env.compute_capability, builder.precision, shapes, builder.flags())
        result = cache.get_or_build(component, key, lambda p=onnx_path, s=shapes: builder.build(p, s),
                                    lambda data, c=component: load(data, c))
        if notes is not None:
            notes.append(f"{component}: {'built' if result.built else 'loaded'} {result.path.name}"
                         + (f" ({result.reason})" if result.built else ""))
        hooks[component] = result.engine
    return hooks


# ---- entry point -------------------------------------------------------------------------------
@dataclass
class BackendInfo:
    name: str
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGICFUSE_CACHE", Path.home() / ".cache" / "magicfuse"))


def apply_backend(pipe, name: str = "torch", **opts):
    """Replace the pipeline's three network hooks by those of backend `name`; returns `pipe`.

    Options per backend:
      torch:          precision (fp32 | bf16 | fp16), channels_last, cuda_graph, cpu_precision
      torch-compiled: mode (None | "reduce-overhead" | "max-autotune" | ...), compile_backend, precision,
                      channels_last, cpu_precision
      onnxruntime:    onnx_dir, providers, io_binding, threads
      tensorrt:       precision (fp16 | bf16 | fp32), height, width (image size the engines are built for;
                      default the pipeline's inference_size or 480x640), max_batch, cache_dir, onnx_dir,
                      workspace_gib
    `name` may also be a full spec, "NAME:KEY=VALUE,..." (see parse_backend_spec), as the CLI's
    --backend and the node's `backend` parameter pass it; keyword options override the spec's.
    Unknown options raise ValueError; an unusable backend raises BackendUnavailable.
    """
    if ":" in name:
        name, spec_opts = parse_backend_spec(name)
        opts = {**spec_opts, **opts}
    device = pipe.device
    check_backend(name, device, **opts)
    notes: list[str] = []
    allowed = {
        "torch": {"precision", "channels_last", "cuda_graph", "cpu_precision"},
        "torch-compiled": {"mode", "compile_backend", "precision", "channels_last", "cpu_precision"},
        "onnxruntime": {"onnx_dir", "providers", "io_binding", "threads"},
        "tensorrt": {"precision", "height", "width", "max_batch", "cache_dir", "onnx_dir", "workspace_gib"},
    }[name]
    unknown = set(opts) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) for backend {name!r}: {sorted(unknown)}; allowed: {sorted(allowed)}")
    model = pipe.model
    if name == "torch":
        hooks = torch_hooks(model, device, precision=opts.get("precision", "fp32"),
                            channels_last=bool(opts.get("channels_last", False)),
                            cuda_graph=bool(opts.get("cuda_graph", False)),
                            cpu_precision=bool(opts.get("cpu_precision", False)), notes=notes)
    elif name == "torch-compiled":
        hooks = torch_hooks(model, device, precision=opts.get("precision", "fp32"),
                            channels_last=bool(opts.get("channels_last", False)),
                            cpu_precision=bool(opts.get("cpu_precision", False)),
                            compile_mode=opts.get("mode"), compile_backend=opts.get("compile_backend", "inductor"),
                            notes=notes)
    else:
        _restore_sampler_nets_fp32(model)
        if name == "onnxruntime":
            hooks = onnxruntime_hooks(model, device, onnx_dir=opts.get("onnx_dir"), providers=opts.get("providers"),
                                      io_binding=opts.get("io_binding"), threads=opts.get("threads"), notes=notes)
        else:
            height, width = (int(opts["height"]), int(opts["width"])) if "height" in opts else (
                pipe.inference_size or (480, 640))
            builder = TensorRTBuilder(precision=opts.get("precision", "fp16"),
                                      workspace_gib=float(opts.get("workspace_gib", 8.0)))
            hooks = tensorrt_hooks(model, device, cache_dir=opts.get("cache_dir") or default_cache_dir() / "engines",
                                   onnx_dir=opts.get("onnx_dir"), height=height, width=width,
                                   max_batch=int(opts.get("max_batch", 1)), builder=builder, notes=notes)
    for component, hook in hooks.items():
        setattr(pipe, HOOKS[component], hook)
    pipe.backend_info = BackendInfo(name, dict(opts), notes)
    for note in notes:
        log.info("backend %s: %s", name, note)
    return pipe


def _restore_sampler_nets_fp32(model) -> None:
    for component in SAMPLER_COMPONENTS:
        _restore_fp32(getattr(model, component))


def parse_backend_spec(spec: str) -> tuple[str, dict]:
    """'torch:precision=bf16,channels_last=1,cuda_graph=1' -> ('torch', {...}); values: ints, floats, bools, str."""
    name, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"backend option {item!r} in {spec!r} is not KEY=VALUE")
        opts[key.strip()] = _parse_value(value.strip())
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} in {spec!r}; choose one of: {' | '.join(BACKENDS)}")
    return name, opts


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
