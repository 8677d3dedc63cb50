"""HQ routes: sign-in, alerts with filters and evidence, verdicts, the live feed, statistics, stores,
users and the audit log. Every route checks the caller's role and stores; an alert or store outside
them answers 404, as if it did not exist, so a store manager learns nothing of other stores.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations at definition,
and the dependency aliases (Signed, Admin) are local to `hq_router`.
"""


import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal, cast

import redis
import redis.asyncio as aioredis
from confluent_kafka import KafkaException, Producer
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.api.alerts import LIVE_CHANNEL, VERDICT_VALUES, AlertFilter, AlertStore, BadCursor, VerdictName
from services.api.audit import ACTIONS, AuditEntry, AuditLog
from services.api.auth import COOKIE, USERNAME, Directory, LoginLocked, Principal, Role, UserExists, UserRecord, hash_password
from services.api.returns import ReturnDesk, model_card
from services.shared import topics
from services.shared.cameras import camera_statuses
from services.shared.contracts.feedback_pb2 import Feedback
from services.shared.deliveries import read_deliveries
from services.shared.evidence import EvidenceNotFound, EvidenceStore, manifest_files
from services.shared.kafka import produce_and_wait
from services.shared.rulesconfig import RULE_NAMES
from services.shared.serde import encode
from services.shared.storeconfig import StoreConfig

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ALERT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_EVIDENCE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$"
# A camera is live when a frame came within this long, down when nothing came for DOWN_AFTER_S.
LIVE_WITHIN_S = 5.0
DOWN_AFTER_S = 30.0
FILE_AUDIT_WINDOW_S = 600


@dataclass
class Hq:
    """What the HQ routes work with."""

    config: StoreConfig
    alerts: AlertStore
    directory: Directory
    audit: AuditLog
    evidence: EvidenceStore
    producer: Producer
    redis: redis.Redis
    redis_url: str
    cookie_secure: bool = False
    ping_s: float = 15.0
    # Return authorization (decisions and the risk model); None where the api runs without it.
    returns: ReturnDesk | None = None


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(min_length=1, max_length=256)


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: VerdictName
    note: str = Field("", max_length=1000)


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME)
    password: SecretStr = Field(min_length=12, max_length=256)
    role: Role
    stores: list[str] = Field(default_factory=list, max_length=1000)
    display_name: str = Field("", max_length=128)


