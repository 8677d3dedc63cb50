"""FastAPI app of the HQ api: alerts with evidence, verdicts, statistics, the live feed, users and
audit, the tills' return decisions (read from Redis), and the dashboard pages."""

from __future__ import annotations

from collections.abc import Callable

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.api.hq import Hq, hq_router
from services.api.pages import mount_dashboard
from services.shared.evidence import STORE_ERRORS
from services.shared.httpguard import BodyLimit, SecurityHeaders, add_health_routes


def create_app(hq: Hq, ready: Callable[[], bool], max_body_bytes: int = 64 * 1024) -> FastAPI:
    # The OpenAPI document and /metrics are served on the health port (internal), not to browsers;
    # FastAPI's /docs and /redoc pages load their scripts from a CDN, which back offices cannot reach.
    app = FastAPI(title="ShrinkWatch HQ API", version="0.3.0", docs_url=None, redoc_url=None, openapi_url=None,
                  description="HQ alerts with evidence, verdicts, statistics, live feed, the tills' return decisions, users and audit.")

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"alert store unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    async def storage_down(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"evidence store unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    # OSError, and the S3 client's own errors that s3fs passes through untranslated.
    for error in STORE_ERRORS:
        if issubclass(error, Exception):
            app.add_exception_handler(error, storage_down)

    app.include_router(hq_router(hq))
    mount_dashboard(app)

    add_health_routes(app, ready)

    # Every route's body cap, before any route reads a byte (a 300 MB sign-in is a 413, not 1 GB of RSS).
    app.add_middleware(BodyLimit, default=max_body_bytes, default_setting="SW_API_MAX_BODY_BYTES")
    app.add_middleware(SecurityHeaders)
    return app
