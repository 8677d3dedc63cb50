"""The api's own request reading: the bearer token, and a body held to its size cap however it is sent."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.types import Message

from services.pos.gateway.base import PosInputError
from services.pos.httpinput import capped_body_chunks, read_capped_body
from services.shared.httpguard import bearer_token

SETTING = "SW_POS_MAX_BYTES"


def request(chunks: tuple[bytes, ...] = (), headers: dict[str, str] | None = None) -> Request:
    """A request whose body arrives in these chunks (chunked, unless a Content-Length header is given)."""
    messages: list[Message] = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.request", "body": b"", "more_body": False}

    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}, receive)


@pytest.mark.parametrize(("authorization", "token"), [
    ("Bearer abc.def", "abc.def"),
    ("bearer   abc  ", "abc"),
    ("BEARER abc", "abc"),
    ("Bearer ", ""),  # sent, but empty: not the same as none sent
    ("Basic dXNlcjpwdw==", None),
    ("Bearerabc", None),
    (None, None),
])
def test_bearer_token_is_the_authorization_headers_token_or_none(authorization: str | None, token: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    assert bearer_token(request(headers=headers)) == token


async def test_a_body_at_the_cap_is_read_whole_declared_or_not() -> None:
    assert await read_capped_body(request((b"ab", b"cd"), {"Content-Length": "4"}), 4, SETTING) == b"abcd"
    assert await read_capped_body(request((b"ab", b"cd")), 4, SETTING) == b"abcd"
    assert await read_capped_body(request(), 4, SETTING) == b""


async def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read() -> None:
    async def never() -> Message:
        raise AssertionError("the body was read")

    over = Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"5")], "query_string": b""}, never)
    with pytest.raises(PosInputError) as refused:
        await read_capped_body(over, 4, SETTING)
    assert refused.value.status == 413 and refused.value.detail() == f"the body is larger than 4 bytes ({SETTING})"


@pytest.mark.parametrize("headers", [{}, {"Content-Length": "3"}], ids=["chunked", "declared-too-small"])
async def test_a_streamed_body_over_the_cap_is_refused_by_the_bytes_counted(headers: dict[str, str]) -> None:
    with pytest.raises(PosInputError) as refused:
        await read_capped_body(request((b"ab", b"cd", b"e"), headers), 4, SETTING)
    assert refused.value.status == 413 and SETTING in str(refused.value.detail())


async def test_chunks_are_handed_over_as_they_arrive_until_the_cap_is_passed() -> None:
    seen = []
    with pytest.raises(PosInputError):
        async for chunk in capped_body_chunks(request((b"ab", b"cd", b"e")), 4, SETTING):
            seen.append(chunk)
    assert seen == [b"ab", b"cd"]
