"""The api's alert store: sw.alerts.v1 and sw.feedback.v1 kept in Redis for HQ queries and the live feed.

Redis rather than process memory, so every api replica answers the same and a restart loses nothing;
sw.alerts.v1 stays the system of record and `python -m services.api rebuild` refills Redis from it.
Each alert is kept once (a replay finds it there and changes nothing): its JSON, a time index for
all alerts, one per store and one per rule, a day count per store and rule for statistics, and a
message on the live channel that every api replica relays to its open dashboards. A verdict is kept
once per feedback message (the api's own and a replay of it agree on its id), moves the alert's status
and its store's and rule's verdict counts, and is relayed live as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast
from zoneinfo import ZoneInfo

import redis
from confluent_kafka import Message

from services.api.incidents import IncidentIndex
from services.api.incidents import day_key as incident_day_key
from services.api.index import BadCursor as BadCursor  # the cursor's names, re-exported for the alert routes
from services.api.index import ListFilter, newest_page
from services.api.index import decode_cursor as decode_cursor
from services.api.index import encode_cursor as encode_cursor
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.kafka import Outcome, Poison, RetryableError
from services.shared.riskfeatures import TriageContext, store_confirm_rate, triage_features
from services.shared.riskmodel import RiskModel
from services.shared.serde import PoisonMessage, decode, to_json_dict
from services.shared.storeconfig import StoreConfig

log = logging.getLogger("api")

ALERTS_HASH = "sw:alerts"
ALL_BY_TIME = "sw:alerts:by_time"
STATUS_HASH = "sw:alerts:status"
LIVE_CHANNEL = "sw:alerts:live"
KEY_PREFIX = "sw:alerts"

Status = Literal["new", "acknowledged", "confirmed", "dismissed"]
VerdictName = Literal["acknowledged", "confirmed", "false_alarm"]
STATUS_OF_VERDICT: dict[str, Status] = {"acknowledged": "acknowledged", "confirmed": "confirmed", "false_alarm": "dismissed"}
VERDICT_NAMES: dict[int, VerdictName] = {Verdict.VERDICT_ACKNOWLEDGED: "acknowledged", Verdict.VERDICT_CONFIRMED: "confirmed", Verdict.VERDICT_FALSE_ALARM: "false_alarm"}
# A store's confirmed share for triage is counted over this many days of verdicts.
TRIAGE_CONFIRM_DAYS = 30
CONFIRM_RATE_TTL_S = 60.0
VERDICT_VALUES: dict[str, int] = {name: value for value, name in VERDICT_NAMES.items()}


def store_index(store_id: str) -> str:
    return f"{KEY_PREFIX}:store:{store_id}"


def rule_index(rule: str) -> str:
    return f"{KEY_PREFIX}:rule:{rule}"


def history_key(alert_id: str) -> str:
    return f"{KEY_PREFIX}:history:{alert_id}"


def day_key(day: str) -> str:
    """Alerts per store and rule raised on a store-local day."""
    return f"sw:stats:day:{day}"


def verdict_day_key(day: str) -> str:
    """Verdicts per store, rule and verdict on the alerts of a store-local day."""
    return f"sw:stats:verdicts:{day}"


def severity_name(value: str) -> str:
    """SEVERITY_HIGH -> high, as the API and the dashboard say it."""
    return value.removeprefix("SEVERITY_").lower() if value != "SEVERITY_UNSPECIFIED" else "unspecified"


def feedback_id(feedback: Feedback) -> str:
    """The same verdict message always has the same id: the api's write and the topic's replay agree."""
    raw = f"{feedback.alert_id}|{feedback.user}|{feedback.time_ms}|{feedback.verdict}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


# Keep an alert once: everything about a new alert in one step, nothing when it is already there.
_SAVE_ALERT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('EXPIRE', KEYS[5], ARGV[5])
redis.call('PUBLISH', KEYS[6], ARGV[6])
return 1
"""

