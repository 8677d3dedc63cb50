"""FastAPI app: the POS gateway (POST /v1/pos/events) and alert queries (GET /v1/alerts)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from confluent_kafka import KafkaException, Producer
from fastapi import FastAPI, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from services.api.alerts import AlertStore
from services.api.pos import PosEventIn, context_errors
from services.shared import topics
from services.shared.kafka import produce_and_wait
from services.shared.serde import encode
from services.shared.storeconfig import StoreConfig

POS_ACCEPTED = Counter("sw_api_pos_events_total", "POS events by outcome", ["outcome"])


def create_app(config: StoreConfig, producer: Producer, alerts: AlertStore, ready: Callable[[], bool], max_clock_skew_s: float = 300.0) -> FastAPI:
    app = FastAPI(title="ShrinkWatch API", version="0.1.0")

    @app.post("/v1/pos/events", status_code=202)
    async def post_pos_event(event: PosEventIn) -> JSONResponse:
        """Validate a POS event and publish it to sw.pos.v1; 202 once the broker has it."""
        errors = context_errors(event, config, max_clock_skew_s)
        if errors:
            POS_ACCEPTED.labels("rejected").inc()
            return JSONResponse(status_code=422, content={"detail": errors})
        message = event.to_proto()
        key = f"{message.store_id}:{message.register_id}"
        try:
            delivered = await asyncio.to_thread(produce_and_wait, producer, topics.POS, key, encode(message))
        except KafkaException as exc:
            POS_ACCEPTED.labels("unavailable").inc()
            return JSONResponse(status_code=503, content={"detail": f"event not stored, retry: {exc}"}, headers={"Retry-After": "1"})
        POS_ACCEPTED.labels("accepted").inc()
        return JSONResponse(status_code=202, content={
            "event_id": message.event_id, "topic": delivered.topic(), "partition": delivered.partition(), "offset": delivered.offset(),
        })

    @app.get("/v1/alerts")
    async def list_alerts(
        store_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict:
        """Newest first (by event time)."""
        items = await asyncio.to_thread(alerts.latest, store_id, limit)
        return {"alerts": items, "count": len(items)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok = await asyncio.to_thread(ready)
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
