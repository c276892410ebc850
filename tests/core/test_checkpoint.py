"""Our checkpoint format: round trip, strictness, clear errors, and conversion of the reference files."""
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from magicfuse_core.checkpoint import load_model, random_model, save_model
from magicfuse_core.cli import main as cli_main
from magicfuse_core.pipeline import MagicFusePipeline


@pytest.fixture
def tiny_dir(tmp_path):
    return save_model(random_model("tiny", seed=1), tmp_path / "tiny")


def test_round_trip_gives_identical_networks(tiny_dir):
    a, b = random_model("tiny", seed=1), load_model(tiny_dir)
    for name, module in a.modules().items():
        sa, sb = module.state_dict(), b.modules()[name].state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert b.schedule.timesteps == a.schedule.timesteps and b.tau == 0.4 and b.thermal_classes == (2,)


def test_the_timesteps_a_model_records_are_the_ones_the_pipeline_samples_with(tiny_dir, monkeypatch):
    from dataclasses import replace

    import magicfuse_core.pipeline as pipeline_module

    model = load_model(tiny_dir)
    few_dir = save_model(replace(model, schedule=model.schedule.with_timesteps((800, 400))), tiny_dir.parent / "few")
    assert json.loads((few_dir / "model.json").read_text())["schedule"]["timesteps"] == [800, 400]
    seen = []
    real = pipeline_module.fused_sample
    monkeypatch.setattr(pipeline_module, "fused_sample",
                        lambda *a, **k: seen.append(a[6].timesteps) or real(*a, **k))
    pipe = MagicFusePipeline.from_pretrained(few_dir)
    frame = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    pipe(frame)
    pipe(frame, steps=4)  # another step count: the leading spacing
    assert seen == [(800, 400), (750, 500, 250, 0)] and pipe.steps == 2
    meta = json.loads((few_dir / "model.json").read_text())
    meta["schedule"]["timesteps"] = [400, 800]
    (few_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="bad schedule.*custom_timesteps must be strictly descending"):
        load_model(few_dir)


def assert_setting_is_checked(folder, key: str, bad: str, choices: str) -> None:
    """A model.json setting with an unknown value is a clear error naming the choices."""
    meta = json.loads((folder / "model.json").read_text())
    meta[key] = bad
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{key} must be one of {choices}, got '{bad}'"):
        load_model(folder)


def test_radiation_map_is_a_model_setting_the_pipeline_samples_with(tiny_dir):
    from dataclasses import replace

    model = load_model(tiny_dir)
    assert model.radiation_map == "hard"  # folders written before the setting existed: the paper's map
    soft_dir = save_model(replace(model, radiation_map="soft"), tiny_dir.parent / "soft")
    assert json.loads((soft_dir / "model.json").read_text())["radiation_map"] == "soft"
    frame = (np.random.default_rng(0).random((1, 24, 32, 3)) * 255).astype(np.uint8)
    hard = MagicFusePipeline.from_pretrained(tiny_dir)(frame, seed=1, return_weights=True, tau=0.0)
    soft = MagicFusePipeline.from_pretrained(soft_dir)(frame, seed=1, return_weights=True, tau=0.0)
    assert not np.array_equal(hard.fusion_weight, soft.fusion_weight)
    assert_setting_is_checked(soft_dir, "radiation_map", "argmax", "hard, soft")


def test_radiation_shift_widens_the_radiation_map_and_leaves_the_published_map_alone(tiny_dir):
    from dataclasses import replace

    from magicfuse_core.models.fusion import radiation_mask

    scores = torch.zeros(1, 9, 1, 2)
    scores[0, 1] = torch.tensor([1.0, 3.0])  # car leads person (class 2) by 1 and by 3
    assert radiation_mask(scores, (2,)).flatten().tolist() == [0.0, 0.0]
    assert radiation_mask(scores, (2,), shift=2.0).flatten().tolist() == [1.0, 0.0]
    model = load_model(tiny_dir)
    assert model.radiation_shift == 0.0  # folders written before the setting existed
    wide_dir = save_model(replace(model, radiation_shift=50.0), tiny_dir.parent / "wide")
    assert load_model(wide_dir).radiation_shift == 50.0
    frame = (np.random.default_rng(0).random((1, 24, 32, 3)) * 255).astype(np.uint8)
    plain = MagicFusePipeline.from_pretrained(tiny_dir)(frame, seed=1, return_weights=True, tau=0.0)
    wide = MagicFusePipeline.from_pretrained(wide_dir)(frame, seed=1, return_weights=True, tau=0.0)
    np.testing.assert_array_equal(plain.seg_labels, wide.seg_labels)  # what the node publishes is unchanged
    assert wide.fusion_weight.max() <= 0.0 < plain.fusion_weight.max()  # every pixel thermal: w_r = min(w, tau 0)
    meta = json.loads((wide_dir / "model.json").read_text())
    meta["radiation_shift"] = "wide"
    (wide_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="radiation_shift must be a finite number, got 'wide'"):
        load_model(wide_dir)


