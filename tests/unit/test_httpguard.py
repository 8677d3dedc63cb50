"""The public services' guards: body caps on every route (declared or streamed), admission that
refuses at once, per-key rate limits bounded in memory, and the headers every answer carries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from services.shared.httpguard import Admission, BodyLimit, RateLimiter, SecurityHeaders


class Login(BaseModel):
    username: str


def guarded_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/auth/login")
    async def login(body: Login) -> dict:
        return {"username": body.username}

    @app.post("/v1/pos/poslog")
    async def poslog(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.get("/evidence")
    async def evidence() -> Response:
        return Response(b"jpeg", media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})

    app.add_middleware(BodyLimit, default=1024, default_setting="SW_TEST_MAX", limits={"/v1/pos/poslog": (4096, "SW_TEST_POSLOG_MAX")})
    app.add_middleware(SecurityHeaders)
    return app


def call(method: str, path: str, content: bytes | AsyncIterator[bytes] | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded_app()), base_url="http://t") as client:
            return await client.request(method, path, content=content, headers=headers)
    return asyncio.run(go())


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    yield b'{"username": "'
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


def test_a_body_over_the_routes_cap_is_a_413_declared_or_streamed() -> None:
    ok = call("POST", "/v1/auth/login", b'{"username": "ada"}', {"Content-Type": "application/json"})
    assert ok.status_code == 200 and ok.json() == {"username": "ada"}
    declared = call("POST", "/v1/auth/login", b"x" * 2000, {"Content-Type": "application/json"})
    assert declared.status_code == 413 and "SW_TEST_MAX" in declared.json()["detail"] and declared.headers["connection"] == "close"
    # Chunked (no Content-Length): counted as it streams; FastAPI's own "body error" 400 becomes the 413.
    streamed = call("POST", "/v1/auth/login", chunks(5000), {"Content-Type": "application/json"})
    assert streamed.status_code == 413 and "1024 bytes" in streamed.json()["detail"]


def test_a_path_with_its_own_cap_gets_it() -> None:
    assert call("POST", "/v1/pos/poslog", b"x" * 3000).json() == {"bytes": 3000}
    assert call("POST", "/v1/pos/poslog", b"x" * 5000).status_code == 413
    streamed = call("POST", "/v1/pos/poslog", chunks(8000))
    assert streamed.status_code == 413 and "SW_TEST_POSLOG_MAX" in streamed.json()["detail"]


def test_every_answer_is_nosniff_and_not_stored_unless_the_route_says_otherwise() -> None:
    answer = call("POST", "/v1/auth/login", b'{"username": "ada"}', {"Content-Type": "application/json"})
    assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["cache-control"] == "no-store"
    refused = call("POST", "/v1/auth/login", b"x" * 2000)
    assert refused.status_code == 413 and refused.headers["x-content-type-options"] == "nosniff"
    evidence = call("GET", "/evidence")
    assert evidence.headers["cache-control"] == "private, no-store" and evidence.headers["x-content-type-options"] == "nosniff"


def test_admission_refuses_at_once_in_all_and_per_key() -> None:
    gate = Admission(2, per_key=1)
    assert gate.try_enter("10.0.0.1") is None
    assert gate.try_enter("10.0.0.1") == "key"  # that address's one check is running
    assert gate.try_enter("10.0.0.2") is None
    assert gate.try_enter("10.0.0.3") == "busy"
    gate.leave("10.0.0.1")
    assert gate.try_enter("10.0.0.3") is None and gate.active == 2
    gate.leave("10.0.0.2")
    gate.leave("10.0.0.3")
    assert gate.active == 0 and gate.try_enter("10.0.0.1") is None


def test_rate_limiter_is_a_bucket_per_key_bounded_in_memory() -> None:
    now = [1000.0]
    limiter = RateLimiter(rate=2.0, burst=3, max_keys=100, clock=lambda: now[0])
    assert [limiter.wait_s("till-1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("till-1") == 0.5  # the next token in half a second
    assert limiter.wait_s("till-2") == 0.0  # another key has its own bucket
    now[0] += 0.5
    assert limiter.wait_s("till-1") == 0.0
    for i in range(1000):
        limiter.wait_s(f"made-up-{i}")
    assert len(limiter._buckets) == 100
