"""rosbag2 files of camera frames and of the node's outputs, with `rosbags` (no ROS install needed).

- `make_bag`: a folder of images (plus real infrared from its `ir/` folder, when
  there is one) -> a rosbag2 of sensor_msgs/Image, one frame every 1/rate s;
  each message's header stamp equals its bag (log) timestamp.
- `replay_bag`: offline and deterministic: every image of the input bag goes
  through the same `FrameProcessor` the node uses and gives one message of each
  output kind, with the input's header and bag timestamp; optionally PNGs and
  the evaluation report (magicfuse_core.evaluation) when the bag has real infrared.
- `read_images`, `BagOutput`: the reading and writing both share.

Format: rosbag2 metadata version 8, the oldest `rosbags` writes. It stores the
offered QoS profiles as a YAML string, the form ROS 2 Humble's reader parses
(version 9, Jazzy's default, turned them into a YAML list); sqlite3 (Humble's
default) and mcap storage are both available. Message types come from the
Humble type store; sensor_msgs/Image and std_msgs/String are the same in every
distribution since.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from magicfuse_core.imageio import list_images, read_gray, read_rgb, write_png

from . import conversions
from .outputs import IMAGE_OUTPUT_NAMES, topics
from .processing import class_list_json, weight_to_mono8

BAG_VERSION = 8
STORAGES = ("sqlite3", "mcap")
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_IR_TOPIC = "/camera/ir/image_raw"
# Fully qualified names of the node's outputs with its default name and no namespace.
_NODE_TOPICS = topics()
OUTPUT_TOPICS = {name: _NODE_TOPICS[name] for name in IMAGE_OUTPUT_NAMES}
CLASS_LIST_TOPIC = _NODE_TOPICS["class_list"]
VISIBLE_FOLDERS = ("vis", "vi", "visible")


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _storage_plugin(storage: str):
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise ValueError(f"unknown bag storage {storage!r}; choose one of: {', '.join(STORAGES)}")
    return {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    return ns // 1_000_000_000, ns % 1_000_000_000


def image_message(store, fields: dict, stamp_ns: int, frame_id: str):
    """A rosbags sensor_msgs/Image from `conversions.image_fields` output."""
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                          frame_id=frame_id)
    return types[IMAGE_TYPE](header=header, height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                             is_bigendian=fields["is_bigendian"], step=fields["step"],
                             data=np.frombuffer(fields["data"], dtype=np.uint8).copy())


class BagOutput:
    """A rosbag2 being written: topics are added on first use. Use as a context manager."""

    def __init__(self, path: str | Path, storage: str = "sqlite3"):
        from rosbags.rosbag2 import Writer

        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"output bag {self.path} exists already; choose another path or remove it")
        self.store = typestore()
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=_storage_plugin(storage))
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> "BagOutput":
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, topic: str, msgtype: str, timestamp_ns: int, message=None, raw: bytes | None = None) -> None:
        """Write a rosbags message, or `raw` CDR bytes already serialised (e.g. by rclpy)."""
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        data = raw if raw is not None else self.store.serialize_cdr(message, msgtype)
        self._writer.write(self._connections[topic], int(timestamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1


@dataclass
class BagFrame:
    """One image message read from a bag (a rosbags message object)."""

    timestamp_ns: int   # bag (log) time
    topic: str
    msgtype: str
    message: object

    @property
    def stamp_ns(self) -> int:
        return stamp_to_ns(self.message.header.stamp)

    def rgb(self, max_pixels: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB; ValueError for a malformed message."""
        if self.msgtype == COMPRESSED_TYPE:
            return conversions.compressed_to_rgb(self.message, max_pixels)
        return conversions.image_to_rgb(self.message, max_pixels)


