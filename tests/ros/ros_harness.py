"""What only the ROS tests need to drive the real node: frames in, outputs matched by stamp, counters,
lifecycle services. The process and client themselves are `magicfuse_ros.node_process` (shared with the
live replay and the soak benchmark).

Each test process uses its own ROS domain (from its pid) and namespaces, and discovery stays on this
host, so concurrent test runs do not hear each other. Every wait is bounded.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, String

from test_ros_conversions import image_msg  # noqa: E402 (this folder is on sys.path under pytest)

from magicfuse_ros.node_process import NodeProcess, RosClient, default_domain_id, wait_until
from magicfuse_ros.outputs import topics

DOMAIN = default_domain_id()
START_TIMEOUT = 120.0   # python + torch import + warm-up on a loaded 2-core machine
FRAME_TIMEOUT = 60.0
H, W = 64, 80
# A small, fast node: random tiny networks, 2 steps, one CPU thread.
TINY_NODE = {"model_path": "random-tiny", "steps": 2, "device": "cpu", "cpu_threads": 1, "diagnostics_period_s": 0.3}
PICTURE = np.random.default_rng(11).integers(0, 256, (H, W, 3), dtype=np.uint8)

__all__ = ["DOMAIN", "FRAME_TIMEOUT", "H", "W", "PICTURE", "START_TIMEOUT", "TINY_NODE", "Harness", "LifecycleClient",
           "NodeProcess", "RosClient", "image_msg", "node_parameters", "stamp_ns", "stop_recording", "time_msg", "topics", "unique_namespace",
           "wait_until"]


def unique_namespace(name: str) -> str:
    return f"/{name}_{os.getpid()}"


def time_msg(ns: int) -> Time:
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def stop_recording(client: RosClient, recorder) -> None:
    client.node.destroy_subscription(recorder.subscription)


class Harness:
    """The client side of one node process: publishers, recorders, waits.

    Subscribes to magimg and segmentation (so a lazy node subscribes to the camera),
    the counters and the debug timings.
    """

    def __init__(self, client: RosClient, process: NodeProcess, reliable_input: bool = False):
        self.client, self.process = client, process
        self.topics = topics(process.namespace)
        self.image_pub = client.publisher(Image, self.topics["input"], reliable=reliable_input)
        self.compressed_pub = client.publisher(CompressedImage, self.topics["input_compressed"])
        self.out = {kind: client.recorder(Image, self.topics[kind]) for kind in ("magimg", "segmentation")}
        self.counters = client.recorder(String, self.topics["counters"], depth=5)
        self.processing_ms = client.recorder(Float64, self.topics["processing_time_ms"], depth=50)
        self.latency_ms = client.recorder(Float64, self.topics["pipeline_latency_ms"], depth=50)
        self._last_stamp_ns = 0

    def start(self) -> "Harness":
        self.process.start()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until the node subscribes to its input and its outputs reach our recorders."""
        if not wait_until(lambda: self.image_pub.get_subscription_count() > 0, START_TIMEOUT, poll=0.1,
                          while_alive=self.process):
            self.process.stop()
            pytest.fail(f"the node did not become ready (exit {self.process.process.returncode}):\n"
                        f"{self.process.log()[-4000:]}")
        wait_until(lambda: all(r.subscription.get_publisher_count() for r in self.out.values()), 10.0)

    def stamp(self) -> Time:
        """A fresh stamp, strictly later than the previous one (outputs are matched by stamp)."""
        now = self.client.node.get_clock().now().nanoseconds
        self._last_stamp_ns = max(now, self._last_stamp_ns + 1000)
        return time_msg(self._last_stamp_ns)

    def frame(self, payload=PICTURE, encoding="rgb8", frame_id="camera_front", **kwargs) -> Image:
        msg = image_msg(payload, encoding, **kwargs)
        msg.header.stamp, msg.header.frame_id = self.stamp(), frame_id
        return msg

    def outputs_for(self, stamp: int, recorders: dict | None = None) -> dict:
        recorders = self.out if recorders is None else recorders
        return {kind: [m for m in r.messages if stamp_ns(m) == stamp] for kind, r in recorders.items()}

    def send_and_wait(self, msg, recorders: dict | None = None, timeout: float = FRAME_TIMEOUT) -> dict:
        """Publish `msg` and return {kind: output message} once every recorder has one for its stamp."""
        recorders = self.out if recorders is None else recorders
        stamp = stamp_ns(msg)
        (self.compressed_pub if isinstance(msg, CompressedImage) else self.image_pub).publish(msg)
        got = wait_until(lambda: all(self.outputs_for(stamp, recorders).values()), timeout, while_alive=self.process)
        assert got, f"no output for the frame within {timeout} s; node log:\n{self.process.log()[-3000:]}"
        return {kind: msgs[0] for kind, msgs in self.outputs_for(stamp, recorders).items()}

    def magimg_of(self, msg) -> np.ndarray:
        """The MagImg of one frame, as (H, W, 3) uint8 RGB."""
        from magicfuse_ros import conversions

        return conversions.image_to_rgb(self.send_and_wait(msg)["magimg"])

    def send_until_output(self, make_msg, recorders: dict, tries: int = 10) -> dict:
        """Send frames until one gives an output on every recorder (discovery of a new subscriber
        is asynchronous: the first frames may pass before the node sees it)."""
        for _ in range(tries):
            msg = make_msg()
            self.send_and_wait(msg)
            if wait_until(lambda: all(self.outputs_for(stamp_ns(msg), recorders).values()), 1.0):
                return {kind: msgs[0] for kind, msgs in self.outputs_for(stamp_ns(msg), recorders).items()} | {"_input": msg}
        pytest.fail(f"no output on {sorted(recorders)} after {tries} frames")

    def fresh_counters(self, timeout: float = 10.0) -> dict:
        """The node's counters from a report published after this call."""
        before = len(self.counters)
        assert wait_until(lambda: len(self.counters) > before, timeout, while_alive=self.process)
        return json.loads(self.counters.messages[-1].data)

    def close(self) -> None:
        for recorder in (*self.out.values(), self.counters, self.processing_ms, self.latency_ms):
            stop_recording(self.client, recorder)
        self.client.node.destroy_publisher(self.image_pub)
        self.client.node.destroy_publisher(self.compressed_pub)


