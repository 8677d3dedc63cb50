"""Alerts: the filtered, paged list, one alert with its evidence and history, and the live feed."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse

from services.api.alerts import LIVE_CHANNEL, AlertFilter, BadCursor
from services.api.auth import Principal
from services.api.hq.base import AlertId, Hq, ListQuery, session_token
from services.shared.deliveries import read_deliveries


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.get("/v1/alerts")
    async def list_alerts(who: Signed, query: Annotated[ListQuery, Depends()]) -> dict:
        """Newest first by event time; pass `next_cursor` back as `cursor` for the next page."""
        wanted = hq.list_filter(who, query, AlertFilter)
        try:
            items, next_cursor = await asyncio.to_thread(hq.alerts.query, wanted, query.limit, query.cursor)
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        return {"alerts": items, "count": len(items), "next_cursor": next_cursor}

    @router.get("/v1/alerts/stream")
    async def stream(who: Signed, request: Request) -> StreamingResponse:
        """Server-sent events the caller may see: `alert` (a new alert), `status` (a verdict changed an alert's),
        `incident` (an incident opened, took a reason or rose in severity: its view and `change`),
        `incident_status` (its status changed)."""
        # Each feed holds a Redis connection: past the cap a new one is refused at once, not queued.
        if hq.live_streams.active >= hq.live_streams.limit:
            raise HTTPException(503, "too many live feeds open on this api; retry later", headers={"Retry-After": "5"})
        return StreamingResponse(_live_events(hq, who, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.get("/v1/alerts/{alert_id}")
    async def get_alert(alert_id: AlertId, who: Signed, request: Request) -> dict:
        """The alert, its evidence (frames, snapshot, clip, detections), its POS events, verdicts and notifications."""
        view = await asyncio.to_thread(hq.load_alert, who, alert_id)
        manifest = await asyncio.to_thread(hq.read_manifest, view)
        await asyncio.to_thread(hq.record_audit, who, "evidence.view", request, view)
        history = await asyncio.to_thread(hq.alerts.history, alert_id)
        deliveries = await asyncio.to_thread(read_deliveries, hq.redis, alert_id)
        return {**view, "evidence_package": _package_view(alert_id, manifest), "pos_events": (manifest or {}).get("pos_events", []), "history": history,
                "deliveries": deliveries}

    return router


def _package_view(alert_id: str, manifest: dict | None) -> dict | None:
    if manifest is None:
        return None
    base = f"/v1/alerts/{alert_id}/evidence/"
    snapshot, clip = manifest.get("snapshot"), manifest.get("clip")
    return {
        "status": manifest.get("status", "complete"), "missing": manifest.get("missing", []),
        "window_ms": manifest.get("window_ms"),
        "snapshot_url": base + snapshot["name"] if snapshot else None,
        "clip_url": base + clip["name"] if clip else None,
        "frames": [{"sequence": f["sequence"], "capture_time_ms": f["capture_time_ms"], "url": base + f["name"]} for f in manifest.get("frames", [])],
        "detections": snapshot.get("detections") if snapshot else None,
        # A person followed across cameras (checkout bypass, repeat visits): each other camera's frames and clip.
        "other_cameras": [{"camera_id": o.get("camera_id", ""), "window_ms": o.get("window_ms"),
                           "clip_url": base + o["clip"]["name"] if o.get("clip") else None,
                           "frames": [{"sequence": f["sequence"], "capture_time_ms": f["capture_time_ms"], "url": base + f["name"]} for f in o.get("frames", [])]}
                          for o in manifest.get("other_cameras", [])],
    }


def _live_data(hq: Hq, event: dict) -> dict | None:
    """What a live event carries: a new alert's view; an alert's new status; an incident's view and
    what changed (`opened`, `reason`, `escalated`); an incident's new status. None: gone meanwhile."""
    kind = event.get("type")
    if kind in ("alert", "status"):
        view = hq.alerts.view(event["alert_id"])
        if view is None or kind == "alert":
            return view
        return {"alert_id": view["alert_id"], "store_id": view["store_id"], "status": view["status"], "verdict": view["verdict"],
                "incident_id": view["incident_id"]}
    if kind in ("incident", "incident_status"):
        incident = hq.alerts.incidents.view(event["incident_id"])
        if incident is None or kind == "incident":
            return {**incident, "change": event.get("change", "")} if incident is not None else None
        return {"incident_id": incident["incident_id"], "store_id": incident["store_id"], "status": incident["status"]}
    return None


async def _live_events(hq: Hq, who: Principal, request: Request) -> AsyncIterator[bytes]:
    """Relay the live channel to one dashboard, only what its user may see; a comment keeps proxies open.
    Its place among the capped feeds is taken here, where `finally` is sure to give it back (one
    that lost the race since the route's check ends at once)."""
    if hq.live_streams.try_enter() is not None:
        yield b"event: busy\ndata: {}\n\n"
        return
    try:
        client = aioredis.Redis.from_url(hq.redis_url)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(LIVE_CHANNEL)
            yield b": connected\n\n"
            last_ping = time.monotonic()
            while not await request.is_disconnected():
                if time.monotonic() - last_ping >= hq.ping_s:
                    # On a clock, busy or not: a feed outlives neither its session nor its user.
                    last_ping = time.monotonic()
                    if await asyncio.to_thread(hq.directory.principal, session_token(request)) is None:
                        yield b"event: expired\ndata: {}\n\n"
                        return
                    yield b": ping\n\n"
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                event = json.loads(message["data"])
                if not who.may_see(event.get("store_id", "")):
                    continue  # most messages of a chain: not even a lookup
                data = await asyncio.to_thread(_live_data, hq, event)
                if data is None or not who.may_see(data["store_id"]):
                    continue
                yield f"event: {event['type']}\ndata: {json.dumps(data)}\n\n".encode()
        finally:
            await pubsub.aclose()
            await client.aclose()
    finally:
        hq.live_streams.leave()
