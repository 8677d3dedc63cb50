"""What the POS routes read from a request themselves: a body under a size cap, chunk by chunk.

The cap counts the bytes as they arrive, whatever Content-Length said: a sender that declares a
small body, or none (chunked), still cannot make a route read more than the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request

from services.pos.gateway.base import PosInputError


async def capped_body_chunks(request: Request, max_bytes: int, setting: str) -> AsyncIterator[bytes]:
    """The body as it arrives, for a parser that takes it chunk by chunk; over `max_bytes` it is a 413
    (PosInputError, as the POS-key routes answer it) naming the setting that raises the limit."""
    too_large = f"the body is larger than {max_bytes} bytes ({setting})"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PosInputError(413, too_large)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise PosInputError(413, too_large)
        yield chunk


async def read_capped_body(request: Request, max_bytes: int, setting: str) -> bytes:
    """The whole body, for a route that parses it at once; the same cap and 413 as `capped_body_chunks`."""
    return b"".join([chunk async for chunk in capped_body_chunks(request, max_bytes, setting)])
