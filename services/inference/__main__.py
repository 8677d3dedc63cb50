"""Run the inference service: `python -m services.inference`."""

from __future__ import annotations

import sys

from pydantic import Field

from services.shared import topics
from services.shared.health import HealthServer
from services.shared.kafka import ConsumeLoop
from services.shared.lifecycle import run_consume_service, stop_on_signals
from services.shared.logs import configure_logging
from services.shared.settings import ServiceSettings, load_settings
from services.shared.storeconfig import StoreConfigWatcher, load_store_config
from services.shared.tensorflow_runtime import load_tensorflow


class InferenceSettings(ServiceSettings):
    model_server: str = Field("127.0.0.1:8500", description="TF Serving gRPC address host:port")
    inference_group_id: str = "sw-inference"
    inference_frames_topic: str = topics.FRAMES
    inference_batch_size: int = Field(16, ge=1, le=256)
    model_timeout_s: float = Field(10.0, gt=0)
    model_missing_grace_s: float = Field(120.0, ge=0)


def main() -> int:
    settings = load_settings(InferenceSettings)
    log = configure_logging("inference", settings.log_level)
    config = load_store_config(settings.store_config)
    stop = stop_on_signals()
    # The TF Serving stubs import TensorFlow: load it first, so its C++ start-up lines stay out of the JSON log.
    load_tensorflow()
    from services.inference.client import PredictionClient
    from services.inference.service import FrameAnalyzer

    client = PredictionClient(settings.model_server, settings.model_timeout_s, settings.model_missing_grace_s)
    # Zones changed and cameras added are taken live, as ingest does; the file is checked every 2 s.
    analyzer = FrameAnalyzer(config, client, StoreConfigWatcher(settings.store_config, config, interval_s=2.0))
    loop = ConsumeLoop(
        service="inference",
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.inference_group_id,
        topics=[settings.inference_frames_topic],
        handle=analyzer.handle,
        batch_size=settings.inference_batch_size,
        stop_event=stop,
    )
    health = HealthServer(settings.http_host, settings.http_port, ready=loop.ready.is_set).start()
    log.info("started", extra={"http_port": health.port, "model_server": settings.model_server})
    try:
        return run_consume_service(log, loop, health)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
