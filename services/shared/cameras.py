"""Live camera status in Redis: written by the recorder (which reads every frame), read by the api.

One hash, field = camera id, value = JSON:
    {"store_id", "camera_id",
     "last_frame_ms": capture time of the newest frame or heartbeat,
     "last_seen_ms":  wall clock when the recorder consumed it,
     "fps":           frames with an image per second over the last ~10 s of capture time,
     "heartbeat":     whether the newest message was a heartbeat (motion gate: scene unchanged),
     "zones":         from the newest analysis, per zone id: {"kind", "persons", "objects", "at_ms"}
                      (the api's return assessment asks whether a customer and merchandise are at
                      the counter now)}
Each camera's entry is rewritten at most once a second. A stale `last_seen_ms` means the camera (or
the recorder) stopped; a `last_frame_ms` far behind `last_seen_ms` means the recorder is catching up.
"""

from __future__ import annotations

import json
from typing import Any

import redis

CAMERA_STATUS_HASH = "sw:cameras:status"
STATUS_FIELDS = ("store_id", "camera_id", "last_frame_ms", "last_seen_ms", "fps", "heartbeat")


def encode_status(status: dict[str, Any]) -> str:
    missing = [f for f in STATUS_FIELDS if f not in status]
    if missing:
        raise ValueError(f"camera status lacks {missing}")
    return json.dumps({**{f: status[f] for f in STATUS_FIELDS}, "zones": status.get("zones", {})})


def write_camera_statuses(client: redis.Redis, statuses: list[dict[str, Any]]) -> None:
    """One HSET for all the cameras that changed."""
    if statuses:
        client.hset(CAMERA_STATUS_HASH, mapping={s["camera_id"]: encode_status(s) for s in statuses})


def camera_statuses(client: redis.Redis) -> dict[str, dict]:
    """Every camera's last status, by camera id (entries that are not JSON objects are left out)."""
    raw = client.hgetall(CAMERA_STATUS_HASH)
    result: dict[str, dict] = {}
    for field, value in raw.items():
        camera_id = field.decode() if isinstance(field, bytes) else field
        try:
            status = json.loads(value)
        except ValueError:
            continue
        if isinstance(status, dict):
            result[camera_id] = status
    return result
