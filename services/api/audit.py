"""The append-only audit log: who viewed or exported evidence, gave a verdict, signed in, changed users.

A Redis stream: entries are only ever added (XADD), each with a time-ordered id that doubles as the
query cursor; the api has no route that changes or removes one. Production runs Redis with
append-only persistence so the log survives a restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

AUDIT_STREAM = "sw:audit"


def alert_stream(alert_id: str) -> str:
    """The same entries again for one alert, so a case file's trail is complete however old it is."""
    return f"sw:audit:alert:{alert_id}"
ACTIONS = ("sign_in", "sign_in_failed", "sign_out", "evidence.view", "evidence.file", "evidence.export", "verdict", "user.create", "user.delete")


@dataclass(frozen=True)
class AuditEntry:
    user: str
    role: str
    action: str
    alert_id: str = ""
    store_id: str = ""
    detail: str = ""
    ip: str = ""


class AuditLog:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def record(self, entry: AuditEntry) -> str:
        """Append one entry; returns its id. Raises redis errors: an action that cannot be audited fails."""
        fields = {"time_ms": str(int(time.time() * 1000)), "user": entry.user, "role": entry.role, "action": entry.action,
                  "alert_id": entry.alert_id, "store_id": entry.store_id, "detail": entry.detail[:1000], "ip": entry.ip}
        entry_id = cast(bytes, self.redis.xadd(AUDIT_STREAM, fields)).decode()  # type: ignore[arg-type]
        if entry.alert_id:
            self.redis.xadd(alert_stream(entry.alert_id), fields, id=entry_id)  # type: ignore[arg-type]
        return entry_id

    def query(self, user: str = "", action: str = "", alert_id: str = "", before: str | None = None, limit: int = 100,
              scan_limit: int = 5000) -> tuple[list[dict], str | None]:
        """Newest first. `before` is the cursor of the previous page (an entry id); the next one is returned
        when more entries may follow, also when the scan stopped at `scan_limit` entries without filling the page."""
        if before is not None and not _valid_entry_id(before):
            raise ValueError(f"cursor {before!r} is not an audit entry id: use next_cursor from the previous page")
        if before is not None:
            millis, _, seq = before.partition("-")
            before = f"{int(millis)}-{int(seq)}"  # Redis reads "007-0" as 7-0
            if before == "0-0":
                return [], None  # nothing comes before the first possible id
        found: list[dict] = []
        scanned = 0
        upper = f"({before}" if before else "+"
        last_id: str | None = None
        while len(found) < limit and scanned < scan_limit:
            rows = cast(list, self.redis.xrevrange(AUDIT_STREAM, max=upper, min="-", count=min(500, scan_limit - scanned)))
            if not rows:
                return found, None
            for raw_id, raw_fields in rows:
                entry_id = raw_id.decode()
                last_id = entry_id
                scanned += 1
                entry = _entry(raw_id, raw_fields)
                if (user and entry.get("user") != user) or (action and entry.get("action") != action) or (alert_id and entry.get("alert_id") != alert_id):
                    continue
                found.append(entry)
                if len(found) == limit:
                    break
            upper = f"({last_id}"
        return found, last_id

    def for_alert(self, alert_id: str) -> list[dict]:
        """Every entry about one alert, newest first."""
        return [_entry(raw_id, raw_fields) for raw_id, raw_fields in cast(list, self.redis.xrevrange(alert_stream(alert_id)))]


def _entry(raw_id: bytes, raw_fields: dict[bytes, bytes]) -> dict:
    """A stream entry as the API shows it."""
    fields = {k.decode(): v.decode() for k, v in raw_fields.items()}
    return {"id": raw_id.decode(), **fields, "time_ms": int(fields.get("time_ms", 0))}


def _valid_entry_id(entry_id: str) -> bool:
    """A Redis stream id: two unsigned 64-bit numbers joined by '-'."""
    millis, _, seq = entry_id.partition("-")
    return millis.isdigit() and seq.isdigit() and int(millis) < 2**64 and int(seq) < 2**64
