"""Sign-in and POS keys for the local platform: one user per role with fresh random passwords, and
one POS key per store, on every `dev up`.

The files the api reads hold hashes only (argon2 for passwords, SHA-256 for POS keys); the
passwords and keys go to files readable by the owner alone, so nothing in the repository can sign
in or publish anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import yaml

from services.api.auth import hash_password
from services.pos.gateway.keys import key_hash, new_key

USERS_FILE = "dev-users.yaml"
CREDENTIALS_FILE = "dev-credentials.json"
POS_KEYS_FILE = "dev-pos-keys.yaml"
POS_KEY_CREDENTIALS_FILE = "dev-pos-keys.json"
POS_SECRETS_FILE = "dev-pos-secrets.yaml"


def write_dev_users(run_dir: Path, store_ids: list[str]) -> Path:
    """Write the users file (hashes) and the credentials file (passwords, mode 600); returns the users file."""
    users: list[dict] = [
        {"username": "admin", "role": "admin", "display_name": "Platform admin"},
        {"username": "hq", "role": "hq_analyst", "display_name": "HQ analyst"},
        {"username": "manager", "role": "store_manager", "stores": store_ids[:1], "display_name": "Store manager"},
        {"username": "officer", "role": "officer", "stores": store_ids[:1], "display_name": "On-call officer"},
    ]
    passwords = {u["username"]: secrets.token_urlsafe(12) for u in users}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_private(run_dir / CREDENTIALS_FILE, {u["username"]: {"password": passwords[u["username"]], "role": u["role"]} for u in users})
    path = run_dir / USERS_FILE
    path.write_text(yaml.safe_dump({"users": [{**u, "password_hash": hash_password(passwords[u["username"]])} for u in users]}, sort_keys=False))
    return path


def dev_credentials(run_dir: Path) -> dict[str, dict[str, str]]:
    """The local platform's users and passwords, by user name."""
    return json.loads((run_dir / CREDENTIALS_FILE).read_text())


def write_dev_pos_keys(run_dir: Path, store_ids: list[str]) -> Path:
    """One POS key per store (`tills-<store>`): the keys file (hashes) and the keys (mode 600); returns the keys file."""
    keys = {f"tills-{store}": (new_key(), store) for store in store_ids}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_private(run_dir / POS_KEY_CREDENTIALS_FILE, {name: {"key": key, "stores": [store]} for name, (key, store) in keys.items()})
    path = run_dir / POS_KEYS_FILE
    path.write_text(yaml.safe_dump({"keys": {key_hash(key): {"name": name, "stores": [store]} for name, (key, store) in keys.items()}}, sort_keys=False))
    return path


def dev_pos_key(run_dir: Path, store_id: str) -> str:
    """The local platform's POS key for a store's tills."""
    return json.loads((run_dir / POS_KEY_CREDENTIALS_FILE).read_text())[f"tills-{store_id}"]["key"]


def write_dev_pos_secrets(run_dir: Path, shops: list[str]) -> Path:
    """Fresh webhook secrets (mode 600) for the store config's Shopify shops and for Square, as the
    api's SW_POS_SECRETS_FILE; sign a request with them to try the webhook routes locally."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / POS_SECRETS_FILE
    _write_private(path, {"shopify_secrets": {shop: secrets.token_urlsafe(24) for shop in shops}, "square_signature_key": secrets.token_urlsafe(24)})
    return path


def _write_private(path: Path, data: dict) -> None:
    """A file only its owner can read, made anew (never an old file's permissions)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
