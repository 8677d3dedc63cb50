"""Sign-in for the local platform: one user per role with fresh random passwords on every `dev up`.

The users file the api reads holds argon2 hashes only; the passwords go to a second file readable
by the owner alone (and are printed by the demo), so nothing in the repository can sign in anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import yaml

from services.api.auth import hash_password

USERS_FILE = "dev-users.yaml"
CREDENTIALS_FILE = "dev-credentials.json"


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
    credentials = run_dir / CREDENTIALS_FILE
    credentials.unlink(missing_ok=True)
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({u["username"]: {"password": passwords[u["username"]], "role": u["role"]} for u in users}, out, indent=2)
    path = run_dir / USERS_FILE
    path.write_text(yaml.safe_dump({"users": [{**u, "password_hash": hash_password(passwords[u["username"]])} for u in users]}, sort_keys=False))
    return path


def dev_credentials(run_dir: Path) -> dict[str, dict[str, str]]:
    """The local platform's users and passwords, by user name."""
    return json.loads((run_dir / CREDENTIALS_FILE).read_text())
