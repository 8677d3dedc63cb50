"""Run the ingest service: `python -m services.ingest`. One thread per camera of the store config."""

from __future__ import annotations

import sys
import threading
from dataclasses import asdict

from pydantic import Field

from services.ingest.camera import CameraWorker, Pace
from services.shared.health import HealthServer
from services.shared.kafka import make_producer
from services.shared.lifecycle import stop_on_signals
from services.shared.logs import configure_logging
from services.shared.settings import ServiceSettings, load_settings
from services.shared.storeconfig import load_store_config


class IngestSettings(ServiceSettings):
    # realtime: file sources play at their own speed (like a live camera); fast: as fast as possible.
    ingest_pace: Pace = "realtime"
    ingest_loop_files: bool = False
    # Only these cameras (comma-separated ids); empty means every camera in the store config.
    ingest_cameras: str = Field("", pattern=r"^[A-Za-z0-9_.,-]*$")


def main() -> int:
    settings = load_settings(IngestSettings)
    log = configure_logging("ingest", settings.log_level)
    config = load_store_config(settings.store_config)
    wanted = {c for c in settings.ingest_cameras.split(",") if c}
    stop = stop_on_signals()
    producer = make_producer(settings.kafka_bootstrap_servers)
    workers = [
        CameraWorker(store.id, cam, config.resolve_source(cam), producer, stop, settings.ingest_pace, settings.ingest_loop_files)
        for store in config.stores
        for cam in store.cameras
        if not wanted or cam.id in wanted
    ]
    threads = [threading.Thread(target=w.run, name=f"camera-{w.camera.id}") for w in workers]
    for thread in threads:
        thread.start()

    def details() -> dict:
        return {"cameras": {w.camera.id: asdict(w.status) for w in workers}}

    health = HealthServer(settings.http_host, settings.http_port, ready=lambda: True, details=details).start()
    log.info("started", extra={"cameras": [w.camera.id for w in workers], "http_port": health.port})
    for thread in threads:
        thread.join()
    # File sources end; stay up (healthy, idle) until told to stop, like any service.
    stop.wait()
    producer.flush(10)
    health.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
