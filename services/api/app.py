"""FastAPI app: the POS gateway (posgateway/: JSON, POSLog, Shopify, Square), the HQ API and the dashboard pages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.hq import Hq, hq_router
from services.api.pages import mount_dashboard
from services.api.posgateway.routes import PosGateway, openapi_schemas, pos_router
from services.api.returns import returns_router
from services.shared.evidence import STORE_ERRORS


def create_app(hq: Hq, ready: Callable[[], bool], pos: PosGateway) -> FastAPI:
    # The OpenAPI document is published at /openapi.json; FastAPI's /docs and /redoc pages load their
    # scripts from a CDN, which store back offices cannot reach, so they are off.
    app = FastAPI(title="ShrinkWatch API", version="0.2.0", docs_url=None, redoc_url=None,
                  description="POS gateway, return authorization at the till, HQ alerts with evidence, verdicts, statistics, live feed, users and audit.")

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"alert store unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    async def storage_down(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"evidence store unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    # OSError, and the S3 client's own errors that s3fs passes through untranslated.
    for error in STORE_ERRORS:
        if issubclass(error, Exception):
            app.add_exception_handler(error, storage_down)

    app.include_router(pos_router(pos))
    if hq.returns is not None:
        app.include_router(returns_router(hq.returns, pos.keys, pos.max_clock_skew_s, pos.max_bytes))
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

    # The POS routes read their bodies themselves (streamed, size-capped); their schemas are added here.
    build_openapi = app.openapi

    def openapi() -> dict:
        schema = build_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_schemas())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
