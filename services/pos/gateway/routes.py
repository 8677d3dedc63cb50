"""The POS gateway's routes: one per input format, one way through for all of them.

A request is authenticated (a per-store key, or the vendor's signature checked by its adapter),
its content type and size are checked, and its body is fed to the adapter while it arrives (the
size limit counts the bytes read, whatever Content-Length said). Every event is then checked
against the store config and the key's stores; nothing is published unless every event passes.
Each event is claimed in Redis (per source and store), produced to sw.pos.v1, and recorded as
published once the broker has acknowledged it, so the same event sent twice is published once; a
copy sent while the first is still being published is answered 409 with Retry-After.

Parsing and checking run in worker threads, never on the event loop. Publishing (Redis claims, the
broker's acknowledgements: seconds in a broker hiccup) runs in the gateway's own bounded thread
pool, so a slow broker never takes the threads that the service's other route (return assessment
at the till) runs on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis
from confluent_kafka import KafkaError, KafkaException, Producer
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect

from services.pos.gateway import keys as pos_keys
from services.pos.gateway.base import Note, Parsed, PosAdapter, PosInputError, Problem
from services.pos.gateway.canonical import CanonicalAdapter, PosBatchIn, PosEventIn, check_context
from services.pos.gateway.dedupe import Busy, Dedupe, EventRef
from services.pos.gateway.keys import PosKey, PosKeys
from services.pos.gateway.poslog import MAX_PROBLEMS, PosLogAdapter
from services.pos.gateway.shopify import HMAC_HEADER, SHOP_HEADER, TOPIC_HEADER, WEBHOOK_ID_HEADER, ShopifyAdapter, ShopifyRefund
from services.pos.gateway.square import SIGNATURE_HEADER, SquareAdapter, SquareEvent
from services.pos.httpinput import capped_body_chunks
from services.shared import topics
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.correlation import CORRELATION_HEADER, correlation_id_of
from services.shared.httpguard import RateLimiter, bearer_token
from services.shared.kafka import produce_all_and_wait
from services.shared.serde import encode
from services.shared.storeconfig import StoreConfig

log = logging.getLogger(__name__)
POS_EVENTS = Counter("sw_pos_events_total", "POS events by source and outcome (published, duplicate, skipped)", ["source", "outcome"])
POS_REQUESTS = Counter("sw_pos_requests_total", "POS gateway requests by source and HTTP status", ["source", "status"])
REF = "#/components/schemas/{model}"
# Signed webhooks are refused once older than the dedupe window less the allowed clock skew and this:
# their signatures carry no time, so only the dedupe record tells a replay from a first delivery.
REPLAY_MARGIN_S = 3600.0


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
    # Requests publishing at once; more wait their turn without taking the api's shared threads.
    publish_threads: int = 4
    # Requests per POS key (a store's tills and back office); None: no limit.
    limiter: RateLimiter | None = None
    canonical: CanonicalAdapter = field(init=False)
    poslog: PosLogAdapter = field(init=False)
    publisher: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.canonical = CanonicalAdapter(self.max_batch)
        self.poslog = PosLogAdapter(self.config)
        self.publisher = ThreadPoolExecutor(max_workers=self.publish_threads, thread_name_prefix="pos-publish")

    @property
    def replay_window_s(self) -> float:
        """How old a signed webhook's event may be and still be published: younger than the dedupe
        window by more than any clock skew, so a replay of one already published is still remembered."""
        ttl = float(self.dedupe.ttl_s)
        return max(ttl - self.max_clock_skew_s - REPLAY_MARGIN_S, ttl / 2)

    def close(self) -> None:
        """With the app: publishes already accepted finish (their claims recorded), then the threads end."""
        self.publisher.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class _Ready:
    """A checked event, already serialised: a POSLog file's events are held this small until published."""

    event_id: str
    store_id: str
    key: str
    value: bytes
    index: int | None
    # A signed vendor's ids are global (a Shopify refund id names one refund in all of Shopify): the
    # claim is not scoped by store, so a webhook signed for one shop and replayed under another
    # shop's domain (two shops sharing an app's secret) is a duplicate, not a refund in a second store.
    global_id: bool = False

    @property
    def ref(self) -> EventRef:
        return ("*" if self.global_id else self.store_id), self.event_id


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
# How long a request waits for the broker's acknowledgements (plus a little per event of a slice).
PUBLISH_WAIT_S = 10.0


def producer_settings() -> dict[str, object]:
    """The gateway's producer gives up on a message before the request stops waiting for it. An
    event the request answered 503 for, and gave its claim back, is then never delivered later from
    the producer's queue (a leader elected after the wait would otherwise receive it), so the POS
    system's retry publishes the only copy."""
    return {"message.timeout.ms": int((PUBLISH_WAIT_S - 1.0) * 1000)}


