"""What every POS adapter shares: the interface, its one error type, event ids and money in minor units.

An adapter turns what a POS system sends (canonical JSON, ARTS POSLog, a vendor webhook) into
canonical events. It is fed the request body chunk by chunk, so a large POSLog file is parsed while
it arrives, and it raises nothing but `PosInputError`, whatever the input: the route turns that
into a 4xx that names the field and the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from services.pos.gateway.canonical import PosEventIn

Loc = tuple[str | int, ...]
# "key": a per-store API key (checked by the route); "signature": the adapter verifies the sender itself.
Auth = Literal["key", "signature"]
EVENT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_EVENT_ID = re.compile(EVENT_ID)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (field path, and the event's index in a batch or file) and why."""

    loc: Loc
    msg: str
    index: int | None = None

    def detail(self) -> dict:
        """In FastAPI's 422 shape (`loc`, `msg`, `type`), plus the index when there is one."""
        out: dict = {"loc": list(self.loc), "msg": self.msg, "type": "value_error"}
        if self.index is not None:
            out["index"] = self.index
        return out


class PosInputError(Exception):
    """The only error an adapter raises: a 4xx for the client, with every problem found."""

    def __init__(self, status: int, problems: list[Problem] | str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.problems = [Problem(("body",), problems)] if isinstance(problems, str) else problems
        self.headers = dict(headers or {})
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in self.problems))

    def detail(self) -> list[dict] | str:
        """Field errors as a list (400 and 422); a single reason as text (401, 403, 413)."""
        if self.status in (400, 422):
            return [p.detail() for p in self.problems]
        return "; ".join(p.msg for p in self.problems)


@dataclass(frozen=True)
class Parsed:
    """One canonical event and where it came from, so a later check (unknown store, a time in the
    future) is reported in the sender's own terms (`Transaction.3.RetailStoreID`, not `store_id`)."""

    event: PosEventIn
    loc: Loc = ("body",)
    index: int | None = None
    # canonical field -> the sender's name for it, where they differ
    names: Mapping[str, str] = field(default_factory=dict)

    def problem(self, canonical_field: str, msg: str) -> Problem:
        return Problem((*self.loc, self.names.get(canonical_field, canonical_field)), msg, self.index)


@dataclass(frozen=True)
class Note:
    """Something the sender sent that is answered but not published, and why (a suspended
    transaction, a refund that is still pending, a webhook topic that carries no POS event)."""

    reason: str
    index: int | None = None
    ref: str = ""

    def detail(self) -> dict:
        out: dict = {"reason": self.reason}
        if self.index is not None:
            out["index"] = self.index
        if self.ref:
            out["ref"] = self.ref
        return out


class Parse(Protocol):
    """One request's body being parsed. `feed` returns the events completed by that chunk."""

    notes: list[Note]

    def feed(self, chunk: bytes) -> list[Parsed]: ...

    def close(self) -> list[Parsed]: ...


class PosAdapter(Protocol):
    """One POS input format. `begin` checks the headers before any of the body is read (a missing
    signature is refused without reading what an unknown sender sends)."""

    # Names the input in metrics, logs and the idempotency keys ("same event id per source").
    source: str
    auth: Auth
    content_types: tuple[str, ...]

    def begin(self, headers: Mapping[str, str]) -> Parse: ...


class Buffered:
    """For the formats that need the whole body (JSON, signed webhooks): collects it, parses at the end."""

    def __init__(self) -> None:
        self.notes: list[Note] = []
        self._chunks: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Parsed]:
        self._chunks.append(chunk)
        return []

    def body(self) -> bytes:
        return b"".join(self._chunks)


def source_event_id(prefix: str, *parts: str) -> str:
    """A deterministic event id from the sender's own identifiers: readable when they are plain
    ids, otherwise a hash of them, so any input gives a valid id and the same input the same id."""
    readable = f"{prefix}-{'-'.join(parts)}"
    if _EVENT_ID.match(readable) and "|" not in readable:
        return readable
    return f"{prefix}-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


# ISO 4217 currencies whose minor unit is not the cent (the rest have two decimals).
_MINOR_DIGITS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
MAX_MINOR = 10**12


def minor_digits(currency: str) -> int:
    return _MINOR_DIGITS.get(currency.upper(), 2)


def decimal_of(text: object) -> Decimal | None:
    """A finite decimal from a string or number as written, or None; never through float."""
    if isinstance(text, bool) or not isinstance(text, str | int | Decimal):
        return None
    if isinstance(text, str) and (len(text) > 40 or not re.fullmatch(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*", text)):
        return None
    try:
        value = Decimal(text.strip() if isinstance(text, str) else text)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def to_minor(amount: Decimal, currency: str) -> int | None:
    """Exact minor units (cents) of an amount, or None when it has digits below the minor unit or is too large."""
    if not amount.is_finite() or amount.adjusted() > 15:
        return None
    scaled = amount.scaleb(minor_digits(currency))
    if scaled != scaled.to_integral_value() or abs(scaled) > MAX_MINOR:
        return None
    return int(scaled)


def same_signature(expected: bytes, given: str) -> bool:
    """Constant-time comparison of a computed signature with the one a sender put in a header."""
    try:
        candidate = given.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, candidate)


def header(headers: Mapping[str, str], name: str) -> str:
    """A request header by name, whatever the case of the mapping's keys."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), "")
    return value


def json_with_decimals(body: bytes) -> object:
    """A webhook's JSON with every number that has a fraction as an exact Decimal (never a float)."""
    try:
        return json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise PosInputError(422, [Problem(("body",), f"not JSON: {str(exc)[:200]}")]) from None
