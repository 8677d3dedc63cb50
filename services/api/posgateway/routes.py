"""The POS gateway's routes: one per input format, one way through for all of them.

A request is authenticated (a per-store key, or the vendor's signature checked by its adapter),
its content type and size are checked, and its body is fed to the adapter while it arrives (the
size limit counts the bytes read, whatever Content-Length said). Every event is then checked
against the store config and the key's stores; nothing is published unless every event passes.
Each event is claimed in Redis, produced to sw.pos.v1, and recorded as published once the broker
has acknowledged it, so the same event sent twice, even at the same moment, is published once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from confluent_kafka import KafkaError, KafkaException, Producer
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect

from services.api.posgateway import keys as pos_keys
from services.api.posgateway.base import Note, Parsed, PosAdapter, PosInputError, Problem
from services.api.posgateway.canonical import CanonicalAdapter, PosBatchIn, PosEventIn, check_context
from services.api.posgateway.dedupe import Busy, Dedupe
from services.api.posgateway.keys import PosKey, PosKeys
from services.api.posgateway.poslog import MAX_PROBLEMS, PosLogAdapter
from services.api.posgateway.shopify import HMAC_HEADER, SHOP_HEADER, TOPIC_HEADER, WEBHOOK_ID_HEADER, ShopifyAdapter, ShopifyRefund
from services.api.posgateway.square import SIGNATURE_HEADER, SquareAdapter, SquareEvent
from services.shared import topics
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.kafka import produce_all_and_wait
from services.shared.serde import encode
from services.shared.storeconfig import StoreConfig

log = logging.getLogger(__name__)
POS_EVENTS = Counter("sw_api_pos_events_total", "POS events by source and outcome (published, duplicate, skipped)", ["source", "outcome"])
POS_REQUESTS = Counter("sw_api_pos_requests_total", "POS gateway requests by source and HTTP status", ["source", "status"])
REF = "#/components/schemas/{model}"


@dataclass
class PosGateway:
    """What the POS routes work with; built from the api's settings at start."""

    config: StoreConfig
    producer: Producer
    dedupe: Dedupe
    keys: PosKeys
    shopify: ShopifyAdapter
    square: SquareAdapter
    max_bytes: int = 1024 * 1024
    poslog_max_bytes: int = 64 * 1024 * 1024
    max_batch: int = 500
    max_clock_skew_s: float = 300.0
    canonical: CanonicalAdapter = field(init=False)
    poslog: PosLogAdapter = field(init=False)

    def __post_init__(self) -> None:
        self.canonical = CanonicalAdapter(self.max_batch)
        self.poslog = PosLogAdapter(self.config)


@dataclass(frozen=True, slots=True)
class _Ready:
    """A checked event, already serialised: a POSLog file's events are held this small until published."""

    event_id: str
    key: str
    value: bytes
    index: int | None


@dataclass(frozen=True, slots=True)
class _Answer:
    """Where one event went, and whether it was there already."""

    duplicate: bool
    partition: int
    offset: int

    def detail(self, ready: _Ready) -> dict:
        event = PosEvent.FromString(ready.value)
        out: dict = {"event_id": ready.event_id, "type": PosEventType.Name(event.type).removeprefix("POS_EVENT_TYPE_").lower(),
                     "transaction_id": event.transaction_id, "duplicate": self.duplicate, "topic": topics.POS, "partition": self.partition, "offset": self.offset}
        if ready.index is not None:
            out["index"] = ready.index
        return out


class _Unavailable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# Events are claimed, produced and recorded this many at a time: a large POSLog file never holds
# more than one slice's Redis pipeline and broker acknowledgements.
SLICE = 1000


