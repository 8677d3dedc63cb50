"""Signed webhooks: how ShrinkWatch signs what it sends, and how a receiver checks it.

The signature is HMAC-SHA256 over `<timestamp>.<raw body>` with a shared secret, sent as
`X-ShrinkWatch-Signature: v1=<hex>` beside `X-ShrinkWatch-Timestamp: <unix seconds>`. Signing the
timestamp with the body lets a receiver refuse a captured request replayed later (older than the
tolerance), and `X-ShrinkWatch-Delivery-Id` (the same on every retry of one notification) lets it
drop a retry it has already processed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from email.message import Message

SIGNATURE_HEADER = "X-ShrinkWatch-Signature"
TIMESTAMP_HEADER = "X-ShrinkWatch-Timestamp"
DELIVERY_HEADER = "X-ShrinkWatch-Delivery-Id"
ALERT_HEADER = "X-ShrinkWatch-Alert-Id"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """The request is not signed by who it claims, or is too old or too new; answer 401."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def signed_headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(secret: str, headers: Mapping[str, str] | Message, body: bytes, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
    """Raise SignatureError unless the body carries a valid signature made within `tolerance_s` of `now`.

    `headers` must look names up case-insensitively (http.server's and most frameworks' do).
    """
    stamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
    if not stamp or not signature:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a unix time in seconds: {stamp[:40]!r}")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is {now - timestamp:+.0f}s from now (tolerance {tolerance_s:.0f}s): a replay or a skewed clock")
    expected = sign(secret, timestamp, body).encode()
    # Several comma-separated signatures are accepted, so a sender can rotate its secret; bytes, so a
    # header with other characters is simply not a match.
    candidates = [c.strip().encode("utf-8", "replace") for c in signature.split(",")]
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("signature does not match the body and timestamp")
