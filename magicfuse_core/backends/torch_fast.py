"""The torch backend: the model's own networks, optionally reduced precision, NHWC,
CUDA-graphed or compiled.

Every hook returns fp32 tensors on the pipeline's device that it owns (a copy,
never a buffer a compiled graph or a CUDA graph will overwrite on its next call).
The denoisers' clean-latent -> noise conversion (`EpsilonDenoiser`) wraps the
reduced-precision body and computes in fp32.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn as nn

from ..denoiser import EpsilonDenoiser
from ..io_contract import SAMPLER_COMPONENTS
from .onnx_export import EncoderWithNoise, StyledDecoder

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile recompiles once per new input shape; past dynamo's limit (8 by default) it
# silently runs eager. A node sees a handful of camera sizes, a sweep many more.
COMPILE_RECOMPILE_LIMIT = 64


def cast_for_precision(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert a network's weights to `dtype` in place, keeping every GroupNorm in fp32.

    Our modules compute GroupNorm on fp32 inputs (GroupNorm32), so its weights
    must stay fp32; every other layer computes in `dtype`.
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


def restore_fp32(net: nn.Module) -> None:
    if any(p.dtype != torch.float32 for p in net.parameters()):
        log.warning("converting %s back to fp32 from reduced precision (precision already lost; reload the "
                    "model for exact fp32 results)", type(net).__name__)
        net.float()


class TorchNet:
    """A network as a hook: inputs cast to its compute dtype / memory format, outputs fp32 copies."""

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
        # copy=True: a compiled net ("reduce-overhead") returns tensors owned by its CUDA graph,
        # which its next call overwrites (the CKG call would overwrite eps_ikr).
        if isinstance(out, tuple):
            return tuple(o.to(torch.float32, copy=True) for o in out)
        return out.to(torch.float32, copy=True)


class CUDAGraphNet:
    """Replays one CUDA graph per input signature instead of launching the net's kernels.

    Inputs are copied into static buffers, the graph is replayed on the current
    stream and the outputs are cloned (the static outputs are overwritten by the
    next replay). All graphs share one memory pool. Capture and replay happen on
    the hook's own device, whatever the current device is (cuda:N, N > 0).
    """

    def __init__(self, fn: Callable, device: torch.device, pool=None, warmup: int = 2):
        self.fn = fn
        self.device = torch.device(device)
        self.pool = pool
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[Any, list[torch.Tensor], Any]] = {}

    @staticmethod
    def _signature(args) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device, a.is_contiguous(memory_format=torch.channels_last))
                     for a in args)

    def _capture(self, args):
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # lazy init (cuDNN plans, workspaces) must happen outside capture
                self.fn(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out

    @torch.inference_mode()
    def __call__(self, *args):
        with torch.cuda.device(self.device):
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


def _raise_recompile_limit(notes: list[str]) -> None:
    import torch._dynamo  # noqa: PLC0415 (only compiled backends pay for importing dynamo)

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name first
        if hasattr(config, name) and getattr(config, name) < COMPILE_RECOMPILE_LIMIT:
            setattr(config, name, COMPILE_RECOMPILE_LIMIT)
            notes.append(f"torch._dynamo.config.{name} raised to {COMPILE_RECOMPILE_LIMIT} (one compile per input "
                         "shape; past the limit dynamo would run eager without saying so)")
            return


def torch_hooks(model, device: torch.device, *, precision: str = "fp32", channels_last: bool = False,
                cuda_graph: bool = False, compile_mode: str | None = None, compile_backend: str | None = None,
                cpu_precision: bool = False, notes: list[str] | None = None) -> dict[str, Callable]:
    """Hooks for the five components running the model's own networks.

    The sampler's networks take the options; the encoder and decoder (once per frame,
    InstanceNorm-heavy) stay eager fp32. On CPU, precision and channels_last are ignored
    unless cpu_precision=True (bf16 is fast on CPUs with AVX512-BF16 / AMX; fp16 is
    emulated and slow); it also lets a benchmark measure reduced-precision numerics
    without a GPU. cuda_graph is CUDA only.
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
    compiled = compile_mode is not None or compile_backend is not None
    if compiled:
        _raise_recompile_limit(notes)
    dtype = PRECISIONS[precision]
    with torch.cuda.device(device) if on_cuda else nullcontext():
        pool = torch.cuda.graph_pool_handle() if cuda_graph else None
    hooks: dict[str, Callable] = {}
    for component in SAMPLER_COMPONENTS:
        net = getattr(model, component)
        if dtype == torch.float32:
            restore_fp32(net)
        else:
            cast_for_precision(net, dtype)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        fn: Callable = net
        if compiled:
            fn = torch.compile(net, mode=compile_mode, backend=compile_backend or "inductor", dynamic=False)
        fn = TorchNet(fn, dtype, channels_last)
        if component in ("ikr", "ckg"):
            fn = EpsilonDenoiser(fn, net.config.prediction, model.schedule.alphas_cumprod).to(device)
        hooks[component] = CUDAGraphNet(fn, device, pool) if cuda_graph else fn
    return {**hooks, **autoencoder_hooks(model)}


def autoencoder_hooks(model) -> dict[str, Callable]:
    """The encoder and decoders as eager fp32 torch hooks (once per frame, InstanceNorm-heavy)."""
    return {"encoder": EncoderWithNoise(model.autoencoder.encoder), "decoder": model.autoencoder.decoder,
            "styled_decoder": StyledDecoder(model.autoencoder.decoder)}
