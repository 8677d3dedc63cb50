"""Verdicts on an alert (acknowledge, confirm, dismiss): published to sw.feedback.v1 for the rules and the notifier."""

import asyncio
import time
from typing import Annotated, cast

from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from services.api.alerts import VERDICT_VALUES, VerdictName
from services.api.auth import Principal
from services.api.hq.base import AlertId, Hq
from services.shared import topics
from services.shared.contracts.feedback_pb2 import Feedback
from services.shared.kafka import produce_and_wait
from services.shared.serde import encode


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: VerdictName
    note: str = Field("", max_length=1000)


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["alerts"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.post("/v1/alerts/{alert_id}/verdict")
    async def verdict(alert_id: AlertId, body: VerdictIn, who: Signed, request: Request) -> dict:
        """Acknowledge, confirm or dismiss (false alarm); published to sw.feedback.v1 for the rules and the notifier."""
        if who.role == "officer" and body.verdict != "acknowledged":
            raise HTTPException(403, "officers acknowledge alerts; confirming or dismissing is for store managers and HQ")
        view = await asyncio.to_thread(hq.load_alert, who, alert_id)
        feedback = Feedback(alert_id=alert_id, store_id=view["store_id"], verdict=VERDICT_VALUES[body.verdict],  # type: ignore[arg-type]
                            user=who.username, time_ms=int(time.time() * 1000), comment=body.note, rule=view["rule"])
        try:
            await asyncio.to_thread(produce_and_wait, hq.producer, topics.FEEDBACK, view["store_id"], encode(feedback))
        except KafkaException as exc:
            raise HTTPException(503, f"verdict not stored, retry: {exc}", headers={"Retry-After": "1"}) from None
        await asyncio.to_thread(hq.alerts.apply_feedback, feedback)
        await asyncio.to_thread(hq.record_audit, who, "verdict", request, view, f"{body.verdict}: {body.note}")
        return cast(dict, await asyncio.to_thread(hq.alerts.view, alert_id))

    return router
