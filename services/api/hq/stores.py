"""The caller's stores, with each camera's status as the evidence recorder last saw it."""

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends

from services.api.auth import Principal
from services.api.hq.base import Hq
from services.shared.cameras import camera_statuses
from services.shared.traffic import store_traffic

# A camera is live when a frame came within this long, down when nothing came for DOWN_AFTER_S.
LIVE_WITHIN_S = 5.0
DOWN_AFTER_S = 30.0


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["stores"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.get("/v1/stores")
    async def stores(who: Signed) -> dict:
        """The caller's stores with each camera's status (from the frames the evidence recorder sees) and,
        where cameras count people across lines, the store's traffic: people in it now, entries per hour."""
        statuses = await asyncio.to_thread(camera_statuses, hq.redis)
        now_ms = time.time() * 1000
        result = []
        for store_id in hq.visible_stores(who):
            store = hq.config.store(store_id)
            cameras = [_camera_view(c.id, statuses.get(c.id), now_ms) for c in store.cameras]
            traffic = await asyncio.to_thread(store_traffic, hq.redis, store, int(now_ms))
            result.append({"store_id": store.id, "name": store.name, "region": store.region, "timezone": store.timezone, "cameras": cameras,
                           "registers": [{"register_id": r.id, "camera_id": r.camera} for r in store.registers], "traffic": traffic})
        return {"stores": result}

    return router


def _camera_view(camera_id: str, status: dict | None, now_ms: float) -> dict:
    if status is None:
        return {"camera_id": camera_id, "status": "unknown", "last_frame_ms": None, "fps": None}
    age_s = (now_ms - status["last_seen_ms"]) / 1000
    state = "down" if age_s > DOWN_AFTER_S else "idle" if status.get("heartbeat") or age_s > LIVE_WITHIN_S else "live"
    return {"camera_id": camera_id, "status": state, "last_frame_ms": status.get("last_frame_ms"), "fps": status.get("fps")}
