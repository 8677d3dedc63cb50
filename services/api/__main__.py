"""Run the HQ api: `python -m services.api` (uvicorn, plus the alerts and verdicts consumer in a thread).

`python -m services.api rebuild [--clear]` refills the alert store (and its incidents) in Redis from sw.alerts.v1 and
sw.feedback.v1 (the system of record) and exits.

The tills do not talk to this service: the POS gateway and return authorization are the
store-facing service (`python -m services.pos`). The HQ api shows the tills' return decisions from
what that service keeps in Redis (services/shared/returndecisions.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import redis
from pydantic import Field

from services.api.alerts import AlertStore, rebuild
from services.api.app import create_app
from services.api.audit import AuditLog
from services.api.auth import Directory, load_users_file
from services.api.hq import Hq
from services.shared import topics
from services.shared.httpguard import Admission, serve
from services.shared.kafka import ConsumeLoop, make_producer
from services.shared.logs import configure_logging
from services.shared.riskmodel import load_latest
from services.shared.settings import EvidenceSettings, WebSettings, load_settings
from services.shared.storeconfig import load_store_config


class ApiSettings(EvidenceSettings, WebSettings):
    api_port: int = Field(8080, ge=1, le=65535)
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
    # Live feeds open at once (each holds a Redis connection); more are refused at once with 503.
    api_live_max_streams: int = Field(200, ge=1, le=100_000)
    # The triage model (models/risk/triage/<version>, `make train-risk`); without one alerts are listed unscored.
    api_models_dir: Path = Path("models")
    # Largest request body of any route (sign-in, verdicts, users: all small JSON).
    api_max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Password checks (argon2id, 64 MiB each) at once, in all and from one address; more are refused
    # at once (503 and 429) instead of queueing memory and time.
    api_login_concurrency: int = Field(2, ge=1, le=64)
    api_login_concurrency_per_address: int = Field(1, ge=1, le=64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.api")
    parser.add_argument("command", nargs="?", choices=["serve", "rebuild"], default="serve")
    parser.add_argument("--clear", action="store_true", help="rebuild: forget every alert and verdict in Redis first")
    args = parser.parse_args(argv)
    settings = load_settings(ApiSettings)
    log = configure_logging("api", settings.log_level)
    config = load_store_config(settings.store_config)
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    triage = load_latest(settings.api_models_dir, "triage") if args.command == "serve" else None
    store = AlertStore(redis_client, config, settings.api_alert_retention_days, triage=triage.model if triage else None)
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
            ping_s=settings.api_live_ping_s, logins=Admission(settings.api_login_concurrency, settings.api_login_concurrency_per_address),
            live_streams=Admission(settings.api_live_max_streams))
    if triage is not None and triage.model is None:
        log.warning("no triage model: %s", triage.error)
    for warning in triage.warnings if triage is not None else []:
        log.warning("triage model: %s", warning)
    stop = threading.Event()
    # The api reads what others own: poison alerts and verdicts are passed over, not dead-lettered.
    loop = ConsumeLoop("api", settings.kafka_bootstrap_servers, settings.api_group_id, [topics.ALERTS, topics.FEEDBACK], store.handle,
                       dead_letters=(), stop_event=stop)

    def ready() -> bool:
        try:
            return loop.ready.is_set() and loop.failure is None and bool(redis_client.ping())
        except redis.RedisError:
            return False

    consumer = threading.Thread(target=loop.run, name="alerts-consumer")
    consumer.start()
    app = create_app(hq, ready, settings.api_max_body_bytes)
    # SIGTERM stops serving first; then the consumer stops and the producer flushes.
    serve(app, "api", settings, settings.api_port, ready, log, users_from_file=len(users))
    stop.set()
    consumer.join(15)
    producer.flush(10)
    failed = loop.failure is not None
    log.info("stopped", extra={"failed": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
