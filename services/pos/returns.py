"""Return authorization at the till: `POST /v1/returns/assess` answers accept, warn or deny, with reasons.

The till asks while the customer waits, so everything the answer needs is one Redis round trip away:

- `PosHistory` keeps a projection of sw.pos.v1 (the api reads it with its own consumer group): per
  card or customer token the chain's returns of the last 120 days, per employee their sales and
  refunds, per store and transaction the sale (for the receipt's link). The correlator's tables
  hold the same facts for its rules, but inside Faust workers (RocksDB, partitioned by key, no
  query path): a till must not wait on a stream worker's event loop, nor fail with it.
- The register's camera, from the camera status the recorder keeps in Redis: whether its customer
  zones hold a person and its merchandise zones an object right now (a few seconds old at most;
  older is "cannot tell").
- The return-risk RandomForest (services/shared/riskmodel.py), loaded at start; without one (missing,
  refused) the rules below decide, and every answer carries the warning.

The store's policy (services/shared/returnpolicy.py) turns the score into the outcome. The decision
is kept in Redis for the dashboard and published on sw.returns.v1 (without waiting: a broker that
is down must not keep a customer at the till; librdkafka retries it, and failures are counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from confluent_kafka import KafkaError, Message, Producer
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.pos.gateway.base import PosInputError
from services.pos.gateway.canonical import PosEventIn, context_errors
from services.pos.gateway.keys import HEADER, PosKeys
from services.pos.gateway.routes import authenticate
from services.pos.httpinput import read_capped_body
from services.shared import topics
from services.shared.cameras import CAMERA_STATUS_HASH
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.contracts.return_decision_pb2 import ReturnDecision, ReturnOutcome, ReturnReason
from services.shared.httpguard import RateLimiter
from services.shared.kafka import Outcome, Poison, RetryableError
from services.shared.returndecisions import keep_decision, view
from services.shared.returnpolicy import ALWAYS_WARN_WORDS, ReturnPolicy
from services.shared.riskfeatures import NOT_APPLICABLE, RETURN_FEATURES, CameraView, EmployeeTransaction, OriginalSale, PastReturn, ReturnContext, return_features
from services.shared.riskmodel import LoadResult, RiskModel
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import StoreConfig

log = logging.getLogger("api.returns")

DAY_MS = 86_400_000
HISTORY_DAYS = 120
# A camera status (or a zone's analysis) older than this cannot say who is at the counter now.
CAMERA_FRESH_MS = 10_000
OUTCOMES = {"accept": ReturnOutcome.RETURN_OUTCOME_ACCEPT, "warn": ReturnOutcome.RETURN_OUTCOME_WARN, "deny": ReturnOutcome.RETURN_OUTCOME_DENY}
RETURN_TYPES = (PosEventType.POS_EVENT_TYPE_RETURN, PosEventType.POS_EVENT_TYPE_REFUND)
# Without a model: what the rules score, and where they warn and deny.
RULES_WARN_AT, RULES_DENY_AT = 0.3, 0.6
# Below this push towards risk, a model's contribution is not given as a reason for an accepted return.
ACCEPT_REASON_MIN = 0.02

DECISIONS = Counter("sw_returns_decisions_total", "Returns assessed at the till, by outcome and what scored them", ["outcome", "scored_by"])
PUBLISH_FAILED = Counter("sw_returns_decisions_unpublished_total", "Decisions the broker did not take (kept in Redis; see the log)")
ASSESS_SECONDS = Histogram("sw_returns_assess_seconds", "Time to assess a return, history read to decision", buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))


def token_key(token: str) -> str:
    return f"sw:hist:token:{token}"


def employee_key(employee_id: str) -> str:
    return f"sw:hist:employee:{employee_id}"


def sale_key(store_id: str, transaction_id: str) -> str:
    return f"sw:hist:sale:{store_id}:{transaction_id}"


def _tokens(event: PosEvent) -> list[str]:
    return sorted({t for t in (event.card_token, event.customer_token) if t})


class PosHistory:
    """The chain's POS history the till's question needs, kept in Redis from sw.pos.v1."""

    def __init__(self, client: redis.Redis, config: StoreConfig, keep_days: float = HISTORY_DAYS) -> None:
        self.redis = client
        self.config = config
        self.keep_ms = int(keep_days * DAY_MS)
        self.employee_tokens = config.employee_tokens()

    def record(self, events: list[PosEvent]) -> None:
        """Idempotent: an entry is its event's JSON, so a replayed event adds nothing."""
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            cutoff = event.event_time_ms - self.keep_ms
            if event.type in RETURN_TYPES:
                entry = json.dumps({"e": event.event_id, "s": event.store_id, "m": abs(event.total_minor), "r": bool(event.original_transaction_id)},
                                   sort_keys=True)
                for token in _tokens(event):
                    pipe.zadd(token_key(token), {entry: event.event_time_ms})
                    pipe.zremrangebyscore(token_key(token), "-inf", cutoff)
                    pipe.pexpire(token_key(token), self.keep_ms)
            if event.employee_id and event.type in (*RETURN_TYPES, PosEventType.POS_EVENT_TYPE_SALE):
                own = bool(set(_tokens(event)) & self.employee_tokens.get(event.employee_id, set()))
                entry = json.dumps({"e": event.event_id, "f": event.type in RETURN_TYPES, "o": own}, sort_keys=True)
                pipe.zadd(employee_key(event.employee_id), {entry: event.event_time_ms})
                pipe.zremrangebyscore(employee_key(event.employee_id), "-inf", cutoff)
                pipe.pexpire(employee_key(event.employee_id), self.keep_ms)
            if event.type == PosEventType.POS_EVENT_TYPE_SALE and event.transaction_id:
                sale = json.dumps({"t": event.event_time_ms, "s": event.store_id, "m": abs(event.total_minor)})
                pipe.set(sale_key(event.store_id, event.transaction_id), sale, px=self.keep_ms)
        pipe.execute()

    def handle(self, messages: list[Message]) -> Outcome:
        """The consumer's batch; a poison event is passed over (the correlator keeps sw.pos.v1's DLQ)."""
        events, outcome = [], Outcome()
        for msg in messages:
            try:
                events.append(decode(PosEvent, msg.value(), required=("event_id", "store_id", "event_time_ms")))
            except PoisonMessage as exc:
                outcome.poison.append(Poison(msg, str(exc)))
        try:
            self.record(events)
        except redis.RedisError as exc:
            raise RetryableError(f"redis: {exc}") from None
        return outcome

    def context(self, event: PosEvent, timezone: str, camera: CameraView) -> ReturnContext:
        """The return's ReturnContext, in one pipeline; the assessed event itself is left out of its history."""
        since = event.event_time_ms - 90 * DAY_MS
        tokens = _tokens(event)
        pipe = self.redis.pipeline(transaction=False)
        for token in tokens:
            pipe.zrangebyscore(token_key(token), since, "+inf", withscores=True)
        pipe.zrangebyscore(employee_key(event.employee_id), since, "+inf", withscores=True) if event.employee_id else pipe.echo("")
        pipe.get(sale_key(event.store_id, event.original_transaction_id)) if event.original_transaction_id else pipe.echo("")
        replies = pipe.execute()
        seen: set[str] = set()
        history: list[PastReturn] = []
        for reply in replies[:len(tokens)]:
            for raw, score in reply:
                entry = json.loads(raw)
                if entry["e"] in seen or entry["e"] == event.event_id:
                    continue
                seen.add(entry["e"])
                history.append(PastReturn(int(score), entry["s"], int(entry["m"]), bool(entry["r"])))
        employee: list[EmployeeTransaction] = []
        for raw, score in replies[len(tokens)] or []:
            entry = json.loads(raw)
            if entry["e"] != event.event_id:
                employee.append(EmployeeTransaction(int(score), bool(entry["f"]), bool(entry["o"])))
        sale_raw = replies[len(tokens) + 1]
        sale = None
        if sale_raw:
            found = json.loads(sale_raw)
            sale = OriginalSale(int(found["t"]), found["s"], int(found["m"]))
        return ReturnContext(event=event, timezone=timezone, token_history=history, employee_history=employee,
                             employee_tokens=frozenset(self.employee_tokens.get(event.employee_id, set())), original_sale=sale, camera=camera)


