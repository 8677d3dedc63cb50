"""Sign-in and sign-out: the session a dashboard keeps as a cookie and a script sends as a bearer token."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.api.auth import COOKIE, LoginLocked, Principal
from services.api.hq.base import Hq, client_ip, session_token


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(min_length=1, max_length=256)


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["auth"])
    Signed = Annotated[Principal, Depends(hq.principal)]

    @router.post("/v1/auth/login")
    async def login(body: LoginIn, request: Request) -> JSONResponse:
        """Sign in; sets the session cookie and returns the same token for scripts (Bearer)."""
        # A password check costs 64 MiB and tens of ms (argon2id): a few at once, one per address,
        # and the rest refused at once, so a flood of sign-ins cannot take the api's memory.
        address = client_ip(request)
        refused = hq.logins.try_enter(address)
        if refused == "key":
            raise HTTPException(429, "a sign-in from this address is being checked; retry in a second", headers={"Retry-After": "1"})
        if refused is not None:
            raise HTTPException(503, "too many sign-ins being checked at once; retry in a second", headers={"Retry-After": "1"})
        try:
            record = await asyncio.to_thread(hq.directory.authenticate, body.username, body.password.get_secret_value(), address)
        except LoginLocked as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(hq.directory.lockout_s)}) from None
        finally:
            hq.logins.leave(address)
        if record is None:
            await asyncio.to_thread(hq.record_audit, None, "sign_in_failed", request, None, "", body.username[:64])
            raise HTTPException(401, "wrong user name or password")
        token, expires_ms = await asyncio.to_thread(hq.directory.open_session, record)
        who = Principal.of(record)
        await asyncio.to_thread(hq.record_audit, who, "sign_in", request)
        response = JSONResponse({**who.public(), "token": token, "expires_ms": expires_ms})
        response.set_cookie(COOKIE, token, max_age=hq.directory.session_ttl_s, httponly=True, samesite="strict", secure=hq.cookie_secure, path="/")
        return response

    @router.post("/v1/auth/logout", status_code=204)
    async def logout(who: Signed, request: Request) -> Response:
        await asyncio.to_thread(hq.directory.close_session, session_token(request))
        await asyncio.to_thread(hq.record_audit, who, "sign_out", request)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/v1/auth/me")
    async def me(who: Signed) -> dict:
        return who.public()

    return router
