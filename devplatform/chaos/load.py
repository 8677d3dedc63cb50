"""The POS side of a chaos run: tills ringing up sales, frauds at known times, and the ledger of both.

Every store's till 1 sells something every few seconds; every `fraud_every_s` a store rings up one
fraud, in turn: a refund at till 2 (nobody is ever at that counter: `refund_without_customer`), a
post-void of a tendered sale at till 1 (`post_void`), a refund at till 1 to the employee's own card
(`employee_own_card`). Each alert that must follow is known before it is sent: its id is the
correlator's deterministic id for that rule and event.

The tills post to the store-facing service as a till does: a refused connection, a 5xx, a 409 (a
copy in flight) or a 429 is tried again after a pause, the same event id each time (the gateway
publishes it once), for up to `give_up_s`. Every event is one line of the ledger (JSON lines) with
what it expects, when it was rung up, when it was accepted and after how many tries.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from devplatform.chaos.chain import CLIP_REGISTER, EMPLOYEE, EMPLOYEE_CARD, EMPTY_REGISTER, store_id
from services.correlator.rules import EMPLOYEE_OWN_CARD, POST_VOID, REFUND_WITHOUT_CUSTOMER, alert_id

FRAUD_KINDS = (REFUND_WITHOUT_CUSTOMER, POST_VOID, EMPLOYEE_OWN_CARD)


@dataclass
class TillEvent:
    """One POS event of the plan, and what became of it (the ledger's line)."""

    at_s: float
    body: dict
    expect_rule: str = ""
    expect_alert_id: str = ""
    rung_ms: int = 0
    accepted_ms: int = 0
    status: int = 0
    tries: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return str(self.body["event_id"])


def plan(stores: int, duration_s: float, fraud_every_s: float, sale_every_s: float, seed: int = 1, frauds_from_s: float = 0.0) -> list[TillEvent]:
    """The events of a run, in time order: sales throughout, frauds from `frauds_from_s +
    fraud_every_s / 2` on (once the cameras' frames are in the recorder's buffer), staggered across
    stores, each kind in turn."""
    rng = random.Random(seed)
    events: list[TillEvent] = []
    for index in range(stores):
        sid = store_id(index)
        at, number = rng.uniform(1, sale_every_s), 0
        while at < duration_s:
            number += 1
            price = rng.choice((499, 1299, 2599, 4599))
            events.append(TillEvent(at, {"event_id": f"{sid}-sale-{number:05d}", "type": "sale", "store_id": sid, "register_id": CLIP_REGISTER,
                                         "transaction_id": f"{sid}-T-{number:05d}", "employee_id": "emp-1", "currency": "GBP", "total_minor": price,
                                         "tender": "card", "items": [{"sku": "SKU-SOCKS", "description": "Socks", "quantity": 1, "unit_price_minor": price}]}))
            at += rng.uniform(0.5, 1.5) * sale_every_s
        at, number = frauds_from_s + fraud_every_s / 2 + index * fraud_every_s / max(1, stores), 0
        while at < duration_s:
            kind = FRAUD_KINDS[(number + index) % len(FRAUD_KINDS)]
            number += 1
            events.append(_fraud(kind, sid, number, at))
            at += fraud_every_s
    return sorted(events, key=lambda e: e.at_s)


def _fraud(kind: str, sid: str, number: int, at_s: float) -> TillEvent:
    event_id = f"{sid}-fraud-{number:04d}"
    item = [{"sku": "SKU-DRILL", "description": "Cordless drill", "quantity": 1, "unit_price_minor": 18999}]
    body: dict = {"event_id": event_id, "store_id": sid, "currency": "GBP", "total_minor": 18999, "items": item, "transaction_id": f"{sid}-F-{number:04d}"}
    if kind == REFUND_WITHOUT_CUSTOMER:
        body.update(type="refund", register_id=EMPTY_REGISTER, employee_id="emp-2", original_transaction_id=f"{sid}-OLD-{number:04d}")
    elif kind == POST_VOID:
        body.update(type="void", register_id=CLIP_REGISTER, employee_id="emp-1", after_tender=True, original_transaction_id=f"{sid}-T-{number:05d}")
    else:
        body.update(type="refund", register_id=CLIP_REGISTER, employee_id=EMPLOYEE, card_token=EMPLOYEE_CARD, tender="card")
    return TillEvent(at_s, body, kind, alert_id(kind, sid, body["register_id"], event_id))


class Tills:
    """Plays the plan against the store-facing service in a thread, writing the ledger as it goes."""

    def __init__(self, pos_url: str, keys: dict[str, str], events: list[TillEvent], ledger: Path, give_up_s: float = 180.0,
                 echo: Callable[[str], object] = print) -> None:
        self.pos_url, self.keys, self.events, self.ledger = pos_url, keys, events, ledger
        self.give_up_s, self.echo = give_up_s, echo
        self.stop = threading.Event()
        self.started = 0.0
        self._thread = threading.Thread(target=self._run, name="tills", daemon=True)

    def start(self) -> None:
        self.started = time.time()
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client, self.ledger.open("a") as out:
            for event in self.events:
                wait = self.started + event.at_s - time.time()
                if wait > 0 and self.stop.wait(wait):
                    return
                if self.stop.is_set():
                    return
                self._ring_up(client, event)
                out.write(json.dumps(asdict(event)) + "\n")
                out.flush()

    def _ring_up(self, client: httpx.Client, event: TillEvent) -> None:
        event.rung_ms = int(time.time() * 1000)
        # The till's clock stamps the event when it is rung up; a retry resends the same event.
        event.body["event_time"] = datetime.fromtimestamp(event.rung_ms / 1000, UTC).isoformat()
        # The till's own request id (the same on a retry): the gateway takes it as the correlation id
        # that every service logs and the page carries.
        headers = {"Authorization": f"Bearer {self.keys[event.body['store_id']]}", "X-Request-Id": event.event_id}
        deadline = time.monotonic() + self.give_up_s
        while not self.stop.is_set():
            event.tries += 1
            pause = 1.0
            try:
                response = client.post(f"{self.pos_url}/v1/pos/events", json=event.body, headers=headers)
                event.status = response.status_code
                if response.status_code < 300:
                    event.accepted_ms = int(time.time() * 1000)
                    return
                if response.status_code not in (409, 429) and response.status_code < 500:
                    event.errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                pause = min(5.0, float(response.headers.get("Retry-After", "1")))
                event.errors.append(str(response.status_code))
            except httpx.HTTPError as exc:
                event.status = 0
                event.errors.append(type(exc).__name__)
            if time.monotonic() > deadline:
                self.echo(f"  till gave up on {event.event_id} after {event.tries} tries: {event.errors[-1]}")
                return
            self.stop.wait(pause)


def read_ledger(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
