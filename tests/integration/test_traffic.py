"""People counts in Redis (services/shared/traffic.py): each crossing counted once, people in the store
since its business day began, entries per hour; against a real redis-server."""

from datetime import UTC, datetime

import pytest
import redis

from services.shared.storeconfig import Store
from services.shared.traffic import LineCount, business_day_start, record_counts, store_traffic

pytestmark = pytest.mark.integration


def _store(opening_hours=None, timezone="Europe/London") -> Store:
    camera = {"id": "cam-door", "source": "file:x.mp4", "stages": [{"kind": "detector"}],
              "lines": [{"id": "front", "kind": "door", "points": [[0, 0.8], [1, 0.8]], "inside": [0.5, 0.4]},
                        {"id": "aisle", "kind": "count", "points": [[0.5, 0], [0.5, 1]], "inside": [0.8, 0.5]}]}
    return Store(id="store-9", timezone=timezone, opening_hours=opening_hours, cameras=[camera])


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _count(line: str, direction: str, track: int, at: str, kind: str = "door") -> LineCount:
    return LineCount("store-9", "cam-door", line, kind, direction, track, _ms(at))


def test_business_day_starts_at_the_latest_opening_in_store_time():
    store = _store({"open": "08:00", "close": "21:00"}, timezone="Asia/Tokyo")  # UTC+9
    assert business_day_start(store, _ms("2026-11-27T00:30:00")) == _ms("2026-11-26T23:00:00")  # 09:30 Tokyo: today 08:00
    assert business_day_start(store, _ms("2026-11-26T22:30:00")) == _ms("2026-11-25T23:00:00")  # 07:30 Tokyo: yesterday's
    assert business_day_start(_store(), _ms("2026-11-27T00:30:00")) == _ms("2026-11-26T00:30:00")  # always open: 24 h


def test_crossings_count_once_and_make_people_in_the_store_and_entries_per_hour(redis_url):
    client = redis.Redis.from_url(redis_url)
    store = _store({"open": "08:00", "close": "21:00"})  # London, UTC in November
    counts = [_count("front", "in", 1, "2026-11-27T07:50:00"),  # before opening
              _count("front", "in", 2, "2026-11-27T08:10:00"), _count("front", "in", 3, "2026-11-27T08:20:00"),
              _count("front", "out", 2, "2026-11-27T09:05:00"), _count("front", "in", 4, "2026-11-27T09:30:00"),
              _count("aisle", "in", 3, "2026-11-27T08:30:00", kind="count"),
              _count("front", "in", 9, "2026-11-26T20:00:00"), _count("front", "out", 9, "2026-11-26T20:30:00")]  # yesterday
    assert record_counts(client, counts) == 8
    record_counts(client, counts[1:3])  # replayed: nothing more
    traffic = store_traffic(client, store, _ms("2026-11-27T09:40:00"))
    assert traffic is not None and traffic["day_start_ms"] == _ms("2026-11-27T08:00:00")
    # 08:00 and 09:00 hours: 3 in, 1 out (the 07:50 entry is in the 07:00 hour, before the business day).
    assert traffic["in_store_now"] == 2 and traffic["entries_today"] == 3
    by_hour = {h["hour_ms"]: (h["in"], h["out"]) for h in traffic["hours"]}
    assert len(traffic["hours"]) == 24 and by_hour[_ms("2026-11-27T08:00:00")] == (2, 0) and by_hour[_ms("2026-11-27T09:00:00")] == (1, 1)
    assert by_hour[_ms("2026-11-27T07:00:00")] == (1, 0) and by_hour[_ms("2026-11-26T20:00:00")] == (1, 1)
    assert traffic["lines"] == [{"camera_id": "cam-door", "line_id": "front", "kind": "door", "in": 3, "out": 1},
                                {"camera_id": "cam-door", "line_id": "aisle", "kind": "count", "in": 1, "out": 0}]
    # More left than came in (a missed entry): never below nobody.
    record_counts(client, [_count("front", "out", n, "2026-11-27T09:35:00") for n in range(10, 15)])
    after = store_traffic(client, store, _ms("2026-11-27T09:40:00"))
    assert after is not None and after["in_store_now"] == 0
    assert all(client.ttl(key) > 0 for key in client.keys("sw:traffic:*"))
    assert store_traffic(client, _store().model_copy(update={"cameras": []}), _ms("2026-11-27T09:40:00")) is None
