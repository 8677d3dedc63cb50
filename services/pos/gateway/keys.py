"""Per-store API keys for the POS routes that have no signature of their own (JSON and POSLog).

A key is a random 256-bit token that its POS system sends as `Authorization: Bearer <key>` or
`X-ShrinkWatch-Pos-Key: <key>`. The keys file holds only each key's SHA-256 (a key is high-entropy
and random, so a fast hash is enough and a copy of the file publishes nothing), with the stores it
may publish for. `shrinkwatch pos-keys new` makes a key and prints the file's line for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.shared.settings import load_yaml_file

KEY_PREFIX = "swpos_"
HEADER = "X-ShrinkWatch-Pos-Key"
_HASH = r"^[0-9a-f]{64}$"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Who holds the key (a till fleet, a back-office export): named in logs and in 403s.
    name: str = Field(min_length=1, max_length=64)
    stores: list[str] = []
    # A central system that sends every store's transactions (a chain-wide POSLog export).
    all_stores: bool = False

    @model_validator(mode="after")
    def _some_stores(self) -> KeyEntry:
        if not self.stores and not self.all_stores:
            raise ValueError("a key needs `stores` or `all_stores: true`")
        if self.stores and self.all_stores:
            raise ValueError("give `stores` or `all_stores: true`, not both")
        return self


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: dict[str, KeyEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class PosKey:
    """The holder of a key that was presented and matched."""

    name: str
    stores: frozenset[str]
    all_stores: bool

    def may_publish(self, store_id: str) -> bool:
        return self.all_stores or store_id in self.stores


class PosKeys:
    """The keys file, validated; `identify` finds a presented key's holder in constant time."""

    def __init__(self, entries: dict[str, KeyEntry]) -> None:
        self._entries = [(digest.encode(), PosKey(e.name, frozenset(e.stores), e.all_stores)) for digest, e in entries.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, key: str) -> PosKey | None:
        digest = key_hash(key).encode()
        found = None
        # Every entry is compared, matched or not, so the time taken says nothing about which matched.
        for stored, holder in self._entries:
            if hmac.compare_digest(stored, digest):
                found = holder
        return found


def load_keys_file(path: Path | None, known_stores: set[str]) -> PosKeys:
    """The keys file, or no keys (every keyed POS request is refused) when none is configured."""
    if path is None:
        return PosKeys({})
    keys = load_yaml_file(path, KeysFile, "POS keys file").keys
    for digest, entry in keys.items():
        if not re.fullmatch(_HASH, digest):
            raise SystemExit(f"POS keys file {path}: keys.{digest[:70]}: not a SHA-256 in hex (64 lower-case hex digits): make one with `shrinkwatch pos-keys new`")
        unknown = sorted(set(entry.stores) - known_stores)
        if unknown:
            raise SystemExit(f"POS keys file {path}: key {entry.name!r} names stores that are not in the store config: {unknown}")
    return PosKeys(keys)


def file_line(key: str, name: str, stores: list[str]) -> str:
    """The keys file's entry for a new key (its hash, never the key)."""
    entry = {"name": name, "all_stores": True} if not stores else {"name": name, "stores": stores}
    # JSON is YAML: one line that pastes under `keys:` as it is.
    return f"{key_hash(key)}: {json.dumps(entry)}"
