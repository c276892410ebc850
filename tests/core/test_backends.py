"""Backends: selection errors, the torch fast-path machinery on CPU, ONNX Runtime and the
TensorRT plumbing (with a fake engine builder) against eager torch on the tiny profile."""
from __future__ import annotations

import builtins
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from magicfuse_core.backends import BackendUnavailable, available_backends, check_backend, parse_backend_spec
from magicfuse_core.backends.onnx_export import example_inputs, export_matches, load_manifest
from magicfuse_core.backends.onnx_runtime import OrtNet, check_active_provider
from magicfuse_core.backends.tensorrt_engines import GPUEnvironment, engine_shapes, keep_fp32, tensorrt_hooks
from magicfuse_core.backends.torch_fast import TorchNet, cast_for_precision
from magicfuse_core.checkpoint import save_model
from magicfuse_core.io_contract import DEFAULT_COMPONENTS, NET_IO, Channels
from magicfuse_core.pipeline import MagicFusePipeline

STEPS = 3
FRAME = (np.random.default_rng(0).random((1, 40, 56, 3)) * 255).astype(np.uint8)  # padded to 64x64 inside

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def reference():
    """The eager fp32 torch result every backend is compared with."""
    return MagicFusePipeline.random("tiny", seed=3, steps=STEPS)(FRAME, seed=5)


def _pipe() -> MagicFusePipeline:
    return MagicFusePipeline.random("tiny", seed=3, steps=STEPS)


def assert_same_result(result, reference, max_pixel=2, max_changed_labels=0.01):
    diff = np.abs(result.magimg.astype(int) - reference.magimg.astype(int)).max()
    assert diff <= max_pixel, f"MagImg differs by {diff} grey levels"
    changed = (result.seg_labels != reference.seg_labels).mean()
    assert changed <= max_changed_labels, f"{changed:.3%} of the segmentation labels changed"


# ---- selection and errors ---------------------------------------------------------------
def test_unknown_backend_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="auto \\| torch \\| torch-compiled \\| onnxruntime \\| tensorrt"):
        _pipe().use_backend("tensorflow")


def test_unknown_backend_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option.*'precison'"):
        _pipe().use_backend("torch", precison="bf16")


def test_tensorrt_on_cpu_says_a_gpu_is_needed():
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU"):
        _pipe().use_backend("tensorrt")