def image_topics(bag: str | Path) -> dict[str, str]:
    """{topic: msgtype} of the bag's Image and CompressedImage topics."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic: c.msgtype for c in reader.connections if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)}


def pick_topic(bag: str | Path, topic: str | None) -> str:
    """`topic` when the bag has it as an image topic; else the only/first non-IR image topic."""
    topics = image_topics(bag)
    if topic is not None:
        if topic not in topics:
            raise ValueError(f"bag {bag} has no image topic {topic!r} (image topics: {', '.join(topics) or 'none'})")
        return topic
    if not topics:
        raise ValueError(f"bag {bag} has no sensor_msgs/Image or CompressedImage topic")
    visible = [t for t in topics if "/ir" not in t and "thermal" not in t] or list(topics)
    return sorted(visible)[0]


def read_images(bag: str | Path, topics: list[str]) -> Iterator[BagFrame]:
    """Image messages of `topics` in bag-time order."""
    from rosbags.rosbag2 import Reader

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"bag not found: {bag}")
    store = typestore()
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic in topics]
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield BagFrame(timestamp, connection.topic, connection.msgtype, store.deserialize_cdr(raw, connection.msgtype))


# ---- make ------------------------------------------------------------------------------------

@dataclass
class MadeBag:
    path: Path
    frames: int
    ir_frames: int
    topic: str
    ir_topic: str | None
    stamps_ns: list[int] = field(default_factory=list)


def _visible_folder(images_dir: Path) -> Path:
    if list_images(images_dir):
        return images_dir
    for name in VISIBLE_FOLDERS:
        if (images_dir / name).is_dir():
            return images_dir / name
    raise ValueError(f"no images in {images_dir} (nor in a {'/, '.join(VISIBLE_FOLDERS)}/ sub-folder)")


def make_bag(images_dir: str | Path, out_bag: str | Path, *, topic: str = DEFAULT_TOPIC, ir_topic: str = DEFAULT_IR_TOPIC,
             rate: float = 10.0, storage: str = "sqlite3", frame_id: str = "camera", ir_frame_id: str = "thermal_camera",
             encoding: str = "rgb8", start_ns: int | None = None, max_frames: int | None = None) -> MadeBag:
    """Write the images of `images_dir` (or its vis/ folder) as a rosbag2 of sensor_msgs/Image.

    Frame i gets header stamp and bag timestamp start_ns + i / rate seconds (start_ns:
    now by default). When `images_dir` has an `ir/` folder, the infrared image of the
    same file name goes on `ir_topic` (mono8) with the same stamp. Images are sorted
    by name. encoding: rgb8, bgr8 or mono8.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if encoding not in ("rgb8", "bgr8", "mono8"):
        raise ValueError(f"encoding must be rgb8, bgr8 or mono8, got {encoding!r}")
    visible = list_images(_visible_folder(images_dir))[:max_frames]
    ir_dir = images_dir / "ir"
    ir_by_name = {p.name: p for p in list_images(ir_dir)} if ir_dir.is_dir() else {}
    if not visible:
        raise ValueError(f"no images in {images_dir}")
    start_ns = time.time_ns() if start_ns is None else int(start_ns)
    period_ns = round(1e9 / rate)
    made = MadeBag(Path(out_bag), 0, 0, topic, ir_topic if ir_by_name else None)
    with BagOutput(out_bag, storage) as out:
        for i, path in enumerate(visible):
            stamp_ns = start_ns + i * period_ns
            rgb = read_rgb(path)
            fields = (conversions.image_fields(read_gray(path), "mono8") if encoding == "mono8"
                      else conversions.image_fields(rgb, encoding))
            out.write(topic, IMAGE_TYPE, stamp_ns, image_message(out.store, fields, stamp_ns, frame_id))
            made.frames += 1
            made.stamps_ns.append(stamp_ns)
            if path.name in ir_by_name:
                ir = conversions.image_fields(read_gray(ir_by_name[path.name]), "mono8")
                out.write(ir_topic, IMAGE_TYPE, stamp_ns, image_message(out.store, ir, stamp_ns, ir_frame_id))
                made.ir_frames += 1
    return made


# ---- replay ----------------------------------------------------------------------------------

def png_of(kind: str, array: np.ndarray) -> np.ndarray:
    """An output's array as a PNG can hold it (32FC1 weights as mono8)."""
    if kind == "fusion_weight" and array.dtype != np.uint8:
        return weight_to_mono8(array)
    return array


