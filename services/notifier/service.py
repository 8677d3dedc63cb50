"""Notifier: alerts in, one delivery per alert and channel, however often an alert is replayed.

Dedupe lives in Redis, per channel: `SET NX` takes a lease (longer than the slowest delivery)
before delivering and the key is marked delivered afterwards, so a replayed alert (correlator
restart, notifier crash before commit) is skipped, and two notifier replicas never deliver the same
alert at once. Only a crash between a webhook's POST and that mark can repeat a delivery, once the
lease expires; receivers can dedupe on X-ShrinkWatch-Alert-Id.
"""

from __future__ import annotations

import logging
import threading

import redis
from confluent_kafka import Message
from prometheus_client import Counter

from services.notifier.channels import Channel, DeliveryError, PermanentDeliveryError
from services.shared.contracts.alert_pb2 import Alert
from services.shared.kafka import ConsumeLoop, Output, RetryableError
from services.shared.serde import PoisonMessage, decode

log = logging.getLogger("notifier")

DELIVERIES = Counter("sw_notifier_deliveries_total", "Alert deliveries by outcome", ["channel", "outcome"])
DELIVERED = b"delivered"
PENDING = b"pending"


MAX_BACKOFF_S = 30.0


class Notifier:
    def __init__(self, redis_client: redis.Redis, channels: list[Channel], max_attempts: int = 5,
                 attempt_timeout_s: float = 5.0, backoff_s: float = 0.5, dedupe_ttl_s: int = 30 * 86400) -> None:
        self.redis = redis_client
        self.channels = channels
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.dedupe_ttl_s = dedupe_ttl_s
        # The lease must outlive the slowest delivery, or a second worker could deliver meanwhile.
        self.lease_s = int(self.worst_case_delivery_s(attempt_timeout_s)) + 30
        self.loop: ConsumeLoop | None = None
        self.stop_event = threading.Event()

    def worst_case_delivery_s(self, attempt_timeout_s: float) -> float:
        """Every attempt timing out, with every backoff in between."""
        waits, delay = 0.0, self.backoff_s
        for _ in range(self.max_attempts - 1):
            waits += delay
            delay = min(delay * 2, MAX_BACKOFF_S)
        return self.max_attempts * attempt_timeout_s + waits

    @staticmethod
    def dedupe_key(channel: str, alert_id: str) -> str:
        return f"sw:notify:{channel}:{alert_id}"

    def handle(self, messages: list[Message]) -> list[Output]:
        assert self.loop is not None
        outputs = []
        for msg in messages:
            try:
                alert = decode(Alert, msg.value(), required=("alert_id", "rule", "store_id"))
            except PoisonMessage as exc:
                outputs.append(self.loop.dead_letter(msg, str(exc)))
                continue
            for channel in self.channels:
                error = self._deliver_once(channel, alert)
                if error:
                    outputs.append(self.loop.dead_letter(msg, error))
        return outputs

    def _deliver_once(self, channel: Channel, alert: Alert) -> str | None:
        """Deliver unless already delivered; returns an error text when the alert must go to the DLQ."""
        key = self.dedupe_key(channel.name, alert.alert_id)
        try:
            if not self.redis.set(key, PENDING, nx=True, ex=self.lease_s):
                if self.redis.get(key) == DELIVERED:
                    DELIVERIES.labels(channel.name, "duplicate_skipped").inc()
                    log.info("duplicate alert skipped", extra={"alert_id": alert.alert_id, "channel": channel.name})
                    return None
                raise RetryableError(f"alert {alert.alert_id} is being delivered on {channel.name} by another worker")
        except redis.RedisError as exc:
            raise RetryableError(f"redis: {exc}") from None
        try:
            receipt = self._deliver_with_retries(channel, alert)
        except RetryableError:
            self._release(key)
            raise
        except DeliveryError as exc:
            self._release(key)
            DELIVERIES.labels(channel.name, "failed").inc()
            log.error("delivery failed", extra={"alert_id": alert.alert_id, "channel": channel.name, "error": str(exc)})
            return f"delivery to {channel.name} failed: {exc}"
        try:
            self.redis.set(key, DELIVERED, ex=self.dedupe_ttl_s)
        except redis.RedisError:
            # Delivered, but not recorded: the lease expires and a replay could deliver again.
            log.exception("could not record delivery", extra={"alert_id": alert.alert_id, "channel": channel.name})
        DELIVERIES.labels(channel.name, "delivered").inc()
        log.info("alert delivered", extra={"alert_id": alert.alert_id, "channel": channel.name, "receipt": receipt})
        return None

    def _release(self, key: str) -> None:
        try:
            self.redis.delete(key)
        except redis.RedisError:
            log.warning("could not release a delivery lease; it expires by itself", extra={"key": key, "lease_s": self.lease_s})

    def _deliver_with_retries(self, channel: Channel, alert: Alert) -> str:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                return channel.deliver(alert)
            except PermanentDeliveryError:
                raise
            except DeliveryError as exc:
                if attempt == self.max_attempts:
                    raise
                log.warning("delivery attempt failed", extra={"alert_id": alert.alert_id, "channel": channel.name, "attempt": attempt, "error": str(exc)})
                if self.stop_event.wait(delay):
                    # Shutting down: leave the alert uncommitted; it is delivered after the restart.
                    raise RetryableError("stopping during delivery retries") from None
                delay = min(delay * 2, MAX_BACKOFF_S)
        raise AssertionError("unreachable")