def camera_view(client: redis.Redis, config: StoreConfig, store_id: str, register_id: str, now_ms: int) -> CameraView:
    """Whether the register's camera sees a customer and merchandise at the counter now (None: cannot tell)."""
    register = next((r for r in config.store(store_id).registers if r.id == register_id), None)
    if register is None:
        return CameraView(None, None)
    raw = cast(bytes | None, client.hget(CAMERA_STATUS_HASH, register.camera))
    try:
        status = json.loads(raw) if raw else None
    except ValueError:
        status = None
    if not isinstance(status, dict) or now_ms - int(status.get("last_seen_ms") or 0) > CAMERA_FRESH_MS:
        return CameraView(None, None)
    zones = status.get("zones") or {}

    def any_in(zone_ids: list[str], what: str) -> bool | None:
        fresh = [zones[z] for z in zone_ids if z in zones and int(status["last_frame_ms"]) - int(zones[z].get("at_ms") or 0) <= CAMERA_FRESH_MS]
        return any(int(z.get(what) or 0) > 0 for z in fresh) if fresh else None

    return CameraView(any_in(register.customer_zones, "persons"), any_in(register.merchandise_zones, "objects") if register.merchandise_zones else None)


@dataclass(frozen=True)
class Reason:
    text: str
    feature: str
    weight: float


