"""Run the notifier: `python -m services.notifier`."""

from __future__ import annotations

import sys

import redis
from pydantic import Field, SecretStr

from services.notifier.channels import ChannelConfig, build_channel
from services.notifier.channels.log import LogChannelConfig
from services.notifier.service import Notifier
from services.shared import topics
from services.shared.health import HealthServer
from services.shared.kafka import ConsumeLoop
from services.shared.lifecycle import run_consume_service, stop_on_signals
from services.shared.logs import configure_logging
from services.shared.settings import ServiceSettings, load_settings


def _log_channel_only() -> list[ChannelConfig]:
    """A named factory rather than a lambda: mypy cannot infer a lambda's list as the union the field holds."""
    return [LogChannelConfig()]


class NotifierSettings(ServiceSettings):
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # JSON list, e.g. [{"type":"log"},{"type":"webhook","url":"https://hooks.example/lp","secret":"..."}]
    notifier_channels: list[ChannelConfig] = Field(default_factory=_log_channel_only)
    notifier_group_id: str = "sw-notifier"
    notifier_max_attempts: int = Field(5, ge=1, le=20)


def main() -> int:
    settings = load_settings(NotifierSettings)
    log = configure_logging("notifier", settings.log_level)
    stop = stop_on_signals()
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    attempt_timeout_s = max((getattr(c, "timeout_s", 0.0) for c in settings.notifier_channels), default=0.0) or 1.0
    channels = [build_channel(c) for c in settings.notifier_channels]
    notifier = Notifier(redis_client, channels, max_attempts=settings.notifier_max_attempts, attempt_timeout_s=attempt_timeout_s)
    notifier.stop_event = stop
    batch_size = 4
    # Deliveries happen inside the poll loop: allow a whole batch of worst-case deliveries between polls.
    max_poll_ms = int(max(300.0, batch_size * len(channels) * notifier.worst_case_delivery_s(attempt_timeout_s) + 60) * 1000)
    loop = ConsumeLoop("notifier", settings.kafka_bootstrap_servers, settings.notifier_group_id, [topics.ALERTS], notifier.handle,
                       batch_size=batch_size, stop_event=stop, consumer_overrides={"max.poll.interval.ms": max_poll_ms})
    notifier.loop = loop

    def ready() -> bool:
        try:
            return loop.ready.is_set() and bool(redis_client.ping())
        except redis.RedisError:
            return False

    health = HealthServer(settings.http_host, settings.http_port, ready=ready).start()
    log.info("started", extra={"channels": [c.name for c in notifier.channels], "http_port": health.port})
    return run_consume_service(log, loop, health)


if __name__ == "__main__":
    sys.exit(main())
