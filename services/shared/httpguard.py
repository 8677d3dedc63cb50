"""What the public HTTP services (the HQ api, the store-facing pos service) bound before any route
does work for a request it cannot yet trust.

- `BodyLimit`: every route has a body cap, checked against Content-Length before anything is read
  and counted as the body streams in (a sender that declares less, or nothing, still cannot make a
  route hold more); over it the answer is 413 at once.
- `Admission`: at most N of an expensive check (argon2 for a sign-in) at once; the next is refused
  at once with 503 rather than queued, so a flood cannot pile up memory or latency behind it.
- `RateLimiter`: a token bucket per caller (a POS key), bounded in memory.
- `SecurityHeaders`: `X-Content-Type-Options: nosniff` and, for API answers, `Cache-Control:
  no-store` (shared back-office browsers), on every response.
- `serve`: the health port (`/healthz`, `/readyz`, `/metrics`, the OpenAPI document: for the
  operators' network) beside the public one, and uvicorn with SIGTERM handled by us and forwarded
  headers trusted only from the configured proxies (an Ingress), so each client keeps its own address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.shared.health import HealthServer
from services.shared.logs import logging_dict_config
from services.shared.settings import WebSettings


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of `Authorization: Bearer <token>`, maybe empty; None without that header (no header,
    or another scheme), so a caller can tell "no token sent" from "sent, but empty"."""
    header = connection.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


class BodyTooLarge(Exception):
    """The body went past its route's cap while it was being read."""


async def send_json(send: Send, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A whole JSON answer from ASGI middleware (before the app has started one)."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """A body cap on every route: `limits` names the larger caps of some path prefixes (the longest
    prefix that matches wins), `default` is everyone else's; 413 with the setting that raises it."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, tuple[int, str]] | None = None, default_setting: str = "") -> None:
        self.app = app
        self.default = (default, default_setting)
        self.limits = sorted((limits or {}).items(), key=lambda item: -len(item[0]))

    def cap(self, path: str) -> tuple[int, str]:
        return next((cap for prefix, cap in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.cap(scope["path"])
        reason = {"detail": f"the body is larger than {limit} bytes" + (f" ({setting})" if setting else "")}
        close = [(b"connection", b"close")]
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await send_json(send, 413, reason, close)
            return
        received = 0
        # Past the cap the app may turn the error into an answer of its own (FastAPI makes any body
        # error a 400): unless it had begun answering before, the client gets the 413 instead.
        overflowed = started = replaced = False

        async def counted_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise BodyTooLarge(reason["detail"])
            return message

        async def replace_with_413() -> None:
            nonlocal replaced
            if not replaced:
                replaced = True
                await send_json(send, 413, reason, close)

        async def watched_send(message: Message) -> None:
            nonlocal started
            if overflowed and not started:
                await replace_with_413()
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
        if overflowed and not started:
            await replace_with_413()


class SecurityHeaders:
    """Headers every answer carries: nosniff always; `Cache-Control: no-store` unless the route set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers.append((b"x-content-type-options", b"nosniff"))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class Admission:
    """At most `limit` holders at once, in all and per key (a client address): `try_enter` says at
    once whether there is room, it never waits. For the event loop's thread only (no lock)."""

    def __init__(self, limit: int, per_key: int | None = None) -> None:
        self.limit = limit
        self.per_key = per_key if per_key is not None else limit
        self.active = 0
        self._by_key: dict[str, int] = {}

    def try_enter(self, key: str = "") -> str | None:
        """None when admitted (call `leave` after), else why not: "busy" (all in use) or "key" (this key's share)."""
        if self._by_key.get(key, 0) >= self.per_key:
            return "key"
        if self.active >= self.limit:
            return "busy"
        self.active += 1
        self._by_key[key] = self._by_key.get(key, 0) + 1
        return None

    def leave(self, key: str = "") -> None:
        self.active -= 1
        left = self._by_key.get(key, 1) - 1
        if left > 0:
            self._by_key[key] = left
        else:
            self._by_key.pop(key, None)


class RateLimiter:
    """A token bucket per key (`rate` a second, up to `burst` at once). The least recently used keys
    are forgotten past `max_keys`, so keys a caller makes up cannot grow memory (a forgotten key
    starts with a full bucket, which only ever favours a caller: a limit, not an accounting)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, key: str) -> float:
        """0 when this request may go (a token is taken), else the seconds until the next token."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutting down, which would skip our flush; stop and return instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def server_config(app: ASGIApp, service: str, host: str, port: int, log_level: str, trusted_proxies: Sequence[str]) -> uvicorn.Config:
    """Open requests get 3 s at SIGTERM (live feeds never end by themselves). Forwarded headers are
    read only from `trusted_proxies`; with none, every client is the address that connected."""
    return uvicorn.Config(app, host=host, port=port, log_config=logging_dict_config(service, log_level), access_log=False,
                          timeout_graceful_shutdown=3, proxy_headers=bool(trusted_proxies),
                          forwarded_allow_ips=list(trusted_proxies) if trusted_proxies else None)


def add_health_routes(app: FastAPI, ready: Callable[[], bool]) -> None:
    """/healthz and /readyz on the public port too, for a load balancer in front."""

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        ok = await asyncio.to_thread(ready)
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok})


def serve(app: FastAPI, service: str, settings: WebSettings, port: int, ready: Callable[[], bool], log: logging.Logger, **started: object) -> None:
    """Serve until SIGTERM: the health port first (logged with `started`), then the public port."""
    health = HealthServer(settings.http_host, settings.http_port, ready, routes={"/openapi.json": app.openapi}).start()
    log.info("started", extra={"port": port, "health_port": health.port, **started})
    try:
        GracefulServer(server_config(app, service, settings.http_host, port, settings.log_level, settings.trusted_proxies)).run()
    finally:
        health.stop()
