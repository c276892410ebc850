"""ONNX export of MagicFuse's networks, and a check that ONNX Runtime agrees with torch.

What is exported (names, inputs, outputs, shapes) is the networks' I/O contract
in `magicfuse_core.io_contract`. ikr/ckg are exported as the sampler calls them,
`EpsilonDenoiser` included, so an exported denoiser returns the noise whatever
its body predicts. The call signatures are exactly the pipeline's hooks, so an
ONNX Runtime or TensorRT session wrapped as a callable replaces them one for one
(see the backends). The encoder takes its noise as an input: the graph stays
deterministic and the pipeline keeps control of the seed.

Shapes: the batch axis is always dynamic. Spatial axes are dynamic by default
(every op here, including the UNet's "up-sample to the skip's size", traces to
shape-generic ONNX); `dynamic_spatial=False` fixes them to the export size for
runtimes that want static shapes. Image sizes are rounded up the way the pipeline
pads them (a multiple of 32 pixels), so the exported size is the one the
pipeline will feed.

The legacy TorchScript exporter (`dynamo=False`) is used: it needs no extra
package (onnxscript) and handles everything in these graphs. Weights above the
2 GB protobuf limit (the paper's Phi, 517.67 M parameters in fp32) go to one
external data file `NAME.onnx.data` next to `NAME.onnx`.

`manifest.json` in the export folder records, per component, the file, its
sha256 (graph plus external data: the TensorRT engine-cache key), input/output
names and the shapes used, and the model fingerprint (config + weights), so a
runtime can tell whether an export belongs to the model it is given.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import MagicFuseModel
from ..hashing import sha256_files
from ..io_contract import DEFAULT_COMPONENTS, NET_IO, SAMPLER_COMPONENTS, Channels, input_shapes, latent_size

DEFAULT_OPSET = 17
MANIFEST = "manifest.json"


class EncoderWithNoise(nn.Module):
    """encoder(image, noise) with the noise as a graph input (deterministic export)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.encoder(image, noise=noise)


class StyledDecoder(nn.Module):
    """decoder(latent, style_latent) as one graph (the style latent is an input, not an option)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latent: torch.Tensor, style_latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent, style_latent=style_latent)


def component_module(model: MagicFuseModel, component: str) -> nn.Module:
    """The torch module whose forward matches the component's ONNX signature."""
    if component in ("ikr", "ckg"):
        return model.denoiser(component)
    if component == "fusion":
        return model.fusion
    if component == "decoder":
        return model.autoencoder.decoder
    if component == "styled_decoder":
        return StyledDecoder(model.autoencoder.decoder)
    if component == "encoder":
        return EncoderWithNoise(model.autoencoder.encoder)
    raise ValueError(f"unknown component {component!r}; known: {', '.join(NET_IO)}")


def _fp32_module(model: MagicFuseModel, component: str) -> nn.Module:
    module = component_module(model, component).eval()
    dtypes = {p.dtype for p in module.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"export needs the fp32 weights of {component!r} (got {sorted(map(str, dtypes))}); "
                         "export before applying a reduced-precision backend")
    return module


def example_inputs(model: MagicFuseModel, component: str, batch: int, h: int, w: int,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Plausible inputs: latents in the ranges the sampler produces, t in [0, 1000)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in input_shapes(Channels.of(model), component, batch, h, w).items():
        if name == "t":
            out[name] = torch.randint(0, 1000, shape, generator=g).float()
        elif name in ("latent", "style_latent", "image"):
            out[name] = torch.rand(shape, generator=g)
        else:
            out[name] = torch.randn(shape, generator=g)
    return out


def _dynamic_axes(component: str, shapes: dict[str, tuple[int, ...]], outputs: tuple[str, ...],
                  dynamic_spatial: bool) -> dict[str, dict[int, str]]:
    axes = {}
    for name, shape in shapes.items():
        a = {0: "batch"}
        if dynamic_spatial and len(shape) == 4:
            scale = "4" if name == "image" else ""
            a.update({2: f"{scale}h", 3: f"{scale}w"})
        axes[name] = a
    for name in outputs:
        a = {0: "batch"}
        if dynamic_spatial:
            scale = "4" if name == "image" else ""
            a.update({2: f"{scale}h", 3: f"{scale}w"})
        axes[name] = a
    return axes


def onnx_sha256(path: str | Path) -> str:
    """sha256 over the graph file and its external data file (if any): the engine-cache key."""
    path = Path(path)
    return sha256_files(path, path.with_name(path.name + ".data"))


def model_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's config and weights: says which network an export came from."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_component(model: MagicFuseModel, component: str, path: str | Path, *, height: int, width: int,
                     batch: int = 1, opset: int = DEFAULT_OPSET, dynamic_spatial: bool = True) -> dict:
    """Export one component to `path` (NAME.onnx); returns its manifest entry.

    height, width: IMAGE size (rounded up to the pipeline's padding multiple).
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = latent_size(height, width)
    module = _fp32_module(model, component)
    io = NET_IO[component]
    device = next(module.parameters()).device
    inputs = {k: v.to(device) for k, v in example_inputs(model, component, batch, h, w).items()}
    shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{component}-export-") as tmp:
        tmp_file = Path(tmp) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
            torch.onnx.export(module, tuple(inputs[n] for n in io.inputs), str(tmp_file), dynamo=False,
                              opset_version=opset, input_names=list(io.inputs), output_names=list(io.outputs),
                              dynamic_axes=_dynamic_axes(component, shapes, io.outputs, dynamic_spatial),
                              do_constant_folding=True)
        _move_export(Path(tmp), tmp_file, path)
    return {
        "file": path.name,
        "sha256": onnx_sha256(path),
        "inputs": list(io.inputs),
        "outputs": list(io.outputs),
        "shapes": {k: list(v) for k, v in shapes.items()},
        "dynamic_spatial": dynamic_spatial,
        "opset": opset,
        "fingerprint": model_fingerprint(component_module(model, component)),
    }


def _move_export(tmp: Path, tmp_file: Path, path: Path) -> None:
    """Move an export into place; several external tensor files become one NAME.onnx.data."""
    extra = [p for p in tmp.iterdir() if p != tmp_file]
    data_path = path.with_name(path.name + ".data")
    data_path.unlink(missing_ok=True)
    if not extra:
        shutil.move(str(tmp_file), str(path))
        return
    import onnx  # noqa: PLC0415 (only large models take this path)

    proto = onnx.load(str(tmp_file), load_external_data=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_path.name, size_threshold=1024)


def export_model(model: MagicFuseModel, out_dir: str | Path, *, height: int, width: int, batch: int = 1,
                 opset: int = DEFAULT_OPSET, components=DEFAULT_COMPONENTS, dynamic_spatial: bool = True) -> dict:
    """Export `components` to out_dir/NAME.onnx and write out_dir/manifest.json; returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = latent_size(height, width)
    manifest = {
        "format": "magicfuse-onnx-1",
        "image_size": [h * 4, w * 4],
        "latent_size": [h, w],
        "batch": batch,
        "opset": opset,
        "torch_version": torch.__version__,
        "components": {},
    }
    for component in components:
        manifest["components"][component] = export_component(
            model, component, out_dir / f"{component}.onnx", height=height, width=width, batch=batch,
            opset=opset, dynamic_spatial=dynamic_spatial)
    # Written last and atomically: a manifest that exists describes complete files (several
    # processes, e.g. a node and a CLI run, may export the same model into the shared cache at once).
    tmp = out_dir / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST)
    return manifest


