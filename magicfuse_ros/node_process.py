"""Driving the real node from outside: as a subprocess, and through an rclpy client of our own.

`NodeProcess` starts `magicfuse_ros.node` (or `.managed_node`) with a parameter
file and overrides in its own ROS domain, discovery kept on this host; `RosClient`
is an rclpy node in its own context spun by a background thread, with reliable
`Recorder`s for outputs. Used by the live replay, the soak benchmark and the
tests' harness (tests/ros/ros_harness.py adds what only tests need).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .params import PARAM_FILE, find_share_path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_domain_id() -> int:
    """A ROS domain for this process (1..100), so concurrent runs do not hear each other."""
    return 1 + os.getpid() % 100


def ros_environment(domain_id: int) -> dict:
    """Environment for a node process: our domain, discovery on this host only, unbuffered
    logs, and this source tree importable (for runs without an install)."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0")
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated since Iron; conflicts with the discovery range
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def ros_arg(value) -> str:
    """A Python value as a `-p name:=value` argument."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(ros_arg(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


class NodeProcess:
    """The magicfuse node (`module`: magicfuse_ros.node or .managed_node) in a subprocess; logs go to files."""

    def __init__(self, *, namespace: str = "", params_file: str | Path | None = None, overrides: dict | None = None,
                 domain_id: int | None = None, log_dir: str | Path | None = None, module: str = "magicfuse_ros.node"):
        self.namespace, self.module = namespace, module
        self.params_file = Path(params_file) if params_file is not None else find_share_path(PARAM_FILE)
        self.overrides = dict(overrides or {})
        self.domain_id = default_domain_id() if domain_id is None else domain_id
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="magicfuse_node_"))
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        args = [sys.executable, "-m", self.module, "--ros-args", "--params-file", str(self.params_file)]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for name, value in self.overrides.items():
            args += ["-p", f"{name}:={ros_arg(value)}"]
        return args

    def start(self) -> "NodeProcess":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "node.log", "wb") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(self.command, env=ros_environment(self.domain_id), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after `timeout` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> int | None:
        """`sig` (a clean ROS shutdown), then SIGKILL after `timeout` s. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            if self.wait(timeout) is None:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        path = self.log_dir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(predicate, timeout: float, poll: float = 0.02, while_alive: NodeProcess | None = None) -> bool:
    """True once predicate() holds; False after `timeout` s or when `while_alive` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if while_alive is not None and not while_alive.alive():
            return bool(predicate())
        time.sleep(poll)
    return bool(predicate())


class Recorder:
    """Messages of one topic as (arrival monotonic ns, message); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[tuple[int, object]] = []
        self.subscription = None

    def append(self, message) -> None:
        with self._lock:
            self._items.append((time.monotonic_ns(), message))

    @property
    def items(self) -> list[tuple[int, object]]:
        with self._lock:
            return list(self._items)

    @property
    def messages(self) -> list:
        return [message for _, message in self.items]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class RosClient:
    """An rclpy node in its own context, spun by a background thread."""

    def __init__(self, name: str = "magicfuse_client", domain_id: int | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=default_domain_id() if domain_id is None else domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - ExternalShutdownException and friends: close() ends it
            pass

    def publisher(self, msg_type, topic: str, *, reliable: bool = False, depth: int = 1):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        return self.node.create_publisher(msg_type, topic, QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                                                                      reliability=reliability))

    def recorder(self, msg_type, topic: str, *, depth: int = 10, latched: bool = False) -> Recorder:
        """A reliable subscriber keeping everything it receives."""
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        recorder = Recorder()
        recorder.subscription = self.node.create_subscription(msg_type, topic, recorder.append, qos)
        return recorder

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


