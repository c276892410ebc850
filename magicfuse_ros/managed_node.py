"""The managed (lifecycle) `magicfuse` node: console script `magicfuse_managed_node`.

Same name, parameters and topics as the plain node, driven through the standard
lifecycle services (`~/change_state`, `~/get_state`, lifecycle_msgs):

  configure   declare and validate the parameters, load and warm up the model,
              create the (lifecycle) publishers; on failure (bad parameter, missing
              model) log the reason, return FAILURE and stay unconfigured
  activate    start the worker and the subscriptions (lazily, see `lazy_input`)
              and enable publishing
  deactivate  stop both (a frame in the pipeline stops between two sampling steps)
  cleanup     destroy the publishers, release the model and its GPU memory
  shutdown    from any state: all of the above that applies

The work itself is the plain node's `FusionWorker`.
"""
from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from .fusion_worker import FusionWorker
from .node import log_counters, run
from .params import NODE_NAME, ParameterError, declare_and_validate
from .processing import ModelLoadError, load_and_warm_up, release


class MagicFuseManagedNode(LifecycleNode):
    """Lifecycle node `magicfuse`; starts unconfigured. `node_kwargs` go to rclpy's LifecycleNode."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self.worker: FusionWorker | None = None
        self._active = False
        self.get_logger().info("unconfigured: waiting for the configure transition (~/change_state)")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            params = declare_and_validate(self)
            processor = load_and_warm_up(params, info=log.info, warn=log.warning)
        except (ParameterError, ModelLoadError) as exc:
            log.error(f"configure failed: {exc}; staying unconfigured")
            return TransitionCallbackReturn.FAILURE
        self.worker = FusionWorker(self, processor, device=str(processor.pipeline.device))
        log.info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.worker.start()
        self._active = True
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self.get_logger().info("deactivated: unsubscribed, not publishing")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def _stop_worker(self) -> None:
        if self.worker is not None and self._active:
            self.worker.stop()
            self._active = False

    def _release(self) -> None:
        if self.worker is not None:
            log_counters(self.get_logger(), self.worker.stats.totals())
            self.worker.destroy()
            release(self.worker.processor)
            self.worker = None

    def counters(self) -> dict | None:
        return self.worker.stats.totals() if self.worker is not None else None

    def close(self) -> None:
        """Process exit (SIGINT/SIGTERM): stop, log the counters once, destroy."""
        self._stop_worker()
        self._release()
        self.destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Console script `magicfuse_managed_node`."""
    return run(MagicFuseManagedNode, argv)


if __name__ == "__main__":
    sys.exit(main())
