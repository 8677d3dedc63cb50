"""The api's view of sw.alerts.v1: a consumer that keeps alerts in Redis for GET /v1/alerts.

Redis rather than process memory, so every api replica answers the same and a restart loses nothing.
Writing an alert twice (a replay) overwrites it with itself.
"""

from __future__ import annotations

import json
import time
from typing import cast

import redis
from confluent_kafka import Message

from services.shared.contracts.alert_pb2 import Alert
from services.shared.kafka import ConsumeLoop, Output, RetryableError
from services.shared.serde import PoisonMessage, decode, to_json_dict

ALERTS_HASH = "sw:alerts"
ALL_BY_TIME = "sw:alerts:by_time"


def store_index(store_id: str) -> str:
    return f"sw:alerts:store:{store_id}"


class AlertStore:
    def __init__(self, client: redis.Redis, retention_days: float = 30.0) -> None:
        self.redis = client
        self.retention_ms = int(retention_days * 86400 * 1000)
        self.loop: ConsumeLoop | None = None

    def save(self, alert: Alert) -> None:
        """Keep the alert, and drop alerts older than the retention (sw.alerts.v1 stays the record)."""
        cutoff = int(time.time() * 1000) - self.retention_ms
        expired = self.redis.zrangebyscore(ALL_BY_TIME, "-inf", f"({cutoff}")
        pipe = self.redis.pipeline()
        if alert.event_time_ms >= cutoff:
            pipe.hset(ALERTS_HASH, alert.alert_id, json.dumps(to_json_dict(alert)))
            pipe.zadd(ALL_BY_TIME, {alert.alert_id: alert.event_time_ms})
            pipe.zadd(store_index(alert.store_id), {alert.alert_id: alert.event_time_ms})
        if expired:
            pipe.hdel(ALERTS_HASH, *expired)
            pipe.zrem(ALL_BY_TIME, *expired)
        pipe.zremrangebyscore(store_index(alert.store_id), "-inf", f"({cutoff}")
        pipe.execute()

    def latest(self, store_id: str | None, limit: int) -> list[dict]:
        # Without withscores the answer is the plain list of members; redis-py's annotation also covers the scored form.
        ids = cast("list[bytes | str]", self.redis.zrevrange(store_index(store_id) if store_id else ALL_BY_TIME, 0, limit - 1))
        if not ids:
            return []
        return [json.loads(v) for v in self.redis.hmget(ALERTS_HASH, ids) if v]

    def handle(self, messages: list[Message]) -> list[Output]:
        assert self.loop is not None
        outputs: list[Output] = []
        for msg in messages:
            try:
                alert = decode(Alert, msg.value(), required=("alert_id", "store_id"))
            except PoisonMessage:
                # The notifier owns the alerts DLQ; the api only skips what it cannot show.
                continue
            try:
                self.save(alert)
            except redis.RedisError as exc:
                raise RetryableError(f"redis: {exc}") from None
        return outputs