def replay_bag(in_bag: str | Path, out_bag: str | Path, *, params, topic: str | None = None, storage: str | None = None,
               png_dir: str | Path | None = None, evaluate: bool = True, progress=print) -> dict:
    """Run every image of `topic` through the pipeline; write one message per output kind per frame.

    params: `MagicFuseParams` (e.g. from `params.load_param_file`). Output messages carry
    the input message's header; their bag timestamps are the input's. With `png_dir`,
    writes PNGs per kind (frame i -> NNNNNN.png), the input frames (vis/) and real IR
    (ir_real/, when the bag has an IR topic), and, if `evaluate`, the evaluation report
    in png_dir/eval. Returns a report dict (also written to png_dir/report.json).
    """
    from .processing import FrameProcessor, load_pipeline

    in_bag, out_bag = Path(in_bag), Path(out_bag)
    topic = pick_topic(in_bag, topic)
    topics = image_topics(in_bag)
    ir_topic = next((t for t in topics if t != topic and ("/ir" in t or "thermal" in t)), None)
    if storage is None:
        storage = "mcap" if any(in_bag.glob("*.mcap")) else "sqlite3"
    pipeline = load_pipeline(params, log=progress)
    if not pipeline.trained:
        progress("WARNING: the networks are untrained (random weights): outputs exercise the plumbing only")
    processor = FrameProcessor(pipeline, params)
    png_dir = Path(png_dir) if png_dir is not None else None

    # Real infrared (for the PNGs and the evaluation) is read first: it is small next to the frames.
    real_ir: dict[int, np.ndarray] = {}
    if png_dir is not None and ir_topic is not None:
        real_ir = {f.stamp_ns: f.rgb()[:, :, 0] for f in read_images(in_bag, [ir_topic])}
    report = {"input_bag": str(in_bag), "output_bag": str(out_bag), "topic": topic, "ir_topic": ir_topic,
              "frames_in": 0, "frames_out": 0, "skipped": [], "processing_ms": [], "stamps_ns": [],
              "cut_short": 0, "model": params.model_path, "trained": bool(pipeline.trained)}
    with BagOutput(out_bag, storage) as out:
        for index, frame in enumerate(read_images(in_bag, [topic])):
            if index == 0:
                class_list = out.store.types[STRING_TYPE](data=class_list_json(params.thermal_classes))
                out.write(CLASS_LIST_TOPIC, STRING_TYPE, frame.timestamp_ns, class_list)
            report["frames_in"] += 1
            name = f"{index:06d}"
            try:
                rgb = frame.rgb(params.max_input_pixels)
            except ValueError as exc:
                report["skipped"].append({"index": index, "stamp_ns": frame.stamp_ns, "reason": str(exc)})
                progress(f"frame {index}: skipped ({exc})")
                continue
            started = time.perf_counter()
            outputs = processor.process(rgb, frame.stamp_ns)  # every image output
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            header = frame.message.header
            for kind, (array, encoding) in outputs.images.items():
                message = image_message(out.store, conversions.image_fields(array, encoding), 0, "")
                message.header = header  # the input's header, exactly
                out.write(OUTPUT_TOPICS[kind], IMAGE_TYPE, frame.timestamp_ns, message)
                if png_dir is not None:
                    write_png(png_dir / kind / f"{name}.png", png_of(kind, array))
            if png_dir is not None:
                write_png(png_dir / "vis" / f"{name}.png", rgb)
                if frame.stamp_ns in real_ir:
                    write_png(png_dir / "ir_real" / f"{name}.png", real_ir[frame.stamp_ns])
            report["frames_out"] += 1
            report["processing_ms"].append(round(elapsed_ms, 2))
            report["stamps_ns"].append(frame.stamp_ns)
            report["cut_short"] += int(outputs.cut_short)
            progress(f"frame {index + 1}: {elapsed_ms:.0f} ms")
    times = report["processing_ms"]
    report["mean_processing_ms"] = round(float(np.mean(times)), 2) if times else None
    report["messages_written"] = dict(out.counts)
    if png_dir is not None and evaluate and real_ir and report["frames_out"]:
        report["evaluation"] = _evaluate(png_dir, progress)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        (png_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _evaluate(png_dir: Path, progress) -> dict:
    """The evaluation report over the replay's PNGs (fusion metrics, generated-IR similarity)."""
    from magicfuse_core.evaluation import EvalConfig, format_means, run_evaluation

    config = EvalConfig(vis=png_dir / "vis", ir=png_dir / "ir_real", out=png_dir / "eval",
                        results={"magimg": png_dir / "magimg", "generated_ir": png_dir / "ir"},
                        generated_ir=("generated_ir",), max_grid=4, progress=False,
                        command_line="magicfuse bag replay")
    summary = run_evaluation(config)
    progress(format_means(summary))
    return {"folder": str(png_dir / "eval"), "frames_scored": summary["frames"]["scored"]}
