"""FastAPI app of the store-facing service: the POS gateway (gateway/: JSON, POSLog, Shopify,
Square) and return authorization at the till. Nothing of the HQ dashboard runs here, so nothing
that happens to HQ (a sign-in flood, a consumer that fails, Redis lost to HQ) reaches a till."""

from __future__ import annotations

from collections.abc import Callable

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.pos.gateway.routes import PosGateway, openapi_schemas, pos_router
from services.pos.returns import ReturnDesk, returns_router
from services.shared.httpguard import BodyLimit, RateLimiter, SecurityHeaders, add_health_routes


def create_app(gateway: PosGateway, desk: ReturnDesk, ready: Callable[[], bool], assess_limiter: RateLimiter) -> FastAPI:
    # The OpenAPI document is served on the health port (internal), not to the stores.
    app = FastAPI(title="ShrinkWatch POS", version="0.3.0", docs_url=None, redoc_url=None, openapi_url=None,
                  description="The store-facing service: POS gateway (JSON, ARTS POSLog, Shopify, Square) and return authorization at the till.")

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"Redis unavailable, retry: {type(exc).__name__}"}, headers={"Retry-After": "1"})

    app.include_router(pos_router(gateway))
    app.include_router(returns_router(desk, gateway.keys, gateway.max_clock_skew_s, gateway.max_bytes, assess_limiter))

    add_health_routes(app, ready)

    # The routes read their bodies themselves (streamed, size-capped); their schemas are added here.
    build_openapi = app.openapi

    def openapi() -> dict:
        schema = build_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_schemas())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Every route's body cap, before any route runs: POSLog documents may be larger than the rest.
    app.add_middleware(BodyLimit, default=gateway.max_bytes, default_setting="SW_POS_MAX_BYTES",
                       limits={"/v1/pos/poslog": (gateway.poslog_max_bytes, "SW_POS_POSLOG_MAX_BYTES")})
    app.add_middleware(SecurityHeaders)
    return app
