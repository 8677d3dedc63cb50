"""HQ routes: sign-in, alerts with filters and evidence, verdicts, incidents, the live feed, statistics, stores,
users and the audit log, one module per resource. Every route checks the caller's role and stores
(base.py); an alert or store outside them answers 404, as if it did not exist, so a store manager
learns nothing of other stores.
"""

from fastapi import APIRouter

from services.api.hq import admin, alerts, auth, evidence, incidents, returns, stats, stores, verdicts
from services.api.hq.base import Hq

__all__ = ["Hq", "hq_router"]


def hq_router(hq: Hq) -> APIRouter:
    """Every HQ route. The order is the OpenAPI document's, and the match order: `/v1/alerts/stream`
    before `/v1/alerts/{alert_id}`."""
    router = APIRouter()
    for resource_routes in (auth.routes, alerts.routes, evidence.routes, verdicts.routes, incidents.routes, stats.routes, returns.routes, stores.routes, admin.routes):
        router.include_router(resource_routes(hq))
    return router
