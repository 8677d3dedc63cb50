"""What every HQ route shares: the `Hq` it works with, who is asking (the session and role
dependencies), and which stores and alerts they may see.

No `from __future__ import annotations` in this package: FastAPI reads the routes' annotations at
definition, and the dependencies in them (`Depends(hq.principal)`) belong to one `Hq`.
"""

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

import redis
from confluent_kafka import Producer
from fastapi import Depends, HTTPException, Path, Query, Request

from services.api.alerts import AlertStore
from services.api.audit import AuditEntry, AuditLog
from services.api.auth import COOKIE, Directory, Principal, Role
from services.api.index import ListFilter
from services.shared.evidence import EvidenceStore
from services.shared.httpguard import Admission, bearer_token
from services.shared.rulesconfig import RULE_NAMES
from services.shared.storeconfig import StoreConfig

AlertId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", max_length=128)]
IncidentId = Annotated[str, Path(pattern=r"^in-[0-9a-f]{24}$", max_length=27)]
# The filters of the routes that cover several stores (`visible_stores`).
StoreIdFilter = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
RegionFilter = Annotated[str | None, Query(max_length=64)]
Filter = TypeVar("Filter", bound=ListFilter)


@dataclass
class ListQuery:
    """The query of the alert and incident lists (a dependency: `Annotated[ListQuery, Depends()]`)."""

    store_id: StoreIdFilter = None
    region: RegionFilter = None
    rule: Annotated[str | None, Query(max_length=64)] = None
    severity: Annotated[Literal["low", "medium", "high", "critical"] | None, Query()] = None
    status: Annotated[Literal["new", "acknowledged", "confirmed", "dismissed"] | None, Query()] = None
    since_ms: Annotated[int | None, Query(ge=0, le=10**14)] = None
    until_ms: Annotated[int | None, Query(ge=0, le=10**14)] = None
    limit: Annotated[int, Query(ge=1, le=200)] = 50
    cursor: Annotated[str | None, Query(max_length=300)] = None


def session_token(request: Request) -> str:
    """The session token: `Authorization: Bearer` (scripts) before the cookie (pages)."""
    token = bearer_token(request)
    return request.cookies.get(COOKIE, "") if token is None else token


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


@dataclass
class Hq:
    """What the HQ routes work with, and the checks each of them makes with it."""

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
    # Password checks at once (argon2id: 64 MiB and tens of ms each), and live feeds at once.
    logins: Admission = field(default_factory=lambda: Admission(2, 1))
    live_streams: Admission = field(default_factory=lambda: Admission(200))

    @cached_property
    def store_ids(self) -> list[str]:
        return [s.id for s in self.config.stores]

    async def principal(self, request: Request) -> Principal:
        """The dependency of every signed-in route: the session's user, or 401."""
        token = session_token(request)
        if not token or len(token) > 256:
            raise HTTPException(401, "sign in first: no session", headers={"WWW-Authenticate": "Bearer"})
        who = await asyncio.to_thread(self.directory.principal, token)
        if who is None:
            raise HTTPException(401, "session expired or unknown: sign in again", headers={"WWW-Authenticate": "Bearer"})
        return who

    def role(self, *allowed: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
        """A dependency for a route only some roles may use: the signed-in user, or 403."""
        async def check(who: Annotated[Principal, Depends(self.principal)]) -> Principal:
            if who.role not in allowed:
                raise HTTPException(403, f"role {who.role} may not do this")
            return who
        return check

    def record_audit(self, who: Principal | None, action: str, request: Request, alert: dict | None = None, detail: str = "", user: str = "") -> None:
        self.audit.record(AuditEntry(user=who.username if who else user, role=who.role if who else "", action=action,
                                     alert_id=alert["alert_id"] if alert else "", store_id=alert["store_id"] if alert else "",
                                     detail=detail, ip=client_ip(request)))

    def visible_stores(self, who: Principal, store_id: str | None = None, region: str | None = None) -> list[str]:
        """The stores a request may cover; 404 for a named store the caller may not see."""
        if store_id is not None and (store_id not in self.store_ids or not who.may_see(store_id)):
            raise HTTPException(404, f"no store {store_id}")
        stores = [s for s in self.store_ids if who.may_see(s) and (store_id is None or s == store_id)]
        if region is not None:
            stores = [s for s in stores if self.config.store(s).region == region]
        return stores

    def list_filter(self, who: Principal, query: ListQuery, kind: type[Filter]) -> Filter:
        """A list's filter: what the caller asked for within what they may see (`stores` None: every
        store, unasked and unrestricted); 422 for an unknown rule, 404 for a store they may not see."""
        if query.rule is not None and query.rule not in RULE_NAMES:
            raise HTTPException(422, f"unknown rule {query.rule!r}; rules: {', '.join(RULE_NAMES)}")
        scoped = query.store_id is not None or query.region is not None or not who.every_store
        stores = frozenset(self.visible_stores(who, query.store_id, query.region)) if scoped else None
        return kind(stores=stores, rule=query.rule, severity=query.severity, status=query.status, since_ms=query.since_ms, until_ms=query.until_ms)

    def load_alert(self, who: Principal, alert_id: str) -> dict:
        view = self.alerts.view(alert_id)
        if view is None or not who.may_see(view["store_id"]):
            raise HTTPException(404, f"no alert {alert_id}")
        return view

    def load_incident(self, who: Principal, incident_id: str) -> dict:
        view = self.alerts.incidents.view(incident_id)
        if view is None or not who.may_see(view["store_id"]):
            raise HTTPException(404, f"no incident {incident_id}")
        return view

    def read_manifest(self, view: dict) -> dict | None:
        """The alert's evidence manifest; None when there is none or it cannot be read as one."""
        try:
            return self.evidence.manifest(view["store_id"], view["alert_id"])
        except ValueError:
            return None
