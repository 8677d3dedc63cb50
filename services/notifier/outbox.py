"""The notifier's outbox in Redis: what is owed to whom, claimed, retried, delivered, held for a digest.

Kafka delivers an alert at least once; the outbox turns that into one notification per alert,
recipient and contact. Each step is one Lua script, so it is atomic however many notifier replicas
run and wherever one is killed:

- `enqueue` (from the consume loop, before the alert's offset is committed): once per alert and
  recipient (`rcpt:<alert>:<recipient>`, kept `keep_days`), a job per contact due now, or the alert
  held for a digest when the recipient's rate limit is spent or their quiet hours hold it.
- `claim` (a dispatcher worker): the contact's earliest due job is leased (its due time moved past
  the lease) before it is sent. A worker killed mid-send leaves the lease to run out, and the job is
  sent again after it: the only way a recipient can get one notification twice is a kill after the
  receiver took the request and before `complete` ran (milliseconds; webhook receivers drop it by its
  delivery id). A notification is never lost: the job stays until delivered or dead-lettered.
- `complete`, `retry`, `defer`, `fail`: the job's outcome, with the attempt appended to its record.
- escalations: a sorted set of (alert, route, level) due times, dropped when the alert is acknowledged.

Times are passed in by the caller's clock (never Redis's), so tests can move time. Keys are built
inside the scripts: this needs one Redis (or a Sentinel pair), not a Redis Cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

import redis

from services.shared.deliveries import MAX_ATTEMPTS_KEPT, PREFIX

_ENQUEUE = """
local P, alert, recipient = ARGV[1], ARGV[2], ARGV[3]
local now, keep, hold_until = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local rate_max, window, digest_after = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local reason = ARGV[10]
local rk = P .. 'rcpt:' .. alert .. ':' .. recipient
if redis.call('EXISTS', rk) == 1 then return 'duplicate' end
local rate = P .. 'rate:' .. recipient
redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window)
local mode, due, hold = 'now', now, ''
if hold_until > 0 then
  mode, due, hold = 'held', hold_until, 'quiet'
elseif redis.call('ZCARD', rate) >= rate_max then
  mode, due, hold = 'held', now + digest_after, 'burst'
end
if mode == 'now' then
  redis.call('ZADD', rate, now, alert)
  redis.call('PEXPIRE', rate, math.ceil(window))
end
local jobs = P .. 'alert-jobs:' .. alert
for i = 11, #ARGV, 2 do
  local channel, ctype = ARGV[i], ARGV[i + 1]
  local jid
  if mode == 'now' then
    jid = alert .. '|' .. channel
    redis.call('HSET', P .. 'job:' .. jid, 'kind', 'alert', 'alert_id', alert, 'recipient', recipient, 'channel', channel,
      'channel_type', ctype, 'reason', reason, 'status', 'queued', 'attempts', 0, 'created_ms', now, 'due_ms', due)
  else
    local held = P .. 'held:' .. channel .. ':' .. hold
    local open = P .. 'digest-open:' .. channel .. ':' .. hold
    redis.call('SADD', held, alert)
    jid = redis.call('GET', open)
    if not jid then
      jid = 'digest|' .. channel .. '|' .. redis.call('INCR', P .. 'digest-seq')
      redis.call('SET', open, jid)
      redis.call('HSET', P .. 'job:' .. jid, 'kind', 'digest', 'recipient', recipient, 'channel', channel, 'channel_type', ctype,
        'reason', (hold == 'quiet' and 'quiet hours' or 'burst over the rate limit'), 'status', 'held', 'attempts', 0,
        'created_ms', now, 'due_ms', due, 'held_key', held, 'open_key', open)
    end
  end
  local zdue = P .. 'due:' .. channel
  -- A digest keeps the due time it was opened with: later held alerts join it, never delay it.
  redis.call('ZADD', zdue, 'NX', due, jid)
  redis.call('ZADD', P .. 'ready', 'LT', redis.call('ZSCORE', zdue, jid), channel)
  redis.call('SADD', jobs, jid)
