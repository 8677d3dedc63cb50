"""Run the api: `python -m services.api` (uvicorn, plus the alerts and verdicts consumer in a thread).

`python -m services.api rebuild [--clear]` refills the alert store in Redis from sw.alerts.v1 and
sw.feedback.v1 (the system of record) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import redis
import uvicorn
from pydantic import Field

from services.api.alerts import AlertStore, rebuild
from services.api.app import create_app
from services.api.audit import AuditLog
from services.api.auth import Directory, load_users_file
from services.api.hq import Hq
from services.shared import topics
from services.shared.kafka import ConsumeLoop, make_producer
from services.shared.logs import configure_logging, logging_dict_config
from services.shared.settings import EvidenceSettings, load_settings
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


class ApiSettings(EvidenceSettings):
    api_port: int = 8080
    api_group_id: str = "sw-api"
    # The api keeps this much alert history in Redis for queries; sw.alerts.v1 is the system of record.
    api_alert_retention_days: float = Field(30.0, gt=0)
    # The chain's users (argon2 hashes only, see `shrinkwatch users hash`); admins add more through the API.
    api_users_file: Path | None = None
    api_session_ttl_s: int = Field(12 * 3600, ge=60, le=30 * 86400)
    # Send the session cookie over HTTPS only: true wherever the api is behind TLS (production).
    api_cookie_secure: bool = False
    # The live feed sends a keep-alive this often and checks that its session is still valid.
    api_live_ping_s: float = Field(15.0, gt=0, le=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.api")
    parser.add_argument("command", nargs="?", choices=["serve", "rebuild"], default="serve")
    parser.add_argument("--clear", action="store_true", help="rebuild: forget every alert and verdict in Redis first")
    args = parser.parse_args(argv)
    settings = load_settings(ApiSettings)
    log = configure_logging("api", settings.log_level)
    config = load_store_config(settings.store_config)
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    store = AlertStore(redis_client, config, settings.api_alert_retention_days)
    if args.command == "rebuild":
        if args.clear:
            log.info("cleared alert store", extra={"keys": store.clear()})
        counts = rebuild(store, settings.kafka_bootstrap_servers, echo=lambda line: log.info(line))
        log.info("rebuilt alert store", extra=counts)
        return 0
    producer = make_producer(settings.kafka_bootstrap_servers)
    users = load_users_file(settings.api_users_file, {s.id for s in config.stores})
    evidence = settings.evidence_store()
    hq = Hq(config=config, alerts=store, directory=Directory(redis_client, users, settings.api_session_ttl_s), audit=AuditLog(redis_client),
            evidence=evidence, producer=producer, redis=redis_client, redis_url=settings.redis_url.get_secret_value(), cookie_secure=settings.api_cookie_secure,
            ping_s=settings.api_live_ping_s)
    stop = threading.Event()
    loop = ConsumeLoop("api", settings.kafka_bootstrap_servers, settings.api_group_id, [topics.ALERTS, topics.FEEDBACK], store.handle, stop_event=stop)
    store.loop = loop

    def ready() -> bool:
        try:
            return loop.ready.is_set() and loop.failure is None and bool(redis_client.ping())
        except redis.RedisError:
            return False

    consumer = threading.Thread(target=loop.run, name="alerts-consumer")
    consumer.start()
    app = create_app(hq, ready, settings.max_clock_skew_s)
    log.info("started", extra={"port": settings.api_port, "users_from_file": len(users)})
    # SIGTERM stops serving first; then the consumer stops and the producer flushes.
    # Live feeds (SSE) never close by themselves: give open requests 3 s, then end them.
    server_config = uvicorn.Config(app, host=settings.http_host, port=settings.api_port, log_config=logging_dict_config("api", settings.log_level), access_log=False,
                                   timeout_graceful_shutdown=3)
    _Server(server_config).run()
    stop.set()
    consumer.join(15)
    producer.flush(10)
    log.info("stopped", extra={"failed": loop.failure is not None})
    return 1 if loop.failure else 0


if __name__ == "__main__":
    sys.exit(main())
