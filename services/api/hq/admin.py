"""For admins only: the audit log, and the users added through the API (the users file's are read-only here)."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from services.api.audit import ACTIONS
from services.api.auth import USERNAME, Principal, Role, UserExists, UserRecord, hash_password
from services.api.hq.base import Hq


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME)
    password: SecretStr = Field(min_length=12, max_length=256)
    role: Role
    stores: list[str] = Field(default_factory=list, max_length=1000)
    display_name: str = Field("", max_length=128)


def routes(hq: Hq) -> APIRouter:
    router = APIRouter(tags=["admin"])
    Admin = Annotated[Principal, Depends(hq.role("admin"))]

    @router.get("/v1/audit")
    async def audit_log(
        who: Admin,
        user: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=32)] = None,
        alert_id: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
    ) -> dict:
        """Append-only: every evidence view, export, verdict, sign-in and user change, newest first."""
        if action is not None and action not in ACTIONS:
            raise HTTPException(422, f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")
        try:
            entries, next_cursor = await asyncio.to_thread(hq.audit.query, user or "", action or "", alert_id or "", cursor, limit)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"entries": entries, "next_cursor": next_cursor}

    @router.get("/v1/users")
    async def users(who: Admin) -> dict:
        listed = await asyncio.to_thread(hq.directory.users)
        return {"users": [{"username": u.username, "role": u.role, "stores": u.stores, "display_name": u.display_name, "source": source} for u, source in listed]}

    @router.post("/v1/users", status_code=201)
    async def create_user(body: UserIn, who: Admin, request: Request) -> dict:
        unknown = sorted(set(body.stores) - set(hq.store_ids))
        if unknown:
            raise HTTPException(422, f"stores not in the store config: {unknown}")
        if body.role == "store_manager" and not body.stores:
            raise HTTPException(422, "a store manager needs at least one store")
        password_hash = await asyncio.to_thread(hash_password, body.password.get_secret_value())
        record = UserRecord(username=body.username, role=body.role, stores=body.stores, display_name=body.display_name, password_hash=SecretStr(password_hash))
        try:
            await asyncio.to_thread(hq.directory.add_user, record)
        except UserExists:
            raise HTTPException(409, f"user {body.username} exists already") from None
        await asyncio.to_thread(hq.record_audit, who, "user.create", request, None, f"{body.username} as {body.role}")
        return {"username": record.username, "role": record.role, "stores": record.stores, "display_name": record.display_name, "source": "api"}

    @router.delete("/v1/users/{username}", status_code=204)
    async def delete_user(username: Annotated[str, Path(max_length=64)], who: Admin, request: Request) -> Response:
        if username in hq.directory.file_users:
            raise HTTPException(409, f"user {username} comes from the users file; change it there")
        if not await asyncio.to_thread(hq.directory.remove_user, username):
            raise HTTPException(404, f"no user {username}")
        await asyncio.to_thread(hq.record_audit, who, "user.delete", request, None, username)
        return Response(status_code=204)

    return router