def publish(gateway: PosGateway, source: str, ready: list[_Ready]) -> list[_Answer]:
    """Claim, produce and record each event, slice by slice; per event where it is and whether it
    was a duplicate. A failure stops at its slice: what was stored stays recorded, the rest is given back."""
    answers: list[_Answer] = []
    seen_here: dict[EventRef, _Answer] = {}
    for start in range(0, len(ready), SLICE):
        part = ready[start:start + SLICE]
        try:
            fresh = _publish_slice(gateway, source, [r for r in part if r.ref not in seen_here])
        except _Unavailable as exc:
            stored = sum(1 for a in answers if not a.duplicate)
            raise _Unavailable(f"{exc.detail}; {stored} of {len(ready)} event(s) stored before it: retry, they are answered as duplicates") from None
        except Busy as exc:
            stored = sum(1 for a in answers if not a.duplicate)
            if stored:
                raise Busy(f"{exc}; {stored} of {len(ready)} event(s) stored before it: retry, they are answered as duplicates") from None
            raise
        for item in part:
            earlier = seen_here.get(item.ref)
            answer = _Answer(True, earlier.partition, earlier.offset) if earlier is not None else fresh[item.ref]
            seen_here.setdefault(item.ref, answer)
            answers.append(answer)
    return answers


def _publish_slice(gateway: PosGateway, source: str, part: list[_Ready]) -> dict[EventRef, _Answer]:
    timeout = PUBLISH_WAIT_S + len(part) / 500
    token, seen = gateway.dedupe.claim(source, [r.ref for r in part], hold_s=int(timeout) + 60)
    first = {r.ref: r for r in reversed(part)}
    to_send = [first[ref] for ref, where in seen.items() if where is None]
    try:
        results = produce_all_and_wait(gateway.producer, topics.POS, [(r.key, r.value) for r in to_send], timeout=timeout)
    except KafkaException as exc:
        gateway.dedupe.release(source, token, [r.ref for r in to_send])
        raise _Unavailable(f"POS events not stored ({exc})") from None
    stored: dict[EventRef, dict] = {}
    failed: list[tuple[EventRef, KafkaError]] = []
    for item, result in zip(to_send, results, strict=True):
        if isinstance(result, KafkaError):
            failed.append((item.ref, result))
        else:
            stored[item.ref] = {"partition": result.partition(), "offset": result.offset()}
    if stored:
        gateway.dedupe.published(source, stored)
    if failed:
        gateway.dedupe.release(source, token, [ref for ref, _ in failed])
        raise _Unavailable(f"{len(failed)} event(s) not stored ({failed[0][1].str()})")
    answers = {}
    for ref, where in seen.items():
        location = stored.get(ref) or where or {}
        answers[ref] = _Answer(ref not in stored, int(location.get("partition", -1)), int(location.get("offset", -1)))
    return answers


def _presented_key(request: Request) -> str:
    key = request.headers.get(pos_keys.HEADER, "").strip()
    if key:
        return key
    return bearer_token(request) or ""


def authenticate(request: Request, keys: PosKeys) -> PosKey:
    challenge = {"WWW-Authenticate": "Bearer"}
    if not len(keys):
        raise PosInputError(401, "no POS keys are configured on this api (SW_POS_KEYS_FILE)", challenge)
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
    """Checks each event as its adapter hands it over, and keeps it serialised until the end.
    Runs in a worker thread with the parse (a POSLog chunk may hold thousands of events)."""

    def __init__(self, gateway: PosGateway, holder: PosKey | None, correlation_id: str, signed: bool = False) -> None:
        self.gateway, self.holder, self.signed = gateway, holder, signed
        self.correlation_id = correlation_id
        self.ready: list[_Ready] = []
        self.problems: list[Problem] = []
        self.notes: list[Note] = []
        self.forbidden: set[str] = set()
        self.single = False

    def parse(self, step: Callable[[], list[Parsed]]) -> None:
        """Parse a chunk (or the end of the body) and take its events: one call for a worker thread."""
        self.take(step())

    def take(self, parsed: list[Parsed]) -> None:
        for item in parsed:
            event = item.event
            if self.holder is not None and not self.holder.may_publish(event.store_id):
                self.forbidden.add(event.store_id)
                continue
            if len(self.problems) < MAX_PROBLEMS:
                self.problems += check_context(item, self.gateway.config, self.gateway.max_clock_skew_s)
            if self.signed and self._too_old(item):
                continue
            message = event.to_proto()
            message.correlation_id = self.correlation_id
            self.single = item.index is None
            self.ready.append(_Ready(event.event_id, event.store_id, f"{message.store_id}:{message.register_id}", encode(message), item.index, self.signed))

    def _too_old(self, item: Parsed) -> bool:
        """A vendor's signature carries no time, so a captured webhook replayed once its id has left
        the dedupe window would be published again: an event that old is answered, not published."""
        age = time.time() - item.event.event_time.timestamp()
        window = self.gateway.replay_window_s
        if age <= window:
            return False
        event = item.event
        self.notes.append(Note(f"{event.type} {event.transaction_id or event.event_id} was created {age / 86400:.1f} days ago, more than "
                               f"{window / 86400:.1f} days (SW_POS_DEDUPE_DAYS less a margin): a copy that old cannot be told from a replay "
                               "of one already published, so it is not published", item.index, event.transaction_id or event.event_id))
        return True


