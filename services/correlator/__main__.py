"""Run the correlator: `python -m services.correlator` (a Faust worker with health and metrics)."""

from __future__ import annotations

import sys

import faust

from services.correlator import agents  # noqa: F401  (registers the agents on the app)
from services.correlator.app import app, settings
from services.shared.health import HealthServer
from services.shared.logs import configure_logging, logging_dict_config


def main() -> int:
    configure_logging("correlator", settings.log_level)

    def ready() -> bool:
        consumer = app.consumer if app.consumer is not None and app.started else None
        return bool(consumer and consumer.assignment()) and not app.rebalancing

    health = HealthServer(settings.http_host, settings.http_port, ready=ready).start()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower(),
        redirect_stdouts=False,
        # Faust replaces the log handlers at start; hand it ours so logs stay JSON lines.
        logging_config=logging_dict_config("correlator", settings.log_level),
    )
    try:
        worker.execute_from_commandline()
    finally:
        health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
