"""The api's incidents: every alert it keeps folded into one (services/shared/incidents.py), indexed for HQ.

The fold state is the api's own ledger (prefix `sw:incidents:fold:`), apart from the notifier's:
readers at different offsets of sw.alerts.v1 must not fold into each other's state. Beside it the
api keeps each incident's JSON, indexes by time (the opening alert's event time, which never
changes, so cursors stay exact), per store, per rule of any of its reasons and per status, a count
of incidents per store and store-local day (and per rule they hold) for statistics, and a message
on the live channel when an incident opens, takes a reason or rises in severity.

An incident's status is its reasons' newest verdict (by time): a verdict on the incident is one
verdict per reason alert at the same moment, and a verdict given on one of its alerts alone (the
notifier's acknowledgement of the opening alert, an older client of the alert routes) counts too.
Everything here is written idempotently: a replay of the topic, or `python -m services.api rebuild`,
changes nothing that is already there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from services.api.index import ListFilter, newest_page
from services.shared.contracts.alert_pb2 import Alert
from services.shared.incidents import DEFAULT_MAX_SPAN_MS, Folded, Incident, IncidentLedger

PREFIX = "sw:incidents"
LEDGER_PREFIX = f"{PREFIX}:fold:"
KEPT_HASH = f"{PREFIX}:kept"
STATE_HASH = f"{PREFIX}:status"
BY_TIME = f"{PREFIX}:by_time"
# alert id -> incident id, for the alerts' views (dropped with the alerts).
OF_HASH = f"{PREFIX}:of"
STATUSES = ("new", "acknowledged", "confirmed", "dismissed")


def store_index(store_id: str) -> str:
    return f"{PREFIX}:store:{store_id}"


def rule_index(rule: str) -> str:
    return f"{PREFIX}:rule:{rule}"


def status_index(status: str) -> str:
    return f"{PREFIX}:state:{status}"


def day_key(day: str) -> str:
    """Incidents per store (field `store\\t`) and per store and rule they hold (`store\\trule`), by the
    store-local day they opened."""
    return f"sw:stats:incidents:{day}"


def counted_key(day: str) -> str:
    """What `day_key` counted already (incident ids, and `id\\trule`), so a replay counts nothing twice."""
    return f"sw:stats:incidents-counted:{day}"


# The incident's status from its reasons' verdicts (the newest, by time, wins), kept in the status
# hash and the one status index it belongs in. Shared by both scripts below.
# KEYS: alert verdicts hash, incident status hash, the four status indexes (STATUSES order).
# ARGV: incident id, its index score, then its reasons' alert ids.
_STATUS_OF = """
local function refresh_status(k, incident, score, first)
  local newest, newest_time = nil, -1
  for i = first, #ARGV do
    local raw = redis.call('HGET', k[1], ARGV[i])
    if raw then
      local v = cjson.decode(raw)
      local t = tonumber(v.time_ms) or 0
      if t > newest_time then newest_time, newest = t, v.verdict end
    end
  end
  local status, slot = 'new', 3
  if newest == 'acknowledged' then status, slot = 'acknowledged', 4
  elseif newest == 'confirmed' then status, slot = 'confirmed', 5
  elseif newest == 'false_alarm' then status, slot = 'dismissed', 6 end
  if redis.call('HGET', k[2], incident) == status and redis.call('ZSCORE', k[slot], incident) then return 0 end
  redis.call('HSET', k[2], incident, status)
  for i = 3, 6 do redis.call('ZREM', k[i], incident) end
  redis.call('ZADD', k[slot], score, incident)
  return 1
