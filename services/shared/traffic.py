"""People counts from the counting lines, in Redis: written by the recorder (which reads every
FrameAnalysis), read by the api for the dashboard's store page.

Per store and hour (UTC hour start, epoch ms): a hash `sw:traffic:<store>:<hour>` of counts by
"<camera>|<line>|<kind>|<direction>", and a set of the crossings already counted, so a replayed
analysis (the recorder restarted, a partition moved) counts nothing twice. Both expire after
TRAFFIC_KEEP_S. "People in the store now" is the door lines' entries less their exits since the
store's business day began (its latest opening time; the last 24 hours for a store always open).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from services.shared.storeconfig import Store

HOUR_MS = 3_600_000
TRAFFIC_KEEP_S = 8 * 86_400
HOURS_SHOWN = 24
# Counts the crossing once: the hash is incremented only when the crossing is new to the set.
_COUNT_ONCE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
"""


@dataclass(frozen=True)
class LineCount:
    """One tracked person crossing one counting line (FrameAnalysis.line_crossings)."""

    store_id: str
    camera_id: str
    line_id: str
    line_kind: str
    direction: str
    track_id: int
    time_ms: int


def hour_of(time_ms: int) -> int:
    return time_ms // HOUR_MS * HOUR_MS


def _keys(store_id: str, hour_ms: int) -> tuple[str, str]:
    return f"sw:traffic:seen:{store_id}:{hour_ms}", f"sw:traffic:{store_id}:{hour_ms}"


def record_counts(client: redis.Redis, counts: Iterable[LineCount]) -> int:
    """Count each crossing once, in one round trip; returns how many were sent."""
    script = client.register_script(_COUNT_ONCE)
    pipe = client.pipeline(transaction=False)
    sent = 0
    for count in counts:
        seen, totals = _keys(count.store_id, hour_of(count.time_ms))
        crossing = f"{count.camera_id}|{count.line_id}|{count.direction}|{count.track_id}|{count.time_ms}"
        script(keys=[seen, totals], args=[crossing, f"{count.camera_id}|{count.line_id}|{count.line_kind}|{count.direction}", TRAFFIC_KEEP_S],
               client=pipe)
        sent += 1
    if sent:
        pipe.execute()
    return sent


def business_day_start(store: Store, now_ms: int) -> int:
    """When the store's current business day began: its latest opening time at or before now, in
    store time (the last 24 hours for a store with no opening hours)."""
    if store.opening_hours is None:
        return now_ms - 24 * HOUR_MS
    tz = ZoneInfo(store.timezone)
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    opened = datetime.combine(local.date(), store.opening_hours.open, tz)
    if opened > local:
        opened = datetime.combine(local.date() - timedelta(days=1), store.opening_hours.open, tz)
    return int(opened.timestamp() * 1000)


def store_traffic(client: redis.Redis, store: Store, now_ms: int) -> dict[str, Any] | None:
    """The store page's counts: people in the store now (door lines), entries and exits per hour over
    the last HOURS_SHOWN hours, and each line's count since the business day began. None for a store
    with no counting line."""
    lines = [(camera.id, line) for camera in store.cameras for line in camera.lines]
    if not lines:
        return None
    day_start = business_day_start(store, now_ms)
    newest = hour_of(now_ms)
    hours = sorted({newest - i * HOUR_MS for i in range(HOURS_SHOWN)} | set(range(hour_of(day_start), newest + 1, HOUR_MS)))
    pipe = client.pipeline(transaction=False)
    for hour in hours:
        pipe.hgetall(_keys(store.id, hour)[1])
    per_hour: dict[int, dict[str, int]] = {}
    for hour, raw in zip(hours, pipe.execute(), strict=True):
        per_hour[hour] = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    doors_in = {hour: sum(n for key, n in counts.items() if key.endswith("|door|in")) for hour, counts in per_hour.items()}
    doors_out = {hour: sum(n for key, n in counts.items() if key.endswith("|door|out")) for hour, counts in per_hour.items()}
    today = [hour for hour in hours if hour >= hour_of(day_start)]
    by_line = []
    for camera_id, line in lines:
        prefix = f"{camera_id}|{line.id}|{line.kind}|"
        by_line.append({"camera_id": camera_id, "line_id": line.id, "kind": line.kind,
                        "in": sum(per_hour[h].get(prefix + "in", 0) for h in today), "out": sum(per_hour[h].get(prefix + "out", 0) for h in today)})
    has_doors = any(line.kind == "door" for _, line in lines)
    return {
        "day_start_ms": day_start,
        # Hour by hour, door lines only: a count line inside the store is not an entry.
        "in_store_now": max(0, sum(doors_in[h] - doors_out[h] for h in today)) if has_doors else None,
        "entries_today": sum(doors_in[h] for h in today) if has_doors else None,
        "hours": [{"hour_ms": h, "in": doors_in[h], "out": doors_out[h]} for h in hours if h > newest - HOURS_SHOWN * HOUR_MS],
        "lines": by_line,
    }
