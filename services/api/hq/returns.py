"""The return decisions made at the tills, and the return-risk model behind them, for the dashboard.

The store-facing service (services/pos) decides and keeps both in Redis; HQ reads them there.
"""

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from services.api.auth import Principal
from services.api.hq.base import Hq
from services.shared.returndecisions import read_model_card, recent_decisions


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["returns"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.get("/v1/returns/decisions")
    async def return_decisions(who: Signed, store_id: Annotated[str | None, Query(max_length=64)] = None,
                               outcome: Literal["accept", "warn", "deny"] | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
        """Returns assessed at the tills of the caller's stores, newest first, with their outcome, score, reasons and features."""
        stores = set(hq.visible_stores(who, store_id))
        return {"decisions": await asyncio.to_thread(recent_decisions, hq.redis, stores, limit, outcome)}

    @router.get("/v1/returns/model")
    async def return_model(who: Signed) -> dict:
        """The return-risk model the tills use (version, held-out metrics, thresholds, importances), or why the rules decide."""
        card = await asyncio.to_thread(read_model_card, hq.redis)
        return {"return": card, "scored_by": f"model {card['version']}" if card.get("loaded") else "rules"}

    return router