def test_magimg_tone_ikr_decodes_only_magimg_in_the_ikr_tone(tiny_dir):
    from dataclasses import replace

    from magicfuse_core.checkpoint import MAGIMG_TONES

    assert load_model(tiny_dir).magimg_tone == "own" and MAGIMG_TONES == ("own", "ikr")
    ikr_dir = save_model(replace(load_model(tiny_dir), magimg_tone="ikr"), tiny_dir.parent / "ikr_tone")
    assert load_model(ikr_dir).magimg_tone == "ikr"
    frame = (np.random.default_rng(0).random((1, 24, 32, 3)) * 255).astype(np.uint8)
    own = MagicFusePipeline.from_pretrained(tiny_dir)(frame, seed=1)
    pipe = MagicFusePipeline.from_pretrained(ikr_dir)
    calls = []
    styled = pipe.styled_decoder
    pipe.styled_decoder = lambda latent, style: calls.append(latent.shape) or styled(latent, style)
    toned = pipe(frame, seed=1)
    assert calls == [(1, 8, 8, 8)]  # MagImg only, once
    np.testing.assert_array_equal(toned.ikr, own.ikr)
    np.testing.assert_array_equal(toned.ckg, own.ckg)
    assert not np.array_equal(toned.magimg, own.magimg)
    assert_setting_is_checked(ikr_dir, "magimg_tone", "vis", "own, ikr")


def test_ckg_tone_reference_decodes_the_ckg_image_in_the_reference_tone(tiny_dir):
    """ckg_tone: reference decodes the CKG image (only it) with the decoding statistics of the model's reference
    infrared latent, at any frame size, in the same styled pass as MagImg's IKR tone."""
    from dataclasses import replace

    from magicfuse_core.checkpoint import CKG_TONE_FILE, set_ckg_tone

    model = load_model(tiny_dir)
    assert model.ckg_tone == "own" and model.ckg_tone_latent is None
    tone = torch.rand(1, 8, 6, 10, generator=torch.Generator().manual_seed(3))  # another size than the frames'
    ref_dir = save_model(replace(model, magimg_tone="ikr"), tiny_dir.parent / "ref")
    set_ckg_tone(ref_dir, tone, {"frame": "test"})
    meta = json.loads((ref_dir / "model.json").read_text())
    assert meta["ckg_tone"] == "reference" and meta["info"]["ckg_tone"] == {"frame": "test"}
    torch.testing.assert_close(load_model(ref_dir).ckg_tone_latent, tone)
    frame = (np.random.default_rng(0).random((1, 24, 32, 3)) * 255).astype(np.uint8)
    own = MagicFusePipeline.from_pretrained(save_model(replace(model, magimg_tone="ikr"), tiny_dir.parent / "own"))
    pipe = MagicFusePipeline.from_pretrained(ref_dir)
    calls = []
    styled = pipe.styled_decoder
    pipe.styled_decoder = lambda latent, style: calls.append((latent.shape, style)) or styled(latent, style)
    a, b = own(frame, seed=1), pipe(frame, seed=1)
    assert len(calls) == 1 and calls[0][0] == (2, 8, 8, 8)  # MagImg and CKG in one styled pass
    expected_style = torch.nn.functional.interpolate(tone, size=(8, 8), mode="nearest")
    torch.testing.assert_close(calls[0][1][1:], expected_style)  # the CKG's style: the reference, resized
    np.testing.assert_array_equal(a.magimg, b.magimg)
    np.testing.assert_array_equal(a.ikr, b.ikr)
    assert not np.array_equal(a.ckg, b.ckg)
    # back to its own tone: the file goes with the setting
    set_ckg_tone(ref_dir, None)
    assert load_model(ref_dir).ckg_tone == "own" and not (ref_dir / CKG_TONE_FILE).exists()


