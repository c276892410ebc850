"""The real node as a subprocess, driven through real rclpy (Kilted wheels, Fast DDS).

One node (random tiny networks, 2 sampling steps, one CPU thread) serves most tests
of this module; frames go in best effort like a camera driver, outputs come back
through reliable subscribers. Each test process uses its own ROS domain (from its
pid) and namespace, and discovery stays on this host, so concurrent runs do not
hear each other. Every wait is bounded.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (requirements-ros.txt) not installed")
cv2 = pytest.importorskip("cv2")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from ros_harness import (DOMAIN, FRAME_TIMEOUT, PICTURE, TINY_NODE, H, Harness, NodeProcess,  # noqa: E402
                         W, node_parameters, stamp_ns, stop_recording, time_msg, topics, unique_namespace, wait_until)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from magicfuse_core.palette import MFNET_CLASSES, NUM_CLASSES, colorize  # noqa: E402
from magicfuse_ros import conversions  # noqa: E402

NAMESPACE = unique_namespace("test_node")
TOPICS = topics(NAMESPACE)
MAX_PIXELS = H * W * 2
NODE_PARAMS = {**TINY_NODE, "max_input_pixels": MAX_PIXELS, "subscribe_compressed": True}


@pytest.fixture(scope="module")
def node(client, tmp_path_factory):
    process = NodeProcess(namespace=NAMESPACE, overrides=NODE_PARAMS, domain_id=DOMAIN,
                          log_dir=tmp_path_factory.mktemp("node_log"))
    harness = Harness(client, process).start()
    yield harness
    process.stop()
    harness.close()


# ---- start-up --------------------------------------------------------------------------------

def test_model_is_loaded_and_warmed_up_before_the_input_is_subscribed(node):
    log = node.process.log()
    lines = ["building random (untrained) 'tiny' networks", "model ready in", "warm-up at", "ready: listening on"]
    positions = [log.find(line) for line in lines]
    assert all(p >= 0 for p in positions), log
    assert positions == sorted(positions), log
    assert f"{NAMESPACE}/magicfuse/input/image" in log


def test_class_list_is_latched(node):
    late = node.client.recorder(String, TOPICS["class_list"], depth=1, latched=True)
    try:
        assert wait_until(lambda: len(late) > 0, 20.0)
        classes = json.loads(late.messages[0].data)
        assert [c["name"] for c in classes["classes"]] == list(MFNET_CLASSES)
        assert [c["id"] for c in classes["classes"]] == list(range(NUM_CLASSES))
        assert classes["thermal_classes"] == ["person"]
    finally:
        stop_recording(node.client, late)


# ---- normal frames ---------------------------------------------------------------------------

def test_outputs_match_the_input_size_encoding_and_header(node):
    for height, width in ((H, W), (40, 56)):
        msg = node.frame(PICTURE[:height, :width], frame_id=f"cam_{height}")
        out = node.send_and_wait(msg)
        for kind, expected_encoding, channels in (("magimg", "rgb8", 3), ("segmentation", "mono8", 1)):
            result = out[kind]
            assert result.header == msg.header, kind
            assert (result.height, result.width, result.encoding) == (height, width, expected_encoding), kind
            assert result.step == width * channels and len(result.data) == height * width * channels, kind
        labels = conversions.image_to_array(out["segmentation"])[0]
        assert labels.max() < NUM_CLASSES


def test_debug_topics_report_processing_time_and_latency(node):
    before_processing, before_latency = len(node.processing_ms), len(node.latency_ms)
    node.send_and_wait(node.frame())
    assert wait_until(
        lambda: len(node.processing_ms) > before_processing and len(node.latency_ms) > before_latency, 10.0)
    processing, latency = node.processing_ms.messages[-1].data, node.latency_ms.messages[-1].data
    assert 0.0 < processing < FRAME_TIMEOUT * 1000
    assert processing <= latency + 1.0  # latency counts from the stamp, before processing started


def test_one_output_per_input_when_not_overloaded(node):
    start = node.fresh_counters()
    stamps = [stamp_ns(node.send_and_wait(node.frame())["magimg"]) for _ in range(4)]
    time.sleep(0.3)
    for stamp in stamps:
        per_kind = node.outputs_for(stamp)
        assert all(len(msgs) == 1 for msgs in per_kind.values()), per_kind
    end = node.fresh_counters()
    assert end["received"] - start["received"] == 4
    assert end["processed"] - start["processed"] == 4
    assert end["dropped_superseded"] == start["dropped_superseded"]
    assert end["dropped_stale"] == start["dropped_stale"]


def test_every_input_encoding_gives_the_same_result(node):
    """Same picture in every layout -> bit-identical MagImg (fixed seed, deterministic CPU run)."""
    alpha = np.full((H, W, 1), 77, np.uint8)
    reference = node.magimg_of(node.frame(PICTURE, "rgb8"))
    for payload, encoding, pad in ((PICTURE[:, :, ::-1], "bgr8", 0), (PICTURE, "rgb8", 5),
                                   (np.concatenate([PICTURE, alpha], 2), "rgba8", 4),
                                   (np.concatenate([PICTURE[:, :, ::-1], alpha], 2), "bgra8", 0)):
        assert np.array_equal(node.magimg_of(node.frame(payload, encoding, pad=pad)), reference), encoding
    grey = PICTURE[:, :, 1]
    grey_reference = node.magimg_of(node.frame(grey, "mono8"))
    grey16 = grey.astype(np.uint16) * 257
    for bigendian, pad in ((False, 0), (True, 6)):
        result = node.magimg_of(node.frame(grey16, "mono16", bigendian=bigendian, pad=pad))
        assert np.array_equal(result, grey_reference), f"mono16 bigendian={bigendian}"


def test_compressed_input_is_decoded(node):
    reference = node.magimg_of(node.frame(PICTURE, "rgb8"))
    ok, png = cv2.imencode(".png", PICTURE[:, :, ::-1])
    assert ok
    msg = CompressedImage(format="png", data=png.tobytes())
    msg.header.stamp, msg.header.frame_id = node.stamp(), "camera_front"
    out = node.send_and_wait(msg)
    assert out["magimg"].header == msg.header
    assert np.array_equal(conversions.image_to_rgb(out["magimg"]), reference)


# ---- time base: every frame is processed whatever clock stamped it ----------------------------

HOUR_NS = 3600 * 10**9


def test_frames_from_any_clock_are_processed_with_their_stamp_kept(node):
    """Default (max_input_age_ms 0): stamps at 0 s, host time, 1 h in the past and in the future all give outputs."""
    start = node.fresh_counters()
    now_ns = node.client.node.get_clock().now().nanoseconds
    for label, stamp in (("zero", 0), ("host", now_ns), ("an hour ago", now_ns - HOUR_NS),
                         ("in an hour", now_ns + HOUR_NS)):
        msg = node.frame(frame_id=f"clock_{label.replace(' ', '_')}")
        msg.header.stamp = time_msg(stamp)
        out = node.send_and_wait(msg)
        assert out["magimg"].header == msg.header, label
    end = node.fresh_counters()
    assert end["processed"] - start["processed"] == 4
    assert end["dropped_stale"] == start["dropped_stale"] == 0
    assert node.process.log().count("the camera clock differs") == 1  # one warning, not one per frame


# ---- QoS: REP-2003 defaults, any publisher reliability accepted -------------------------------

def test_default_qos_is_sensor_data_in_and_reliable_out(node):
    from rclpy.qos import ReliabilityPolicy

    graph = node.client.node
    [input_sub] = [i for i in graph.get_subscriptions_info_by_topic(TOPICS["input"]) if i.node_name == "magicfuse"]
    assert input_sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    [output_pub] = graph.get_publishers_info_by_topic(TOPICS["magimg"])
    assert output_pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    # The policies are ROS 2's standard override parameters (the graph does not carry the depth).
    names = [f"qos_overrides.{TOPICS['input']}.subscription.{policy}" for policy in ("reliability", "history", "depth")]
    names += [f"qos_overrides.{TOPICS['magimg']}.publisher.{policy}" for policy in ("reliability", "depth")]
    values = node_parameters(node.client, f"{NAMESPACE}/magicfuse", names)
    assert list(values.values()) == ["best_effort", "keep_last", 5, "reliable", 1]


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable_publisher", "best_effort_publisher"])
def test_default_input_qos_takes_reliable_and_best_effort_publishers(node, reliable):
    publisher = node.client.publisher(Image, TOPICS["input"], reliable=reliable)
    try:
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 10.0)
        msg = node.frame()
        stamp = stamp_ns(msg)
        # Best effort may lose a sample while the new publisher is being matched: resend until one comes out.
        assert wait_until(lambda: publisher.publish(msg) or all(node.outputs_for(stamp).values()), FRAME_TIMEOUT,
                          poll=0.5, while_alive=node.process)
    finally:
        node.client.node.destroy_publisher(publisher)


# ---- camera_info pass-through ------------------------------------------------------------------

def test_no_camera_info_is_published_without_an_input_camera_info(node):
    infos = node.client.recorder(CameraInfo, TOPICS["camera_info"])
    try:
        wait_until(lambda: infos.subscription.get_publisher_count() > 0, 10.0)
        node.send_and_wait(node.frame())
        time.sleep(0.5)
        assert len(infos) == 0
    finally:
        stop_recording(node.client, infos)


def test_camera_info_carries_each_output_frames_header_and_size(node):
    infos = node.client.recorder(CameraInfo, TOPICS["camera_info"], depth=20)
    info_pub = node.client.publisher(CameraInfo, TOPICS["input_camera_info"], reliable=True)
    camera = CameraInfo(width=2 * W, height=2 * H, distortion_model="plumb_bob", d=[0.1, 0.0, 0.0, 0.0, 0.0],
                        k=[100.0, 0.0, 80.0, 0.0, 100.0, 64.0, 0.0, 0.0, 1.0],
                        p=[100.0, 0.0, 80.0, 0.0, 0.0, 100.0, 64.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    try:
        assert wait_until(lambda: info_pub.get_subscription_count() > 0, 10.0)
        wait_until(lambda: infos.subscription.get_publisher_count() > 0, 10.0)
        info_pub.publish(camera)
        out = node.send_until_output(lambda: (info_pub.publish(camera), node.frame(frame_id="camera_info_test"))[1],
                                     {"camera_info": infos})
        info, frame = out["camera_info"], out["_input"]
        assert info.header == frame.header
        assert (info.width, info.height) == (W, H)  # the output image's size
        assert list(info.k) == [50.0, 0.0, 40.0, 0.0, 50.0, 32.0, 0.0, 0.0, 1.0]  # intrinsics scaled to it
        assert info.distortion_model == "plumb_bob" and list(info.d) == list(camera.d)
        magimg = node.outputs_for(stamp_ns(frame))["magimg"][0]
        assert (magimg.width, magimg.height) == (info.width, info.height)
    finally:
        stop_recording(node.client, infos)
        node.client.node.destroy_publisher(info_pub)


# ---- bad input: skipped with a warning, the next good frame still processed --------------------

def _truncated(node):
    msg = node.frame()
    msg.data = msg.data[:-1]
    return msg


def _step_too_short(node):
    msg = node.frame()
    msg.step = W * 3 - 1
    msg.data = bytes(msg.step * H)
    return msg


def _zero_size(node):
    msg = node.frame()
    msg.height = msg.width = msg.step = 0
    msg.data = b""
    return msg


def _huge_claimed_size(node):
    msg = node.frame()
    msg.height, msg.width, msg.step = 100_000, 100_000, 300_000
    return msg


def _above_pixel_limit(node):
    return node.frame(np.zeros((120, 120, 3), np.uint8))  # well formed, but 14400 > MAX_PIXELS


def _unknown_encoding(node):
    msg = node.frame()
    msg.encoding = "yuv422"
    return msg


def _float_input(node):
    return Image(header=node.frame().header, **conversions.image_fields(np.zeros((H, W), np.float32), "32FC1"))


def _undecodable_compressed(node):
    msg = CompressedImage(format="jpeg", data=b"\xff\xd8 this is not a jpeg")
    msg.header.stamp = node.stamp()
    return msg


BAD_MESSAGES = {
    "truncated_data": (_truncated, "invalid"),
    "step_shorter_than_a_row": (_step_too_short, "invalid"),
    "zero_size": (_zero_size, "invalid"),
    "huge_claimed_size": (_huge_claimed_size, "invalid"),
    "above_max_input_pixels": (_above_pixel_limit, "invalid"),
    "unknown_encoding": (_unknown_encoding, "invalid"),
    "float_encoding": (_float_input, "invalid"),
    "undecodable_compressed": (_undecodable_compressed, "invalid"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_bad_message_is_skipped_and_the_next_frame_processed(node, case):
    make_bad, counter = BAD_MESSAGES[case]
    start = node.fresh_counters()
    bad = make_bad(node)
    (node.compressed_pub if isinstance(bad, CompressedImage) else node.image_pub).publish(bad)
    assert wait_until(lambda: node.fresh_counters()[counter] > start[counter], 20.0), case
    good = node.frame()
    out = node.send_and_wait(good)
    assert out["magimg"].header == good.header
    assert not any(node.outputs_for(stamp_ns(bad)).values()), "the bad frame produced an output"
    end = node.fresh_counters()
    assert end[counter] - start[counter] == 1
    assert end["processed"] - start["processed"] == 1
    assert node.process.alive()
    if counter == "invalid":
        assert "skipping input frame" in node.process.log()


# ---- load, laziness, monitoring ----------------------------------------------------------------

def test_newest_frame_wins_under_overload(node):
    start = node.fresh_counters()
    burst = [node.frame() for _ in range(6)]
    for msg in burst:
        node.image_pub.publish(msg)
    wait_until(lambda: all(node.outputs_for(stamp_ns(burst[-1])).values()), FRAME_TIMEOUT,
                           while_alive=node.process)
    assert all(node.outputs_for(stamp_ns(burst[-1])).values()), "the newest frame was not processed"
    time.sleep(0.5)
    end = node.fresh_counters()
    delta = {k: end[k] - start[k] for k in ("received", "processed", "dropped_superseded", "dropped_stale", "invalid")}
    outputs = sum(bool(node.outputs_for(stamp_ns(m))["magimg"]) for m in burst)
    assert outputs == delta["processed"] <= len(burst)
    assert delta["received"] == delta["processed"] + delta["dropped_superseded"] + delta["dropped_stale"] + delta["invalid"]


def test_lazy_outputs_are_published_only_with_subscribers(node):
    start = node.fresh_counters()["published"]
    node.send_and_wait(node.frame())
    published = node.fresh_counters()["published"]
    for kind in ("segmentation_color", "ir", "fusion_weight"):
        assert published[kind] == start[kind], kind
    assert published["magimg"] > start["magimg"]

    ir = {"ir": node.client.recorder(Image, TOPICS["ir"])}
    try:
        # Discovery is asynchronous: a few frames may pass before the node sees the subscriber.
        for _ in range(10):
            msg = node.frame()
            node.send_and_wait(msg)
            if wait_until(lambda: any(node.outputs_for(stamp_ns(msg), ir).values()), 1.0):
                break
        else:
            pytest.fail("no ~/output/ir message after subscribing")
        assert node.fresh_counters()["published"]["ir"] > start["ir"]
        assert node.fresh_counters()["published"]["segmentation_color"] == start["segmentation_color"]
    finally:
        stop_recording(node.client, ir["ir"])


def test_every_output_carries_the_input_header(node):
    lazy = {kind: node.client.recorder(Image, TOPICS[kind]) for kind in ("segmentation_color", "ir", "fusion_weight")}
    recorders = {**node.out, **lazy}
    try:
        for _ in range(10):
            msg = node.frame(frame_id="camera_rear")
            node.send_and_wait(msg)
            if wait_until(lambda: all(node.outputs_for(stamp_ns(msg), recorders).values()), 1.0):
                break
        else:
            pytest.fail("lazy outputs never arrived")
        out = {kind: msgs[0] for kind, msgs in node.outputs_for(stamp_ns(msg), recorders).items()}
        for kind, result in out.items():
            assert result.header == msg.header, kind
            assert (result.height, result.width) == (H, W), kind
        assert {k: m.encoding for k, m in out.items()} == {
            "magimg": "rgb8", "segmentation": "mono8", "segmentation_color": "rgb8", "ir": "mono8", "fusion_weight": "mono8"}
        labels = conversions.image_to_array(out["segmentation"])[0]
        assert np.array_equal(conversions.image_to_rgb(out["segmentation_color"]), colorize(labels))
    finally:
        for recorder in lazy.values():
            stop_recording(node.client, recorder)


def test_diagnostics_report_ok_and_warn_on_invalid_input(node):
    diagnostics = node.client.recorder(DiagnosticArray, "/diagnostics", depth=50)

    def statuses():
        return [s for a in diagnostics.messages for s in a.status if s.name == "magicfuse: MagImg pipeline"]

    try:
        assert wait_until(lambda: len(statuses()) > 0, 10.0)
        status = statuses()[-1]
        values = {kv.key: kv.value for kv in status.values}
        for key in ("received", "processed", "dropped_superseded", "dropped_stale", "invalid", "failed", "cut_short",
                    "mean_processing_time_ms", "output_rate_hz"):
            assert key in values, key
        assert status.hardware_id == "cpu"
        bad = node.frame()
        bad.encoding = "yuv422"
        seen = len(statuses())
        node.image_pub.publish(bad)
        assert wait_until(
            lambda: any(s.level == DiagnosticStatus.WARN and "invalid" in s.message for s in statuses()[seen:]), 10.0)
        node.send_and_wait(node.frame())
        seen = len(statuses())
        assert wait_until(lambda: any(s.level == DiagnosticStatus.OK for s in statuses()[seen:]), 10.0)
    finally:
        stop_recording(node.client, diagnostics)


def test_node_shuts_down_cleanly_on_sigint(node):
    assert node.process.alive()
    assert node.process.stop(timeout=20.0) == 0
    assert "Traceback" not in node.process.log()
