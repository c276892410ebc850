"""`magicfuse eval` end to end on tiny synthetic frames, and on 3 real MSRS val frames."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from magicfuse_core import cli
from magicfuse_core.evaluation import baselines, metrics
from magicfuse_core.imageio import write_png

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MSRS = SHARED / "data" / "msrs"
H, W = 48, 64
NAMES = ("f001", "f002", "f003")


def _frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A (visible RGB, infrared grey) pair with a warm 'person' block in the IR."""
    rng = np.random.default_rng(seed)
    vis = rng.integers(0, 200, (H, W, 3), dtype=np.uint8)
    ir = rng.integers(20, 120, (H, W), dtype=np.uint8)
    ir[10:30, 20:30] = 230
    return vis, ir


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    """Folders of tiny frames: vis, ir, a fused result, a generated IR (ckg), seg, labels and YOLO boxes."""
    root = {k: tmp_path / k for k in ("vis", "ir", "mine", "ckg", "seg", "labels", "det")}
    for i, name in enumerate(NAMES):
        vis, ir = _frame(i)
        write_png(root["vis"] / f"{name}.png", vis)
        write_png(root["ir"] / f"{name}.png", ir)
        write_png(root["mine"] / f"{name}.png", baselines.baseline_max_luminance(vis, ir))
        write_png(root["ckg"] / f"{name}.png", np.clip(ir.astype(int) + 5, 0, 255).astype(np.uint8))
        seg = np.zeros((H, W), np.uint8)
        seg[10:30, 20:25] = 2  # covers half of the person box
        write_png(root["seg"] / f"{name}.png", seg)
        label = np.zeros((H, W), np.uint8)
        label[10:30, 20:30] = 2
        label[0, :] = 255
        write_png(root["labels"] / f"{name}.png", label)
        root["det"].mkdir(exist_ok=True)
        # Person box exactly on rows 10..29, columns 20..29 of the 48x64 frame.
        (root["det"] / f"{name}.txt").write_text(f"0 {25 / W} {20 / H} {10 / W} {20 / H}\n")
    return root


def _run(args: list) -> int:
    return cli.main(["eval", "--no-progress", *[str(a) for a in args]])


def test_eval_writes_metrics_csv_and_report_with_baselines(dataset, tmp_path):
    out = tmp_path / "out"
    code = _run(["--vis", dataset["vis"], "--ir", dataset["ir"], "--result", f"mine={dataset['mine']}",
                 "--result", f"ckg={dataset['ckg']}", "--seg", f"mine={dataset['seg']}",
                 "--labels", dataset["labels"], "--det", dataset["det"], "--out", out])
    assert code == 0

    result = json.loads((out / "metrics.json").read_text())
    assert {"settings", "frames", "fusion", "ir_similarity", "segmentation", "box_proxy"} <= set(result)
    assert result["frames"]["scored"] == 3 and result["frames"]["skipped"] == []
    means = result["fusion"]["mean"]
    assert list(means) == [*baselines.BASELINES, "mine"]  # ckg is scored as generated IR, not as a fusion
    for method in means:
        assert set(means[method]) == set(metrics.METRIC_NAMES)
    assert means["visible"]["SCD"] == "NaN"  # F == A without --clean-vis
    assert result["ir_similarity"]["mean"]["ckg"]["PSNR"] == pytest.approx(10 * math.log10(255 ** 2 / 25), rel=1e-3)
    assert result["segmentation"]["mine"]["per_class_IoU"]["person"] == pytest.approx(0.5)
    proxy = result["box_proxy"]["scores"]["mine"]
    assert proxy["person_box_coverage"] == pytest.approx(0.5)
    assert proxy["person_mask_precision"] == pytest.approx(1.0)

    with (out / "per_frame.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 4
    assert {r["method"] for r in rows} == {*baselines.BASELINES, "mine"}

    report = (out / "report.html").read_text()
    assert "<table" in report and "Fusion metrics" in report
    assert report.count("data:image/png;base64,") >= 1 + 3  # bar chart + sample grid
    for name in (*baselines.BASELINES, "mine", "ckg"):
        assert name in report
    assert (out / "metrics_bars.png").stat().st_size > 0


def test_frames_missing_or_mismatched_are_skipped_and_reported(dataset, tmp_path):
    (dataset["mine"] / "f002.png").unlink()
    write_png(dataset["ir"] / "f003.png", np.zeros((H + 2, W), np.uint8))
    out = tmp_path / "out"
    assert _run(["--vis", dataset["vis"], "--ir", dataset["ir"], "--result", f"mine={dataset['mine']}",
                 "--out", out, "--max-grid", 0]) == 0
    frames = json.loads((out / "metrics.json").read_text())["frames"]
    assert frames["names"] == ["f001"]
    reasons = {s["name"]: s["reason"] for s in frames["skipped"]}
    assert "missing result 'mine'" in reasons["f002"]
    assert "infrared image is 64x50" in reasons["f003"]
    assert "f002" in (out / "report.html").read_text()


def test_eval_fails_when_no_frame_is_left(dataset, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("nothere\n")
    assert _run(["--vis", dataset["vis"], "--ir", dataset["ir"], "--names", names, "--out", tmp_path / "out"]) == 2
    assert "no frame could be scored" in capsys.readouterr().err


def test_clean_visible_becomes_source_a(dataset, tmp_path):
    out = tmp_path / "out"
    assert _run(["--vis", dataset["vis"], "--ir", dataset["ir"], "--clean-vis", dataset["mine"],
                 "--out", out, "--max-grid", 0]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["settings"]["source_A"] == "clean_vis"
    assert isinstance(result["fusion"]["mean"]["visible"]["SCD"], float)  # input visible != source A now


def test_generated_ir_flag_must_name_a_result(dataset, tmp_path, capsys):
    assert _run(["--vis", dataset["vis"], "--ir", dataset["ir"], "--generated-ir", "nope", "--out", tmp_path / "o"]) == 2
    assert "--generated-ir" in capsys.readouterr().err


def test_max_luminance_baseline_of_a_grey_frame_is_the_pixel_maximum():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    ir = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    fused = baselines.baseline_max_luminance(np.repeat(grey[..., None], 3, axis=2), ir)
    assert np.array_equal(fused, np.repeat(np.maximum(grey, ir)[..., None], 3, axis=2))


def test_eval_on_three_msrs_val_frames(tmp_path):
    if not (MSRS / "val.txt").is_file():
        pytest.skip(f"MSRS data not found at {MSRS}")
    names = tmp_path / "names.txt"
    names.write_text("\n".join((MSRS / "val.txt").read_text().split()[:3]) + "\n")
    out = tmp_path / "out"
    assert _run(["--vis", MSRS / "vis", "--ir", MSRS / "ir", "--names", names, "--out", out, "--max-grid", 1]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["frames"]["scored"] == 3
    avg = result["fusion"]["mean"]["avg_fusion"]
    assert all(isinstance(avg[k], float) and math.isfinite(avg[k]) for k in metrics.METRIC_NAMES)
    assert 55 < avg["PSNR"] < 80  # Tang's convention: standard PSNR + 48.13 dB