end
redis.call('PEXPIRE', jobs, keep)
redis.call('SET', rk, mode, 'PX', keep)
return mode
"""

_CLAIM = """
local P, channel, now, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local zdue = P .. 'due:' .. channel
local ids = redis.call('ZRANGEBYSCORE', zdue, '-inf', now, 'LIMIT', 0, 1)
if #ids == 0 then
  local nxt = redis.call('ZRANGE', zdue, 0, 0, 'WITHSCORES')
  if #nxt == 0 then redis.call('ZREM', P .. 'ready', channel) else redis.call('ZADD', P .. 'ready', nxt[2], channel) end
  return false
end
local jid = ids[1]
local job = P .. 'job:' .. jid
if redis.call('EXISTS', job) == 0 then
  redis.call('ZREM', zdue, jid)
  return {jid}
end
redis.call('ZADD', zdue, now + lease, jid)
redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSETNX', job, 'first_try_ms', now)
redis.call('HSET', job, 'status', 'sending', 'lease_until', now + lease)
if redis.call('HGET', job, 'kind') == 'digest' and redis.call('HEXISTS', job, 'alerts') == 0 then
  local held = redis.call('HGET', job, 'held_key')
  local open = redis.call('HGET', job, 'open_key')
  redis.call('HSET', job, 'alerts', cjson.encode(redis.call('SMEMBERS', held)))
  redis.call('DEL', held)
  if redis.call('GET', open) == jid then redis.call('DEL', open) end
end
local fields = redis.call('HGETALL', job)
table.insert(fields, 1, jid)
return fields
"""

# ARGV: prefix, job id, channel, now, keep ms, status, attempt json, then field/value pairs.
_FINISH = """
local P, jid, channel, now, keep, status, attempt = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local lease = ARGV[8]
local job = P .. 'job:' .. jid
local attempts = job .. ':attempts'
-- Only the holder of the current lease records an outcome: a worker whose lease ran out (and whose
-- job another worker has claimed, sent and recorded since) must not undo that.
if redis.call('HGET', job, 'lease_until') ~= lease then return 0 end
redis.call('ZREM', P .. 'due:' .. channel, jid)
redis.call('HSET', job, 'status', status)
for i = 9, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HDEL', job, 'lease_until')
if attempt ~= '' then
  redis.call('RPUSH', attempts, attempt)
  redis.call('LTRIM', attempts, -__MAX_KEPT__, -1)
  redis.call('PEXPIRE', attempts, keep)
end
redis.call('PEXPIRE', job, keep)
redis.call('ZADD', P .. 'ready', now, channel)
return 1
"""

# ARGV: prefix, job id, channel, next due, status, attempts delta, channel-ready time, attempt json, lease, field/value pairs.
_RESCHEDULE = """
local P, jid, channel, due, status = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local delta, ready_at, attempt, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], ARGV[9]
local job = P .. 'job:' .. jid
if redis.call('HGET', job, 'lease_until') ~= lease then return 0 end
redis.call('ZADD', P .. 'due:' .. channel, due, jid)
redis.call('HSET', job, 'status', status, 'due_ms', due)
if delta ~= 0 then redis.call('HINCRBY', job, 'attempts', delta) end
for i = 10, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HDEL', job, 'lease_until')
if attempt ~= '' then
  local attempts = job .. ':attempts'
  redis.call('RPUSH', attempts, attempt)
  redis.call('LTRIM', attempts, -__MAX_KEPT__, -1)
