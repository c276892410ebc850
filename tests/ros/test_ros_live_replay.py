"""Live replay: a bag's frames through the real node process with rclpy (magicfuse_ros.live_replay)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (requirements-ros.txt) not installed")
pytest.importorskip("rosbags", reason="rosbags not installed")

from magicfuse_core.imageio import write_png  # noqa: E402
from magicfuse_ros import bag  # noqa: E402
from magicfuse_ros.live_replay import live_replay, main  # noqa: E402

NODE = {"model_path": "random-tiny", "steps": 2, "device": "cpu", "cpu_threads": 1, "diagnostics_period_s": 0.3}


@pytest.fixture(scope="module")
def frames_bag(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    rng = np.random.default_rng(5)
    for i in range(3):
        write_png(root / "frames" / f"{i:02d}.png", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return bag.make_bag(root / "frames", root / "frames_bag", rate=5.0).path


def test_live_replay_lockstep_processes_every_frame(frames_bag, tmp_path):
    report = live_replay(frames_bag, tmp_path / "out", overrides=NODE, pace="lockstep", png_dir=tmp_path / "png",
                         progress=lambda m: None)
    assert (report["frames_in"], report["frames_out"], report["dropped"]) == (3, 3, 0)
    assert report["node_exit_code"] == 0
    assert report["class_list_received"]
    assert report["latency_ms"]["count"] == 3 and report["latency_ms"]["mean"] > 0
    assert report["node_counters"]["processed"] == 3 and report["node_counters"]["received"] == 3
    assert report["outputs_per_kind"] == {kind: 3 for kind in report["outputs_per_kind"]}
    # The output bag holds the frames sent and one output per kind per frame, with the frames' stamps.
    sent = [f.stamp_ns for f in bag.read_images(tmp_path / "out", [bag.DEFAULT_TOPIC])]
    assert len(sent) == 3
    for kind, topic in bag.OUTPUT_TOPICS.items():
        outputs = list(bag.read_images(tmp_path / "out", [topic]))
        assert [f.stamp_ns for f in outputs] == sent, kind
        assert all(f.timestamp_ns == f.stamp_ns for f in outputs), kind
    assert sorted(p.name for p in (tmp_path / "png" / "magimg").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert json.loads((tmp_path / "png" / "report.json").read_text())["frames_out"] == 3


def test_live_replay_cli_at_bag_pace(frames_bag, capsys):
    assert main([str(frames_bag), "--model", "random-tiny", "-p", "steps:=2", "-p", "cpu_threads:=1",
                 "-p", "device:=cpu", "--pace", "bag", "--rate", "5"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("\n{\n") + 1:])
    assert report["frames_in"] == 3
    assert report["frames_out"] + report["dropped"] == 3 and report["frames_out"] >= 1
    assert "frames in 3" in out