async def _read(request: Request, parse_feed: Callable[[bytes], list[Parsed]], collector: _Collector, limit: int, setting: str) -> None:
    async for chunk in capped_body_chunks(request, limit, setting):
        if chunk:
            await asyncio.to_thread(collector.parse, functools.partial(parse_feed, chunk))


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


async def _publish(gateway: PosGateway, source: str, ready: list[_Ready]) -> list[_Answer]:
    """`publish` in the gateway's own threads (as asyncio.to_thread would, context included)."""
    call = functools.partial(contextvars.copy_context().run, publish, gateway, source, ready)
    return await asyncio.get_running_loop().run_in_executor(gateway.publisher, call)


def pos_router(gateway: PosGateway) -> APIRouter:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(gateway.close)

    router = APIRouter(tags=["pos"], lifespan=lifespan)

    async def handle(request: Request, adapter: PosAdapter, limit: int, setting: str) -> Response:
        """Every answer names the request's correlation id, which its events carry to their alerts."""
        correlation_id = correlation_id_of(request.headers)
        response = await answer(request, adapter, limit, setting, correlation_id)
        response.headers[CORRELATION_HEADER] = correlation_id
        return response

    async def answer(request: Request, adapter: PosAdapter, limit: int, setting: str, correlation_id: str) -> Response:
        source = adapter.source
        logged = {"source": source, "correlation_id": correlation_id}
        try:
            holder = authenticate(request, gateway.keys) if adapter.auth == "key" else None
            wait = gateway.limiter.wait_s(holder.name) if holder is not None and gateway.limiter is not None else 0.0
            if wait > 0:
                raise PosInputError(429, f"key {holder.name!r} sends too often (SW_POS_EVENTS_PER_KEY_PER_S); retry in {wait:.1f} s",  # type: ignore[union-attr]
                                    {"Retry-After": str(max(1, round(wait + 0.5)))})
            _check_content_type(request, adapter)
            parse = adapter.begin(request.headers)
            collector = _Collector(gateway, holder, correlation_id, signed=adapter.auth == "signature")
            await _read(request, parse.feed, collector, limit, setting)
            await asyncio.to_thread(collector.parse, parse.close)
            if collector.forbidden and holder is not None:
                raise PosInputError(403, f"key {holder.name!r} may not publish for store(s) {', '.join(sorted(collector.forbidden))}")
            if collector.problems:
                raise PosInputError(422, collector.problems[:MAX_PROBLEMS])
            answers = await _publish(gateway, source, collector.ready) if collector.ready else []
        except PosInputError as exc:
            POS_REQUESTS.labels(source, str(exc.status)).inc()
            log.info("POS request refused", extra={**logged, "status": exc.status, "reason": str(exc)[:300]})
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail()}, headers=exc.headers)
        except ClientDisconnect:
            # The sender went away mid-body: nothing was published, and nobody reads this answer.
            POS_REQUESTS.labels(source, "499").inc()
            log.info("POS request abandoned by the client while sending its body", extra=logged)
            return Response(status_code=400)
        except Busy as exc:
            POS_REQUESTS.labels(source, "409").inc()
            log.info("POS events being published by another request", extra={**logged, "reason": str(exc)[:300]})
            return JSONResponse(status_code=409, content={"detail": str(exc)}, headers={"Retry-After": "1"})
        except (_Unavailable, KafkaException, redis.RedisError) as exc:
            POS_REQUESTS.labels(source, "503").inc()
            detail = exc.detail if isinstance(exc, _Unavailable) else f"POS events not stored, retry: {type(exc).__name__}: {exc}"
            log.warning("POS events not stored", extra={**logged, "error": detail})
            return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": "1"})
        notes = parse.notes + collector.notes
        published = sum(1 for a in answers if not a.duplicate)
        POS_EVENTS.labels(source, "published").inc(published)
        POS_EVENTS.labels(source, "duplicate").inc(len(answers) - published)
        POS_EVENTS.labels(source, "skipped").inc(len(notes))
        status = 202 if published else 200
        POS_REQUESTS.labels(source, str(status)).inc()
        if answers:
            log.info("POS events published", extra={**logged, "published": published, "duplicates": len(answers) - published,
                                                    "event_ids": [item.event_id for item in collector.ready[:20]]})
        if collector.single and len(answers) == 1:
            skipped = {"skipped": _notes(notes)} if notes else {}
            return JSONResponse(status_code=status, content={**answers[0].detail(collector.ready[0]), **skipped})
        if not answers and adapter.auth == "signature":
            reason = "; ".join(note.reason for note in notes) or "nothing to publish"
            return JSONResponse(status_code=200, content={"published": False, "reason": reason, "skipped": _notes(notes)})
        return StreamingResponse(_batch_answer(collector.ready, answers, notes), status_code=status, media_type="application/json")

    key_parameter = {"name": pos_keys.HEADER, "in": "header", "required": False, "schema": {"type": "string", "maxLength": 256},
                     "description": "the store's POS key (or Authorization: Bearer <key>)"}
    answers: dict[int | str, dict] = {
        "200": {"description": "nothing new published: every event was a duplicate (`duplicate: true`), or nothing to publish (`skipped`, with why: "
                       "for a webhook, also a refund older than the dedupe window less a margin)"},
        "202": {"description": "published to sw.pos.v1: per event its topic, partition and offset"},
        "401": {"description": "no key, an unknown key, or a signature that does not match"},
        "403": {"description": "the key may not publish for a store named in the body"},
        "409": {"description": "another request is publishing some of these events right now; retry after Retry-After (then a duplicate)"},
        "413": {"description": "the body is over the size limit"},
        "415": {"description": "wrong Content-Type"},
        "429": {"description": "this key sent more requests than SW_POS_EVENTS_PER_KEY_PER_S allows; retry after Retry-After"},
        "422": {"description": "what is wrong, by field (and by event index in a batch or POSLog file; a POSLog Transaction over its element or nesting limit)"},
        "503": {"description": "the broker or Redis is unavailable; retry (events already stored are answered as duplicates)"},
    }

    def body(content_type: str, schema: dict) -> dict:
        return {"required": True, "content": {content_type: {"schema": schema}}}

    @router.post("/v1/pos/events", status_code=202, responses=answers, openapi_extra={
        "parameters": [key_parameter],
        "requestBody": body("application/json", {"oneOf": [{"$ref": REF.format(model="PosEventIn")}, {"$ref": REF.format(model="PosBatchIn")}]})})
    async def post_pos_events(request: Request) -> Response:
        """One POS event, or a batch `{"events": [...]}`, as ShrinkWatch's canonical JSON."""
        return await handle(request, gateway.canonical, gateway.max_bytes, "SW_POS_MAX_BYTES")

    @router.post("/v1/pos/poslog", status_code=202, responses=answers, openapi_extra={
        "parameters": [key_parameter], "requestBody": body("application/xml", {"type": "string", "description": "an ARTS POSLog document"})})
    async def post_poslog(request: Request) -> Response:
        """An ARTS POSLog document (one Transaction or a day's log), parsed as it streams in."""
        return await handle(request, gateway.poslog, gateway.poslog_max_bytes, "SW_POS_POSLOG_MAX_BYTES")

    def header(name: str, required: bool = True) -> dict:
        return {"name": name, "in": "header", "required": required, "schema": {"type": "string", "maxLength": 256}}

    @router.post("/v1/pos/webhooks/shopify", status_code=202, responses=answers, openapi_extra={
        "parameters": [header(HMAC_HEADER), header(SHOP_HEADER), header(TOPIC_HEADER, False), header(WEBHOOK_ID_HEADER, False)],
        "requestBody": body("application/json", {"$ref": REF.format(model="ShopifyRefund")})})
    async def post_shopify(request: Request) -> Response:
        """Shopify's refunds/create webhook, verified with the shop's secret."""
        return await handle(request, gateway.shopify, gateway.max_bytes, "SW_POS_MAX_BYTES")

    @router.post("/v1/pos/webhooks/square", status_code=202, responses=answers, openapi_extra={
        "parameters": [header(SIGNATURE_HEADER)], "requestBody": body("application/json", {"$ref": REF.format(model="SquareEvent")})})
    async def post_square(request: Request) -> Response:
        """Square's refund.created and refund.updated webhooks; COMPLETED refunds are published."""
        return await handle(request, gateway.square, gateway.max_bytes, "SW_POS_MAX_BYTES")

    return router


def openapi_schemas() -> dict:
    """The request bodies' schemas, for the OpenAPI document's components (the routes read raw bodies)."""
    _, top = models_json_schema([(m, "validation") for m in (PosEventIn, PosBatchIn, ShopifyRefund, SquareEvent)], ref_template=REF)
    return top.get("$defs", {})
