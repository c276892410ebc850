"""The ONNX Runtime backend: exported networks run by ONNX Runtime sessions.

The five components are exported once per model (keyed by a fingerprint of the
weights, under $MAGICFUSE_CACHE/onnx/) and wrapped as hooks with the pipeline's
call signatures. On CPU this is the default backend (`auto`): ONNX Runtime's
fused convolution kernels beat eager torch on these small networks, the
autoencoder included.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..hashing import sha256_bytes
from ..io_contract import DEFAULT_COMPONENTS, NET_IO, Channels, latent_size, output_shapes
from .onnx_export import (component_module, export_matches, export_model, load_manifest, model_fingerprint,
                          onnx_sha256, ort_session)
from .registry import BackendUnavailable, default_cache_dir


def check_active_provider(session, wanted: str, path) -> None:
    """ONNX Runtime silently falls back to the CPU when a provider fails to load (a missing
    cuDNN, a driver mismatch): say so instead of running 50x slower than asked."""
    active = session.get_providers()
    if not active or active[0] != wanted:
        raise BackendUnavailable(f"ONNX Runtime could not activate {wanted} for {Path(path).name} (active "
                                 f"providers: {active}); check the CUDA/cuDNN libraries onnxruntime-gpu needs, "
                                 "or use backend 'torch' on this device")


class OrtNet:
    """An ONNX Runtime session as a hook (torch tensors in, fp32 torch tensors out).

    io_binding=True binds the torch tensors' memory directly (inputs and
    preallocated outputs, via data_ptr) instead of copying through numpy: on CUDA
    this keeps everything on the GPU; it also works on CPU.
    """

    def __init__(self, session, component: str, device: torch.device, channels: Channels, io_binding: bool = False):
        self.session = session
        self.component = component
        self.inputs = NET_IO[component].inputs
        self.outputs = NET_IO[component].outputs
        self.device = device
        self.channels = channels
        self.io_binding = io_binding

    def _output_shapes(self, args) -> list[tuple[int, ...]]:
        # The encoder's image is 4x the latent; its noise (and every other first input) is latent-sized.
        b = args[0].shape[0]
        h, w = (args[1] if self.component == "encoder" else args[0]).shape[-2:]
        return list(output_shapes(self.channels, self.component, b, h, w).values())

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
        outs = [torch.empty(s, dtype=torch.float32, device=self.device) for s in self._output_shapes(keep)]
        for n, o in zip(self.outputs, outs):
            binding.bind_output(n, kind, index, np.float32, tuple(o.shape), o.data_ptr())
        with torch.cuda.device(self.device) if kind == "cuda" else nullcontext():
            if kind == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch must be complete
            self.session.run_with_iobinding(binding)
        return tuple(outs) if len(outs) > 1 else outs[0]


def prepare_onnx(model, onnx_dir: str | Path | None, *, height: int, width: int, batch: int = 1,
                 components=DEFAULT_COMPONENTS, dynamic_spatial: bool = True, opset: int = 17,
                 notes: list[str] | None = None) -> tuple[Path, dict]:
    """Reuse onnx_dir's export when it comes from these weights, else export `components` there.

    Default onnx_dir: $MAGICFUSE_CACHE/onnx/<fingerprint of the components>
    (~/.cache/magicfuse by default), so a model is exported once per machine.
    """
    fingerprints = {c: model_fingerprint(component_module(model, c)) for c in components}
    if onnx_dir is None:
        combined = sha256_bytes("".join(fingerprints[c] for c in components).encode())
        onnx_dir = default_cache_dir() / "onnx" / combined[:20]
    onnx_dir = Path(onnx_dir)
    try:
        manifest = load_manifest(onnx_dir)
        same_size = dynamic_spatial or manifest["latent_size"] == list(latent_size(height, width))
        if export_matches(manifest, model, components, fingerprints=fingerprints) and same_size:
            # A truncated or overwritten file in the shared cache is exported again, never loaded.
            damaged = [c for c in components
                       if onnx_sha256(onnx_dir / manifest["components"][c]["file"]) != manifest["components"][c]["sha256"]]
            if not damaged:
                if notes is not None:
                    notes.append(f"reusing ONNX export in {onnx_dir}")
                return onnx_dir, manifest
            if notes is not None:
                notes.append(f"ONNX export in {onnx_dir} damaged ({', '.join(damaged)} differ from the manifest's "
                             "sha256): exporting again")
    except (FileNotFoundError, ValueError, KeyError):
        pass
    manifest = export_model(model, onnx_dir, height=height, width=width, batch=batch, opset=opset,
                            components=components, dynamic_spatial=dynamic_spatial)
    if notes is not None:
        notes.append(f"exported ONNX to {onnx_dir}")
    return onnx_dir, manifest


def onnxruntime_hooks(model, device: torch.device, *, onnx_dir=None, providers=None, io_binding: bool | None = None,
                      threads: int | None = None, height: int = 64, width: int = 64,
                      components=DEFAULT_COMPONENTS, allow_spinning: bool = False,
                      notes: list[str] | None = None) -> dict[str, Callable]:
    """Export (or reuse) `components` (default all five) and wrap ONNX Runtime sessions as hooks."""
    onnx_dir, _ = prepare_onnx(model, onnx_dir, height=height, width=width, components=components, notes=notes)
    wanted = "CPUExecutionProvider"
    if providers is None:
        if device.type == "cuda":
            options = {"device_id": device.index or 0}
            stream = torch.cuda.current_stream(device).cuda_stream
            if stream:  # a non-default torch stream: let ONNX Runtime queue its kernels on it
                options["user_compute_stream"] = str(stream)
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
            wanted = "CUDAExecutionProvider"
        else:
            providers = ["CPUExecutionProvider"]
    io_binding = device.type == "cuda" if io_binding is None else io_binding
    channels = Channels.of(model)
    hooks = {}
    for component in components:
        path = onnx_dir / f"{component}.onnx"
        session = ort_session(path, providers, threads, allow_spinning=allow_spinning)
        check_active_provider(session, wanted, path)
        hooks[component] = OrtNet(session, component, device, channels, io_binding)
    if notes is not None:
        notes.append(f"ONNX Runtime providers: {hooks[components[0]].session.get_providers()}")
    return hooks
