"""ONNX export: every network agrees with torch under ONNX Runtime (CPU), at the traced
size and at other batch and spatial sizes, and so does a short sampling run."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from magicfuse_core.checkpoint import random_model
from magicfuse_core.cli import main as cli_main
from magicfuse_core.backends.onnx_export import export_component, export_model, onnx_sha256, verify_onnx
from magicfuse_core.backends.onnx_runtime import OrtNet, ort_session
from magicfuse_core.io_contract import DEFAULT_COMPONENTS, Channels, latent_size
from magicfuse_core.sampler import fused_sample

HEIGHT, WIDTH = 40, 56  # padded by the pipeline to 64 x 64 -> latent 16 x 16

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def model():
    return random_model("tiny", seed=1)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    manifest = export_model(model, out, height=HEIGHT, width=WIDTH, batch=1)
    sessions = {c: ort_session(out / f"{c}.onnx") for c in DEFAULT_COMPONENTS}
    return out, manifest, sessions


def test_latent_size_follows_the_pipeline_padding():
    assert latent_size(480, 640) == (120, 160)
    assert latent_size(40, 56) == (16, 16)
    assert latent_size(240, 320) == (64, 80)  # 240 is padded to 256


def test_manifest_describes_every_component(exported):
    out, manifest, _ = exported
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["latent_size"] == [16, 16] and manifest["image_size"] == [64, 64]
    for name in DEFAULT_COMPONENTS:
        entry = manifest["components"][name]
        graph = onnx.load(str(out / entry["file"]))
        onnx.checker.check_model(graph)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert [i.name for i in graph.graph.input] == entry["inputs"]
        assert entry["sha256"] == onnx_sha256(out / entry["file"])


@pytest.mark.parametrize("component", DEFAULT_COMPONENTS)
@pytest.mark.parametrize("batch, height, width", [(1, HEIGHT, WIDTH), (2, 96, 64)])
def test_onnxruntime_matches_torch(model, exported, component, batch, height, width):
    out, _, sessions = exported
    res = verify_onnx(model, component, out / f"{component}.onnx", batch=batch, height=height, width=width,
                      session=sessions[component], rtol=1e-4)
    assert res.max_rel_error < 1e-4


def test_short_sampling_run_matches_torch(model, exported):
    _, _, sessions = exported
    hooks = {c: OrtNet(sessions[c], c, torch.device("cpu"), Channels.of(model)) for c in ("ikr", "ckg", "fusion")}
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(1, 8, 16, 16, generator=g) * 2 - 1
    z_T, seg_T = torch.randn(1, 8, 16, 16, generator=g), torch.randn(1, 9, 16, 16, generator=g)
    schedule = model.schedule.with_steps(4)
    with torch.no_grad():
        ref = fused_sample(model.denoiser("ikr"), model.denoiser("ckg"), model.fusion, cond, z_T, seg_T, schedule)
        got = fused_sample(hooks["ikr"], hooks["ckg"], hooks["fusion"], cond, z_T, seg_T, schedule)
        image_ref = model.autoencoder.decode_diffusion(ref.z0_fused)
    decoder = OrtNet(sessions["decoder"], "decoder", torch.device("cpu"), Channels.of(model))
    image = decoder(model.autoencoder.from_diffusion(got.z0_fused))
    torch.testing.assert_close(got.z0_fused, ref.z0_fused, atol=1e-4, rtol=1e-4)
    assert (got.seg_state.argmax(1) == ref.seg_state.argmax(1)).float().mean() > 0.999
    assert (image - image_ref).abs().max() < 1e-4


def test_static_export_fixes_the_spatial_size_but_not_the_batch(model, tmp_path):
    export_component(model, "decoder", tmp_path / "decoder.onnx", height=HEIGHT, width=WIDTH, dynamic_spatial=False)
    session = ort_session(tmp_path / "decoder.onnx")
    assert session.get_inputs()[0].shape == ["batch", 8, 16, 16]
    session.run(None, {"latent": np.random.rand(3, 8, 16, 16).astype(np.float32)})
    with pytest.raises(Exception):  # noqa: B017 (onnxruntime's own exception type)
        session.run(None, {"latent": np.random.rand(1, 8, 24, 16).astype(np.float32)})


def test_bad_export_requests_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_component(model, "ikr", tmp_path / "x.onnx", height=32, width=32, opset=13)
    with pytest.raises(ValueError, match="unknown component"):
        export_component(model, "vae", tmp_path / "x.onnx", height=32, width=32)
    half = random_model("tiny", seed=1)
    half.autoencoder.decoder.to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 weights"):
        export_component(half, "decoder", tmp_path / "x.onnx", height=32, width=32)


def test_export_command_writes_and_verifies(tmp_path, capsys):
    code = cli_main(["export", "--profile", "tiny", "--out", str(tmp_path / "out"), "--height", "32", "--width", "32",
                     "--components", "fusion,decoder", "--verify"])
    assert code == 0
    text = capsys.readouterr().out
    assert "verify fusion" in text and "verify decoder" in text
    assert sorted(json.loads((tmp_path / "out" / "manifest.json").read_text())["components"]) == ["decoder", "fusion"]


def test_build_engines_without_tensorrt_fails_with_one_clear_line(tmp_path, capsys):
    code = cli_main(["build-engines", "--profile", "tiny", "--cache-dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "build-engines: error: backend 'tensorrt' needs an NVIDIA GPU" in err


def assert_export_matches_torch(model, component: str, folder, other_size: tuple[int, int, int]) -> None:
    """Export `component` at the test size; ONNX Runtime must match torch there and at (batch, H, W) `other_size`."""
    path = folder / f"{component}.onnx"
    export_component(model, component, path, height=HEIGHT, width=WIDTH)
    session = ort_session(path)
    for batch, height, width in ((1, HEIGHT, WIDTH), other_size):
        res = verify_onnx(model, component, path, batch=batch, height=height, width=width, session=session, rtol=1e-4)
        assert res.max_rel_error < 1e-4


def test_pooled_attention_fusion_net_exports_with_dynamic_size(tmp_path):
    # The bundled model's F pools the attention keys/values (attention_pool 4): that graph must
    # stay correct at sizes other than the traced one, as the node resizes nothing.
    from magicfuse_core.models.fusion import FusionConfig, FusionNet

    pooled = random_model("tiny", seed=2)
    torch.manual_seed(3)
    pooled.fusion = FusionNet(FusionConfig.from_dict({**pooled.fusion.config.to_dict(), "attention_pool": 4})).eval()
    assert_export_matches_torch(pooled, "fusion", tmp_path, other_size=(2, 96, 128))


def test_stream_segmentation_head_exports_with_dynamic_size(tmp_path):
    # The half-resolution context of seg_head "streams" is resized back to the latent's own size: odd
    # sizes (a 480x636 frame) must come out of ONNX Runtime as out of torch.
    from magicfuse_core.models.fusion import FusionConfig, FusionNet

    model = random_model("tiny", seed=2)
    torch.manual_seed(4)
    model.fusion = FusionNet(FusionConfig.from_dict({**model.fusion.config.to_dict(), "attention_pool": 4,
                                                     "seg_head": "streams", "seg_channels": 16})).eval()
    assert_export_matches_torch(model, "fusion", tmp_path, other_size=(2, 92, 124))


def test_sample_prediction_unet_exports_with_its_epsilon_conversion(tmp_path):
    # The z0 -> epsilon conversion (a timestep-indexed table) is part of the graph, so ONNX Runtime
    # and TensorRT engines hand the sampler the same noise as torch.
    from magicfuse_core.models.unet import ConditionalUNet, UNetConfig

    z0_model = random_model("tiny", seed=4)
    torch.manual_seed(5)
    z0_model.ikr = ConditionalUNet(UNetConfig.from_dict({**z0_model.ikr.config.to_dict(), "prediction": "sample"})).eval()
    assert_export_matches_torch(z0_model, "ikr", tmp_path, other_size=(2, 96, 64))
