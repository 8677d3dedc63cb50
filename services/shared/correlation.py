"""One id that follows a POS request to the page it causes: the correlation id.

The POS gateway takes it from the request (the trace id of a W3C `traceparent`, so a chain's tracing
joins ours; else the sender's `X-Correlation-Id` or `X-Request-Id`) or makes one, answers with it,
and writes it into each PosEvent it publishes. The correlator copies it into the alert the event
triggers, and the notifier sends it with the page (webhooks get it as a header). Every service logs
it (`correlation_id`), so one grep of the logs follows a refund from the till to the officer's phone.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

CORRELATION_HEADER = "X-Correlation-Id"
REQUEST_ID_HEADER = "X-Request-Id"
TRACEPARENT_HEADER = "traceparent"
# version 00: 00-<trace id, 32 hex>-<parent id, 16 hex>-<flags, 2 hex>; an all-zero id is invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
# What a sender's own id may be: short, and nothing that could forge a log line or a header.
_SENDER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def new_correlation_id() -> str:
    """A fresh id shaped like a W3C trace id (32 hex digits), so it can start a trace too."""
    return secrets.token_hex(16)


def correlation_id_of(headers: Mapping[str, str]) -> str:
    """The request's correlation id: its traceparent's trace id, else its X-Correlation-Id or
    X-Request-Id when well formed, else a new one. A malformed header is ignored, never refused:
    a till's request is not turned away for its tracing."""
    found = _TRACEPARENT.match(headers.get(TRACEPARENT_HEADER, "").strip().lower())
    if found and found.group(1) != "0" * 32 and found.group(2) != "0" * 16:
        return found.group(1)
    for name in (CORRELATION_HEADER, REQUEST_ID_HEADER):
        given = headers.get(name, "").strip()
        if _SENDER_ID.match(given):
            return given
    return new_correlation_id()


def outgoing_headers(correlation_ids: list[str]) -> dict[str, str]:
    """Headers that carry the ids on to a receiver: X-Correlation-Id (comma-separated for a digest),
    and a traceparent continuing the trace when there is one id shaped like a trace id."""
    ids = [i for i in dict.fromkeys(correlation_ids) if i]
    if not ids:
        return {}
    headers = {CORRELATION_HEADER: ", ".join(ids)}
    if len(ids) == 1 and _TRACE_ID.match(ids[0]):
        headers[TRACEPARENT_HEADER] = f"00-{ids[0]}-{secrets.token_hex(8)}-01"
    return headers
