"""Graceful shutdown: SIGTERM and SIGINT set one event that every loop watches."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.shared.health import HealthServer
    from services.shared.kafka import ConsumeLoop


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def run_consume_service(log: logging.Logger, loop: ConsumeLoop, health: HealthServer) -> int:
    """Run a service's consume loop in this thread until SIGTERM or a failure; returns the exit code."""
    loop.run()
    health.stop()
    log.info("stopped", extra={"failed": loop.failure is not None})
    return 1 if loop.failure else 0
