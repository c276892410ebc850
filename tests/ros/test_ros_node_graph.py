"""How the real node fits into a graph: lazy camera subscription, QoS overrides and
incompatible pairs, and the opt-in age check with frames stamped by other clocks, with and without
use_sim_time. Each configuration is its own node process (random tiny networks; the behaviour, not the
model, is under test)."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy", reason="rclpy (requirements-ros.txt) not installed")

from ros_harness import (DOMAIN, FRAME_TIMEOUT, START_TIMEOUT, TINY_NODE, Harness, NodeProcess,  # noqa: E402
                         node_parameters, stamp_ns, stop_recording, time_msg, topics, unique_namespace, wait_until)
from sensor_msgs.msg import Image  # noqa: E402

HOUR_NS = 3600 * 10**9


def start_node(tmp_path, name: str, **overrides) -> NodeProcess:
    process = NodeProcess(namespace=unique_namespace(name), overrides={**TINY_NODE, **overrides}, domain_id=DOMAIN,
                          log_dir=tmp_path)
    process.start()
    if not wait_until(lambda: "ready:" in process.log(), START_TIMEOUT, poll=0.1, while_alive=process):
        process.stop()
        pytest.fail(f"the node did not start:\n{process.log()[-3000:]}")
    return process


# ---- lazy camera subscription (12.2) -------------------------------------------------------------

def test_camera_is_subscribed_only_while_an_image_output_has_a_subscriber(client, tmp_path):
    process = start_node(tmp_path, "lazy")
    names = topics(process.namespace)
    camera = client.publisher(Image, names["input"])
    try:
        log = process.log()
        assert log.index("warm-up at") < log.index("ready:")  # warm-up still happens at start-up
        time.sleep(1.0)  # five subscriber checks
        assert camera.get_subscription_count() == 0

        for output in ("magimg", "ir"):  # an always-on output and a lazy one both count
            listener = client.recorder(Image, names[output])
            assert wait_until(lambda: camera.get_subscription_count() == 1, 10.0), output
            stop_recording(client, listener)
            assert wait_until(lambda: camera.get_subscription_count() == 0, 10.0), output
        log = process.log()
        assert log.count("subscribed to the camera") == 2 and log.count("unsubscribed from the camera") == 2
        assert process.alive()
    finally:
        client.node.destroy_publisher(camera)
        assert process.stop() == 0


def test_lazy_input_false_subscribes_at_start_up(client, tmp_path):
    process = start_node(tmp_path, "eager", lazy_input=False)
    camera = client.publisher(Image, topics(process.namespace)["input"])
    try:
        assert wait_until(lambda: camera.get_subscription_count() == 1, 10.0)
    finally:
        client.node.destroy_publisher(camera)
        assert process.stop() == 0


# ---- QoS through qos_overrides (12.3) --------------------------------------------------------------

def test_qos_overrides_set_the_input_and_output_qos(client, tmp_path):
    from rclpy.qos import ReliabilityPolicy

    namespace = unique_namespace("qos")
    names = topics(namespace)
    overrides = {f"qos_overrides.{names['input']}.subscription.reliability": "reliable",
                 f"qos_overrides.{names['input']}.subscription.depth": 3,
                 f"qos_overrides.{names['segmentation']}.publisher.depth": 4}
    process = NodeProcess(namespace=namespace, overrides={**TINY_NODE, **overrides}, domain_id=DOMAIN, log_dir=tmp_path)
    harness = Harness(client, process, reliable_input=True).start()
    best_effort = client.publisher(Image, names["input"], reliable=False)
    try:
        [subscription] = [i for i in client.node.get_subscriptions_info_by_topic(names["input"])
                          if i.node_name == "magicfuse"]
        assert subscription.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        values = node_parameters(client, f"{namespace}/magicfuse", list(overrides))
        assert values == overrides
        # A reliable publisher is matched and its frames processed ...
        frame = harness.frame()
        assert harness.send_and_wait(frame)["magimg"].header == frame.header
        # ... a best-effort one cannot be matched: the node logs the incompatibility and receives nothing from it.
        assert wait_until(lambda: "incompatible QoS on " + names["input"] in process.log(), 10.0), process.log()[-2000:]
        assert "RELIABILITY" in process.log()
        lost = harness.frame()
        best_effort.publish(lost)
        time.sleep(1.0)
        assert not any(harness.outputs_for(stamp_ns(lost)).values())
        assert best_effort.get_subscription_count() == 0
    finally:
        client.node.destroy_publisher(best_effort)
        assert process.stop() == 0
        harness.close()


# ---- opt-in age check and foreign clocks (12.1) ------------------------------------------------------

def _send_stamped(harness: Harness, stamps: dict[str, int]) -> dict[str, bool]:
    """{label: processed?} for one frame per stamp; a dropped frame is seen in the counters."""
    processed = {}
    for label, stamp in stamps.items():
        before = harness.fresh_counters()
        msg = harness.frame(frame_id=label)
        msg.header.stamp = time_msg(stamp)
        harness.image_pub.publish(msg)
        assert wait_until(lambda: any(harness.outputs_for(stamp_ns(msg)).values())
                          or harness.fresh_counters()["dropped_stale"] > before["dropped_stale"], FRAME_TIMEOUT,
                          poll=0.3, while_alive=harness.process), label
        got = wait_until(lambda: all(harness.outputs_for(stamp_ns(msg)).values()), 1.0)
        processed[label] = got
        if got:
            assert harness.outputs_for(stamp_ns(msg))["magimg"][0].header == msg.header, label
    return processed


def test_opt_in_age_check_drops_late_frames_but_not_other_clocks(client, tmp_path):
    process = NodeProcess(namespace=unique_namespace("max_age"), domain_id=DOMAIN, log_dir=tmp_path,
                          overrides={**TINY_NODE, "max_input_age_ms": 5000.0})
    harness = Harness(client, process).start()
    try:
        now = client.node.get_clock().now().nanoseconds
        processed = _send_stamped(harness, {"late_10s": now - 10 * 10**9, "host": now, "zero": 0,
                                            "hour_ago": now - HOUR_NS, "in_an_hour": now + HOUR_NS})
        assert processed == {"late_10s": False, "host": True, "zero": True, "hour_ago": True, "in_an_hour": True}
        assert harness.fresh_counters()["dropped_stale"] == 1
        assert process.log().count("the camera clock differs") == 1
    finally:
        assert process.stop() == 0
        harness.close()


def test_opt_in_age_check_follows_sim_time(client, tmp_path):
    """use_sim_time: ages count from /clock; stamps of the host clock are another time base."""
    from rosgraph_msgs.msg import Clock

    sim_ns = 1_000_000 * 10**9
    clock_pub = client.publisher(Clock, "/clock", reliable=True)
    ticker = client.node.create_timer(0.05, lambda: clock_pub.publish(Clock(clock=time_msg(sim_ns))))
    process = NodeProcess(namespace=unique_namespace("sim_time"), domain_id=DOMAIN, log_dir=tmp_path,
                          overrides={**TINY_NODE, "max_input_age_ms": 5000.0, "use_sim_time": True})
    harness = Harness(client, process).start()
    try:
        host = client.node.get_clock().now().nanoseconds
        processed = _send_stamped(harness, {"sim_now": sim_ns, "sim_late_10s": sim_ns - 10 * 10**9, "zero": 0,
                                            "host": host, "sim_hour_ago": sim_ns - HOUR_NS,
                                            "sim_in_an_hour": sim_ns + HOUR_NS})
        assert processed == {"sim_now": True, "sim_late_10s": False, "zero": True, "host": True,
                             "sim_hour_ago": True, "sim_in_an_hour": True}
        assert process.log().count("the camera clock differs") == 1
    finally:
        client.node.destroy_timer(ticker)
        client.node.destroy_publisher(clock_pub)
        assert process.stop() == 0
        harness.close()


def test_default_processes_any_stamp_under_sim_time_even_before_clock_arrives(client, tmp_path):
    """use_sim_time with no /clock yet (a bag not playing): the node's clock reads 0, every frame still goes out."""
    process = NodeProcess(namespace=unique_namespace("sim_default"), domain_id=DOMAIN, log_dir=tmp_path,
                          overrides={**TINY_NODE, "use_sim_time": True})
    harness = Harness(client, process).start()
    try:
        host = client.node.get_clock().now().nanoseconds
        processed = _send_stamped(harness, {"zero": 0, "host": host, "hour_ago": host - HOUR_NS,
                                            "in_an_hour": host + HOUR_NS})
        assert processed == {"zero": True, "host": True, "hour_ago": True, "in_an_hour": True}
        assert harness.fresh_counters()["dropped_stale"] == 0
    finally:
        assert process.stop() == 0
        harness.close()