@dataclass
class Assessment:
    outcome: str
    score: float
    reasons: list[Reason]
    scored_by: str
    warning: str
    warn_at: float
    deny_at: float
    features: dict[str, float] = field(default_factory=dict)


_WORDING = {f.name: f for f in RETURN_FEATURES}


def rules_score(values: dict[str, float]) -> tuple[float, list[Reason]]:
    """Without a model: points for the facts that mark abuse, worded as the model's reasons are."""
    points = [
        ("token_returns_30d", 0.3 if values["token_returns_30d"] >= 4 else 0.0),
        ("token_stores_30d", 0.2 if values["token_stores_30d"] >= 3 else 0.0),
        ("token_no_receipt_90d", 0.2 if values["has_receipt"] == 0 and values["token_no_receipt_90d"] >= 3 else 0.0),
        ("to_employee_own_token", 0.5 if values["to_employee_own_token"] >= 0.5 else 0.0),
        ("customer_present", 0.3 if values["customer_present"] == 0 else 0.0),
        ("merchandise_present", 0.2 if values["merchandise_present"] == 0 else 0.0),
        ("days_since_purchase", 0.1 if values["days_since_purchase"] != NOT_APPLICABLE and values["days_since_purchase"] > 80 else 0.0),
    ]
    reasons = [Reason(_WORDING[name].words(values), name, weight) for name, weight in points if weight > 0]
    return min(1.0, sum(weight for _, weight in points)), sorted(reasons, key=lambda r: -r.weight)


def _policy_reasons(values: dict[str, float], policy: ReturnPolicy) -> list[Reason]:
    triggered = {
        "no_receipt": values["has_receipt"] == 0,
        "nobody_at_counter": values["customer_present"] == 0,
        "no_merchandise": values["merchandise_present"] == 0,
        # Who is at the counter; a register with no merchandise zone is not "unknown" for that alone.
        "camera_unknown": values["customer_present"] == NOT_APPLICABLE,
        "to_employee_own_token": values["to_employee_own_token"] >= 0.5,
        "cash": values["tender_cash"] >= 0.5,
    }
    reasons = [Reason(ALWAYS_WARN_WORDS[c], f"policy:{c}", 0.0) for c in policy.always_warn if triggered[c]]
    if policy.warn_cash_over_minor and values["tender_cash"] >= 0.5 and values["amount"] * 100 > policy.warn_cash_over_minor:
        reasons.append(Reason(f"store policy: cash refunds over {policy.warn_cash_over_minor / 100:.2f} are checked", "policy:warn_cash_over", 0.0))
    return reasons


