"""Counters, timing and diagnostics of the node (like Autoware's StopWatch / DebugPublisher helpers).

`FrameStats` is the thread-safe bookkeeping the callbacks and the worker write to;
`DiagnosticsPublisher` turns it, once per period, into a /diagnostics status and
the `~/debug/*` topics. The node's frame function only calls `stats.count(...)`,
`stats.frame_done(...)` and `debug.frame(...)`.

Counters (totals since start):
  received            messages on the input image topics
  invalid             rejected: unknown encoding, bad geometry, too large, undecodable
  dropped_superseded  replaced in the slot by a newer frame before the worker took it
  dropped_stale       older than max_input_age_ms (opt-in) when the worker took it
  dropped_stopped     waiting or in the pipeline when the node was deactivated or shut down
  processed           frames whose outputs were published
  failed              the pipeline raised
  cut_short           processed frames whose sampling the time budget ended early
Once the node is idle, received = invalid + dropped_* + processed + failed.
"""
from __future__ import annotations

import json
import threading
import time

COUNTERS = ("received", "invalid", "dropped_superseded", "dropped_stale", "dropped_stopped", "processed", "failed",
            "cut_short")
DROPPED = ("dropped_superseded", "dropped_stale", "dropped_stopped")


class StopWatch:
    """Milliseconds since construction (or the last `restart`), on the monotonic clock."""

    def __init__(self):
        self._start = time.monotonic()

    def restart(self) -> None:
        self._start = time.monotonic()

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self._start) * 1000.0


class FrameStats:
    """Counters, messages published per output, and this period's timings; thread-safe."""

    def __init__(self, output_names):
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(COUNTERS, 0)
        self._published = dict.fromkeys(output_names, 0)
        self._previous = dict(self._totals)
        self._window = self._new_window()
        self._last_error = ""

    @staticmethod
    def _new_window() -> dict:
        return {"processing_ms": [], "latency_ms": [], "since": time.monotonic()}

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._totals[name] += n

    def failed(self, error: str) -> None:
        with self._lock:
            self._totals["failed"] += 1
            self._last_error = error

    def frame_done(self, published: list[str], processing_ms: float, latency_ms: float, cut_short: bool) -> None:
        """A frame's outputs went out: `published` names the outputs sent."""
        with self._lock:
            self._totals["processed"] += 1
            self._totals["cut_short"] += int(cut_short)
            for name in published:
                self._published[name] += 1
            self._window["processing_ms"].append(processing_ms)
            self._window["latency_ms"].append(latency_ms)

    def totals(self) -> dict:
        """COUNTERS plus {"published": {output: messages}}."""
        with self._lock:
            return {**self._totals, "published": dict(self._published)}

    def take_period(self) -> dict:
        """This period's figures (and the totals); starts the next period."""
        with self._lock:
            window, self._window = self._window, self._new_window()
            totals = dict(self._totals)
            previous, self._previous = self._previous, totals
            error, self._last_error = self._last_error, ""
            published = dict(self._published)
        seconds = max(time.monotonic() - window["since"], 1e-6)
        processing, latency = window["processing_ms"], window["latency_ms"]
        return {
            "totals": totals,
            "published": published,
            "delta": {k: totals[k] - previous[k] for k in COUNTERS},
            "seconds": seconds,
            "mean_processing_ms": sum(processing) / len(processing) if processing else 0.0,
            "mean_latency_ms": sum(latency) / len(latency) if latency else 0.0,
            "last_error": error,
        }


def status_of(period: dict, warn_processing_ms: float) -> tuple[str, str]:
    """("OK" | "WARN" | "ERROR", message) for one period of `FrameStats.take_period`."""
    delta, totals = period["delta"], period["totals"]
    if delta["failed"]:
        return "ERROR", f"pipeline failed on {delta['failed']} frame(s): {period['last_error']}"
    problems = []
    dropped = delta["dropped_superseded"] + delta["dropped_stale"]
    if dropped:
        problems.append(f"dropped {dropped} frame(s) (pipeline slower than the input)")
    if delta["invalid"]:
        problems.append(f"skipped {delta['invalid']} invalid frame(s)")
    if warn_processing_ms > 0 and period["mean_processing_ms"] > warn_processing_ms:
        problems.append(f"slow: {period['mean_processing_ms']:.0f} ms per frame > {warn_processing_ms:.0f} ms")
    if problems:
        return "WARN", "; ".join(problems)
    return "OK", "waiting for images" if totals["received"] == 0 else "ok"


class DiagnosticsPublisher:
    """/diagnostics and the ~/debug topics of one node. `publish_debug` False: /diagnostics only."""

    def __init__(self, node, make_publisher, publish_debug: bool, device: str, warn_processing_ms: float):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64, String

        from .outputs import DEBUG_COUNTERS, DEBUG_PIPELINE_LATENCY, DEBUG_PROCESSING_TIME, DIAGNOSTICS, private

        self._node, self._device, self._warn_ms = node, device, warn_processing_ms
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self._diagnostics = make_publisher(DiagnosticArray, DIAGNOSTICS, 10)
        self._debug = {}
        if publish_debug:
            self._debug = {
                "processing_time_ms": make_publisher(Float64, private(DEBUG_PROCESSING_TIME), qos),
                "pipeline_latency_ms": make_publisher(Float64, private(DEBUG_PIPELINE_LATENCY), qos),
                "counters": make_publisher(String, private(DEBUG_COUNTERS), qos),
            }

    @property
    def publishers(self) -> list:
        return [self._diagnostics, *self._debug.values()]

    def frame(self, processing_ms: float, latency_ms: float) -> None:
        """Per-frame timing on ~/debug/processing_time_ms and ~/debug/pipeline_latency_ms."""
        if self._debug:
            from std_msgs.msg import Float64

            self._debug["processing_time_ms"].publish(Float64(data=processing_ms))
            self._debug["pipeline_latency_ms"].publish(Float64(data=latency_ms))

    def report(self, stats: FrameStats) -> None:
        """One period: the /diagnostics status and ~/debug/counters."""
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        from std_msgs.msg import String

        period = stats.take_period()
        level, message = status_of(period, self._warn_ms)
        delta, seconds = period["delta"], period["seconds"]
        values = {
            **{k: str(v) for k, v in period["totals"].items()},
            **{f"published_{k}": str(v) for k, v in period["published"].items()},
            "input_rate_hz": f"{delta['received'] / seconds:.2f}",
            "output_rate_hz": f"{delta['processed'] / seconds:.2f}",
            "mean_processing_time_ms": f"{period['mean_processing_ms']:.1f}",
            "mean_pipeline_latency_ms": f"{period['mean_latency_ms']:.1f}",
            "device": self._device,
        }
        status = DiagnosticStatus(level=getattr(DiagnosticStatus, level), name=f"{self._node.get_name()}: MagImg pipeline",
                                  message=message, hardware_id=self._device,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._diagnostics.publish(array)
        if self._debug:
            self._debug["counters"].publish(String(data=json.dumps({**period["totals"], "published": period["published"]})))
