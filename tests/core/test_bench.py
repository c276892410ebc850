"""`magicfuse bench`: the CPU smoke run prints the table and writes JSON; FLOP counts match the paper's."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from magicfuse_core.checkpoint import random_model
from magicfuse_core.cli import main as cli_main
from magicfuse_core.benchmark import count_flops, drift, format_table, measure_peak_tflops


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cpu_smoke_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--cpu-smoke", "--no-peak", "--steps", "2", "--steps", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ms/frame" in text and "GFLOP/frame" in text and "peak MB" in text
    report = json.loads(out.read_text())
    assert [(r["backend"], r["steps"]) for r in report["rows"]] == [("torch", 2), ("torch", 1)]
    first, fewer = report["rows"]
    assert first["ms_per_frame"] > 0 and first["runs"] == 3 and first["gflop_per_frame"] > 0
    assert first["magimg_rel_err"] == 0.0 and first["seg_changed"] == 0.0  # the reference row itself
    assert fewer["gflop_per_frame"] < first["gflop_per_frame"] and fewer["magimg_rel_err"] > 0
    for key in ("date", "commit", "device", "torch", "flops"):
        assert key in report


def test_paper_flops_per_step_at_480x640_match_the_reference_count():
    """Reference count (docs/PERFORMANCE.md): Psi 117 G, Phi 1,607 G, F 791 G per step at 480x640 (counted on meta tensors)."""
    flops = count_flops(_meta_paper(), 480, 640, batch=1, steps=25)
    per_step = flops["per_step_per_frame"]
    assert per_step["ikr"] / 1e9 == pytest.approx(117, rel=0.01)
    assert per_step["ckg"] / 1e9 == pytest.approx(1607, rel=0.01)
    assert per_step["fusion"] / 1e9 == pytest.approx(791, rel=0.01)
    assert flops["sampling_per_frame"] == pytest.approx(25 * sum(per_step.values()), rel=1e-6)
    assert flops["per_frame"] / 1e12 == pytest.approx(63, rel=0.01)  # "about 63 TFLOP per frame"


def _meta_paper():

    with torch.device("meta"):
        return random_model("paper")


def test_flops_scale_with_batch_and_steps():
    model = random_model("tiny")
    one = count_flops(model, 64, 64, batch=1, steps=4)
    two = count_flops(model, 64, 64, batch=2, steps=4)
    assert two["per_frame"] == pytest.approx(one["per_frame"], rel=1e-6)  # per frame, batch-independent
    fewer = count_flops(model, 64, 64, batch=1, steps=2)
    assert one["per_frame"] - fewer["per_frame"] == pytest.approx(2 * sum(one["per_step_per_frame"].values()))


def test_sampling_flops_equal_steps_times_the_per_step_count():
    """count_flops multiplies one step by the number of steps; a counted sampling loop agrees."""
    from torch.utils.flop_counter import FlopCounterMode

    from magicfuse_core.sampler import fused_sample

    with torch.device("meta"):  # the same device as count_flops: SDPA kernels are counted per kernel
        model = random_model("tiny")
        z, s = torch.randn(1, 8, 16, 16), torch.randn(1, 9, 16, 16)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fused_sample(model.ikr, model.ckg, model.fusion, z, z, s, model.schedule.with_steps(3))
    assert count_flops(model, 64, 64, steps=3)["sampling_per_frame"] == counter.get_total_flops()


def test_drift_is_relative_l2_and_label_fraction():
    ref = SimpleNamespace(magimg=np.full((1, 2, 2, 3), 100, np.uint8), seg_labels=np.zeros((1, 2, 2), np.uint8))
    got = SimpleNamespace(magimg=np.full((1, 2, 2, 3), 110, np.uint8),
                          seg_labels=np.array([[[0, 1], [0, 0]]], np.uint8))
    rel, changed = drift(got, ref)
    assert rel == pytest.approx(0.1) and changed == 0.25


def test_peak_measurement_and_table_footer():
    peak = measure_peak_tflops("cpu", seconds=0.05)
    assert peak["tflops"] > 0 and "float32 matmul" in peak["kind"]
    report = {"rows": [], "device": "cpu", "torch": "x", "commit": "abc", "date": "d", "peak": peak}
    assert "measured peak" in format_table(report)


def test_flops_only_counts_the_paper_profile_without_running_it(capsys):
    assert cli_main(["bench", "--flops-only", "--profile", "paper", "--size", "480x640", "--steps", "25"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert "paper" in row and "63099.3" in row