def node_parameters(client: RosClient, node_fqn: str, names: list[str], timeout: float = 10.0) -> dict:
    """{name: value} of a remote node's parameters, through its ~/get_parameters service (missing: None)."""
    from rclpy.parameter import parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    parameters = AsyncParameterClient(client.node, node_fqn)  # its service clients live as long as `client`
    assert parameters.wait_for_services(timeout_sec=timeout), f"no parameter services on {node_fqn}"
    future = parameters.get_parameters(names)
    assert wait_until(future.done, timeout), f"no answer from {node_fqn}/get_parameters"
    return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}


class LifecycleClient:
    """~/change_state and ~/get_state of a managed node, through lifecycle_msgs services."""

    def __init__(self, client: RosClient, node_name: str):
        from lifecycle_msgs.srv import ChangeState, GetState

        self.client = client
        self._change = client.node.create_client(ChangeState, f"{node_name}/change_state")
        self._get = client.node.create_client(GetState, f"{node_name}/get_state")

    def wait_for_services(self, timeout: float) -> bool:
        return self._change.wait_for_service(timeout_sec=timeout) and self._get.wait_for_service(timeout_sec=timeout)

    def _call(self, service, request, timeout: float):
        future = service.call_async(request)
        assert wait_until(future.done, timeout), f"no answer from {service.srv_name} within {timeout} s"
        return future.result()

    def state(self, timeout: float = 10.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self._get, GetState.Request(), timeout).current_state.label

    def change(self, transition: str, timeout: float = START_TIMEOUT) -> bool:
        """Trigger `transition` (configure, activate, deactivate, cleanup, shutdown); True on success."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(label=transition))  # labels name it from any state
        return bool(self._call(self._change, request, timeout).success)
