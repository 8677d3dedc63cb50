"""Newest-first pages over Redis sorted-set indexes, and the filter, shared by the alert and incident lists.

Members are scored by a time that never changes once indexed (an alert's event time, an incident's
opening alert's), so a cursor (score, member) stays exact while new members arrive above or below it.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import cast

import redis


class BadCursor(ValueError):
    """A pagination cursor this api did not hand out."""


@dataclass(frozen=True)
class ListFilter:
    """What the caller asked for and what their role lets them see (None: every store). A view
    matches a rule it holds, and a time range its span overlaps; what those are is the subclass's."""

    stores: frozenset[str] | None = None
    rule: str | None = None
    severity: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def rules(self, view: dict) -> Collection[str]:
        raise NotImplementedError

    def span(self, view: dict) -> tuple[int, int]:
        """The view's first and last time (ms)."""
        raise NotImplementedError

    def matches(self, view: dict) -> bool:
        return ((self.stores is None or view["store_id"] in self.stores)
                and (self.rule is None or self.rule in self.rules(view))
                and (self.severity is None or view["severity"] == self.severity)
                and (self.status is None or view["status"] == self.status)
                and (self.since_ms is None or self.span(view)[1] >= self.since_ms)
                and (self.until_ms is None or self.span(view)[0] <= self.until_ms))


def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(f"{int(score)}:{member}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member = raw.split(":", 1)
        return float(int(score)), member
    except (ValueError, UnicodeDecodeError):
        raise BadCursor("not a cursor from this api: use next_cursor from the previous page") from None


def scan_newest(client: redis.Redis, key: str, upper: float, lower: float, before: tuple[float, str] | None,
                chunk: int = 200) -> Iterator[tuple[float, str]]:
    """One index, newest first, strictly after the cursor; ties in time ordered by member like Redis does.
    Each chunk starts at the last time read (skipping the members already read at that time), not
    at an offset from the top, so a member that arrives late, below the page, shifts nothing."""
    top, skip = upper, 0
    bottom = "-inf" if lower == float("-inf") else int(lower)
    while True:
        rows = cast(list[tuple[bytes, float]], client.zrevrangebyscore(
            key, "+inf" if top == float("inf") else int(top), bottom, start=skip, num=chunk, withscores=True))
        for raw, score in rows:
            member = raw.decode()
            if before is not None and (score > before[0] or (score == before[0] and member >= before[1])):
                continue
            yield score, member
        if len(rows) < chunk:
            return
        last = rows[-1][1]
        at_last = sum(1 for _, score in rows if score == last)
        skip = skip + at_last if last == top else at_last
        top = last


def newest_page(client: redis.Redis, keys: list[str], upper: float, lower: float, cursor: str | None,
                views: Callable[[list[str]], list[dict | None]], matches: Callable[[dict], bool], position: Callable[[dict], tuple[float, str]],
                limit: int, scan_limit: int) -> tuple[list[dict], str | None]:
    """Up to `limit` views that match, newest first, merged from `keys`; stops early after
    `scan_limit` members with a cursor where it stopped. `position` is a view's (score, member)."""
    before = decode_cursor(cursor) if cursor else None
    if before is not None:
        upper = min(upper, before[0])
    merged = heapq.merge(*(scan_newest(client, k, upper, lower, before) for k in keys), reverse=True)
    found: list[dict] = []
    scanned = 0
    last: tuple[float, str] | None = None
    batch: list[tuple[float, str]] = []

    def flush() -> None:
        for view in views([member for _, member in batch]):
            if view is not None and matches(view) and len(found) < limit:
                found.append(view)
        batch.clear()

    for score, member in merged:
        batch.append((score, member))
        last = (score, member)
        scanned += 1
        if len(batch) == 100:
            flush()
        if len(found) >= limit or scanned >= scan_limit:
            break
    flush()
    if len(found) >= limit:
        return found, encode_cursor(*position(found[-1]))
    if scanned >= scan_limit and last is not None:
        return found, encode_cursor(*last)
    return found, None
