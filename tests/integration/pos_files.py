"""The POS gateway's keys and secrets files for tests that start the api (written as an operator would)."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.pos.gateway.keys import file_line, new_key

SHOP = "sample-high-street.myshopify.com"


def write_pos_keys(path: Path, holders: dict[str, list[str]]) -> dict[str, str]:
    """A keys file with one fresh key per holder (name -> stores); returns the keys by name."""
    keys = {name: new_key() for name in holders}
    path.write_text("keys:\n" + "".join(f"  {file_line(keys[name], name, stores)}\n" for name, stores in holders.items()))
    return keys


def write_pos_secrets(path: Path) -> dict[str, str]:
    """Webhook secrets in the api's secrets-file form; returns them with the Square notification URL
    (the public one registered with Square, not this api's own address: a proxy stands between)."""
    secrets = {"shopify": "shpss_" + new_key(), "square": "sq_" + new_key(), "square_url": "https://pos.example.com/v1/pos/webhooks/square"}
    path.write_text(yaml.safe_dump({"shopify_secrets": {SHOP: secrets["shopify"]}, "square_signature_key": secrets["square"]}))
    return secrets
