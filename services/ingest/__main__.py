"""Run the ingest service: `python -m services.ingest`. One thread per camera of the store config.

The store config is re-read when it changes (every SW_INGEST_CONFIG_POLL_S, or at once on SIGHUP):
cameras are added, changed and removed without a restart. /cameras (and /readyz) show each
camera's state; /metrics has the same per camera.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Literal

from pydantic import Field

from services.ingest.camera import IngestOptions, Pace
from services.ingest.service import IngestCollector, IngestService
from services.ingest.sources import ffmpeg_capture_options
from services.shared.health import HealthServer
from services.shared.kafka import make_producer, wait_for_broker
from services.shared.lifecycle import stop_on_signals
from services.shared.logs import configure_logging
from services.shared.settings import ServiceSettings, load_settings
from services.shared.storeconfig import StoreConfigWatcher, load_store_config


class IngestSettings(ServiceSettings):
    # realtime: file sources play at their own speed (like a live camera); fast: as fast as possible.
    ingest_pace: Pace = "realtime"
    ingest_loop_files: bool = False
    # Only these cameras (comma-separated ids); empty means every camera in the store config.
    ingest_cameras: str = Field("", pattern=r"^[A-Za-z0-9_.,-]*$")
    # Frames per camera waiting for Kafka; when full, the oldest is dropped (and counted).
    ingest_send_queue_frames: int = Field(30, ge=1, le=10_000)
    # Network sources: give up opening, or reading one frame, after this long (then reconnect).
    ingest_open_timeout_s: float = Field(5.0, gt=0, le=120)
    ingest_read_timeout_s: float = Field(5.0, gt=0, le=120)
    # Reconnect delays double from min to max, each with random jitter.
    ingest_reconnect_min_s: float = Field(1.0, gt=0, le=60)
    ingest_reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    ingest_rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # How often the store config file is checked for edits; 0: only on SIGHUP.
    ingest_config_poll_s: float = Field(2.0, ge=0, le=3600)
    # On SIGTERM, how long queued frames may take to reach Kafka.
    ingest_drain_s: float = Field(5.0, ge=0, le=120)


# A frame not delivered within 30 s is of no use to a live rule: count it as lost and move on.
PRODUCER_OVERRIDES = {"message.timeout.ms": 30_000}


def main() -> int:
    settings = load_settings(IngestSettings)
    log = configure_logging("ingest", settings.log_level)
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", ffmpeg_capture_options(settings.ingest_rtsp_transport))
    config = load_store_config(settings.store_config)
    stop = stop_on_signals()
    reload_now = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload_now.set())
    options = IngestOptions(
        pace=settings.ingest_pace,
        loop_files=settings.ingest_loop_files,
        cameras=frozenset(c for c in settings.ingest_cameras.split(",") if c),
        send_queue_frames=settings.ingest_send_queue_frames,
        open_timeout_s=settings.ingest_open_timeout_s,
        read_timeout_s=settings.ingest_read_timeout_s,
        min_reconnect_backoff_s=settings.ingest_reconnect_min_s,
        max_reconnect_backoff_s=max(settings.ingest_reconnect_min_s, settings.ingest_reconnect_max_s),
        drain_s=settings.ingest_drain_s,
    )
    producer = make_producer(settings.kafka_bootstrap_servers, **PRODUCER_OVERRIDES)
    service = IngestService(producer, options)
    IngestCollector(service).register()
    watcher = StoreConfigWatcher(settings.store_config, config, settings.ingest_config_poll_s)
    connected = threading.Event()

    def status() -> dict:
        return {"cameras": service.cameras(), "store_config": str(settings.store_config), "config_error": watcher.error, "broker_connected": connected.is_set()}

    health = HealthServer(settings.http_host, settings.http_port, ready=lambda: connected.is_set() and service.sending(),
                          details=status, routes={"/cameras": status}).start()
    # Cameras are opened once the broker answers: frames read before it would only be dropped.
    if not wait_for_broker(settings.kafka_bootstrap_servers, "ingest", stop):
        health.stop()
        return 0
    connected.set()
    service.start(config)
    log.info("started", extra={"cameras": sorted(service.cameras()), "http_port": health.port})
    while not stop.wait(0.25):
        forced = reload_now.is_set()
        reload_now.clear()
        try:
            changed = watcher.poll(force=forced)
            if changed is not None:
                service.apply(changed)
        except Exception:  # a reload must never take the running cameras down with it
            log.exception("store config reload failed; the running cameras carry on")
    undelivered = service.stop()
    health.stop()
    log.info("stopped", extra={"undelivered": undelivered})
    return 0


if __name__ == "__main__":
    sys.exit(main())
