"""tools/evaluate_demo_model.py writes its verdicts from the numbers: a target missed is named, a target met is not."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from magicfuse_core.evaluation import card

from card_frames import scored_card_frame

TOOL = Path(__file__).resolve().parents[2] / "tools" / "evaluate_demo_model.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("evaluate_demo_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> dict:
    summary = card.summarise([scored_card_frame(0), scored_card_frame(1)])
    sim = {"PSNR": 15.0, "SSIM": 0.4, "CC": 0.2}
    return {
        "model": "models/demo", "info": {"data": {"frames": 300}, "wall_time_s": {"ikr": 60.0}},
        "frames": 2, "inference_size": [32, 48], "steps": 25, "tau": 0.4, "seconds_per_frame": 1.0,
        "fusion_full_res": summary["fusion"], "fusion_inference_res": None,
        "ir_similarity": {"CKG (generated IR)": sim, "grey degraded VIS as IR": {k: v / 2 for k, v in sim.items()},
                          "grey clean VIS as IR": sim},
        "contrast": summary["contrast"], "person_frames": summary["person_frames"],
        "segmentation": summary["segmentation"], "radiation_mask": summary["radiation"],
        "ratios": summary["ratios"], "grid_frames": [],
    }


def test_ratio_target_met_is_not_listed_as_a_shortfall(tool, results):
    text = tool.model_card(results, Path("grid.png"))
    assert "| MagImg keeps >= 0.97 of IKR-only's MI (full res) | yes | ratio 1.000 |" in text
    assert "Check not met: MagImg keeps" not in text


def test_ratio_target_missed_is_named_with_its_number(tool, results):
    worse = copy.deepcopy(results)
    worse["fusion_full_res"][card.MAGIMG]["MI"] = 0.5 * worse["fusion_full_res"][card.IKR]["MI"]
    worse["ratios"] = card.magimg_ratios(worse["fusion_full_res"])
    text = tool.model_card(worse, Path("grid.png"))
    assert "- Check not met: MagImg keeps >= 0.97 of IKR-only's MI (full res) (ratio 0.500)." in text
    assert "MagImg / IKR | 0.500 |" in text
    assert "Check not met: MagImg keeps >= 0.97 of IKR-only's Qabf" not in text


def test_quality_targets_are_checks_with_their_numbers(tool, results):
    good = copy.deepcopy(results)
    good["contrast"]["person"][card.MAGIMG] = 12.0
    good["segmentation"]["person_IoU"], good["segmentation"]["outside_object_fraction"] = 0.4, 0.02
    assert "Check not met: MagImg person contrast" not in tool.model_card(good, Path("grid.png"))
    bad = copy.deepcopy(good)
    bad["contrast"]["person"][card.MAGIMG] = 3.0
    bad["segmentation"]["outside_object_fraction"] = 0.2
    text = tool.model_card(bad, Path("grid.png"))
    assert "- Check not met: MagImg person contrast >= +10 grey levels (+3.0)." in text
    assert "- Check not met: at most 5 % of the pixels outside every box labelled car, person or bike (20.0 %)." in text
    assert "Check not met: S person IoU" not in text


def test_a_card_of_training_frames_says_it_is_not_a_result(tool, results):
    assert "not a result" not in tool.model_card(results, Path("grid.png"))  # val: the card as it ships
    train = {**results, "split": "train"}
    assert "**This run scored MSRS train frames, which the model trained on: not a result.**" in tool.model_card(
        train, Path("grid.png"))


def test_the_card_splits_its_headline_figures_by_day_and_night(tool, results):
    frames = [scored_card_frame(0), scored_card_frame(1), scored_card_frame(2)]
    lit = tool.by_lighting(["00004N", "00055D", "00103D"], frames)
    assert set(lit) == {"day", "night"} and (lit["day"]["frames"], lit["night"]["frames"]) == (2, 1)
    # each lighting is that subset's own summary, not the whole run's
    assert lit["night"]["ratios"] == card.summarise(frames[:1])["ratios"]
    assert lit["day"]["segmentation"]["person_IoU"] == card.summarise(frames[1:])["segmentation"]["person_IoU"]
    text = tool.model_card({**results, "by_lighting": lit}, Path("grid.png"))
    assert "## Day and night" in text and "\n| day | 2 | " in text and "\n| night | 1 | " in text
    assert "- Day against night: S person IoU" in text
    assert tool.by_lighting(["00055D"], frames[:1]).keys() == {"day"}  # no night frame: no night row
    assert "## Day and night" not in tool.model_card(results, Path("grid.png"))  # older results: no section


def test_a_bad_seg_holdout_is_refused_before_any_model_loads(tool, tmp_path, capsys):
    (tmp_path / "train.txt").write_text("00008N\n00012N\n00081D\n")
    for bad, why in (("0", "--seg-holdout must be >= 1, got 0"), ("3", "holdout must be between 1 and 2 frames, got 3")):
        with pytest.raises(SystemExit):
            tool.main(["--seg-holdout", bad, "--data", str(tmp_path), "--model", str(tmp_path / "no-model")])
        assert why in capsys.readouterr().err


def test_a_radiation_shift_that_is_not_a_finite_number_is_refused_before_any_model_loads(tool, tmp_path, capsys):
    for bad in ("nan", "inf"):
        with pytest.raises(SystemExit):
            tool.main(["--radiation-shift", bad, "--data", str(tmp_path), "--model", str(tmp_path / "no-model")])
        assert "--radiation-shift must be a finite number" in capsys.readouterr().err


def test_the_card_names_the_timesteps_and_a_radiation_shift(tool, results):
    text = tool.model_card({**results, "steps": 1, "timesteps": [800], "radiation_shift": 1.0}, Path("grid.png"))
    assert "1 DDIM step (t = 800)" in text and "thermal scores +1 for it only" in text