def publish(gateway: PosGateway, source: str, ready: list[_Ready]) -> list[_Answer]:
    """Claim, produce and record each event, slice by slice; per event where it is and whether it
    was a duplicate. A failure stops at its slice: what was stored stays recorded, the rest is given back."""
    answers: list[_Answer] = []
    seen_here: dict[str, _Answer] = {}
    for start in range(0, len(ready), SLICE):
        part = ready[start:start + SLICE]
        try:
            fresh = _publish_slice(gateway, source, [r for r in part if r.event_id not in seen_here])
        except _Unavailable as exc:
            stored = sum(1 for a in answers if not a.duplicate)
            raise _Unavailable(f"{exc.detail}; {stored} of {len(ready)} event(s) stored before it: retry, they are answered as duplicates") from None
        for item in part:
            earlier = seen_here.get(item.event_id)
            answer = _Answer(True, earlier.partition, earlier.offset) if earlier is not None else fresh[item.event_id]
            seen_here.setdefault(item.event_id, answer)
            answers.append(answer)
    return answers


def _publish_slice(gateway: PosGateway, source: str, part: list[_Ready]) -> dict[str, _Answer]:
    timeout = 10.0 + len(part) / 500
    token, seen = gateway.dedupe.claim(source, [r.event_id for r in part], hold_s=int(timeout) + 60)
    first = {r.event_id: r for r in reversed(part)}
    to_send = [first[event_id] for event_id, where in seen.items() if where is None]
    try:
        results = produce_all_and_wait(gateway.producer, topics.POS, [(r.key, r.value) for r in to_send], timeout=timeout)
    except KafkaException as exc:
        gateway.dedupe.release(source, token, [r.event_id for r in to_send])
        raise _Unavailable(f"POS events not stored ({exc})") from None
    stored: dict[str, dict] = {}
    failed: list[tuple[str, KafkaError]] = []
    for item, result in zip(to_send, results, strict=True):
        if isinstance(result, KafkaError):
            failed.append((item.event_id, result))
        else:
            stored[item.event_id] = {"partition": result.partition(), "offset": result.offset()}
    if stored:
        gateway.dedupe.published(source, stored)
    if failed:
        gateway.dedupe.release(source, token, [event_id for event_id, _ in failed])
        raise _Unavailable(f"{len(failed)} event(s) not stored ({failed[0][1].str()})")
    answers = {}
    for event_id, where in seen.items():
        location = stored.get(event_id) or where or {}
        answers[event_id] = _Answer(event_id not in stored, int(location.get("partition", -1)), int(location.get("offset", -1)))
    return answers


def _presented_key(request: Request) -> str:
    key = request.headers.get(pos_keys.HEADER, "").strip()
    if key:
        return key
    authorization = request.headers.get("authorization", "")
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""


def authenticate(request: Request, keys: PosKeys) -> PosKey:
    challenge = {"WWW-Authenticate": "Bearer"}
    if not len(keys):
        raise PosInputError(401, "no POS keys are configured on this api (SW_API_POS_KEYS_FILE)", challenge)
    key = _presented_key(request)
    if not key:
        raise PosInputError(401, f"no POS key: send Authorization: Bearer <key> or {pos_keys.HEADER}: <key>", challenge)
    holder = keys.identify(key) if len(key) <= 256 else None
    if holder is None:
        raise PosInputError(401, "unknown POS key", challenge)
    return holder


def _check_content_type(request: Request, adapter: PosAdapter) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    suffixes = {kind.rsplit("/", 1)[1] for kind in adapter.content_types}
    if media in adapter.content_types or (media.startswith("application/") and any(media.endswith("+" + s) for s in suffixes)):
        return
    raise PosInputError(415, f"Content-Type {media or '(none)'} is not accepted here: send {' or '.join(adapter.content_types)}")


class _Collector:
    """Checks each event as its adapter hands it over, and keeps it serialised until the end."""

    def __init__(self, gateway: PosGateway, holder: PosKey | None) -> None:
        self.gateway, self.holder = gateway, holder
        self.ready: list[_Ready] = []
        self.problems: list[Problem] = []
        self.forbidden: set[str] = set()
        self.single = False

    def take(self, parsed: list[Parsed]) -> None:
        for item in parsed:
            event = item.event
            if self.holder is not None and not self.holder.may_publish(event.store_id):
                self.forbidden.add(event.store_id)
                continue
            if len(self.problems) < MAX_PROBLEMS:
                self.problems += check_context(item, self.gateway.config, self.gateway.max_clock_skew_s)
            message = event.to_proto()
            self.single = item.index is None
            self.ready.append(_Ready(event.event_id, f"{message.store_id}:{message.register_id}", encode(message), item.index))


