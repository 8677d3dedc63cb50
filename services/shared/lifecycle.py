"""Graceful shutdown: SIGTERM and SIGINT set one event that every loop watches."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop
