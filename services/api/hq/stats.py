"""Statistics: alerts per day, store and rule, and how often each one's verdicts confirmed it."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.api.auth import Principal
from services.api.hq.base import Hq, RegionFilter, StoreIdFilter


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["statistics"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.get("/v1/stats")
    async def stats(
        who: Signed,
        store_id: StoreIdFilter = None,
        region: RegionFilter = None,
        days: Annotated[int, Query(ge=1, le=90)] = 14,
    ) -> dict:
        """Alerts per day per store and per rule, and each one's precision from the verdicts given."""
        stores = hq.visible_stores(who, store_id, region)
        return await asyncio.to_thread(hq.alerts.stats, stores, days)

    return router
