"""Who may see and do what: users, argon2 password hashes, sessions in Redis, and the four roles.

Users come from a YAML file (the chain's directory, read at start, password hashes only) and from
the admin API (kept in Redis). A session is an opaque random token; Redis keeps only its SHA-256,
so a copy of Redis holds no usable token. The same token works as the `sw_session` cookie (pages)
and as `Authorization: Bearer` (scripts). A user deleted, made again or given a new password ends
their sessions on the next request; a changed role or store list applies to it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.shared.settings import load_yaml_file

Role = Literal["admin", "hq_analyst", "store_manager", "officer"]
USERNAME = r"^[a-z0-9][a-z0-9_.@-]{1,63}$"
USERS_HASH = "sw:users"
SESSION_PREFIX = "sw:session:"
FAILED_PREFIX = "sw:login-failures:"
COOKIE = "sw_session"

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash (salted, with its parameters) for the users file or the API."""
    return _hasher.hash(password)


class UserRecord(BaseModel):
    """One user as kept in the users file or Redis: never a plain password."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    username: str = Field(pattern=USERNAME)
    role: Role
    # Store managers and officers: the stores they may see. Empty for an officer: every store.
    stores: list[str] = []
    display_name: str = Field("", max_length=128)
    password_hash: SecretStr

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("$argon2"):
            raise ValueError("not an argon2 hash: make one with `shrinkwatch users hash`")
        return value

    def stored_json(self) -> str:
        """The record as kept in Redis, hash included (pydantic writes a SecretStr masked)."""
        return json.dumps({**self.model_dump(mode="json"), "password_hash": self.password_hash.get_secret_value()})

    def sees_every_store(self) -> bool:
        return self.role in ("admin", "hq_analyst") or (self.role == "officer" and not self.stores)


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[UserRecord] = []


def load_users_file(path: Path | None, known_stores: set[str]) -> dict[str, UserRecord]:
    """The users file, validated: a bad entry fails the api at start with its position and field."""
    if path is None:
        return {}
    users = load_yaml_file(path, UsersFile, "users file").users
    result: dict[str, UserRecord] = {}
    for user in users:
        if user.username in result:
            raise SystemExit(f"users file {path}: user {user.username!r} appears twice")
        unknown = sorted(set(user.stores) - known_stores)
        if unknown:
            raise SystemExit(f"users file {path}: user {user.username!r} names stores that are not in the store config: {unknown}")
        if user.role == "store_manager" and not user.stores:
            raise SystemExit(f"users file {path}: store manager {user.username!r} has no stores")
        result[user.username] = user
    return result


@dataclass(frozen=True)
class Principal:
    """The signed-in user behind a request."""

    username: str
    role: Role
    stores: frozenset[str]
    display_name: str
    every_store: bool

    @classmethod
    def of(cls, record: UserRecord) -> Principal:
        return cls(record.username, record.role, frozenset(record.stores), record.display_name or record.username, record.sees_every_store())

    def may_see(self, store_id: str) -> bool:
        return self.every_store or store_id in self.stores

    def public(self) -> dict:
        return {"username": self.username, "role": self.role, "stores": sorted(self.stores), "display_name": self.display_name}


class UserExists(ValueError):
    """A user of that name is already defined."""


class LoginLocked(RuntimeError):
    """Too many failed sign-ins for a user name from one address, or from one address; try later."""


class Directory:
    """Users (file and API), password checks, and sessions, all in Redis except the file."""

    def __init__(self, client: redis.Redis, file_users: dict[str, UserRecord], session_ttl_s: int,
                 max_failures: int = 10, lockout_s: int = 300, max_failures_per_address: int = 50) -> None:
        self.redis = client
        self.file_users = file_users
        self.session_ttl_s = session_ttl_s
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_failures_per_address = max_failures_per_address
        # Verifying against this when the user does not exist costs the same time as a real check.
        self._dummy_hash = hash_password(secrets.token_hex(16))

    # ---- users ---------------------------------------------------------------------------------

    def user(self, username: str) -> tuple[UserRecord, str] | None:
        """The user and where it is defined ("config" or "api")."""
        if username in self.file_users:
            return self.file_users[username], "config"
        raw = self.redis.hget(USERS_HASH, username)
        if raw is None:
            return None
        return UserRecord.model_validate_json(cast(bytes, raw)), "api"

    def users(self) -> list[tuple[UserRecord, str]]:
        stored = cast(dict[bytes, bytes], self.redis.hgetall(USERS_HASH))
        api_users = [(UserRecord.model_validate_json(v), "api") for v in stored.values()]
        return sorted([(u, "config") for u in self.file_users.values()] + api_users, key=lambda pair: pair[0].username)

    def add_user(self, record: UserRecord) -> None:
        if record.username in self.file_users or not self.redis.hsetnx(USERS_HASH, record.username, record.stored_json()):
            raise UserExists(record.username)

    def remove_user(self, username: str) -> bool:
        """False when no API user of that name exists (file users are changed in the file)."""
        return bool(self.redis.hdel(USERS_HASH, username))

    def _store_hash(self, record: UserRecord) -> None:
        """Save a rehashed password for API users (file users keep theirs until the file changes)."""
        if record.username not in self.file_users:
            self.redis.hset(USERS_HASH, record.username, record.stored_json())

    # ---- sign-in and sessions ------------------------------------------------------------------

    def authenticate(self, username: str, password: str, address: str = "") -> UserRecord | None:
        """The user when the password matches. Failures count after the check, per user name and
        client address: LoginLocked once that address has failed too often for that name, or too
        often in all (which also keeps failed attempts from growing the audit log without end).
        A lock is never chain-wide for a name, so nobody can lock a user out from elsewhere; the
        callers bound how many checks run at once (one per address), so guesses in parallel cannot
        slip past the count."""
        pair_key = FAILED_PREFIX + hashlib.sha256(f"{address}\n{username}".encode()).hexdigest()
        address_key = FAILED_PREFIX + "address:" + hashlib.sha256(address.encode()).hexdigest()
        pair_failures, address_failures = (int(value or 0) for value in cast(list, self.redis.mget(pair_key, address_key)))
        if pair_failures >= self.max_failures:
            raise LoginLocked(f"too many failed sign-ins for this user from this address; try again in {self.lockout_s // 60} minutes")
        if address_failures >= self.max_failures_per_address:
            raise LoginLocked(f"too many failed sign-ins from this address; try again in {self.lockout_s // 60} minutes")
        found = self.user(username)
        stored_hash = found[0].password_hash.get_secret_value() if found else self._dummy_hash
        try:
            _hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            self._count_failure(pair_key, address_key)
            return None
        if found is None:
            self._count_failure(pair_key, address_key)
            return None
        self.redis.delete(pair_key)
        record = found[0]
        if _hasher.check_needs_rehash(stored_hash):
            record = record.model_copy(update={"password_hash": SecretStr(hash_password(password))})
            self._store_hash(record)
        return record

    def _count_failure(self, *keys: str) -> None:
        pipe = self.redis.pipeline()
        for key in keys:
            pipe.incr(key)
            pipe.expire(key, self.lockout_s)
        pipe.execute()

    def open_session(self, record: UserRecord) -> tuple[str, int]:
        """A new token for the user and when it expires (epoch ms)."""
        token = secrets.token_urlsafe(32)
        expires_ms = int((time.time() + self.session_ttl_s) * 1000)
        body = json.dumps({"username": record.username, "user_key": _user_key(record), "expires_ms": expires_ms})
        self.redis.set(_session_key(token), body, ex=self.session_ttl_s)
        return token, expires_ms

    def close_session(self, token: str) -> None:
        self.redis.delete(_session_key(token))

    def principal(self, token: str) -> Principal | None:
        """Who holds this token now, or None when it is unknown, expired or its user is gone."""
        raw = self.redis.get(_session_key(token))
        if raw is None:
            return None
        session = json.loads(cast(bytes, raw))
        if session["expires_ms"] < time.time() * 1000:
            return None
        found = self.user(session["username"])
        # A user removed, or removed and made again under the same name, or given a new password,
        # is no longer the user the session was opened for.
        if found is None or session.get("user_key") != _user_key(found[0]):
            return None
        return Principal.of(found[0])


def _user_key(record: UserRecord) -> str:
    """Tells this user record from a later one of the same name (each hash has its own salt)."""
    return hashlib.sha256(record.password_hash.get_secret_value().encode()).hexdigest()[:32]


def _session_key(token: str) -> str:
    return SESSION_PREFIX + hashlib.sha256(token.encode()).hexdigest()