def test_ckg_tone_errors_name_the_problem(tiny_dir):
    from dataclasses import replace

    from magicfuse_core.checkpoint import CKG_TONE_FILE, set_ckg_tone

    with pytest.raises(ValueError, match=r"CKG tone latent must be a finite \(1, 8, h, w\) tensor, got \(1, 4, 5, 5\)"):
        replace(load_model(tiny_dir), ckg_tone_latent=torch.rand(1, 4, 5, 5))
    set_ckg_tone(tiny_dir, torch.rand(1, 8, 5, 5))
    (tiny_dir / CKG_TONE_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read the CKG tone latent"):
        load_model(tiny_dir)
    (tiny_dir / CKG_TONE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="ckg_tone: reference but .*ckg_tone.safetensors is missing"):
        load_model(tiny_dir)
    assert_setting_is_checked(tiny_dir, "ckg_tone", "ir", "own, reference")


def test_missing_component_names_the_file(tiny_dir):
    (tiny_dir / "ckg.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ckg.safetensors"):
        load_model(tiny_dir)


def test_corrupt_weights_are_a_clear_error(tiny_dir):
    (tiny_dir / "fusion.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read weights .*fusion.safetensors"):
        load_model(tiny_dir)


def test_weights_of_another_network_are_refused(tiny_dir):
    # ikr weights in the fusion slot: a clear mismatch, never a partial load.
    (tiny_dir / "fusion.safetensors").write_bytes((tiny_dir / "ikr.safetensors").read_bytes())
    with pytest.raises(ValueError, match="missing key"):
        load_model(tiny_dir)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json"):
        load_model(tmp_path)


def test_convert_official_is_one_command_and_gives_the_same_function(official_dir, official_meta, tmp_path):
    # The fixtures hold state_dicts in safetensors; write them as the .pth files users have.
    pth = {}
    for name in ("ikr_like_unet", "ckg_like_unet", "fusion"):
        pth[name] = tmp_path / f"{name}.pth"
        torch.save(load_file(official_dir / f"{name}.safetensors"), pth[name])
    cfg = {}
    for name in ("ikr_like", "ckg_like"):
        cfg[name] = tmp_path / f"{name}.yaml"
        cfg[name].write_text(yaml.safe_dump({"MODEL": official_meta[name]}))
    out = tmp_path / "official_model"
    rc = cli_main(["convert-official", "--ae", str(official_dir / "ae.pth"), "--ikr", str(pth["ikr_like_unet"]),
                   "--ikr-config", str(cfg["ikr_like"]), "--ckg", str(pth["ckg_like_unet"]),
                   "--ckg-config", str(cfg["ckg_like"]), "--fusion", str(pth["fusion"]), "--out", str(out)])
    assert rc == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["info"]["source"] == "official"
    model = load_model(out)
    io = load_file(official_dir / "ikr_like_unet_io.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.ikr(io["x"], io["t"]), io["eps"], rtol=1e-4, atol=1e-5)
    # and the converted folder runs end to end through the pipeline
    res = MagicFusePipeline.from_pretrained(out, steps=2)(np.zeros((1, 32, 32, 3), np.uint8))
    assert res.magimg.shape == (1, 32, 32, 3)


def test_convert_official_reports_a_missing_file(tmp_path, capsys):
    rc = cli_main(["convert-official", "--ae", str(tmp_path / "ae.pth"), "--ikr", "x", "--ckg", "y",
                   "--fusion", "z", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "ae.pth" in capsys.readouterr().err


def test_the_bundled_model_is_trained_loads_strictly_and_fuses(monkeypatch):
    # make demo, the CLI and the node default to models/demo: it must stay small, trained and runnable.
    from pathlib import Path

    from magicfuse_core.paths import default_model_dir

    folder = Path(__file__).resolve().parents[2] / "models" / "demo"
    monkeypatch.delenv("MAGICFUSE_MODEL", raising=False)
    assert Path(default_model_dir()).resolve() == folder
    assert sum(f.stat().st_size for f in folder.iterdir()) < 30 * 2**20  # the bundled model is kept under 30 MB
    pipe = MagicFusePipeline.from_pretrained(folder, steps=2)
    assert pipe.trained and pipe.model.info["data"]["split"] == "train"
    frame = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    out = pipe(frame, seed=0)
    assert out.magimg.shape == (1, 64, 96, 3) and out.seg_labels.shape == (1, 64, 96)
    assert 5 < out.magimg.mean() < 250 and out.magimg.std() > 1  # an image, not a constant