async def _read(request: Request, parse_feed: Callable[[bytes], list[Parsed]], collector: _Collector, limit: int, setting: str) -> None:
    too_large = f"the body is larger than {limit} bytes ({setting})"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PosInputError(413, too_large)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PosInputError(413, too_large)
        if chunk:
            collector.take(await asyncio.to_thread(parse_feed, chunk))


def _notes(notes: list[Note]) -> list[dict]:
    return [note.detail() for note in notes]


def _batch_answer(ready: list[_Ready], answers: list[_Answer], notes: list[Note]) -> Iterator[bytes]:
    """The answer to a batch or a POSLog file, written out event by event (a file of many
    transactions is never one large list of dicts in memory)."""
    published = sum(1 for a in answers if not a.duplicate)
    yield json.dumps({"published": published, "duplicates": len(answers) - published, "skipped": _notes(notes)})[:-1].encode() + b', "events": ['
    for start in range(0, len(ready), 500):
        chunk = (json.dumps(answer.detail(item)) for item, answer in zip(ready[start:start + 500], answers[start:start + 500], strict=True))
        yield (b", " if start else b"") + ", ".join(chunk).encode()
    yield b"]}"


def pos_router(gateway: PosGateway) -> APIRouter:
    router = APIRouter(tags=["pos"])

    async def handle(request: Request, adapter: PosAdapter, limit: int, setting: str) -> Response:
        source = adapter.source
        try:
            holder = authenticate(request, gateway.keys) if adapter.auth == "key" else None
            _check_content_type(request, adapter)
            parse = adapter.begin(request.headers)
            collector = _Collector(gateway, holder)
            await _read(request, parse.feed, collector, limit, setting)
            collector.take(await asyncio.to_thread(parse.close))
            if collector.forbidden and holder is not None:
                raise PosInputError(403, f"key {holder.name!r} may not publish for store(s) {', '.join(sorted(collector.forbidden))}")
            if collector.problems:
                raise PosInputError(422, collector.problems[:MAX_PROBLEMS])
            answers = await asyncio.to_thread(publish, gateway, source, collector.ready) if collector.ready else []
        except PosInputError as exc:
            POS_REQUESTS.labels(source, str(exc.status)).inc()
            log.info("POS request refused", extra={"source": source, "status": exc.status, "reason": str(exc)[:300]})
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail()}, headers=exc.headers)
        except ClientDisconnect:
            # The sender went away mid-body: nothing was published, and nobody reads this answer.
            POS_REQUESTS.labels(source, "499").inc()
            log.info("POS request abandoned by the client while sending its body", extra={"source": source})
            return Response(status_code=400)
        except (_Unavailable, KafkaException, redis.RedisError, Busy) as exc:
            POS_REQUESTS.labels(source, "503").inc()
            detail = exc.detail if isinstance(exc, _Unavailable) else f"POS events not stored, retry: {type(exc).__name__}: {exc}"
            log.warning("POS events not stored", extra={"source": source, "error": detail})
            return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": "1"})
        published = sum(1 for a in answers if not a.duplicate)
        POS_EVENTS.labels(source, "published").inc(published)
        POS_EVENTS.labels(source, "duplicate").inc(len(answers) - published)
        POS_EVENTS.labels(source, "skipped").inc(len(parse.notes))
        status = 202 if published else 200
        POS_REQUESTS.labels(source, str(status)).inc()
        if collector.single and len(answers) == 1:
            skipped = {"skipped": _notes(parse.notes)} if parse.notes else {}
            return JSONResponse(status_code=status, content={**answers[0].detail(collector.ready[0]), **skipped})
        if not answers and adapter.auth == "signature":
            reason = "; ".join(note.reason for note in parse.notes) or "nothing to publish"
            return JSONResponse(status_code=200, content={"published": False, "reason": reason, "skipped": _notes(parse.notes)})
        return StreamingResponse(_batch_answer(collector.ready, answers, parse.notes), status_code=status, media_type="application/json")

    key_parameter = {"name": pos_keys.HEADER, "in": "header", "required": False, "schema": {"type": "string", "maxLength": 256},
                     "description": "the store's POS key (or Authorization: Bearer <key>)"}
    answers: dict[int | str, dict] = {
        "200": {"description": "nothing new published: every event was a duplicate (`duplicate: true`), or nothing to publish (`skipped`, with why)"},
        "202": {"description": "published to sw.pos.v1: per event its topic, partition and offset"},
        "401": {"description": "no key, an unknown key, or a signature that does not match"},
        "403": {"description": "the key may not publish for a store named in the body"},
        "413": {"description": "the body is over the size limit"},
        "415": {"description": "wrong Content-Type"},
        "422": {"description": "what is wrong, by field (and by event index in a batch or POSLog file)"},
        "503": {"description": "the broker or Redis is unavailable; retry (events already stored are answered as duplicates)"},
    }

    def body(content_type: str, schema: dict) -> dict:
        return {"required": True, "content": {content_type: {"schema": schema}}}

    @router.post("/v1/pos/events", status_code=202, responses=answers, openapi_extra={
        "parameters": [key_parameter],
        "requestBody": body("application/json", {"oneOf": [{"$ref": REF.format(model="PosEventIn")}, {"$ref": REF.format(model="PosBatchIn")}]})})
    async def post_pos_events(request: Request) -> Response:
        """One POS event, or a batch `{"events": [...]}`, as ShrinkWatch's canonical JSON."""
        return await handle(request, gateway.canonical, gateway.max_bytes, "SW_API_POS_MAX_BYTES")

    @router.post("/v1/pos/poslog", status_code=202, responses=answers, openapi_extra={
        "parameters": [key_parameter], "requestBody": body("application/xml", {"type": "string", "description": "an ARTS POSLog document"})})
    async def post_poslog(request: Request) -> Response:
        """An ARTS POSLog document (one Transaction or a day's log), parsed as it streams in."""
        return await handle(request, gateway.poslog, gateway.poslog_max_bytes, "SW_API_POS_POSLOG_MAX_BYTES")

    def header(name: str, required: bool = True) -> dict:
        return {"name": name, "in": "header", "required": required, "schema": {"type": "string", "maxLength": 256}}

    @router.post("/v1/pos/webhooks/shopify", status_code=202, responses=answers, openapi_extra={
        "parameters": [header(HMAC_HEADER), header(SHOP_HEADER), header(TOPIC_HEADER, False), header(WEBHOOK_ID_HEADER, False)],
        "requestBody": body("application/json", {"$ref": REF.format(model="ShopifyRefund")})})
    async def post_shopify(request: Request) -> Response:
        """Shopify's refunds/create webhook, verified with the shop's secret."""
        return await handle(request, gateway.shopify, gateway.max_bytes, "SW_API_POS_MAX_BYTES")

    @router.post("/v1/pos/webhooks/square", status_code=202, responses=answers, openapi_extra={
        "parameters": [header(SIGNATURE_HEADER)], "requestBody": body("application/json", {"$ref": REF.format(model="SquareEvent")})})
    async def post_square(request: Request) -> Response:
        """Square's refund.created and refund.updated webhooks; COMPLETED refunds are published."""
        return await handle(request, gateway.square, gateway.max_bytes, "SW_API_POS_MAX_BYTES")

    return router


def openapi_schemas() -> dict:
    """The request bodies' schemas, for the OpenAPI document's components (the routes read raw bodies)."""
    _, top = models_json_schema([(m, "validation") for m in (PosEventIn, PosBatchIn, ShopifyRefund, SquareEvent)], ref_template=REF)
    return top.get("$defs", {})
