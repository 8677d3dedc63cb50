"""Each POS event is published once per source and store, however often (or however concurrently) it is sent.

An event is known by its source, its store and its event id: separate POS systems (one per store)
reuse ids, so the key is scoped by store, and a key for one store can never claim another store's
ids. POSLog ids already include the RetailStoreID. Shopify's and Square's ids are global and their
signatures do not cover the shop: their claims are chain-wide (store "*"), so the same signed
webhook sent again under another shop's header is a duplicate.

Before producing, a request claims each event with SET NX of a short-lived "publishing" marker;
once the broker has acknowledged the event, the marker becomes a long-lived "published" record with
where it went. A failure gives the claim back (only the claimer's own marker, compared in Lua), so
a retry can publish. A second request for an event still being published does not wait for the
first (that would hold a publishing thread for as long as the first takes): it gives back what it
claimed and fails at once with `Busy`, answered 409 with Retry-After; its retry is answered with
the first one's result. A crash between the broker's acknowledgement and the record leaves the
claim to expire; a retry after that publishes again (at least once, never lost), and downstream
dedupes on the event id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import cast

import redis

PREFIX = "sw:pos:seen:"
_PUBLISHED = b"published:"
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# (store id, event id): what identifies an event within its source.
EventRef = tuple[str, str]
# A marker given back between our SET NX and our GET is simply free: take it on the next try.
_TRIES = 3


class Busy(Exception):
    """Another request is publishing some of these events right now: answer 409 with Retry-After."""


class Dedupe:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def key(source: str, store_id: str, event_id: str) -> str:
        """Store ids never contain ':' (the store config's id pattern), so the key is unambiguous."""
        return f"{PREFIX}{source}:{store_id}:{event_id}"

    def claim(self, source: str, refs: Sequence[EventRef], hold_s: int) -> tuple[str, dict[EventRef, dict | None]]:
        """Claim the events for `hold_s` seconds. Returns this claim's token and, per event, None when
        this request holds it now (publish it) or where it was already published (a duplicate).
        Raises Busy, having given back what it took, when another request is publishing one of them."""
        token = "publishing:" + uuid.uuid4().hex
        outcome: dict[EventRef, dict | None] = {}
        waiting = list(dict.fromkeys(refs))
        for _ in range(_TRIES):
            pipe = self.redis.pipeline(transaction=False)
            for ref in waiting:
                pipe.set(self.key(source, *ref), token, nx=True, ex=hold_s)
            taken = pipe.execute()
            held_elsewhere = [ref for ref, ok in zip(waiting, taken, strict=True) if not ok]
            outcome.update({ref: None for ref, ok in zip(waiting, taken, strict=True) if ok})
            if not held_elsewhere:
                return token, outcome
            values = cast(list[bytes | None], self.redis.mget([self.key(source, *ref) for ref in held_elsewhere]))
            waiting, busy = [], []
            for ref, value in zip(held_elsewhere, values, strict=True):
                if value is None:
                    waiting.append(ref)
                elif value.startswith(_PUBLISHED):
                    outcome[ref] = json.loads(value[len(_PUBLISHED):])
                else:
                    busy.append(ref)
            if busy:
                self.release(source, token, [ref for ref, where in outcome.items() if where is None])
                raise Busy(f"{len(busy)} event(s) (the first: {busy[0][1]} of store {busy[0][0]}) are being published by another request right now; "
                           "retry shortly: once that request is done they are answered as duplicates")
            if not waiting:
                return token, outcome
        self.release(source, token, [ref for ref, where in outcome.items() if where is None])
        raise Busy(f"{len(waiting)} event(s) kept being claimed and given back by other requests; retry shortly")

    def published(self, source: str, where: dict[EventRef, dict]) -> None:
        """Record acknowledged events for `ttl_s`: a later copy is answered as a duplicate."""
        pipe = self.redis.pipeline(transaction=False)
        for ref, location in where.items():
            pipe.set(self.key(source, *ref), _PUBLISHED + json.dumps(location).encode(), ex=self.ttl_s)
        pipe.execute()

    def release(self, source: str, token: str, refs: Sequence[EventRef]) -> None:
        """Give back this claim's markers (not another request's) so a retry can publish."""
        pipe = self.redis.pipeline(transaction=False)
        for ref in refs:
            self._release(keys=[self.key(source, *ref)], args=[token], client=pipe)
        pipe.execute()