end
redis.call('ZADD', P .. 'ready', ready_at, channel)
return 1
"""

_ACK = """
local P, alert, verdict, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('SET', P .. 'ack:' .. alert, verdict, 'PX', keep)
local of = P .. 'esc-of:' .. alert
local pending = redis.call('SMEMBERS', of)
for _, member in ipairs(pending) do redis.call('ZREM', P .. 'esc', member) end
redis.call('DEL', of)
return #pending
"""

_SCHEDULE_ESCALATION = """
local P, alert, member, due, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('EXISTS', P .. 'ack:' .. alert) == 1 then return 0 end
if redis.call('SISMEMBER', P .. 'esc-fired:' .. alert, member) == 1 then return 0 end
redis.call('ZADD', P .. 'esc', 'NX', due, member)
redis.call('SADD', P .. 'esc-of:' .. alert, member)
redis.call('PEXPIRE', P .. 'esc-of:' .. alert, keep)
return 1
"""

_ESCALATION_DONE = """
local P, alert, member, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('ZREM', P .. 'esc', member)
redis.call('SREM', P .. 'esc-of:' .. alert, member)
redis.call('SADD', P .. 'esc-fired:' .. alert, member)
redis.call('PEXPIRE', P .. 'esc-fired:' .. alert, keep)
return 1
"""


def _s(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    channel: str
    recipient: str
    alert_id: str
    alert_ids: list[str]
    attempts: int
    created_ms: int
    # When it was first claimed: a digest held for hours must not count that as failing.
    first_try_ms: int
    reason: str
    # This claim's lease: the token that lets only this claim record the outcome.
    lease: str = ""

    @classmethod
    def from_fields(cls, job_id: str, fields: dict[str, str]) -> Job:
        kind = fields.get("kind", "alert")
        alert_ids = json.loads(fields["alerts"]) if kind == "digest" and fields.get("alerts") else [fields.get("alert_id", "")]
        # An empty Lua table encodes as {} rather than [].
        alert_ids = sorted(alert_ids) if isinstance(alert_ids, list) else []
        return cls(job_id, kind, fields.get("channel", ""), fields.get("recipient", ""), fields.get("alert_id", ""), alert_ids,
                   int(fields.get("attempts") or 0), int(fields.get("created_ms") or 0), int(fields.get("first_try_ms") or 0), fields.get("reason", ""),
                   fields.get("lease_until", ""))


class Outbox:
    def __init__(self, client: redis.Redis, keep_ms: int, prefix: str = PREFIX) -> None:
        self.redis = client
        self.prefix = prefix
        self.keep_ms = keep_ms
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH.replace("__MAX_KEPT__", str(MAX_ATTEMPTS_KEPT)))
        self._reschedule = client.register_script(_RESCHEDULE.replace("__MAX_KEPT__", str(MAX_ATTEMPTS_KEPT)))
        self._ack = client.register_script(_ACK)
        self._schedule_escalation = client.register_script(_SCHEDULE_ESCALATION)
        self._escalation_done = client.register_script(_ESCALATION_DONE)

    # ---- alerts ---------------------------------------------------------------------------------

    def remember_alert(self, alert_id: str, data: bytes, now_ms: int) -> int:
        """Keep the alert (digests and escalations render it later); returns when it was first seen."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"{self.prefix}alert:{alert_id}", data, px=self.keep_ms)
        pipe.set(f"{self.prefix}seen:{alert_id}", now_ms, nx=True, px=self.keep_ms)
        pipe.get(f"{self.prefix}seen:{alert_id}")
        return int(pipe.execute()[2])

    def alerts(self, alert_ids: list[str]) -> dict[str, bytes]:
        if not alert_ids:
            return {}
        values = self.redis.mget([f"{self.prefix}alert:{a}" for a in alert_ids])
        return {a: v for a, v in zip(alert_ids, cast(list, values), strict=True) if v is not None}

    def enqueue(self, alert_id: str, recipient: str, channels: list[tuple[str, str]], now_ms: int, hold_until_ms: int,
                rate_max: int, window_ms: int, digest_after_ms: int, reason: str) -> str:
        """'now', 'held' (for a digest) or 'duplicate' (this recipient already has the alert)."""
        args: list[str | int] = [self.prefix, alert_id, recipient, now_ms, self.keep_ms, hold_until_ms, rate_max, window_ms, digest_after_ms, reason]
        for channel, channel_type in channels:
            args += [channel, channel_type]
        return _s(self._enqueue(args=args))

    # ---- dispatch -------------------------------------------------------------------------------

    def ready_channels(self, now_ms: int, limit: int = 256) -> list[str]:
        return [_s(c) for c in cast(list, self.redis.zrangebyscore(f"{self.prefix}ready", "-inf", now_ms, start=0, num=limit))]

    def claim(self, channel: str, now_ms: int, lease_ms: int) -> Job | str | None:
        """The channel's earliest due job, leased; None when nothing is due; a job id whose record expired."""
        reply = self._claim(args=[self.prefix, channel, now_ms, lease_ms])
        if not reply:
            return None
        job_id = _s(reply[0])
        if len(reply) == 1:
            return job_id
        values = [_s(v) for v in reply[1:]]
        return Job.from_fields(job_id, dict(zip(values[::2], values[1::2], strict=True)))

    def complete(self, job: Job, now_ms: int, attempt: dict, receipt: str) -> None:
        self._finish(args=[self.prefix, job.job_id, job.channel, now_ms, self.keep_ms, "delivered", json.dumps(attempt), job.lease,
                           "delivered_ms", now_ms, "latency_ms", now_ms - job.created_ms, "receipt", receipt[:300], "last_error", ""])

    def fail(self, job: Job, now_ms: int, attempt: dict, error: str) -> None:
        self._finish(args=[self.prefix, job.job_id, job.channel, now_ms, self.keep_ms, "failed", json.dumps(attempt), job.lease, "last_error", error[:500]])

    def retry(self, job: Job, next_ms: int, attempt: dict, error: str) -> None:
        """Try again at `next_ms`; the contact's other jobs wait as long (its backoff)."""
        self._reschedule(args=[self.prefix, job.job_id, job.channel, next_ms, "retrying", 0, next_ms, json.dumps(attempt), job.lease, "last_error", error[:500]])

    def defer(self, job: Job, next_ms: int, now_ms: int, why: str) -> None:
        """Not an attempt (waiting for the evidence snapshot): the lease is given back, the count undone."""
        self._reschedule(args=[self.prefix, job.job_id, job.channel, next_ms, "waiting", -1, now_ms, "", job.lease, "waiting_for", why])

    # ---- escalations and acknowledgements -----------------------------------------------------

    def acknowledge(self, alert_id: str, verdict: str) -> int:
        """Stop the alert's pending escalations; returns how many were dropped."""
        return int(self._ack(args=[self.prefix, alert_id, verdict, self.keep_ms]))

    def acknowledged(self, alert_id: str) -> bool:
        return bool(self.redis.exists(f"{self.prefix}ack:{alert_id}"))

    def schedule_escalation(self, alert_id: str, route: str, level: int, due_ms: int) -> bool:
        member = escalation_member(alert_id, route, level)
        return bool(self._schedule_escalation(args=[self.prefix, alert_id, member, due_ms, self.keep_ms]))

    def due_escalations(self, now_ms: int, limit: int = 100) -> list[tuple[str, str, int]]:
        members = cast(list, self.redis.zrangebyscore(f"{self.prefix}esc", "-inf", now_ms, start=0, num=limit))
        out = []
        for member in members:
            alert_id, route, level = _s(member).rsplit("|", 2)
            out.append((alert_id, route, int(level)))
        return out

    def escalation_done(self, alert_id: str, route: str, level: int) -> None:
        self._escalation_done(args=[self.prefix, alert_id, escalation_member(alert_id, route, level), self.keep_ms])

    def pending_jobs(self) -> int:
        """Jobs not yet delivered or dead-lettered, over every contact (for the queue gauge)."""
        pipe = self.redis.pipeline(transaction=False)
        channels = [_s(c) for c in cast(list, self.redis.zrange(f"{self.prefix}ready", 0, -1))]
        for channel in channels:
            pipe.zcard(f"{self.prefix}due:{channel}")
        return sum(int(n) for n in pipe.execute()) if channels else 0


def escalation_member(alert_id: str, route: str, level: int) -> str:
    return f"{alert_id}|{route}|{level}"