def load_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX export here (missing {path}); run `magicfuse export` first")
    return json.loads(path.read_text())


def export_matches(manifest: dict, model: MagicFuseModel, components=SAMPLER_COMPONENTS,
                   fingerprints: dict[str, str] | None = None) -> bool:
    """True when the manifest holds every component, exported from these very weights."""
    entries = manifest.get("components", {})
    fingerprints = fingerprints or {}
    return all(c in entries and entries[c].get("fingerprint") == (
        fingerprints.get(c) or model_fingerprint(component_module(model, c))) for c in components)


def ort_session(path: str | Path, providers=("CPUExecutionProvider",), threads: int | None = None,
                allow_spinning: bool = False):
    """An ONNX Runtime session with full graph optimisation. allow_spinning=False (the default): its threads
    sleep between runs instead of busy-waiting, which frees the cores for the torch work the pipeline does
    between two sessions (the frame head, the DDIM arithmetic, the step networks on a bf16 CPU). On a 2-core
    AMD EPYC a 2-step 640x480 frame took 2.16 instead of 2.36 s; on an AMX Xeon 1.36 instead of 1.43 s."""
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


@dataclass
class VerifyResult:
    component: str
    shapes: dict
    max_abs_error: float
    max_rel_error: float   # max |onnx - torch| / max |torch|, per output, worst output

    @property
    def ok(self) -> bool:
        return self.max_rel_error <= 1e-3


def verify_onnx(model: MagicFuseModel, component: str, path: str | Path, *, batch: int, height: int, width: int,
                rtol: float = 1e-3, session=None, seed: int = 1) -> VerifyResult:
    """Run torch (fp32, CPU) and ONNX Runtime on the same random inputs and compare.

    Raises AssertionError when an output's max abs error exceeds rtol * its max abs value.
    height, width are IMAGE sizes, so a dynamic export can be checked at a size
    other than the one it was traced at.
    """
    h, w = latent_size(height, width)
    inputs = example_inputs(model, component, batch, h, w, seed=seed)
    module = _fp32_module(model, component)
    device = next(module.parameters()).device
    with torch.no_grad():
        ref = module(*(v.to(device) for v in inputs.values()))
    ref = tuple(r.cpu() for r in (ref if isinstance(ref, tuple) else (ref,)))
    session = session or ort_session(path)
    got = session.run(list(NET_IO[component].outputs), {k: v.numpy() for k, v in inputs.items()})
    worst_abs = worst_rel = 0.0
    for name, r, g in zip(NET_IO[component].outputs, ref, got):
        r = r.numpy()
        if r.shape != g.shape:
            raise AssertionError(f"{component}.{name}: ONNX shape {g.shape} != torch {r.shape}")
        err = float(np.abs(r - g).max())
        rel = err / max(float(np.abs(r).max()), 1e-12)
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        if rel > rtol:
            raise AssertionError(f"{component}.{name}: ONNX Runtime differs from torch by {err:.3g} "
                                 f"({rel:.3g} of the output range > {rtol})")
    return VerifyResult(component, {k: list(v.shape) for k, v in inputs.items()}, worst_abs, worst_rel)
