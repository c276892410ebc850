"""The TensorRT backend: engines built from the ONNX export, cached, run on torch buffers.

Engines come from `EngineCache`, keyed by everything that decides their bytes.
They run on torch-owned CUDA buffers (`tensor.data_ptr()`, `set_tensor_address`,
`execute_async_v3`) on a stream of their own that is ordered after and before
torch's current stream with events (TensorRT warns about, and synchronises on,
the legacy default stream), with no pycuda. Everything touching the GPU happens
inside `torch.cuda.device(device)`, so `cuda:1` builds and runs on GPU 1.

An engine has one spatial size (its optimisation profile fixes it): the backend
reports that size, and the pipeline runs every frame at it (resizing outputs
back to the frame's size), the usual trade of TensorRT perception nodes. Build
for the camera's size (`height`, `width`) to avoid the resize.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..io_contract import NET_IO, SAMPLER_COMPONENTS, Channels, input_shapes, latent_size
from .engine_cache import EngineCache, EngineKey
from .onnx_runtime import prepare_onnx


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


def engine_shapes(channels: Channels, component: str, *, height: int, width: int, max_batch: int = 1,
                  opt_batch: int | None = None) -> dict[str, tuple]:
    """TensorRT optimisation profile: fixed spatial size (an image of height x width), batch 1..max_batch."""
    h, w = latent_size(height, width)
    lo = input_shapes(channels, component, 1, h, w)
    opt = input_shapes(channels, component, opt_batch or 1, h, w)
    hi = input_shapes(channels, component, max_batch, h, w)
    return {name: (lo[name], opt[name], hi[name]) for name in lo}


def keep_fp32(trt, layer) -> bool:
    """Layers that must not run in fp16/bf16: normalisation statistics, and the timestep
    embedding and the clean-latent -> noise conversion (sin/cos of t * freq with t up to 999;
    sqrt(1 - a_t) near 0), recognised as unary / element-wise ops on 1-D or 2-D tensors.

    Only float layers whose outputs are not shape tensors may carry the constraint: TensorRT
    rejects a float precision on integer layers (the conversion's timestep rounding and
    gather index) and on shape arithmetic.
    """
    if not layer.num_outputs:
        return False
    for j in range(layer.num_outputs):
        out = layer.get_output(j)
        if out.dtype not in (trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16)):
            return False
        if getattr(out, "is_shape_tensor", False):
            return False
    if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.REDUCE):
        return True
    if layer.type in (trt.LayerType.UNARY, trt.LayerType.ELEMENTWISE):
        return len(layer.get_output(0).shape) <= 2
    return False


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
                if keep_fp32(trt, layer):
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


class TensorRTNet:
    """A deserialized engine as a hook, on torch-owned buffers and a stream of its own."""

    def __init__(self, data: bytes, component: str, device: torch.device):
        import tensorrt as trt  # noqa: PLC0415

        self.trt = trt
        self.component = component
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise RuntimeError("deserialize_cuda_engine returned None (corrupt engine or other TensorRT version)")
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            io = NET_IO[component]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if sorted(inputs) != sorted(io.inputs) or sorted(outputs) != sorted(io.outputs):
                raise RuntimeError(f"engine tensors {names} do not match {component}'s {io.inputs + io.outputs}")
            self.inputs, self.outputs = list(io.inputs), list(io.outputs)
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)

    def _torch_dtype(self, name: str) -> torch.dtype:
        dt = self.engine.get_tensor_dtype(name)
        table = {self.trt.float32: torch.float32, self.trt.float16: torch.float16}
        if hasattr(self.trt, "bfloat16"):  # TensorRT >= 9
            table[self.trt.bfloat16] = torch.bfloat16
        if dt not in table:
            raise RuntimeError(f"{self.component}: engine tensor {name} has unsupported dtype {dt}")
        return table[dt]

    def __call__(self, *args):
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            keep = []
            for name, a in zip(self.inputs, args):
                a = a.to(device=self.device, dtype=self._torch_dtype(name)).contiguous()
                keep.append(a)
                if not self.context.set_input_shape(name, tuple(a.shape)):
                    raise ValueError(f"{self.component}: input {name} shape {tuple(a.shape)} is outside the "
                                     "engine's profile; rebuild engines for this size (backend option height/width)")
                self.context.set_tensor_address(name, a.data_ptr())
            outs = []
            for name in self.outputs:
                out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype(name),
                                  device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                outs.append(out)
            self.stream.wait_stream(caller)  # inputs written on the caller's stream are complete
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.component}: TensorRT execution failed")
            caller.wait_stream(self.stream)  # the caller sees the outputs, without a host sync
            for t in keep + outs:
                t.record_stream(self.stream)  # the allocator must not reuse them before the engine is done
            outs = [o.float() for o in outs]
        return tuple(outs) if len(outs) > 1 else outs[0]


def tensorrt_hooks(model, device: torch.device, *, cache_dir, onnx_dir=None, precision: str = "fp16",
                   height: int = 480, width: int = 640, max_batch: int = 1, builder=None,
                   load: Callable[[bytes, str], Any] | None = None, env: GPUEnvironment | None = None,
                   notes: list[str] | None = None) -> dict[str, Callable]:
    """Export the three sampler nets, get engines from the cache (building what is missing), wrap them.

    builder (`.build(onnx_path, shapes) -> bytes`, `.flags() -> dict`, `.precision`),
    load (`(bytes, component) -> hook`) and env are injectable: tests pass fakes,
    so the export -> key -> cache -> load chain runs without TensorRT. The autoencoder
    stays on torch (two passes per frame).
    """
    builder = builder or TensorRTBuilder(precision=precision)
    load = load or (lambda data, component: TensorRTNet(data, component, device))
    env = env or GPUEnvironment.detect(device)
    onnx_dir, manifest = prepare_onnx(model, onnx_dir, height=height, width=width, batch=max_batch,
                                      components=SAMPLER_COMPONENTS, notes=notes)
    cache = EngineCache(Path(cache_dir))
    channels = Channels.of(model)
    hooks = {}
    for component in SAMPLER_COMPONENTS:
        onnx_path = onnx_dir / f"{component}.onnx"
        shapes = engine_shapes(channels, component, height=height, width=width, max_batch=max_batch)
        key = EngineKey.create(manifest["components"][component]["sha256"], env.tensorrt_version, env.gpu_name,
                               env.compute_capability, builder.precision, shapes, builder.flags())
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():  # cuda:N builds on N
            result = cache.get_or_build(component, key, lambda p=onnx_path, s=shapes: builder.build(p, s),
                                        lambda data, c=component: load(data, c))
        if notes is not None:
            notes.append(f"{component}: {'built' if result.built else 'loaded'} {result.path.name}"
                         + (f" ({result.reason})" if result.built else ""))
        hooks[component] = result.engine
    return hooks