def decide(values: dict[str, float], policy: ReturnPolicy, model: RiskModel | None, warning: str) -> Assessment:
    """Score (the model, else the rules), then the store's thresholds and always-warn conditions."""
    if model is not None:
        scored = model.score(values)
        score = scored.probability
        reasons = [Reason(r.text, r.feature, r.contribution) for r in scored.reasons]
        thresholds = dict(model.thresholds)
        warn_at, deny_at = thresholds.get("warn", RULES_WARN_AT), thresholds.get("deny", RULES_DENY_AT)
        scored_by = f"model {model.version}"
    else:
        score, reasons = rules_score(values)
        warn_at, deny_at, scored_by = RULES_WARN_AT, RULES_DENY_AT, "rules"
    deny_at = policy.deny_at if policy.deny_at is not None else deny_at
    # A store that sets only one threshold must not end up warning above where it denies.
    warn_at = min(policy.warn_at if policy.warn_at is not None else warn_at, deny_at)
    outcome = "deny" if score >= deny_at and not policy.never_deny else "warn" if score >= warn_at else "accept"
    if score >= deny_at and policy.never_deny:
        reasons.append(Reason("store policy: the system never refuses; staff decide", "policy:never_deny", 0.0))
    if outcome == "accept":
        # An accepted return's top contributions are mostly noise ("a return of 18.99"): only real pushes are reasons.
        reasons = [r for r in reasons if r.weight >= ACCEPT_REASON_MIN]
    conditions = _policy_reasons(values, policy)
    if conditions and outcome == "accept":
        outcome = "warn"
    reasons += conditions
    if not reasons and outcome == "accept":
        reasons = [Reason("nothing that marks abuse in this card's, this employee's or this sale's history", "", 0.0)]
    # Features that do not apply share a wording ("no original sale to ..."): say each sentence once.
    said: set[str] = set()
    unique = []
    for reason in reasons:
        if reason.text and reason.text not in said:
            said.add(reason.text)
            unique.append(reason)
    return Assessment(outcome, round(score, 4), unique, scored_by, warning, warn_at, deny_at, dict(values))


def decision_id(event: PosEvent) -> str:
    return "rd-" + hashlib.sha256(f"{event.store_id}:{event.event_id}".encode()).hexdigest()[:24]


@dataclass
class ReturnDesk:
    """What the returns routes work with."""

    config: StoreConfig
    history: PosHistory
    producer: Producer
    model_result: LoadResult
    clock: Callable[[], float] = time.time

    @property
    def warning(self) -> str:
        result = self.model_result
        return result.error if result.model is None else "; ".join(result.warnings)

    def assess(self, event: PosEvent) -> tuple[ReturnDecision, Assessment]:
        started = time.perf_counter()
        store = self.config.store(event.store_id)
        now_ms = int(self.clock() * 1000)
        camera = camera_view(self.history.redis, self.config, event.store_id, event.register_id, now_ms)
        values = return_features(self.history.context(event, store.timezone, camera))
        assessment = decide(values, store.returns, self.model_result.model, self.warning)
        decision = ReturnDecision(
            decision_id=decision_id(event), event_id=event.event_id, store_id=event.store_id, register_id=event.register_id,
            employee_id=event.employee_id, transaction_id=event.transaction_id, original_transaction_id=event.original_transaction_id,
            total_minor=event.total_minor, currency=event.currency, outcome=OUTCOMES[assessment.outcome], score=assessment.score,
            reasons=[ReturnReason(text=r.text, feature=r.feature, weight=r.weight) for r in assessment.reasons],
            scored_by=assessment.scored_by, warning=assessment.warning, decided_time_ms=now_ms,
            features={k: float(v) for k, v in values.items()}, warn_at=assessment.warn_at, deny_at=assessment.deny_at)
        self._keep(decision)
        self._publish(decision)
        DECISIONS.labels(assessment.outcome, "model" if self.model_result.model else "rules").inc()
        ASSESS_SECONDS.observe(time.perf_counter() - started)
        return decision, assessment

    def _keep(self, decision: ReturnDecision) -> None:
        keep_decision(self.history.redis, decision)

    def _publish(self, decision: ReturnDecision) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                PUBLISH_FAILED.inc()
                log.error("return decision not published (kept in Redis)", extra={"decision_id": decision.decision_id, "error": str(err)})

        try:
            self.producer.produce(topics.RETURN_DECISIONS, key=decision.store_id, value=encode(decision), on_delivery=delivered)
            self.producer.poll(0)
        except BufferError:
            PUBLISH_FAILED.inc()
            log.error("return decision not published: producer queue full (kept in Redis)", extra={"decision_id": decision.decision_id})



