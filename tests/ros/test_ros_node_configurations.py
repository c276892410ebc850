"""The node under other configurations than test_ros_node's shared one, each its own node: a pipeline
that fails (in this process), a time budget with bgr8 and float weights, invalid configurations."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (requirements-ros.txt) not installed")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from ros_harness import (DOMAIN, PICTURE, TINY_NODE, H, Harness, NodeProcess, W, image_msg,  # noqa: E402
                         stop_recording, topics, unique_namespace, wait_until)
from sensor_msgs.msg import Image  # noqa: E402

from magicfuse_ros import conversions  # noqa: E402
from magicfuse_ros.params import PARAM_FILE as PARAM_FILE_NAME, find_share_path  # noqa: E402

NODE_PARAMS = {**TINY_NODE, "max_input_pixels": H * W * 2}
PARAM_FILE = find_share_path(PARAM_FILE_NAME)


# ---- pipeline failure: the node in this process, with a pipeline that fails -------------------

class FailingPipeline:
    """Stands in for MagicFusePipeline: warms up fine, then every frame fails like a GPU out of memory."""

    device, trained, inference_size = "cpu", True, None

    def warmup(self, height, width):
        pass

    def __call__(self, images, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_pipeline_failure_is_counted_and_reported_as_error(client, monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from magicfuse_ros import node as node_module
    from magicfuse_ros.processing import FrameProcessor

    monkeypatch.setattr(node_module, "load_and_warm_up", lambda params, **log: FrameProcessor(FailingPipeline(), params))
    namespace = unique_namespace("test_failing")
    names = topics(namespace)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    node = node_module.MagicFuseNode(context=context, namespace=namespace, parameter_overrides=[
        Parameter("model_path", value="fake"), Parameter("diagnostics_period_s", value=0.3),
        Parameter("lazy_input", value=False)])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    diagnostics = client.recorder(DiagnosticArray, "/diagnostics", depth=50)
    publisher = client.publisher(Image, names["input"])
    try:
        assert wait_until(lambda: publisher.get_subscription_count() > 0, 20.0)

        def send_until_two_failed():  # best effort: keep sending until two frames have reached the pipeline
            msg = image_msg(PICTURE, "rgb8")
            msg.header.stamp = client.node.get_clock().now().to_msg()
            publisher.publish(msg)
            return node.counters()["failed"] >= 2

        assert wait_until(send_until_two_failed, 30.0, poll=0.3)
        assert node.counters()["processed"] == 0

        def errors():
            return [s for a in diagnostics.messages for s in a.status
                    if s.name == "magicfuse: MagImg pipeline" and s.level == DiagnosticStatus.ERROR]

        assert wait_until(lambda: len(errors()) > 0, 10.0)
        assert "out of memory" in errors()[-1].message
        assert spinner.is_alive() and node.worker._thread.is_alive()
    finally:
        stop_recording(client, diagnostics)
        executor.shutdown(timeout_sec=2.0)
        node.close()
        context.try_shutdown()
        spinner.join(timeout=5.0)


# ---- other configurations: own processes -------------------------------------------------------

def test_time_budget_bgr8_output_and_float_weights(client, tmp_path):
    namespace = unique_namespace("test_variant")
    process = NodeProcess(namespace=namespace, domain_id=DOMAIN, log_dir=tmp_path, overrides={
        **NODE_PARAMS, "steps": 4, "time_budget_ms": 0.001, "output_encoding": "bgr8",
        "fusion_weight_encoding": "32FC1"})
    harness = Harness(client, process)
    weights = {"fusion_weight": client.recorder(Image, topics(namespace)["fusion_weight"])}
    harness.start()
    try:
        out = harness.send_until_output(harness.frame, {**harness.out, **weights})
        assert out["magimg"].encoding == "bgr8" and out["magimg"].step == W * 3
        weight, encoding = conversions.image_to_array(out["fusion_weight"], encodings=conversions.READABLE_ENCODINGS)
        assert encoding == "32FC1" and weight.shape == (H, W) and np.isfinite(weight).all()
        counters = harness.fresh_counters()
        assert counters["cut_short"] >= 1 and counters["processed"] >= 1
    finally:
        assert process.stop() == 0
        harness.close()
        stop_recording(client, weights["fusion_weight"])


@pytest.mark.parametrize("override,name,code", [
    ({"tau": 1.5}, "tau", 2),
    ({"device": "gpu"}, "device", 2),
    ({"thermal_classes": ["person", "cat"]}, "thermal_classes", 2),
    ({"tua": 0.3}, "tua", 2),
    ({"steps": 2.5}, "steps", 2),
    ({"model_path": "/nonexistent/magicfuse_model"}, "/nonexistent/magicfuse_model", 1),
], ids=["tau_out_of_range", "unknown_device", "unknown_class", "unknown_parameter", "wrong_type", "missing_model"])
def test_invalid_configuration_fails_fast_naming_it(tmp_path, override, name, code):
    params = {**NODE_PARAMS, **override}
    params_file = None
    if isinstance(override.get("steps"), float):
        # rcl lets a file's integer win over a later double (-p steps:=2.5 would be dropped before the
        # node sees it), so the wrong type goes into the parameter file itself.
        params_file = tmp_path / "wrong_type.yaml"
        params_file.write_text(PARAM_FILE.read_text().replace("    steps: 0 ", f"    steps: {params.pop('steps')} "))
    process = NodeProcess(namespace=f"/bad_{os.getpid()}", domain_id=DOMAIN, log_dir=tmp_path, overrides=params,
                          params_file=params_file)
    process.start()
    exit_code = process.wait(60.0)
    log = process.log()
    process.stop()
    assert exit_code == code, log
    assert name in log and "FATAL" in log and "not starting" in log, log
    assert "ready: listening" not in log