def _token(request: Request) -> str:
    """The session token: `Authorization: Bearer` (scripts) before the cookie (pages)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE, "")


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def hq_router(hq: Hq) -> APIRouter:
    router = APIRouter()
    store_ids = [s.id for s in hq.config.stores]

    async def principal(request: Request) -> Principal:
        token = _token(request)
        if not token or len(token) > 256:
            raise HTTPException(401, "sign in first: no session", headers={"WWW-Authenticate": "Bearer"})
        who = await asyncio.to_thread(hq.directory.principal, token)
        if who is None:
            raise HTTPException(401, "session expired or unknown: sign in again", headers={"WWW-Authenticate": "Bearer"})
        return who

    def roles(*allowed: Role):
        async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if who.role not in allowed:
                raise HTTPException(403, f"role {who.role} may not do this")
            return who
        return check

    Signed = Annotated[Principal, Depends(principal)]
    Admin = Annotated[Principal, Depends(roles("admin"))]
    AlertId = Annotated[str, Path(pattern=_ALERT_ID, max_length=128)]

    def audit(who: Principal | None, action: str, request: Request, alert: dict | None = None, detail: str = "", user: str = "") -> None:
        hq.audit.record(AuditEntry(user=who.username if who else user, role=who.role if who else "", action=action,
                                   alert_id=alert["alert_id"] if alert else "", store_id=alert["store_id"] if alert else "",
                                   detail=detail, ip=_client_ip(request)))

    def visible_stores(who: Principal, store_id: str | None = None, region: str | None = None) -> list[str]:
        """The stores a request may cover; 404 for a named store the caller may not see."""
        if store_id is not None and (store_id not in store_ids or not who.may_see(store_id)):
            raise HTTPException(404, f"no store {store_id}")
        stores = [s for s in store_ids if who.may_see(s) and (store_id is None or s == store_id)]
        if region is not None:
            stores = [s for s in stores if hq.config.store(s).region == region]
        return stores

    def load_alert(who: Principal, alert_id: str) -> dict:
        view = hq.alerts.view(alert_id)
        if view is None or not who.may_see(view["store_id"]):
            raise HTTPException(404, f"no alert {alert_id}")
        return view

    def read_manifest(view: dict) -> dict | None:
        """The alert's evidence manifest; None when there is none or it cannot be read as one."""
        try:
            return hq.evidence.manifest(view["store_id"], view["alert_id"])
        except ValueError:
            return None

    # ---- sign-in -------------------------------------------------------------------------------

    @router.post("/v1/auth/login", tags=["auth"])
    async def login(body: LoginIn, request: Request) -> JSONResponse:
        """Sign in; sets the session cookie and returns the same token for scripts (Bearer)."""
        try:
            record = await asyncio.to_thread(hq.directory.authenticate, body.username, body.password.get_secret_value(), _client_ip(request))
        except LoginLocked as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(hq.directory.lockout_s)}) from None
        if record is None:
            await asyncio.to_thread(audit, None, "sign_in_failed", request, None, "", body.username[:64])
            raise HTTPException(401, "wrong user name or password")
        token, expires_ms = await asyncio.to_thread(hq.directory.open_session, record)
        who = Principal.of(record)
        await asyncio.to_thread(audit, who, "sign_in", request)
        response = JSONResponse({**who.public(), "token": token, "expires_ms": expires_ms})
        response.set_cookie(COOKIE, token, max_age=hq.directory.session_ttl_s, httponly=True, samesite="strict", secure=hq.cookie_secure, path="/")
        return response

    @router.post("/v1/auth/logout", status_code=204, tags=["auth"])
    async def logout(who: Signed, request: Request) -> Response:
        await asyncio.to_thread(hq.directory.close_session, _token(request))
        await asyncio.to_thread(audit, who, "sign_out", request)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/v1/auth/me", tags=["auth"])
    async def me(who: Signed) -> dict:
        return who.public()

    # ---- alerts --------------------------------------------------------------------------------

    @router.get("/v1/alerts", tags=["alerts"])
    async def list_alerts(
        who: Signed,
        store_id: Annotated[str | None, Query(pattern=_ID)] = None,
        region: Annotated[str | None, Query(max_length=64)] = None,
        rule: Annotated[str | None, Query(max_length=64)] = None,
        severity: Annotated[Literal["low", "medium", "high", "critical"] | None, Query()] = None,
        status: Annotated[Literal["new", "acknowledged", "confirmed", "dismissed"] | None, Query()] = None,
        since_ms: Annotated[int | None, Query(ge=0, le=10**14)] = None,
        until_ms: Annotated[int | None, Query(ge=0, le=10**14)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=300)] = None,
    ) -> dict:
        """Newest first by event time; pass `next_cursor` back as `cursor` for the next page."""
        if rule is not None and rule not in RULE_NAMES:
            raise HTTPException(422, f"unknown rule {rule!r}; rules: {', '.join(RULE_NAMES)}")
        scoped = store_id is not None or region is not None or not who.every_store
        stores = frozenset(visible_stores(who, store_id, region)) if scoped else None
        wanted = AlertFilter(stores=stores, rule=rule, severity=severity, status=status, since_ms=since_ms, until_ms=until_ms)
        try:
            items, next_cursor = await asyncio.to_thread(hq.alerts.query, wanted, limit, cursor)
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        return {"alerts": items, "count": len(items), "next_cursor": next_cursor}

    @router.get("/v1/alerts/stream", tags=["alerts"])
    async def stream(who: Signed, request: Request) -> StreamingResponse:
        """Server-sent events: `alert` for each new alert the caller may see, `status` when a verdict changes one."""
        return StreamingResponse(_live_events(hq, who, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.get("/v1/alerts/{alert_id}", tags=["alerts"])
    async def get_alert(alert_id: AlertId, who: Signed, request: Request) -> dict:
        """The alert, its evidence (frames, snapshot, clip, detections), its POS events, verdicts and notifications."""
        view = await asyncio.to_thread(load_alert, who, alert_id)
        manifest = await asyncio.to_thread(read_manifest, view)
        await asyncio.to_thread(audit, who, "evidence.view", request, view)
        history = await asyncio.to_thread(hq.alerts.history, alert_id)
        deliveries = await asyncio.to_thread(read_deliveries, hq.redis, alert_id)
        return {**view, "evidence_package": _package_view(alert_id, manifest), "pos_events": (manifest or {}).get("pos_events", []), "history": history,
                "deliveries": deliveries}

    @router.get("/v1/alerts/{alert_id}/evidence/{name:path}", tags=["alerts"])
    async def evidence_file(alert_id: AlertId, name: str, who: Signed, request: Request) -> Response:
        """One file of the alert's evidence (snapshot, frame, clip), by the name its package lists."""
        view = await asyncio.to_thread(load_alert, who, alert_id)
        if not re.match(_EVIDENCE_NAME, name) or ".." in name:
            raise HTTPException(404, f"no evidence file {name!r}")
        manifest = await asyncio.to_thread(read_manifest, view)
        if manifest is None or name not in manifest_files(manifest):
            raise HTTPException(404, f"no evidence file {name!r} for alert {alert_id}")
        try:
            data = await asyncio.to_thread(hq.evidence.read, view["store_id"], alert_id, name)
        except (EvidenceNotFound, ValueError):
            raise HTTPException(404, f"evidence file {name!r} is gone (retention)") from None
        first = await asyncio.to_thread(hq.redis.set, f"sw:audit:file-seen:{who.username}:{alert_id}", b"1", nx=True, ex=FILE_AUDIT_WINDOW_S)
        if first:
            await asyncio.to_thread(audit, who, "evidence.file", request, view, name)
        media = "image/jpeg" if name.endswith(".jpg") else "video/x-msvideo" if name.endswith(".avi") else "application/octet-stream"
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/v1/alerts/{alert_id}/export", tags=["alerts"])
    async def export(alert_id: AlertId, who: Annotated[Principal, Depends(roles("admin", "hq_analyst", "store_manager"))], request: Request) -> Response:
        """A zip for a case file: frames, snapshot, clip, POS events, the alert, its verdicts, notifications and audit trail."""
        view = await asyncio.to_thread(load_alert, who, alert_id)
        await asyncio.to_thread(audit, who, "evidence.export", request, view)
        trail = await asyncio.to_thread(hq.audit.for_alert, alert_id)
        history = await asyncio.to_thread(hq.alerts.history, alert_id)
        deliveries = await asyncio.to_thread(read_deliveries, hq.redis, alert_id)
        extra = {"alert.json": json.dumps(view, indent=2).encode(), "audit.json": json.dumps(trail, indent=2).encode(),
                 "verdicts.json": json.dumps(history, indent=2).encode(), "notifications.json": json.dumps(deliveries, indent=2).encode()}
        try:
            data = await asyncio.to_thread(hq.evidence.package, view["store_id"], alert_id, extra)
        except (EvidenceNotFound, ValueError):
            raise HTTPException(404, f"no evidence is kept for alert {alert_id} (never recorded, or past its store's retention)") from None
        return Response(data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="evidence-{alert_id}.zip"'})

    @router.post("/v1/alerts/{alert_id}/verdict", tags=["alerts"])
    async def verdict(alert_id: AlertId, body: VerdictIn, who: Signed, request: Request) -> dict:
        """Acknowledge, confirm or dismiss (false alarm); published to sw.feedback.v1 for the rules and the notifier."""
        if who.role == "officer" and body.verdict != "acknowledged":
            raise HTTPException(403, "officers acknowledge alerts; confirming or dismissing is for store managers and HQ")
        view = await asyncio.to_thread(load_alert, who, alert_id)
        feedback = Feedback(alert_id=alert_id, store_id=view["store_id"], verdict=VERDICT_VALUES[body.verdict],  # type: ignore[arg-type]
                            user=who.username, time_ms=int(time.time() * 1000), comment=body.note, rule=view["rule"])
        try:
            await asyncio.to_thread(produce_and_wait, hq.producer, topics.FEEDBACK, view["store_id"], encode(feedback))
        except KafkaException as exc:
            raise HTTPException(503, f"verdict not stored, retry: {exc}", headers={"Retry-After": "1"}) from None
        await asyncio.to_thread(hq.alerts.apply_feedback, feedback)
        await asyncio.to_thread(audit, who, "verdict", request, view, f"{body.verdict}: {body.note}")
        return cast(dict, await asyncio.to_thread(hq.alerts.view, alert_id))

    # ---- statistics and stores -----------------------------------------------------------------

    @router.get("/v1/stats", tags=["statistics"])
    async def stats(
        who: Signed,
        store_id: Annotated[str | None, Query(pattern=_ID)] = None,
        region: Annotated[str | None, Query(max_length=64)] = None,
        days: Annotated[int, Query(ge=1, le=90)] = 14,
    ) -> dict:
        """Alerts per day per store and per rule, and each one's precision from the verdicts given."""
        stores = visible_stores(who, store_id, region)
        return await asyncio.to_thread(hq.alerts.stats, stores, days)

    def desk() -> ReturnDesk:
        if hq.returns is None:
            raise HTTPException(404, "return authorization is not running on this api")
        return hq.returns

    @router.get("/v1/returns/decisions", tags=["returns"])
    async def return_decisions(who: Signed, store_id: Annotated[str | None, Query(max_length=64)] = None,
                               outcome: Literal["accept", "warn", "deny"] | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
        """Returns assessed at the tills of the caller's stores, newest first, with their outcome, score and reasons."""
        stores = set(visible_stores(who, store_id))
        return {"decisions": await asyncio.to_thread(desk().recent, stores, limit, outcome)}

    @router.get("/v1/returns/model", tags=["returns"])
    async def return_model(who: Signed) -> dict:
        """The return-risk model in use (version, held-out metrics, thresholds, importances), or why the rules decide."""
        card = model_card(desk().model_result, "return")
        return {"return": card, "scored_by": f"model {card['version']}" if card["loaded"] else "rules"}

    @router.get("/v1/stores", tags=["stores"])
    async def stores(who: Signed) -> dict:
        """The caller's stores with each camera's status (from the frames the evidence recorder sees)."""
        statuses = await asyncio.to_thread(camera_statuses, hq.redis)
        now_ms = time.time() * 1000
        result = []
        for store_id in visible_stores(who):
            store = hq.config.store(store_id)
            cameras = [_camera_view(c.id, statuses.get(c.id), now_ms) for c in store.cameras]
            result.append({"store_id": store.id, "name": store.name, "region": store.region, "timezone": store.timezone, "cameras": cameras,
                           "registers": [{"register_id": r.id, "camera_id": r.camera} for r in store.registers]})
        return {"stores": result}

    # ---- admin ---------------------------------------------------------------------------------

    @router.get("/v1/audit", tags=["admin"])
    async def audit_log(
        who: Admin,
        user: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=32)] = None,
        alert_id: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
    ) -> dict:
        """Append-only: every evidence view, export, verdict, sign-in and user change, newest first."""
        if action is not None and action not in ACTIONS:
            raise HTTPException(422, f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")
        try:
            entries, next_cursor = await asyncio.to_thread(hq.audit.query, user or "", action or "", alert_id or "", cursor, limit)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"entries": entries, "next_cursor": next_cursor}

    @router.get("/v1/users", tags=["admin"])
    async def users(who: Admin) -> dict:
        listed = await asyncio.to_thread(hq.directory.users)
        return {"users": [{"username": u.username, "role": u.role, "stores": u.stores, "display_name": u.display_name, "source": source} for u, source in listed]}

    @router.post("/v1/users", status_code=201, tags=["admin"])
    async def create_user(body: UserIn, who: Admin, request: Request) -> dict:
        unknown = sorted(set(body.stores) - set(store_ids))
        if unknown:
            raise HTTPException(422, f"stores not in the store config: {unknown}")
        if body.role == "store_manager" and not body.stores:
            raise HTTPException(422, "a store manager needs at least one store")
        password_hash = await asyncio.to_thread(hash_password, body.password.get_secret_value())
        record = UserRecord(username=body.username, role=body.role, stores=body.stores, display_name=body.display_name, password_hash=SecretStr(password_hash))
        try:
            await asyncio.to_thread(hq.directory.add_user, record)
        except UserExists:
            raise HTTPException(409, f"user {body.username} exists already") from None
        await asyncio.to_thread(audit, who, "user.create", request, None, f"{body.username} as {body.role}")
        return {"username": record.username, "role": record.role, "stores": record.stores, "display_name": record.display_name, "source": "api"}

    @router.delete("/v1/users/{username}", status_code=204, tags=["admin"])
    async def delete_user(username: Annotated[str, Path(max_length=64)], who: Admin, request: Request) -> Response:
        if username in hq.directory.file_users:
            raise HTTPException(409, f"user {username} comes from the users file; change it there")
        if not await asyncio.to_thread(hq.directory.remove_user, username):
            raise HTTPException(404, f"no user {username}")
        await asyncio.to_thread(audit, who, "user.delete", request, None, username)
        return Response(status_code=204)

    return router


def _camera_view(camera_id: str, status: dict | None, now_ms: float) -> dict:
    if status is None:
        return {"camera_id": camera_id, "status": "unknown", "last_frame_ms": None, "fps": None}
    age_s = (now_ms - status["last_seen_ms"]) / 1000
    state = "down" if age_s > DOWN_AFTER_S else "idle" if status.get("heartbeat") or age_s > LIVE_WITHIN_S else "live"
    return {"camera_id": camera_id, "status": state, "last_frame_ms": status.get("last_frame_ms"), "fps": status.get("fps")}


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
    }


async def _live_events(hq: Hq, who: Principal, request: Request) -> AsyncIterator[bytes]:
    """Relay the live channel to one dashboard, only what its user may see; a comment keeps proxies open."""
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
                if await asyncio.to_thread(hq.directory.principal, _token(request)) is None:
                    yield b"event: expired\ndata: {}\n\n"
                    return
                yield b": ping\n\n"
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            event = json.loads(message["data"])
            if not who.may_see(event.get("store_id", "")):
                continue  # most messages of a chain: not even a lookup
            view = await asyncio.to_thread(hq.alerts.view, event["alert_id"])
            if view is None or not who.may_see(view["store_id"]):
                continue
            data = view if event["type"] == "alert" else {"alert_id": view["alert_id"], "status": view["status"], "verdict": view["verdict"]}
            yield f"event: {event['type']}\ndata: {json.dumps(data)}\n\n".encode()
    finally:
        await pubsub.aclose()
        await client.aclose()