end
"""

# Keep an incident as it stands after an alert was folded into it. KEYS: as _STATUS_OF, then the
# incident JSON hash, all by time, its store's index, the alert's rule's index, the day's counts,
# what the day counted, the live channel, the alerts' incidents. ARGV: incident id, score, JSON,
# store field, store+rule field, counts' time to live (s), live message ('' for none), the alert's
# id, then the reasons' alert ids.
_KEEP_INCIDENT = _STATUS_OF + """
local id, score = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[7], id, ARGV[3])
for i = 8, 10 do redis.call('ZADD', KEYS[i], score, id) end
if redis.call('SADD', KEYS[12], id) == 1 then redis.call('HINCRBY', KEYS[11], ARGV[4], 1) end
if redis.call('SADD', KEYS[12], id .. '\\t' .. ARGV[5]) == 1 then redis.call('HINCRBY', KEYS[11], ARGV[5], 1) end
redis.call('EXPIRE', KEYS[11], ARGV[6])
redis.call('EXPIRE', KEYS[12], ARGV[6])
redis.call('HSET', KEYS[14], ARGV[8], id)
local changed = refresh_status(KEYS, id, score, 9)
if ARGV[7] ~= '' then redis.call('PUBLISH', KEYS[13], ARGV[7]) end
return changed
"""

# After a verdict on one of its alerts. KEYS: as _STATUS_OF, then the live channel.
# ARGV: incident id, score, live message, then the reasons' alert ids. Returns 1 when the status changed.
_REFRESH_STATUS = _STATUS_OF + """
local changed = refresh_status(KEYS, ARGV[1], ARGV[2], 4)
if changed == 1 then redis.call('PUBLISH', KEYS[7], ARGV[3]) end
return changed
"""


@dataclass(frozen=True)
class IncidentFilter(ListFilter):
    """An incident holds the rules of all its reasons; its span runs from its first reason to its last."""

    def rules(self, view: dict) -> list[str]:
        return view["rules"]

    def span(self, view: dict) -> tuple[int, int]:
        return int(view["start_ms"]), int(view["end_ms"])


def change_of(folded: Folded) -> str:
    """What the live feed says happened: `opened`, `escalated` (a reason raised its severity) or `reason`."""
    return "opened" if folded.opening else "escalated" if folded.escalated else "reason"


def merged_history(histories: dict[str, list[dict]]) -> list[dict]:
    """The incident's verdicts, oldest first: one verdict given on the incident is one entry per
    reason alert (same user, time, verdict and note), shown once with the alerts it covered."""
    merged: dict[tuple, dict] = {}
    for alert_id, entries in histories.items():
        for entry in entries:
            key = (entry.get("user"), entry.get("time_ms"), entry.get("verdict"), entry.get("note"))
            merged.setdefault(key, {**entry, "alert_ids": []})["alert_ids"].append(alert_id)
    return sorted(merged.values(), key=lambda e: (e.get("time_ms") or 0, e.get("verdict") or ""))


class IncidentIndex:
    """Folds the alert store's alerts into incidents and answers the incident routes' queries."""

    def __init__(self, client: redis.Redis, alert_status_hash: str, live_channel: str, keep_ms: int,
                 local_day: Callable[[str, int], str], store_names: Callable[[str], tuple[str, str]],
                 max_span_ms: int = DEFAULT_MAX_SPAN_MS) -> None:
        self.redis = client
        self.ledger = IncidentLedger(client, LEDGER_PREFIX, keep_ms, max_span_ms=max_span_ms)
        self.alert_status_hash = alert_status_hash
        self.live_channel = live_channel
        self.keep_ms = keep_ms
        self.max_span_ms = max_span_ms
        self.local_day = local_day
        self.store_names = store_names
        self._keep = client.register_script(_KEEP_INCIDENT)
        self._refresh = client.register_script(_REFRESH_STATUS)

    def _status_keys(self) -> list[str]:
        return [self.alert_status_hash, STATE_HASH, *(status_index(s) for s in STATUSES)]

    # ---- writing -------------------------------------------------------------------------------

    def fold(self, alert: Alert) -> Folded:
        """Fold a kept alert into its incident and keep the incident (every time: a replay after a
        crash between the fold and the indexes finishes the job; nothing is counted twice)."""
        folded = self.ledger.fold(alert)
        incident = folded.incident
        opening_ms = incident.reasons[0].event_time_ms
        live = json.dumps({"type": "incident", "incident_id": incident.incident_id, "store_id": incident.store_id,
                           "change": change_of(folded)}) if folded.added else ""
        ttl_s = int(self.keep_ms / 1000) + 2 * 86400
        self._keep(keys=[*self._status_keys(), KEPT_HASH, BY_TIME, store_index(incident.store_id), rule_index(alert.rule),
                         day_key(self.local_day(incident.store_id, opening_ms)), counted_key(self.local_day(incident.store_id, opening_ms)),
                         self.live_channel, OF_HASH],
                   args=[incident.incident_id, opening_ms, incident.to_json(), f"{incident.store_id}\t", f"{incident.store_id}\t{alert.rule}",
                         ttl_s, live, alert.alert_id, *(r.alert_id for r in incident.reasons)])
        return folded

    def verdict_given(self, alert_id: str) -> bool:
        """A verdict on one of an incident's alerts: the incident's status follows. True when it changed."""
        incident = self.incident_of(alert_id)
        if incident is None:
            return False
        live = json.dumps({"type": "incident_status", "incident_id": incident.incident_id, "store_id": incident.store_id})
        changed = self._refresh(keys=[*self._status_keys(), self.live_channel],
                                args=[incident.incident_id, incident.reasons[0].event_time_ms, live, *(r.alert_id for r in incident.reasons)])
        return bool(changed)

    def expire(self, cutoff_ms: int, store_id: str, rule: str) -> None:
        """Drop incidents whose every reason is past the retention (opened a whole span before it)."""
        below = f"({cutoff_ms - self.max_span_ms}"
        expired = cast(list[bytes], self.redis.zrangebyscore(BY_TIME, "-inf", below, start=0, num=500))
        pipe = self.redis.pipeline()
        if expired:
            pipe.hdel(KEPT_HASH, *expired)
            pipe.hdel(STATE_HASH, *expired)
            pipe.zrem(BY_TIME, *expired)
        for key in (store_index(store_id), rule_index(rule), *(status_index(s) for s in STATUSES)):
            pipe.zremrangebyscore(key, "-inf", below)
        pipe.execute()

    # ---- reading -------------------------------------------------------------------------------

    def incident_ids(self, alert_ids: list[str]) -> list[str | None]:
        """The incident of each alert (None: not folded yet, or no longer kept)."""
        if not alert_ids:
            return []
        raw = cast(list[bytes | None], self.redis.hmget(OF_HASH, alert_ids))
        return [r.decode() if r is not None else None for r in raw]

    def forget_alerts(self, pipe: redis.client.Pipeline, alert_ids: list[bytes]) -> None:
        """Alerts past the retention no longer name their incident (in the alert store's own expiry step)."""
        pipe.hdel(OF_HASH, *alert_ids)

    def incident_of(self, alert_id: str) -> Incident | None:
        [found] = self.incident_ids([alert_id])
        return self.incident(found) if found else None

    def incident(self, incident_id: str) -> Incident | None:
        raw = self.redis.hget(KEPT_HASH, incident_id)
        return Incident.from_json(cast(bytes, raw)) if raw is not None else None

    def views(self, incident_ids: list[str]) -> list[dict | None]:
        """Each incident as the API shows it, with its status; None for ids no longer kept."""
        if not incident_ids:
            return []
        pipe = self.redis.pipeline()
        pipe.hmget(KEPT_HASH, incident_ids)
        pipe.hmget(STATE_HASH, incident_ids)
        kept, states = pipe.execute()
        return [self._view(Incident.from_json(k), s.decode() if s else "new") if k else None for k, s in zip(kept, states, strict=True)]

    def view(self, incident_id: str) -> dict | None:
        return self.views([incident_id])[0]

    def _view(self, incident: Incident, status: str) -> dict:
        name, region = self.store_names(incident.store_id)
        view = incident.view()
        return {**view, "status": status, "time_ms": incident.reasons[0].event_time_ms, "store_name": name, "region": region,
                "camera_ids": sorted({r.camera_id for r in incident.reasons if r.camera_id}),
                "register_ids": sorted({r.register_id for r in incident.reasons if r.register_id}),
                "reason_count": len(incident.reasons)}

    def query(self, wanted: IncidentFilter, limit: int, cursor: str | None = None, scan_limit: int = 2000) -> tuple[list[dict], str | None]:
        """Newest first (opening time, then id). Reads the narrowest index (the stores', else the rule's,
        else the status's, else all) and filters the rest; a page stops early after `scan_limit`
        incidents, with a cursor. An incident's span lies within `max_span_ms` of its opening time,
        so the scan's bounds are the time range widened by that much."""
        if wanted.stores is not None:
            keys = [store_index(s) for s in sorted(wanted.stores)]
        elif wanted.rule is not None:
            keys = [rule_index(wanted.rule)]
        elif wanted.status is not None:
            keys = [status_index(wanted.status)]
        else:
            keys = [BY_TIME]
        upper = float(wanted.until_ms + self.max_span_ms) if wanted.until_ms is not None else float("inf")
        lower = float(wanted.since_ms - self.max_span_ms) if wanted.since_ms is not None else float("-inf")
        return newest_page(self.redis, keys, upper, lower, cursor, self.views, wanted.matches,
                           lambda view: (view["time_ms"], view["incident_id"]), limit, scan_limit)

    def count(self) -> int:
        return int(self.redis.zcard(BY_TIME))
