"""The return decisions made at the tills, and the return-risk model behind them, for the dashboard."""

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from services.api.auth import Principal
from services.api.hq.base import Hq
from services.api.returns import ReturnDesk, model_card


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["returns"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    def desk() -> ReturnDesk:
        if hq.returns is None:
            raise HTTPException(404, "return authorization is not running on this api")
        return hq.returns

    @router.get("/v1/returns/decisions")
    async def return_decisions(who: Signed, store_id: Annotated[str | None, Query(max_length=64)] = None,
                               outcome: Literal["accept", "warn", "deny"] | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
        """Returns assessed at the tills of the caller's stores, newest first, with their outcome, score and reasons."""
        stores = set(hq.visible_stores(who, store_id))
        return {"decisions": await asyncio.to_thread(desk().recent, stores, limit, outcome)}

    @router.get("/v1/returns/model")
    async def return_model(who: Signed) -> dict:
        """The return-risk model in use (version, held-out metrics, thresholds, importances), or why the rules decide."""
        card = model_card(desk().model_result, "return")
        return {"return": card, "scored_by": f"model {card['version']}" if card["loaded"] else "rules"}

    return router
