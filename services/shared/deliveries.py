"""Where the notifier keeps its delivery records in Redis, and how the api reads them.

The notifier writes; the api shows an alert's deliveries on its page. Both use these names, so
neither imports the other. Every notification to one contact is a job (`sw:notify:job:<id>`, a
hash) with its attempts (`...:attempts`, a list of JSON objects); `sw:notify:alert-jobs:<alert id>`
lists the jobs that carry an alert, a digest included.
"""

from __future__ import annotations

import json
from typing import cast

import redis

PREFIX = "sw:notify:"
MAX_ATTEMPTS_KEPT = 20


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def attempts_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:attempts"


def alert_jobs_key(alert_id: str) -> str:
    return f"{PREFIX}alert-jobs:{alert_id}"


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def read_deliveries(client: redis.Redis, alert_id: str) -> list[dict]:
    """Every notification that carries the alert: recipient, channel, status, attempts, latency, each attempt."""
    job_ids = sorted(_text(j) for j in cast(set, client.smembers(alert_jobs_key(alert_id))))
    if not job_ids:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(job_key(job_id))
        pipe.lrange(attempts_key(job_id), 0, -1)
    replies = pipe.execute()
    deliveries = []
    for job_id, fields, attempts in zip(job_ids, replies[::2], replies[1::2], strict=True):
        if not fields:
            continue  # expired with its records
        job = {_text(k): _text(v) for k, v in fields.items()}
        deliveries.append({
            "delivery_id": job_id,
            "kind": job.get("kind", ""),
            "recipient": job.get("recipient", ""),
            "channel": job.get("channel", ""),
            "channel_type": job.get("channel_type", ""),
            "reason": job.get("reason", ""),
            "status": job.get("status", ""),
            "attempts": int(job.get("attempts") or 0),
            "created_ms": int(job.get("created_ms") or 0),
            "due_ms": int(job.get("due_ms") or 0),
            "delivered_ms": int(job.get("delivered_ms") or 0) or None,
            "latency_ms": int(job.get("latency_ms") or 0) if job.get("latency_ms") else None,
            "last_error": job.get("last_error", ""),
            "receipt": job.get("receipt", ""),
            "alerts_in_digest": len(json.loads(job["alerts"])) if job.get("alerts") else None,
            "attempt_log": [json.loads(a) for a in attempts],
        })
    deliveries.sort(key=lambda d: (d["created_ms"], d["recipient"], d["channel"]))
    return deliveries
