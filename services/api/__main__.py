"""Run the api: `python -m services.api` (uvicorn, plus the alerts consumer in a thread)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

import redis
import uvicorn
from pydantic import Field, SecretStr

from services.api.alerts import AlertStore
from services.api.app import create_app
from services.shared import topics
from services.shared.kafka import ConsumeLoop, make_producer
from services.shared.logs import configure_logging, logging_dict_config
from services.shared.settings import ServiceSettings, load_settings
from services.shared.storeconfig import load_store_config


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutting down, which would skip our flush; stop and return instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class ApiSettings(ServiceSettings):
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    api_port: int = 8080
    api_group_id: str = "sw-api"
    # The api keeps this much alert history in Redis for queries; sw.alerts.v1 is the system of record.
    api_alert_retention_days: float = Field(30.0, gt=0)


def main() -> int:
    settings = load_settings(ApiSettings)
    log = configure_logging("api", settings.log_level)
    config = load_store_config(settings.store_config)
    producer = make_producer(settings.kafka_bootstrap_servers)
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    store = AlertStore(redis_client, settings.api_alert_retention_days)
    stop = threading.Event()
    loop = ConsumeLoop("api", settings.kafka_bootstrap_servers, settings.api_group_id, [topics.ALERTS], store.handle, stop_event=stop)
    store.loop = loop

    def ready() -> bool:
        try:
            return loop.ready.is_set() and loop.failure is None and bool(redis_client.ping())
        except redis.RedisError:
            return False

    consumer = threading.Thread(target=loop.run, name="alerts-consumer")
    consumer.start()
    app = create_app(config, producer, store, ready, settings.max_clock_skew_s)
    log.info("started", extra={"port": settings.api_port})
    # SIGTERM stops serving first; then the consumer stops and the producer flushes.
    server_config = uvicorn.Config(app, host=settings.http_host, port=settings.api_port, log_config=logging_dict_config("api", settings.log_level), access_log=False)
    _Server(server_config).run()
    stop.set()
    consumer.join(15)
    producer.flush(10)
    log.info("stopped", extra={"failed": loop.failure is not None})
    return 1 if loop.failure else 0


if __name__ == "__main__":
    sys.exit(main())
