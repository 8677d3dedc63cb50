"""Each POS event is published once per source, however often (or however concurrently) it is sent.

Before producing, a request claims each event id with SET NX of a short-lived "publishing" marker;
once the broker has acknowledged the event, the marker becomes a long-lived "published" record with
where it went. A failure gives the claim back (only the claimer's own marker, compared in Lua), so
a retry can publish. A second request for an id being published waits for the first to finish and
answers with its result. A crash between the broker's acknowledgement and the record leaves the
claim to expire; a retry after that publishes again (at least once, never lost), and downstream
dedupes on the event id.
"""

from __future__ import annotations

import json
import time
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


class Busy(RuntimeError):
    """Another request is still publishing these events after the wait; answer 503 and let the client retry."""


class Dedupe:
    def __init__(self, client: redis.Redis, ttl_s: int, wait_s: float = 15.0, poll_s: float = 0.05) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def key(source: str, event_id: str) -> str:
        return f"{PREFIX}{source}:{event_id}"

    def claim(self, source: str, event_ids: Sequence[str], hold_s: int) -> tuple[str, dict[str, dict | None]]:
        """Claim the ids for `hold_s` seconds. Returns this claim's token and, per id, None when this
        request holds it now (publish it) or where it was already published (a duplicate)."""
        token = "publishing:" + uuid.uuid4().hex
        outcome: dict[str, dict | None] = {}
        waiting = list(dict.fromkeys(event_ids))
        deadline = time.monotonic() + self.wait_s
        while waiting:
            pipe = self.redis.pipeline(transaction=False)
            for event_id in waiting:
                pipe.set(self.key(source, event_id), token, nx=True, ex=hold_s)
            taken = pipe.execute()
            held_elsewhere = [event_id for event_id, ok in zip(waiting, taken, strict=True) if not ok]
            outcome.update({event_id: None for event_id, ok in zip(waiting, taken, strict=True) if ok})
            if not held_elsewhere:
                break
            values = cast(list[bytes | None], self.redis.mget([self.key(source, event_id) for event_id in held_elsewhere]))
            waiting = []
            for event_id, value in zip(held_elsewhere, values, strict=True):
                if value is not None and value.startswith(_PUBLISHED):
                    outcome[event_id] = json.loads(value[len(_PUBLISHED):])
                else:
                    # Being published by another request (or just given back): look again shortly.
                    waiting.append(event_id)
            if waiting:
                if time.monotonic() > deadline:
                    self.release(source, token, [event_id for event_id, where in outcome.items() if where is None])
                    raise Busy(f"{len(waiting)} event(s) are being published by another request; retry")
                time.sleep(self.poll_s)
        return token, outcome

    def published(self, source: str, where: dict[str, dict]) -> None:
        """Record acknowledged events for `ttl_s`: a later copy is answered as a duplicate."""
        pipe = self.redis.pipeline(transaction=False)
        for event_id, location in where.items():
            pipe.set(self.key(source, event_id), _PUBLISHED + json.dumps(location).encode(), ex=self.ttl_s)
        pipe.execute()

    def release(self, source: str, token: str, event_ids: Sequence[str]) -> None:
        """Give back this claim's markers (not another request's) so a retry can publish."""
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            self._release(keys=[self.key(source, event_id)], args=[token], client=pipe)
        pipe.execute()
