"""FastAPI app: the POS gateway (POST /v1/pos/events), the HQ API and the dashboard pages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
from confluent_kafka import KafkaException
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from services.api.hq import Hq, hq_router
from services.api.pages import mount_dashboard
from services.api.pos import PosEventIn, context_errors
from services.shared import topics
from services.shared.evidence import STORE_ERRORS
from services.shared.kafka import produce_and_wait
from services.shared.serde import encode

POS_ACCEPTED = Counter("sw_api_pos_events_total", "POS events by outcome", ["outcome"])


def create_app(hq: Hq, ready: Callable[[], bool], max_clock_skew_s: float = 300.0) -> FastAPI:
    # The OpenAPI document is published at /openapi.json; FastAPI's /docs and /redoc pages load their
    # scripts from a CDN, which store back offices cannot reach, so they are off.
    app = FastAPI(title="ShrinkWatch API", version="0.2.0", docs_url=None, redoc_url=None,
                  description="POS gateway, HQ alerts with evidence, verdicts, statistics, live feed, users and audit.")
    config, producer = hq.config, hq.producer

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"alert store unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    async def storage_down(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"evidence store unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    # OSError, and the S3 client's own errors that s3fs passes through untranslated.
    for error in STORE_ERRORS:
        if issubclass(error, Exception):
            app.add_exception_handler(error, storage_down)

    @app.post("/v1/pos/events", status_code=202, tags=["pos"])
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

    app.include_router(hq_router(hq))
    mount_dashboard(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        ok = await asyncio.to_thread(ready)
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok})

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