# Keep a verdict once; the newest verdict (by its time) is the alert's status, and the per store and
# rule verdict counts of the alert's day follow the status (a changed verdict moves its count).
_APPLY_VERDICT = """
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[7])
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local c = cjson.decode(current)
  if tonumber(c.time_ms) > tonumber(ARGV[4]) then return 1 end
  redis.call('HINCRBY', KEYS[3], ARGV[6] .. c.verdict, -1)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[6] .. ARGV[5], 1)
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('PUBLISH', KEYS[4], ARGV[8])
return 2
"""


@dataclass(frozen=True)
class AlertFilter(ListFilter):
    """An alert holds its rule; its span is its event time."""

    def rules(self, view: dict) -> tuple[str]:
        return (view["rule"],)

    def span(self, view: dict) -> tuple[int, int]:
        return int(view["event_time_ms"]), int(view["event_time_ms"])


class AlertStore:
    def __init__(self, client: redis.Redis, config: StoreConfig, retention_days: float = 30.0, triage: RiskModel | None = None) -> None:
        self.redis = client
        self.config = config
        self.retention_ms = int(retention_days * 86400 * 1000)
        self._save_alert = client.register_script(_SAVE_ALERT)
        self._apply_verdict = client.register_script(_APPLY_VERDICT)
        self._stores = {s.id: s for s in config.stores}
        # Every alert kept is folded into an incident, with the same retention.
        self.incidents = IncidentIndex(client, STATUS_HASH, LIVE_CHANNEL, self.retention_ms, self.local_day, self.store_names)
        # The triage model: each new alert gets the chance HQ confirms it, with its reasons.
        self.triage = triage
        self._zone_kinds = {z.id: z.kind for s in config.stores for c in s.cameras for z in c.zones}
        self._confirm_rates: dict[str, tuple[float, float]] = {}

    def _confirm_rate(self, store_id: str) -> float:
        """The store's confirmed share over the last TRIAGE_CONFIRM_DAYS, recounted at most once a minute
        (a storm of alerts must not recount 30 days of statistics each)."""
        now = time.monotonic()
        cached = self._confirm_rates.get(store_id)
        if cached is not None and now - cached[1] < CONFIRM_RATE_TTL_S:
            return cached[0]
        judged = self.stats([store_id], TRIAGE_CONFIRM_DAYS)["by_store"]
        confirmed = sum(row["confirmed"] for row in judged)
        rate = store_confirm_rate(confirmed, confirmed + sum(row["false_alarm"] for row in judged))
        self._confirm_rates[store_id] = (rate, now)
        return rate

    def triage_view(self, alert: Alert) -> dict | None:
        """The chance HQ confirms this alert, from the triage model, with the features it was scored on
        (kept with the alert: once HQ judges it, they are a training row)."""
        if self.triage is None:
            return None
        store = self._stores.get(alert.store_id)
        rate = self._confirm_rate(alert.store_id) if store else store_confirm_rate(0, 0)
        values = triage_features(alert, TriageContext(store.timezone if store else "UTC", rate, self._zone_kinds))
        scored = self.triage.score(values)
        return {"probability": scored.probability, "decision": scored.decision, "model": self.triage.version,
                "reasons": [{"text": r.text, "feature": r.feature, "contribution": r.contribution} for r in scored.reasons], "features": values}

    # ---- writing -------------------------------------------------------------------------------

    def save(self, alert: Alert) -> bool:
        """Keep the alert unless it is there already or older than the retention; True when new.
        Alerts past the retention are dropped from the indexes as new ones come in."""
        now_ms = int(time.time() * 1000)
        cutoff = now_ms - self.retention_ms
        self._expire(cutoff, alert)
        if alert.event_time_ms < cutoff:
            return False
        view = to_json_dict(alert)
        triage = self.triage_view(alert) if not self.redis.hexists(ALERTS_HASH, alert.alert_id) else None
        if triage is not None:
            view["triage"] = triage
        body = json.dumps(view)
        day = self.local_day(alert.store_id, alert.event_time_ms)
        live = json.dumps({"type": "alert", "alert_id": alert.alert_id, "store_id": alert.store_id})
        created = self._save_alert(
            keys=[ALERTS_HASH, ALL_BY_TIME, store_index(alert.store_id), rule_index(alert.rule), day_key(day), LIVE_CHANNEL],
            args=[alert.alert_id, body, alert.event_time_ms, f"{alert.store_id}\t{alert.rule}", int(self.retention_ms / 1000) + 2 * 86400, live])
        self.incidents.fold(alert)
        return bool(created)

    def _expire(self, cutoff: int, alert: Alert) -> None:
        expired = cast(list[bytes], self.redis.zrangebyscore(ALL_BY_TIME, "-inf", f"({cutoff}", start=0, num=500))
        pipe = self.redis.pipeline()
        if expired:
            pipe.hdel(ALERTS_HASH, *expired)
            pipe.hdel(STATUS_HASH, *expired)
            pipe.zrem(ALL_BY_TIME, *expired)
            pipe.delete(*[history_key(a.decode()) for a in expired])
            self.incidents.forget_alerts(pipe, expired)
        pipe.zremrangebyscore(store_index(alert.store_id), "-inf", f"({cutoff}")
        pipe.zremrangebyscore(rule_index(alert.rule), "-inf", f"({cutoff}")
        pipe.execute()
        self.incidents.expire(cutoff, alert.store_id, alert.rule)

    def apply_feedback(self, feedback: Feedback) -> bool:
        """Record a verdict once; True when it is new (a replay changes nothing). A verdict on an alert
        not kept here (past the retention) is passed over: it has no status or day to count in."""
        verdict = VERDICT_NAMES.get(feedback.verdict)
        if verdict is None:
            raise ValueError(f"verdict {feedback.verdict} is not one the api records")
        raw = self.redis.hget(ALERTS_HASH, feedback.alert_id)
        if raw is None:
            log.info("verdict on an alert not kept here, passed over", extra={"alert_id": feedback.alert_id})
            return False
        alert = json.loads(cast(bytes, raw))
        day = self.local_day(alert["store_id"], int(alert["event_time_ms"]))
        entry = {"verdict": verdict, "user": feedback.user, "time_ms": feedback.time_ms, "note": feedback.comment}
        live = json.dumps({"type": "status", "alert_id": feedback.alert_id, "store_id": alert["store_id"]})
        result = self._apply_verdict(
            keys=[STATUS_HASH, history_key(feedback.alert_id), verdict_day_key(day), LIVE_CHANNEL],
            args=[feedback.alert_id, feedback_id(feedback), json.dumps(entry), feedback.time_ms, verdict,
                  f"{alert['store_id']}\t{alert['rule']}\t", int(self.retention_ms / 1000) + 2 * 86400, live])
        # The incident's status follows its reasons' newest verdict (a replay, too, in case the api
        # stopped between the two steps).
        self.incidents.verdict_given(feedback.alert_id)
        return bool(result)

    def take(self, topic: str | None, value: bytes | None) -> bool:
        """One message of sw.alerts.v1 or sw.feedback.v1 into Redis (the consumer and the rebuild alike);
        True when it was new. PoisonMessage when it cannot be read."""
        if topic == topics.FEEDBACK:
            feedback = decode(Feedback, value, required=("alert_id", "store_id", "verdict"))
            if feedback.verdict not in VERDICT_NAMES:
                raise PoisonMessage(f"shrinkwatch.v1.Feedback: verdict {feedback.verdict} is not acknowledged, confirmed or false alarm")
            return self.apply_feedback(feedback)
        return self.save(decode(Alert, value, required=("alert_id", "store_id")))

    def handle(self, messages: list[Message]) -> Outcome:
        """The consumer's batch: alerts and verdicts into Redis; a message that cannot be read is poison,
        passed over (the notifier keeps bad alerts in sw.alerts.v1.dlq and the correlator bad verdicts)."""
        outcome = Outcome()
        for msg in messages:
            try:
                self.take(msg.topic(), msg.value())
            except PoisonMessage as exc:
                outcome.poison.append(Poison(msg, str(exc)))
            except redis.RedisError as exc:
                raise RetryableError(f"redis: {exc}") from None
        return outcome

    # ---- reading -------------------------------------------------------------------------------

    def local_day(self, store_id: str, time_ms: int) -> str:
        store = self._stores.get(store_id)
        zone = ZoneInfo(store.timezone) if store else UTC
        return datetime.fromtimestamp(time_ms / 1000, zone).date().isoformat()

    def store_names(self, store_id: str) -> tuple[str, str]:
        """The store's name and region ("" for a store no longer in the config)."""
        store = self._stores.get(store_id)
        return (store.name, store.region) if store else ("", "")

    def views(self, alert_ids: list[str]) -> list[dict | None]:
        """Each alert as the API shows it, with its status and incident; None for ids no longer kept."""
        if not alert_ids:
            return []
        pipe = self.redis.pipeline()
        pipe.hmget(ALERTS_HASH, alert_ids)
        pipe.hmget(STATUS_HASH, alert_ids)
        raw_alerts, raw_status = pipe.execute()
        incident_ids = self.incidents.incident_ids(alert_ids)
        return [{**self._view(a, s), "incident_id": i} if a else None for a, s, i in zip(raw_alerts, raw_status, incident_ids, strict=True)]

    def view(self, alert_id: str) -> dict | None:
        return self.views([alert_id])[0]

    def _view(self, raw_alert: bytes, raw_status: bytes | None) -> dict:
        alert = json.loads(raw_alert)
        verdict = json.loads(raw_status) if raw_status else None
        store = self._stores.get(alert["store_id"])
        alert["severity"] = severity_name(alert["severity"])
        alert["event_time_ms"] = int(alert["event_time_ms"])
        alert["raised_time_ms"] = int(alert["raised_time_ms"])
        for ref in alert["evidence"]:
            ref["time_ms"] = int(ref["time_ms"])
        return {**alert, "store_name": store.name if store else "", "region": store.region if store else "",
                "status": STATUS_OF_VERDICT[verdict["verdict"]] if verdict else "new", "verdict": verdict,
                "has_snapshot": bool(alert["camera_id"])}

    def history(self, alert_id: str) -> list[dict]:
        return self.histories([alert_id])[alert_id]

    def histories(self, alert_ids: list[str]) -> dict[str, list[dict]]:
        """Each alert's verdicts, oldest first, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for alert_id in alert_ids:
            pipe.hgetall(history_key(alert_id))
        replies = cast(list[dict[bytes, bytes]], pipe.execute()) if alert_ids else []
        return {a: sorted((json.loads(v) for v in raw.values()), key=lambda e: e["time_ms"]) for a, raw in zip(alert_ids, replies, strict=True)}

    def query(self, wanted: AlertFilter, limit: int, cursor: str | None = None, scan_limit: int = 2000) -> tuple[list[dict], str | None]:
        """Newest first (event time, then id). Reads the narrowest index (the stores', else the rule's,
        else all) and filters the rest; a page stops early after `scan_limit` alerts, with a cursor."""
        if wanted.stores is not None:
            keys = [store_index(s) for s in sorted(wanted.stores)]
        elif wanted.rule is not None:
            keys = [rule_index(wanted.rule)]
        else:
            keys = [ALL_BY_TIME]
        upper = float(wanted.until_ms) if wanted.until_ms is not None else float("inf")
        lower = float(wanted.since_ms) if wanted.since_ms is not None else float("-inf")
        return newest_page(self.redis, keys, upper, lower, cursor, self.views, wanted.matches,
                           lambda view: (view["event_time_ms"], view["alert_id"]), limit, scan_limit)

    def stats(self, stores: Iterable[str], days: int, today: str | None = None) -> dict:
        """Alerts and incidents per day per store and per rule over the last `days` days (an incident
        counts on the day it opened, under each rule among its reasons), and verdict counts on the
        alerts with each rule's precision."""
        wanted = set(stores)
        if today:
            end = datetime.fromisoformat(today).date()
        else:  # the latest local date among the stores, so a store ahead of UTC sees its today
            now = datetime.now(UTC)
            end = max((now.astimezone(ZoneInfo(self._stores[s].timezone)).date() for s in wanted if s in self._stores), default=now.date())
        day_list = [(end.toordinal() - i) for i in range(days - 1, -1, -1)]
        day_names = [datetime.fromordinal(d).date().isoformat() for d in day_list]
        pipe = self.redis.pipeline()
        for name in day_names:
            pipe.hgetall(day_key(name))
            pipe.hgetall(verdict_day_key(name))
            pipe.hgetall(incident_day_key(name))
        replies = pipe.execute()
        per_day, per_day_verdicts, per_day_incidents = replies[0::3], replies[1::3], replies[2::3]
        by_store: dict[str, dict] = {}
        by_rule: dict[str, dict] = {}

        def row(table: dict[str, dict], key: str) -> dict:
            return table.setdefault(key, {"alerts": 0, "per_day": [0] * days, "incidents": 0, "incidents_per_day": [0] * days,
                                          "confirmed": 0, "false_alarm": 0, "acknowledged": 0})

        for index, counts in enumerate(per_day):
            for field, value in counts.items():
                store_id, rule = field.decode().split("\t", 1)
                if store_id not in wanted:
                    continue
                for table, key in ((by_store, store_id), (by_rule, rule)):
                    entry = row(table, key)
                    entry["alerts"] += int(value)
                    entry["per_day"][index] += int(value)
        for index, counts in enumerate(per_day_incidents):
            for field, value in counts.items():
                store_id, rule = field.decode().split("\t", 1)
                if store_id not in wanted:
                    continue
                entry = row(by_rule, rule) if rule else row(by_store, store_id)
                entry["incidents"] += int(value)
                entry["incidents_per_day"][index] += int(value)
        for verdicts in per_day_verdicts:
            for field, value in verdicts.items():
                store_id, rule, verdict = field.decode().split("\t", 2)
                if store_id not in wanted or verdict not in ("confirmed", "false_alarm", "acknowledged"):
                    continue
                for table, key in ((by_store, store_id), (by_rule, rule)):
                    row(table, key)[verdict] += max(0, int(value))
        for table in (by_store, by_rule):
            for entry in table.values():
                judged = entry["confirmed"] + entry["false_alarm"]
                entry["precision"] = round(entry["confirmed"] / judged, 4) if judged else None
        stores_out = []
        for store_id, entry in sorted(by_store.items()):
            store = self._stores.get(store_id)
            stores_out.append({"store_id": store_id, "store_name": store.name if store else "", "region": store.region if store else "", **entry})
        totals = {"alerts": sum(e["alerts"] for e in by_store.values()), "incidents": sum(e["incidents"] for e in by_store.values())}
        return {"days": day_names, "totals": totals, "by_store": stores_out, "by_rule": [{"rule": rule, **entry} for rule, entry in sorted(by_rule.items())]}

    def clear(self) -> int:
        """Forget every alert, verdict, incident and count (before a rebuild from the topics); returns keys removed."""
        removed = 0
        for pattern in (f"{KEY_PREFIX}*", "sw:stats:*", "sw:incidents*"):
            keys = list(self.redis.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                removed += self.redis.delete(*keys[start:start + 500])
        return removed


def rebuild(store: AlertStore, bootstrap_servers: str, echo=print, timeout_s: float = 600.0) -> dict[str, int]:
    """Refill Redis from the system of record: every alert on sw.alerts.v1, then every verdict on
    sw.feedback.v1, read from the start up to their ends now. Keeps running services' data: writing
    an alert or a verdict twice changes nothing, so the api can keep consuming meanwhile."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    counts = {"alerts": 0, "verdicts": 0, "unreadable": 0, "incidents": 0}
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"sw-api-rebuild-{int(time.time())}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        for topic in (topics.ALERTS, topics.FEEDBACK):
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
            remaining = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
            deadline, last_report = time.monotonic() + timeout_s, time.monotonic()
            while remaining and time.monotonic() < deadline:
                for msg in consumer.consume(500, 0.5):
                    if msg.error() is not None or msg.partition() not in remaining:
                        continue
                    try:
                        counts["alerts" if topic == topics.ALERTS else "verdicts"] += store.take(topic, msg.value())
                    except PoisonMessage:
                        counts["unreadable"] += 1
                    if (msg.offset() or 0) + 1 >= ends[msg.partition()]:
                        remaining.discard(msg.partition())
                if time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    echo(f"rebuild: {topic}: {counts}")
            if remaining:
                raise TimeoutError(f"rebuild: {topic} partitions {sorted(remaining)} not read to their end within {timeout_s:.0f}s")
            consumer.unassign()
    finally:
        consumer.close()
    counts["incidents"] = store.incidents.count()
    return counts
