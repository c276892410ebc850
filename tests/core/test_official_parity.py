"""Our networks compute the reference implementation's function (../shared/fixtures/official).

Tolerances from the fixtures' README: relative L2 error under 1e-4 per tensor,
1e-3 for the sampler's final images.
"""
import pytest
import torch
from safetensors.torch import load_file

from magicfuse_core import official
from magicfuse_core.sampler import fused_sample
from magicfuse_core.schedule import DDIMSchedule


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def nets(official_dir, official_meta):
    return {
        "ae": official.load_autoencoder(official_dir / "ae.pth"),
        "ikr": official.load_denoiser(load_file(official_dir / "ikr_like_unet.safetensors"), official_meta["ikr_like"]),
        "ckg": official.load_denoiser(load_file(official_dir / "ckg_like_unet.safetensors"), official_meta["ckg_like"]),
        "fusion": official.load_fusion(load_file(official_dir / "fusion.safetensors")),
    }


def test_released_autoencoder_encodes_and_decodes_like_the_reference(nets, official_dir):
    io = load_file(official_dir / "ae_io.safetensors")
    with torch.no_grad():
        latent = nets["ae"].encode(io["image"], noise=io["encoder_noise"])
        recon = nets["ae"].decode(io["latent"])
    assert rel_err(latent, io["latent"]) < 1e-4
    assert rel_err(recon, io["reconstruction"]) < 1e-4


@pytest.mark.parametrize("name", ["ikr", "ckg"])
def test_denoisers_match_the_reference(nets, official_dir, name):
    io = load_file(official_dir / f"{name}_like_unet_io.safetensors")
    with torch.no_grad():
        eps = nets[name](io["x"], io["t"])
    assert rel_err(eps, io["eps"]) < 1e-4


def test_fusion_network_matches_the_reference(nets, official_dir):
    io = load_file(official_dir / "fusion_io.safetensors")
    with torch.no_grad():
        eps, seg_full, seg_state = nets["fusion"](io["x"], io["eps_ikr"], io["eps_ckg"], io["t"], io["seg_in"])
    assert rel_err(eps, io["eps_fused"]) < 1e-4
    assert rel_err(seg_full, io["seg_logits_full"]) < 1e-4
    assert rel_err(seg_state, io["seg_state"]) < 1e-4


@pytest.fixture(scope="module")
def sampler_io(official_dir):
    return load_file(official_dir / "sampler_io.safetensors")


def test_whole_25_step_sampler_matches_the_reference(nets, sampler_io):
    io = sampler_io
    out = official.fused_sample(nets["ikr"], nets["ckg"], nets["fusion"], nets["ae"], io["cond_latent"], io["z_T"], io["seg_T"])
    for key in ("magimg", "ikr_image", "ckg_image"):
        assert rel_err(out[key], io[key]) < 1e-3, key
    assert rel_err(out["seg_logits_full"], io["seg_logits_full"]) < 1e-4
    assert (out["seg_labels"] == io["seg_labels"]).float().mean() > 0.999


def test_sampler_step_traces_match_the_reference(nets, sampler_io):
    io, traces = sampler_io, {}

    def record(i, step):
        if i in (0, 12, 24):
            traces[i] = (step.z0_fused.clone(), step.eps_fused.clone())

    fusion = nets["fusion"]
    with torch.no_grad():
        fused_sample(nets["ikr"], nets["ckg"], fusion.net, io["cond_latent"], io["z_T"], io["seg_T"], DDIMSchedule(),
                     tau=fusion.tau, thermal_classes=fusion.thermal_classes, callback=record)
    for i, (x0, eps) in traces.items():
        assert rel_err(x0, io[f"step{i}_x0_fused"]) < 1e-4, i
        assert rel_err(eps, io[f"step{i}_eps_fused"]) < 1e-4, i


def test_the_reference_schedule_is_linear_in_beta(sampler_io):
    # x0 of step 0 follows from z_T and eps with the linear schedule only.
    io = sampler_io
    linear = DDIMSchedule(beta_schedule="linear").predict_x0(io["z_T"], io["step0_eps_fused"], 0)
    scaled = DDIMSchedule(beta_schedule="scaled_linear").predict_x0(io["z_T"], io["step0_eps_fused"], 0)
    assert rel_err(linear, io["step0_x0_fused"]) < 1e-5
    assert rel_err(scaled, io["step0_x0_fused"]) > 0.1


# ---- strict loading ---------------------------------------------------------------

def test_a_missing_key_is_named(official_dir, official_meta):
    sd = dict(load_file(official_dir / "ikr_like_unet.safetensors"))
    del sd["out.2.weight"]
    with pytest.raises(ValueError, match=r"missing key.*out\.2\.weight"):
        official.load_denoiser(sd, official_meta["ikr_like"])


def test_an_unexpected_key_is_named(official_dir):
    sd = dict(load_file(official_dir / "fusion.safetensors"))
    sd["extra.layer.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected key.*extra\.layer\.weight"):
        official.load_fusion(sd)


def test_a_wrong_config_is_a_shape_mismatch_not_a_partial_load(official_dir, official_meta):
    # ckg weights with the ikr config: same keys in part, different shapes/keys.
    with pytest.raises(ValueError, match="does not match"):
        official.load_denoiser(load_file(official_dir / "ckg_like_unet.safetensors"),
                               {**official_meta["ckg_like"], "MODEL_CHANNELS": 64})


def test_autoencoder_checkpoint_layout_is_checked(tmp_path):
    with pytest.raises(ValueError, match="encoder"):
        official.load_autoencoder({"weights": {}})
    bad = tmp_path / "ae.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        official.load_autoencoder(bad)
    with pytest.raises(FileNotFoundError):
        official.load_autoencoder(tmp_path / "absent.pth")


def test_unsupported_reference_options_are_refused(official_meta):
    with pytest.raises(ValueError, match="USE_SCALE_SHIFT_NORM"):
        official.unet_config_from_reference({**official_meta["ikr_like"], "USE_SCALE_SHIFT_NORM": True})