def test_missing_package_names_it_and_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name.split(".")[0] in ("tensorrt", "onnxruntime"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(BackendUnavailable, match="'tensorrt'.*pip install tensorrt"):
        check_backend("tensorrt", "cuda")
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime"):
        check_backend("onnxruntime", "cpu")
    assert isinstance(BackendUnavailable("x"), RuntimeError)  # the CLI prints RuntimeErrors as one line


def test_available_backends_reports_reasons():
    report = available_backends("cpu")
    assert report["torch"] is None and report["onnxruntime"] is None and report["auto"] is None
    assert "GPU" in report["tensorrt"]


def test_backend_spec_parsing():
    assert parse_backend_spec("torch:precision=bf16,channels_last=1,cuda_graph=true") == (
        "torch", {"precision": "bf16", "channels_last": 1, "cuda_graph": True})
    assert parse_backend_spec("onnxruntime") == ("onnxruntime", {})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_backend_spec("torch:bf16")


# ---- torch backend ------------------------------------------------------------------------
def test_gpu_options_are_ignored_on_cpu_and_results_unchanged(reference):
    pipe = _pipe().use_backend("torch:precision=bf16,channels_last=1", cuda_graph=True)  # spec + keywords
    assert pipe.backend_info.options == {"precision": "bf16", "channels_last": 1, "cuda_graph": True}
    assert "CUDA only" in " ".join(pipe.backend_info.notes)
    assert next(pipe.model.ckg.parameters()).dtype == torch.float32
    assert_same_result(pipe(FRAME, seed=5), reference, max_pixel=0, max_changed_labels=0.0)


def test_reduced_precision_keeps_groupnorm_fp32_and_stays_close():
    """The bf16 machinery itself (weights, input casts, fp32 outputs), run on CPU."""
    pipe = _pipe()
    inputs = list(example_inputs(pipe.model, "ikr", 1, 8, 8).values())
    with torch.no_grad():
        ref = pipe.model.ikr(*inputs)
    cast_for_precision(pipe.model.ikr, torch.bfloat16)
    dtypes = {type(m).__name__: next(m.parameters()).dtype for m in pipe.model.ikr.modules()
              if isinstance(m, (nn.GroupNorm, nn.Conv2d, nn.Linear, nn.LayerNorm))}
    assert dtypes["GroupNorm32"] == torch.float32
    assert dtypes["Conv2d"] == dtypes["Linear"] == dtypes["LayerNorm"] == torch.bfloat16
    out = TorchNet(pipe.model.ikr, torch.bfloat16, channels_last=True)(*inputs)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max() / ref.abs().max() < 0.05


def test_cpu_precision_applies_bf16_on_cpu_within_tolerance(reference):
    pipe = _pipe().use_backend("torch:precision=bf16,cpu_precision=1")
    assert next(pipe.model.ckg.parameters()).dtype == torch.bfloat16
    assert_same_result(pipe(FRAME, seed=5), reference, max_pixel=10, max_changed_labels=0.02)


def test_torch_compiled_backend_runs_and_matches():
    pipe = _pipe().use_backend("torch-compiled", compile_backend="eager")
    inputs = list(example_inputs(pipe.model, "fusion", 1, 8, 8).values())
    for got, want in zip(pipe.fusion_net(*inputs), pipe.model.fusion(*inputs)):
        torch.testing.assert_close(got, want)


# ---- ONNX Runtime -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """$MAGICFUSE_CACHE for this module: exports are made once and reused by fingerprint."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAGICFUSE_CACHE", str(folder))
        yield folder


@pytest.mark.parametrize("io_binding", [False, True])
def test_onnxruntime_sampling_matches_torch(reference, onnx_cache, io_binding):
    pipe = _pipe().use_backend("onnxruntime", io_binding=io_binding, threads=1)
    assert isinstance(pipe.fusion_net, OrtNet) and pipe.fusion_net.io_binding is io_binding
    assert_same_result(pipe(FRAME, seed=5), reference)


def test_frame_segmentation_head_runs_on_onnx_runtime_as_on_torch(tmp_path, monkeypatch):
    # seg_head "frame": the frame head runs as torch before the loop on every backend and the exported F hands
    # its state through; labels and MagImg of ONNX Runtime match the plain torch path.
    from magicfuse_core.models.fusion import FusionConfig, FusionNet

    monkeypatch.setenv("MAGICFUSE_CACHE", str(tmp_path))
    model = MagicFusePipeline.random("tiny", seed=3).model
    torch.manual_seed(6)
    model.fusion = FusionNet(FusionConfig.from_dict({**model.fusion.config.to_dict(), "seg_head": "frame",
                                                     "seg_channels": 8})).eval()
    reference = MagicFusePipeline(model, steps=STEPS)(FRAME, seed=5)
    pipe = MagicFusePipeline(model, steps=STEPS).use_backend("onnxruntime", threads=1)
    assert isinstance(pipe.fusion_net, OrtNet)
    assert_same_result(pipe(FRAME, seed=5), reference)
    # the map comes from the frame alone: another sampling seed leaves it as it was
    assert np.array_equal(MagicFusePipeline(model, steps=STEPS)(FRAME, seed=9).seg_labels, reference.seg_labels)


def test_onnx_export_is_reused_for_the_same_weights_only(onnx_cache):
    pipe = _pipe().use_backend("onnxruntime", threads=1)
    assert any("reusing" in n for n in pipe.backend_info.notes)
    (export_dir,) = (onnx_cache / "onnx").iterdir()
    manifest = load_manifest(export_dir)
    assert export_matches(manifest, pipe.model)
    assert not export_matches(manifest, MagicFusePipeline.random("tiny", seed=4).model)


def test_from_pretrained_applies_the_backend(tmp_path, onnx_cache, reference):
    save_model(MagicFusePipeline.random("tiny", seed=3).model, tmp_path / "model")
    pipe = MagicFusePipeline.from_pretrained(tmp_path / "model", backend="onnxruntime", steps=STEPS)
    assert pipe.backend_info.name == "onnxruntime" and any("reusing" in n for n in pipe.backend_info.notes)
    assert_same_result(pipe(FRAME, seed=5), reference)


# ---- TensorRT plumbing with a fake builder ---------------------------------------------------------
class OnnxAsEngineBuilder:
    """Stands in for TensorRT: the 'engine' is the ONNX file itself, run by ONNX Runtime."""

    precision = "fp16"

    def __init__(self):
        self.built = []

    def flags(self):
        return {"workspace_gib": 1.0}

    def build(self, onnx_path: Path, shapes):
        assert set(shapes) == set(NET_IO[onnx_path.stem].inputs)
        for lo, opt, hi in shapes.values():
            assert lo[1:] == opt[1:] == hi[1:] and lo[0] == 1  # batch dynamic, spatial fixed per profile
        self.built.append(onnx_path.stem)
        return onnx_path.read_bytes()


def load_onnx_engine(data: bytes, component: str):
    import onnxruntime as ort

    return OrtNet(ort.InferenceSession(data, providers=["CPUExecutionProvider"]), component, torch.device("cpu"),
                  Channels())


def test_tensorrt_chain_builds_caches_and_matches_torch(tmp_path, onnx_cache, reference):
    env = GPUEnvironment("10.9.0", "NVIDIA H200", (9, 0))
    builder = OnnxAsEngineBuilder()
    # onnx_dir=None: the export cached by this module's earlier tests is reused
    opts = dict(cache_dir=tmp_path / "engines", onnx_dir=None, height=40, width=56, builder=builder,
                load=load_onnx_engine, env=env)
    pipe, notes = _pipe(), []
    hooks = tensorrt_hooks(pipe.model, pipe.device, notes=notes, **opts)
    assert sorted(builder.built) == ["ckg", "fusion", "ikr"]
    pipe.ikr_denoiser, pipe.ckg_denoiser, pipe.fusion_net = hooks["ikr"], hooks["ckg"], hooks["fusion"]
    assert_same_result(pipe(FRAME, seed=5), reference)  # engines built for 40x56 = the frame's size

    notes.clear()
    tensorrt_hooks(pipe.model, pipe.device, notes=notes, **opts)   # same key: loaded, not built
    assert len(builder.built) == 3 and sum("loaded" in n for n in notes) == 3

    opts["env"] = replace(env, gpu_name="NVIDIA L4", compute_capability=(8, 9))  # another GPU: never reuse
    tensorrt_hooks(pipe.model, pipe.device, notes=notes, **opts)
    assert len(builder.built) == 6


# ---- auto, and the defects a GPU would have shown --------------------------------------------------
def test_auto_runs_onnxruntime_on_cpu_within_tolerance_of_torch(reference, onnx_cache, monkeypatch):
    """The CPU default without native bf16: ONNX Runtime for all five networks, MagImg within 2 grey
    levels of eager torch."""
    monkeypatch.setattr("magicfuse_core.backends.cpu_has_native_bf16", lambda: False)
    pipe = _pipe().use_backend("auto")
    info = pipe.backend_info
    assert (info.requested, info.name) == ("auto", "onnxruntime")
    assert "ONNX Runtime" in info.notes[0]
    assert all(isinstance(h, OrtNet) for h in (pipe.ikr_denoiser, pipe.ckg_denoiser, pipe.fusion_net,
                                               pipe.encoder, pipe.decoder))
    result = pipe(FRAME, seed=5)
    assert_same_result(result, reference, max_pixel=2, max_changed_labels=0.01)
    rel = np.linalg.norm(result.magimg.astype(float) - reference.magimg) / np.linalg.norm(reference.magimg.astype(float))
    assert rel < 1e-2


def test_auto_on_a_cpu_with_native_bf16_runs_the_step_nets_in_torch_bf16(reference, onnx_cache, monkeypatch):
    """AMX / AVX512-BF16 CPUs: the encoder and decoder in ONNX Runtime fp32, Ψ, Φ and F/S in torch bf16
    (the 640x480 figures are in docs/PERFORMANCE.md); the result stays within bf16's tolerance."""
    monkeypatch.setattr("magicfuse_core.backends.cpu_has_native_bf16", lambda: True)
    pipe = _pipe().use_backend("auto")
    info = pipe.backend_info
    assert (info.requested, info.name, info.options) == ("auto", "onnxruntime", {"sampler_nets": "torch-bf16"})
    assert "native bf16" in info.notes[0]
    assert isinstance(pipe.encoder, OrtNet) and isinstance(pipe.decoder, OrtNet)
    assert not any(isinstance(h, OrtNet) for h in (pipe.ikr_denoiser, pipe.ckg_denoiser, pipe.fusion_net))
    assert next(pipe.model.ikr.parameters()).dtype == torch.bfloat16
    result = pipe(FRAME, seed=5)
    assert_same_result(result, reference, max_pixel=10, max_changed_labels=0.02)
    rel = np.linalg.norm(result.magimg.astype(float) - reference.magimg) / np.linalg.norm(reference.magimg.astype(float))
    assert rel < 2e-2


def test_onnxruntime_styled_decoder_matches_torch(onnx_cache):
    pipe = _pipe()
    latent, style = torch.rand(1, 8, 8, 12), torch.rand(1, 8, 8, 12)
    want = pipe.model.autoencoder.decoder(latent, style_latent=style)
    got = pipe.use_backend("onnxruntime").styled_decoder(latent, style)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_sampler_nets_takes_only_known_places():
    with pytest.raises(ValueError, match="sampler_nets must be one of onnxruntime \\| torch-bf16"):
        _pipe().use_backend("onnxruntime:sampler_nets=tensorrt")


@pytest.mark.parametrize("flags, native", [("fpu sse avx512f avx512bw amx_bf16 amx_tile", True),
                                           ("fpu avx512f avx512_bf16", True),
                                           ("fpu sse avx2 avx512f avx512bw avx512_vnni", False)])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    from magicfuse_core.backends.registry import cpu_has_native_bf16

    assert cpu_has_native_bf16(f"processor\t: 0\nflags\t\t: {flags}\nbugs\t: spectre\n") is native
    assert cpu_has_native_bf16("") is False


def test_auto_on_cuda_is_the_torch_fast_path():
    from magicfuse_core.backends import CUDA_FAST_PATH, resolve_auto

    name, opts, why = resolve_auto(torch.device("cuda"))
    assert (name, opts) == ("torch", CUDA_FAST_PATH) and "CUDA" in why
    assert resolve_auto(torch.device("cpu"))[0] == "onnxruntime"


def test_auto_takes_no_options():
    with pytest.raises(ValueError, match="'auto' takes no options"):
        _pipe().use_backend("auto:threads=1")


def test_load_pipeline_says_once_which_backend_runs_and_why(onnx_cache):
    from magicfuse_core.pipeline import load_pipeline

    lines = []
    pipe = load_pipeline("random-tiny", backend="auto", steps=1, log=lines.append)
    said = [line for line in lines if line.startswith("backend:")]
    assert said == [f"backend: {pipe.backend_info.summary()}"]
    assert "auto -> onnxruntime" in said[0] and "CPU" in said[0] and "ONNX Runtime" in said[0]


def test_a_silent_onnxruntime_fallback_to_the_cpu_is_an_error():
    class FellBackToCpu:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.raises(BackendUnavailable, match="could not activate CUDAExecutionProvider"):
        check_active_provider(FellBackToCpu(), "CUDAExecutionProvider", "ikr.onnx")
    check_active_provider(FellBackToCpu(), "CPUExecutionProvider", "ikr.onnx")  # what was asked for: fine


def test_torch_hooks_hand_back_tensors_they_own():
    """A compiled net ("reduce-overhead") returns buffers its next call overwrites: hooks copy them."""
    buffer = torch.ones(1, 8, 4, 4)
    hook = TorchNet(lambda x: buffer)
    first = hook(torch.zeros(1, 8, 4, 4))
    buffer.fill_(2.0)  # the "next call" overwrites the graph-owned output
    assert first.data_ptr() != buffer.data_ptr() and float(first.max()) == 1.0


class _FakeTrt:
    """Just enough of the tensorrt module for keep_fp32."""

    float32, float16, bfloat16, int32, int64 = "f32", "f16", "bf16", "i32", "i64"

    class LayerType:
        NORMALIZATION, REDUCE, UNARY, ELEMENTWISE, CONVOLUTION, GATHER = range(6)


class _FakeTensor:
    def __init__(self, dtype, shape, is_shape_tensor=False):
        self.dtype, self.shape, self.is_shape_tensor = dtype, shape, is_shape_tensor


class _FakeLayer:
    def __init__(self, kind, *outputs):
        self.type, self._outputs, self.num_outputs = kind, outputs, len(outputs)

    def get_output(self, j):
        return self._outputs[j]


def test_tensorrt_fp32_constraint_spares_integer_and_shape_layers():
    trt, T = _FakeTrt, _FakeTrt.LayerType
    assert keep_fp32(trt, _FakeLayer(T.NORMALIZATION, _FakeTensor("f16", (1, 64, 8, 8))))
    assert keep_fp32(trt, _FakeLayer(T.UNARY, _FakeTensor("f16", (1, 128))))           # timestep embedding
    assert not keep_fp32(trt, _FakeLayer(T.CONVOLUTION, _FakeTensor("f16", (1, 64, 8, 8))))
    assert not keep_fp32(trt, _FakeLayer(T.ELEMENTWISE, _FakeTensor("i64", (1,))))      # t.round().long()
    assert not keep_fp32(trt, _FakeLayer(T.ELEMENTWISE, _FakeTensor("i32", (4,), is_shape_tensor=True)))
    assert not keep_fp32(trt, _FakeLayer(T.ELEMENTWISE, _FakeTensor("f32", (4,), is_shape_tensor=True)))
    assert not keep_fp32(trt, _FakeLayer(T.REDUCE))                                       # no outputs


def test_a_fixed_size_backend_runs_every_frame_at_its_size(monkeypatch, reference):
    """TensorRT engines have one size: frames of another size run at it and come back at their own."""
    import magicfuse_core.pipeline as pipeline_module

    real_build = pipeline_module.build_hooks

    def fixed_size_build(model, device, spec, **kwargs):
        hooks, info = real_build(model, device, "torch", **kwargs)
        info.fixed_size = (64, 96)
        return hooks, info

    pipe = _pipe()
    monkeypatch.setattr(pipeline_module, "build_hooks", fixed_size_build)
    pipe.use_backend("tensorrt")
    assert pipe.inference_size == (64, 96) and "resized back" in pipe.backend_info.notes[-1]
    result = pipe(FRAME, seed=5)
    assert result.magimg.shape == FRAME.shape and result.seg_labels.shape == FRAME.shape[:3]


def test_tensorrt_profile_is_the_size_the_pipeline_feeds():
    shapes = engine_shapes(Channels(), "fusion", height=480, width=640, max_batch=2)
    assert shapes["x24"] == ((1, 24, 120, 160), (1, 24, 120, 160), (2, 24, 120, 160))
    assert shapes["t"] == ((1,), (1,), (2,))


def test_a_damaged_cached_export_is_exported_again_not_loaded(onnx_cache, reference):
    pipe = _pipe().use_backend("onnxruntime", threads=1)  # the module's cached export
    [export_dir] = [d for d in (onnx_cache / "onnx").iterdir() if export_matches(load_manifest(d), pipe.model, DEFAULT_COMPONENTS)]
    graph = export_dir / "fusion.onnx"
    graph.write_bytes(graph.read_bytes()[: len(graph.read_bytes()) // 2])  # truncated, manifest unchanged
    pipe = _pipe().use_backend("onnxruntime", threads=1)
    assert any("damaged (fusion" in n for n in pipe.backend_info.notes)
    assert_same_result(pipe(FRAME, seed=5), reference)
