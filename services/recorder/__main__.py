"""Run the evidence recorder: `python -m services.recorder`."""

from __future__ import annotations

import logging
import sys
import threading
import time

import redis

from services.recorder.service import Recorder
from services.recorder.settings import RecorderSettings
from services.shared import topics
from services.shared.cameras import write_camera_statuses
from services.shared.evidence import STORE_ERRORS
from services.shared.health import HealthServer
from services.shared.kafka import ConsumeLoop
from services.shared.lifecycle import run_consume_service, stop_on_signals
from services.shared.logs import configure_logging
from services.shared.settings import SettingsError, load_settings
from services.shared.storeconfig import StoreConfigWatcher, load_store_config
from services.shared.traffic import record_counts

TICK_S = 0.5


def _ticker(recorder: Recorder, redis_client: redis.Redis, stop: threading.Event, log: logging.Logger, health: dict) -> None:
    """Finish pending alerts that are due while no message arrives, and publish camera status and line counts.

    Redis is written here, off the consume loop, so a slow or absent Redis never holds up evidence."""
    warned = 0.0
    while not stop.wait(TICK_S):
        try:
            recorder.tick()
            statuses = recorder.status_updates()
        except Exception:
            # A bug here must not stop the timer: pending alerts would then wait for messages alone.
            log.exception("recorder tick failed")
            continue
        counts = recorder.take_line_counts()
        try:
            write_camera_statuses(redis_client, statuses)
            record_counts(redis_client, counts)
            health["redis"] = True
        except redis.RedisError as exc:
            recorder.give_back_line_counts(counts)
            health["redis"] = False
            if time.monotonic() - warned > 30:
                warned = time.monotonic()
                log.warning("camera status not written to Redis", extra={"error": str(exc)})


def _sweeper(recorder: Recorder, every_s: float, stop: threading.Event, log: logging.Logger) -> None:
    """The retention sweep: at start (which also closes the pending manifests of an earlier run), then every `every_s`."""
    while not stop.is_set():
        try:
            recorder.sweep()
        except STORE_ERRORS as exc:
            log.warning("retention sweep failed; tried again at the next sweep", extra={"error": str(exc)})
        except Exception:
            log.exception("retention sweep failed")
        if stop.wait(every_s):
            return


def main() -> int:
    settings = load_settings(RecorderSettings)
    log = configure_logging("recorder", settings.log_level)
    config = load_store_config(settings.store_config)
    try:
        store = settings.evidence_store()
    except ValueError as exc:
        raise SettingsError(f"invalid setting SW_EVIDENCE_URL: {exc}") from None
    stop = stop_on_signals()
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    watcher = StoreConfigWatcher(settings.store_config, config, interval_s=settings.recorder_config_poll_s)
    recorder = Recorder(config, store, settings.options(), watcher)
    loop = ConsumeLoop("recorder", settings.kafka_bootstrap_servers, settings.recorder_group_id,
                       [topics.FRAMES, topics.DETECTIONS, topics.POS, topics.ALERTS], recorder.handle,
                       # Each topic's DLQ belongs to its main reader (inference, correlator, notifier).
                       dead_letters=(), batch_size=settings.recorder_batch_size, stop_event=stop)
    state = {"redis": False}

    def ready() -> bool:
        return loop.ready.is_set() and loop.failure is None

    def details() -> dict:
        return {"pending_alerts": len(recorder.pending), "cameras": len(recorder.cameras), "redis": state["redis"], "evidence": store.url}

    threads = [threading.Thread(target=_ticker, args=(recorder, redis_client, stop, log, state), name="recorder-ticker", daemon=True),
               threading.Thread(target=_sweeper, args=(recorder, settings.recorder_retention_sweep_s, stop, log), name="recorder-sweep", daemon=True)]
    for thread in threads:
        thread.start()
    health = HealthServer(settings.http_host, settings.http_port, ready=ready, details=details).start()
    log.info("started", extra={"http_port": health.port, "evidence": store.url, "buffer_s": settings.recorder_buffer_s})
    code = run_consume_service(log, loop, health)
    stop.set()
    for thread in threads:
        thread.join(10)
    # Alerts still waiting get what exists now rather than a manifest left "pending".
    try:
        recorder.finish_all("the recorder was stopping")
    except STORE_ERRORS as exc:
        log.warning("pending evidence not written at stop; the next start marks it partial", extra={"error": str(exc)})
    return code


if __name__ == "__main__":
    sys.exit(main())