def till_view(decision: ReturnDecision) -> dict[str, Any]:
    """The answer the till gets: outcome, score, reasons in words, thresholds. Not the feature vector
    it was scored on: that is the card's chain-wide return history and the employee's refund figures,
    which a store's key must not be able to look up (HQ sees them on the dashboard)."""
    data = view(decision)
    features = data.pop("features", {})
    seen = {1.0: True, 0.0: False}
    # What the counter's own camera saw is the store's own fact: the till shows it to the cashier.
    data["camera"] = {"customer_present": seen.get(features.get("customer_present", -1.0)),
                      "merchandise_present": seen.get(features.get("merchandise_present", -1.0))}
    return data


def returns_router(desk: ReturnDesk, keys: PosKeys, max_clock_skew_s: float, max_bytes: int, limiter: RateLimiter) -> APIRouter:
    """The till's route. It takes the POS keys of the gateway: a till that may publish a store's
    returns may ask about them, at most at the limiter's rate per key."""
    router = APIRouter(tags=["returns"])
    answers: dict[int | str, dict] = {
        "200": {"description": "the decision: outcome (accept, warn, deny), score, reasons in words, what scored it, a warning where the rules decided"},
        "401": {"description": "no key or an unknown key"},
        "403": {"description": "the key is not for this store"},
        "413": {"description": "the body is over SW_POS_MAX_BYTES"},
        "422": {"description": "what is wrong, by field (an event that is not a return or refund, an unknown store or register)"},
        "429": {"description": "this key asked more often than SW_POS_ASSESS_PER_KEY_PER_S allows; Retry-After says when to ask again"},
        "503": {"description": "Redis is unavailable; retry"},
    }

    @router.post("/v1/returns/assess", responses=answers, openapi_extra={
        "parameters": [{"name": HEADER, "in": "header", "required": False, "schema": {"type": "string", "maxLength": 256},
                        "description": "the store's POS key (or Authorization: Bearer <key>)"}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PosEventIn"}}}}})
    async def assess(request: Request) -> JSONResponse:
        """Accept, warn or deny a return or refund while the customer waits, with the reasons."""
        # The key first, then at most max_bytes of body: a stranger gets a 401, not a parser.
        try:
            holder = authenticate(request, keys)
            wait = limiter.wait_s(holder.name)
            if wait > 0:
                raise PosInputError(429, f"key {holder.name!r} asks too often; retry in {wait:.1f} s", {"Retry-After": str(max(1, round(wait + 0.5)))})
            raw = await read_capped_body(request, max_bytes, "SW_POS_MAX_BYTES")
        except PosInputError as exc:
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail()}, headers=exc.headers)
        try:
            event = PosEventIn.model_validate_json(raw)
        except ValidationError as exc:
            errors = [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors(include_url=False, include_input=False)]
            return JSONResponse(status_code=422, content={"detail": errors})
        if not holder.may_publish(event.store_id):
            return JSONResponse(status_code=403, content={"detail": f"key {holder.name!r} is not for store {event.store_id}"})
        if event.type not in ("return", "refund"):
            return JSONResponse(status_code=422, content={"detail": [{"loc": ["body", "type"], "msg": f"a return or refund is assessed, not a {event.type}",
                                                                      "type": "value_error"}]})
        errors = context_errors(event, desk.config, max_clock_skew_s)
        if errors:
            return JSONResponse(status_code=422, content={"detail": errors})
        decision, _ = await asyncio.to_thread(desk.assess, event.to_proto())
        return JSONResponse(status_code=200, content=till_view(decision))

    return router
