"""rosbag2 make / offline replay (magicfuse_ros.bag, `magicfuse bag`), with `rosbags` only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags", reason="rosbags not installed")

from magicfuse_core.cli import main as cli_main  # noqa: E402
from magicfuse_core.imageio import read_gray, read_rgb, write_png  # noqa: E402
from magicfuse_core.palette import NUM_CLASSES  # noqa: E402
from magicfuse_ros import bag, params  # noqa: E402

START_NS = 1_700_000_000_123_456_789
RATE = 4.0
H, W = 48, 64


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """vis/ with 3 RGB frames and ir/ with their infrared partners (same names)."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(3)
    for i in range(3):
        write_png(root / "vis" / f"{i:02d}D.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        write_png(root / "ir" / f"{i:02d}D.png", rng.integers(0, 256, (H, W), dtype=np.uint8))
    return root


def tiny_params(**overrides):
    return params.load_param_file(overrides={"model_path": "random-tiny", "steps": 2, "device": "cpu",
                                             "cpu_threads": 1, **overrides})


@pytest.mark.parametrize("storage", bag.STORAGES)
def test_made_bag_has_header_stamps_equal_to_bag_timestamps(frames_dir, tmp_path, storage):
    made = bag.make_bag(frames_dir, tmp_path / "b", storage=storage, rate=RATE, start_ns=START_NS)
    assert (made.frames, made.ir_frames) == (3, 3)
    period = round(1e9 / RATE)
    read = list(bag.read_images(made.path, [bag.DEFAULT_TOPIC, bag.DEFAULT_IR_TOPIC]))
    visible = [f for f in read if f.topic == bag.DEFAULT_TOPIC]
    infrared = [f for f in read if f.topic == bag.DEFAULT_IR_TOPIC]
    assert [f.timestamp_ns for f in visible] == [START_NS + i * period for i in range(3)]
    assert [f.stamp_ns for f in visible] == [f.timestamp_ns for f in visible]
    assert [f.stamp_ns for f in infrared] == [f.stamp_ns for f in visible]
    names = sorted((frames_dir / "vis").iterdir())
    for frame, path in zip(visible, names):
        assert frame.message.header.frame_id == "camera" and frame.message.encoding == "rgb8"
        assert np.array_equal(frame.rgb(), read_rgb(path))
    for frame, path in zip(infrared, names):
        assert frame.message.encoding == "mono8"
        assert np.array_equal(frame.rgb()[:, :, 0], read_gray(frames_dir / "ir" / path.name))


@pytest.mark.parametrize("storage", bag.STORAGES)
def test_made_bag_is_in_the_humble_readable_format(frames_dir, tmp_path, storage):
    made = bag.make_bag(frames_dir, tmp_path / "b", storage=storage, start_ns=START_NS)
    info = yaml.safe_load((made.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8
    assert info["storage_identifier"] == storage
    for topic in info["topics_with_message_count"]:
        assert isinstance(topic["topic_metadata"]["offered_qos_profiles"], str)  # a list from version 9 on
        assert topic["topic_metadata"]["type"] == "sensor_msgs/msg/Image"
    assert info["message_count"] == 6


def test_make_bag_from_a_flat_folder_without_infrared(frames_dir, tmp_path):
    made = bag.make_bag(frames_dir / "vis", tmp_path / "b", encoding="bgr8", topic="/cam/image", start_ns=START_NS)
    assert (made.frames, made.ir_frames, made.ir_topic) == (3, 0, None)
    assert bag.image_topics(made.path) == {"/cam/image": bag.IMAGE_TYPE}
    first = next(bag.read_images(made.path, ["/cam/image"]))
    assert first.message.encoding == "bgr8"
    assert np.array_equal(first.rgb(), read_rgb(sorted((frames_dir / "vis").iterdir())[0]))


def test_make_bag_errors_are_clear(frames_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        bag.make_bag(tmp_path / "nope", tmp_path / "b")
    with pytest.raises(ValueError, match="rate"):
        bag.make_bag(frames_dir, tmp_path / "b", rate=0)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="exists already"):
        bag.make_bag(frames_dir, tmp_path / "taken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        bag.make_bag(tmp_path / "empty", tmp_path / "b2")


@pytest.mark.parametrize("storage", bag.STORAGES)
def test_replay_gives_one_output_per_frame_and_kind_with_the_input_header(frames_dir, tmp_path, storage,
                                                                           one_torch_thread):
    made = bag.make_bag(frames_dir, tmp_path / "in", storage=storage, start_ns=START_NS)
    report = bag.replay_bag(made.path, tmp_path / "out", params=tiny_params(), progress=lambda m: None)
    assert (report["frames_in"], report["frames_out"], report["topic"]) == (3, 3, bag.DEFAULT_TOPIC)
    inputs = {f.stamp_ns: f for f in bag.read_images(made.path, [bag.DEFAULT_TOPIC])}
    outputs = list(bag.read_images(tmp_path / "out", list(bag.OUTPUT_TOPICS.values())))
    assert any((tmp_path / "out").glob("*.mcap" if storage == "mcap" else "*.db3"))
    for kind, topic in bag.OUTPUT_TOPICS.items():
        of_kind = [f for f in outputs if f.topic == topic]
        assert [f.stamp_ns for f in of_kind] == sorted(inputs), kind
        for frame in of_kind:
            source = inputs[frame.stamp_ns]
            assert frame.timestamp_ns == source.timestamp_ns
            assert frame.message.header.frame_id == source.message.header.frame_id
            assert (frame.message.height, frame.message.width) == (H, W)
    encodings = {f.topic: f.message.encoding for f in outputs}
    assert encodings == {bag.OUTPUT_TOPICS["magimg"]: "rgb8", bag.OUTPUT_TOPICS["segmentation"]: "mono8",
                         bag.OUTPUT_TOPICS["segmentation_color"]: "rgb8", bag.OUTPUT_TOPICS["ir"]: "mono8",
                         bag.OUTPUT_TOPICS["fusion_weight"]: "mono8"}
    labels = [f.rgb()[:, :, 0] for f in outputs if f.topic == bag.OUTPUT_TOPICS["segmentation"]]
    assert all(label.max() < NUM_CLASSES for label in labels)


def test_replay_is_deterministic(frames_dir, tmp_path, one_torch_thread):
    made = bag.make_bag(frames_dir, tmp_path / "in", start_ns=START_NS)
    for name in ("a", "b"):
        bag.replay_bag(made.path, tmp_path / name, params=tiny_params(), progress=lambda m: None)
    first = [np.asarray(f.message.data) for f in bag.read_images(tmp_path / "a", [bag.OUTPUT_TOPICS["magimg"]])]
    second = [np.asarray(f.message.data) for f in bag.read_images(tmp_path / "b", [bag.OUTPUT_TOPICS["magimg"]])]
    assert len(first) == 3 and all(np.array_equal(x, y) for x, y in zip(first, second))


def test_replay_writes_pngs_report_and_evaluation(frames_dir, tmp_path, one_torch_thread):
    made = bag.make_bag(frames_dir, tmp_path / "in", start_ns=START_NS)
    png = tmp_path / "png"
    report = bag.replay_bag(made.path, tmp_path / "out", params=tiny_params(fusion_weight_encoding="32FC1"),
                            png_dir=png, progress=lambda m: None)
    for kind in ("magimg", "segmentation", "segmentation_color", "ir", "fusion_weight", "vis", "ir_real"):
        assert sorted(p.name for p in (png / kind).iterdir()) == ["000000.png", "000001.png", "000002.png"], kind
    assert (png / "report.json").is_file()
    assert report["evaluation"]["frames_scored"] == 3
    assert (png / "eval" / "metrics.json").is_file()
    weights = [f for f in bag.read_images(tmp_path / "out", [bag.OUTPUT_TOPICS["fusion_weight"]])]
    assert all(f.message.encoding == "32FC1" for f in weights)


def test_cli_bag_make_and_replay(frames_dir, tmp_path, capsys, one_torch_thread):
    assert cli_main(["bag", "make", str(frames_dir), str(tmp_path / "in"), "--storage", "mcap", "--rate", "5",
                     "--start", "1700000000"]) == 0
    assert "3 frames" in capsys.readouterr().out
    stamps = [f.stamp_ns for f in bag.read_images(tmp_path / "in", [bag.DEFAULT_TOPIC])]
    assert stamps == [1_700_000_000_000_000_000 + i * 200_000_000 for i in range(3)]
    assert cli_main(["bag", "replay", str(tmp_path / "in"), str(tmp_path / "out"), "--model", "random-tiny",
                     "--steps", "2", "--no-eval"]) == 0
    assert '"frames_out": 3' in capsys.readouterr().out
    # A bad option value is one clear line naming the parameter, not a traceback.
    assert cli_main(["bag", "replay", str(tmp_path / "in"), str(tmp_path / "out2"), "--tau", "3"]) == 2
    assert "invalid parameter 'tau'" in capsys.readouterr().err

