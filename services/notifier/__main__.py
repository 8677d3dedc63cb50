"""Run the notifier: `python -m services.notifier`; `python -m services.notifier oncall` shows who is on call."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from pydantic import Field, field_validator

from services.notifier.channels import build_channel
from services.notifier.dispatcher import Contact, Dispatcher
from services.notifier.outbox import Outbox
from services.notifier.routing import DEFAULT_SECRET_ENV_PREFIX, RoutingConfig, RoutingError, load_routing, on_call
from services.notifier.service import Notifier, ms, run_escalator
from services.shared import topics
from services.shared.health import HealthServer
from services.shared.kafka import ConsumeLoop
from services.shared.lifecycle import run_consume_service, stop_on_signals
from services.shared.logs import configure_logging
from services.shared.settings import EvidenceSettings, SettingsError, load_settings
from services.shared.storeconfig import load_store_config


class NotifierSettings(EvidenceSettings):
    # Who is told about what, how and when: see config/notifier-routing.example.yaml.
    notifier_routing_file: Path = Path("config/notifier-routing.yaml")
    notifier_group_id: str = "sw-notifier"
    # Contacts sent to at once (each contact is sent to by one worker at a time).
    notifier_workers: int = Field(8, ge=1, le=256)
    # How long a notification for a channel that attaches the snapshot waits for the recorder to
    # write it (0: send at once with the link only).
    notifier_snapshot_wait_s: float = Field(10.0, ge=0, le=300)
    notifier_escalation_check_s: float = Field(1.0, gt=0, le=60)
    # `${NAME}` placeholders in the routing file (only in a contact's url or secret) may name only
    # variables with this prefix: the notifier's own secrets (SW_REDIS_URL, the S3 keys) stay out of reach.
    notifier_secret_env_prefix: str = Field(DEFAULT_SECRET_ENV_PREFIX, pattern=r"^[A-Za-z_][A-Za-z0-9_]*_$")

    @field_validator("notifier_secret_env_prefix")
    @classmethod
    def _prefix_excludes_own_settings(cls, prefix: str) -> str:
        env_prefix = cls.model_config.get("env_prefix", "")
        reachable = sorted(name for name in (f"{env_prefix}{field}".upper() for field in cls.model_fields) if name.startswith(prefix.upper()))
        if reachable:
            raise ValueError(f"{prefix} would let the routing file read the notifier's own settings ({', '.join(reachable[:3])}); "
                             f"use a prefix of its own such as {DEFAULT_SECRET_ENV_PREFIX}")
        return prefix


def load_checked_routing(settings: NotifierSettings) -> tuple[RoutingConfig, dict[str, str]]:
    """The routing file, checked against the store config; regions by store id."""
    try:
        routing = load_routing(settings.notifier_routing_file, settings.notifier_secret_env_prefix)
        stores = load_store_config(settings.store_config).stores
        regions = {s.id: s.region for s in stores}
        routing.check_stores(regions, set(regions.values()) - {""})
    except RoutingError as exc:
        raise SettingsError(f"invalid routing file: {exc}") from None
    return routing, regions


def show_on_call(routing: RoutingConfig, at: datetime) -> int:
    print(f"on call at {at.isoformat(timespec='minutes')}")
    for name, schedule in routing.schedules.items():
        now = on_call(schedule, at)
        handover = now.next_handover.astimezone(UTC).isoformat(timespec="minutes") if now.next_handover else "never"
        print(f"  {name}: {', '.join(now.people) or 'nobody'}  [{now.shift}]  next handover {handover}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.notifier")
    parser.add_argument("command", nargs="?", choices=["serve", "oncall"], default="serve")
    parser.add_argument("--at", type=datetime.fromisoformat, help="oncall: this moment (ISO 8601 with offset) instead of now")
    args = parser.parse_args(argv)
    settings = load_settings(NotifierSettings)
    routing, regions = load_checked_routing(settings)
    if args.command == "oncall":
        at = args.at if args.at and args.at.tzinfo else datetime.now(UTC)
        return show_on_call(routing, at)
    log = configure_logging("notifier", settings.log_level)
    stop = stop_on_signals()
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    outbox = Outbox(redis_client, keep_ms=ms(routing.delivery.keep_days * 86400))
    contacts = {channel_id: Contact(channel_id, recipient, build_channel(config), config.type, routing.recipients[recipient].timezone)
                for channel_id, (recipient, config) in routing.channels().items()}
    dispatcher = Dispatcher(outbox, routing, contacts, settings.kafka_bootstrap_servers, time.time,
                            evidence=settings.evidence_store() if settings.notifier_snapshot_wait_s >= 0 else None,
                            snapshot_wait_s=settings.notifier_snapshot_wait_s, workers=settings.notifier_workers)
    notifier = Notifier(outbox, routing, regions, time.time, on_enqueued=dispatcher.wake.set)
    loop = ConsumeLoop("notifier", settings.kafka_bootstrap_servers, settings.notifier_group_id, [topics.ALERTS, topics.FEEDBACK], notifier.handle,
                       # The notifier keeps bad alerts in their DLQ; the correlator keeps bad verdicts in theirs.
                       dead_letters=[topics.ALERTS],
                       # consume() waits for a whole batch or the poll timeout: a short one keeps a lone alert from waiting.
                       batch_size=64, poll_timeout=0.02, stop_event=stop)

    def ready() -> bool:
        try:
            return loop.ready.is_set() and bool(redis_client.ping())
        except redis.RedisError:
            return False

    health = HealthServer(settings.http_host, settings.http_port, ready=ready).start()
    dispatcher.start()
    run_escalator(notifier, stop, settings.notifier_escalation_check_s)
    log.info("started", extra={"contacts": sorted(contacts), "routes": [r.name for r in routing.routes], "http_port": health.port})
    code = run_consume_service(log, loop, health)
    dispatcher.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
