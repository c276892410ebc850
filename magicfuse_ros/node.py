"""The `magicfuse` ROS 2 node: a thin shell over `magicfuse_core`'s pipeline.

Top to bottom: parameters (validated first, failing fast with the parameter's
name) -> model loaded and warmed up -> `FusionWorker` (publishers, subscriptions
while an output is listened to, newest-frame slot, worker thread, one frame
function; see fusion_worker.py) -> spin until SIGINT/SIGTERM -> stop the worker
(a frame in the pipeline stops between two sampling steps) and log the counters.

The managed (lifecycle) variant of the same node is `managed_node.py`; both drive
one `FusionWorker`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading

import rclpy
from rclpy.node import Node

from .fusion_worker import WORKER_THREAD, FusionWorker
from .params import NODE_NAME, ParameterError, declare_and_validate
from .processing import ModelLoadError, load_and_warm_up


class MagicFuseNode(Node):
    """Node `magicfuse`: ~/input/image(/compressed) in, MagImg + segmentation (+ lazy extras) out.

    `node_kwargs` go to rclpy's Node (context, namespace, parameter_overrides, ...).
    Raises ParameterError for invalid parameters and ModelLoadError when the model
    cannot be loaded or warmed up; nothing is subscribed in either case.
    """

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        log = self.get_logger()
        self.params = declare_and_validate(self)
        processor = load_and_warm_up(self.params, info=log.info, warn=log.warning)
        self.worker = FusionWorker(self, processor, device=str(processor.pipeline.device))
        self.worker.start()

    def counters(self) -> dict:
        """Totals since start: the monitoring COUNTERS plus messages published per output."""
        return self.worker.stats.totals()

    def close(self) -> None:
        """Stop the worker, log the counters once, destroy the node."""
        self.worker.stop()
        log_counters(self.get_logger(), self.counters())
        self.destroy_node()


def log_counters(logger, counters: dict) -> None:
    logger.info(f"counters at shutdown: {json.dumps(counters)}")


def run(make_node, argv: list[str] | None = None) -> int:
    """Spin the node `make_node()` builds until SIGINT/SIGTERM; exit 0, 2 on bad parameters, 1 when the model cannot load.

    The signals only set a flag here (rclpy's own handlers would shut the context
    down first, and the counters could then no longer reach /rosout): the node is
    closed while ROS is still up, then ROS is shut down.
    """
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    logger = rclpy.logging.get_logger(NODE_NAME)
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ParameterError as exc:
        logger.fatal(f"{exc}; not starting")
        code = 2
    except ModelLoadError as exc:
        logger.fatal(f"{exc}; not starting")
        code = 1
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    if any(t.name == WORKER_THREAD and t.is_alive() for t in threading.enumerate()):
        # A worker stuck inside a native call would abort the interpreter's shutdown: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console script `magicfuse_node`."""
    return run(MagicFuseNode, argv)


if __name__ == "__main__":
    sys.exit(main())
