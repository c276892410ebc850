"""Which backends exist, whether one can run here, and how a spec string reads.

A backend that cannot run here raises `BackendUnavailable` (a RuntimeError) that
names what is missing and how to install it; nothing falls back silently.
"""
from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("auto", "torch", "torch-compiled", "onnxruntime", "tensorrt")
DEFAULT_BACKEND = "auto"

# Options each backend takes (see `magicfuse_core.backends.build_hooks`).
OPTIONS = {
    "auto": set(),
    "torch": {"precision", "channels_last", "cuda_graph", "cpu_precision"},
    "torch-compiled": {"mode", "compile_backend", "precision", "channels_last", "cpu_precision"},
    "onnxruntime": {"onnx_dir", "providers", "io_binding", "threads", "sampler_nets"},
    "tensorrt": {"precision", "height", "width", "max_batch", "cache_dir", "onnx_dir", "workspace_gib"},
}


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run in this environment (message says why and how to fix it)."""


@dataclass
class BackendInfo:
    """What a pipeline runs on: the backend's name, its options, and notes worth logging once.

    requested: what was asked for ("auto" resolves to a concrete name, with the reason in notes);
    fixed_size: (H, W) when the backend only runs one image size (TensorRT engines).
    """

    name: str
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    requested: str | None = None
    fixed_size: tuple[int, int] | None = None

    def summary(self) -> str:
        chosen = self.name if self.requested in (None, self.name) else f"{self.requested} -> {self.name}"
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return chosen + (f":{opts}" if opts else "") + "".join(f"; {n}" for n in self.notes)


# Where the onnxruntime backend runs the three step networks (Ψ, Φ, F/S): in ONNX Runtime with the
# autoencoder, or in torch bf16 / channels_last (oneDNN), which is faster on CPUs with native bf16.
SAMPLER_NETS = ("onnxruntime", "torch-bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), where oneDNN's bf16 convolutions
    beat fp32; elsewhere bf16 is emulated and slower. Reads /proc/cpuinfo (False where it is missing)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAGICFUSE_CACHE", Path.home() / ".cache" / "magicfuse"))


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
    if name in ("auto", "torch"):
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
        if opts.get("sampler_nets", "onnxruntime") not in SAMPLER_NETS:
            raise ValueError(f"onnxruntime option sampler_nets must be one of {' | '.join(SAMPLER_NETS)}, "
                             f"got {opts['sampler_nets']!r}")
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
