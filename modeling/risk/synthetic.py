"""A synthetic chain to bootstrap the risk models before HQ has judged enough real returns and alerts.

`generate_returns` simulates stores, customers and employees for `days`: sales, legitimate
returns (most with a receipt, at the store of the sale, soon after it, customer and goods at the
counter) and injected abuse with its ground truth:

- `serial_returner`: a card returning every few days at many stores, often without a receipt;
- `receiptless`: goods never bought (stolen) returned without a receipt, mostly for cash;
- `wardrobing`: bought and returned in full just before the return window ends;
- `employee_own_card`: an employee refunding to their own card, mostly with nobody at the counter;
- `sweethearting`: an employee refunding to an accomplice's card, the accomplice at the counter;
- `nobody_at_counter`: an employee keying a refund to a mule card while the camera sees nobody.

Legitimate noise overlaps every pattern (gift returns without a receipt, late and cross-store
returns, phone refunds with nobody at the counter, cameras that cannot see), so the task is not
trivial. Every return's features come from services/shared/riskfeatures.py, computed from the
simulated past only, in event-time order, as the api computes them at the till.

`generate_alerts` makes correlator-like alerts of every rule with HQ verdicts drawn from a known
model of what analysts confirm (rule, store, amount, dwell, anomaly, night hours).

Every number comes from numpy's generator seeded by `seed`; Faker (seeded alike) only names
stores and employees, so the ground truth does not move with a Faker upgrade.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
from services.shared.riskfeatures import (
    DAY_MS,
    CameraView,
    EmployeeTransaction,
    OriginalSale,
    PastReturn,
    ReturnContext,
    TriageContext,
    as_facts,
    feature_names,
    return_features,
    store_confirm_rate,
    triage_features,
    vector,
)
from services.shared.rulesconfig import RULE_NAMES
from services.shared.serde import to_json_dict

PATTERNS = ("serial_returner", "receiptless", "wardrobing", "employee_own_card", "sweethearting", "nobody_at_counter")
TIMEZONES = ("Europe/Berlin", "Europe/London", "Europe/Paris", "America/New_York", "America/Chicago", "America/Los_Angeles")
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
OPEN_HOUR, CLOSE_HOUR = 9, 21


@dataclass(frozen=True)
class SyntheticConfig:
    """The simulated chain. Rates of abuse are shares of customers or employees."""

    days: int = 120
    # Simulated before the first recorded return, so the 30 and 90 day histories are filled.
    warmup_days: int = 30
    stores: int = 12
    customers: int = 4000
    employees_per_store: int = 6
    sales_per_store_day: float = 50.0
    return_rate: float = 0.08  # share of ordinary sales returned
    return_window_days: int = 30
    # Honest customers who buy and return a lot, at several stores: what abuse must be told from.
    heavy_returners: float = 0.02
    heavy_return_rate: float = 0.3
    serial_returners: float = 0.004
    receiptless_returners: float = 0.004
    wardrobers: float = 0.006
    dishonest_employees: float = 0.08
    seed: int = 7


@dataclass
class ReturnRows:
    """One row per return: features in riskfeatures' order, the ground truth and who was involved."""

    names: list[str]
    X: np.ndarray
    y: np.ndarray
    time_ms: np.ndarray
    patterns: list[str]
    customers: list[str]
    employees: list[str]
    event_ids: list[str]


@dataclass
class World:
    """Who the simulated chain is; the abusers as the generator picked them (ground truth)."""

    store_ids: list[str]
    store_names: dict[str, str]
    timezones: dict[str, str]
    merchandise_zone: dict[str, bool]
    customer_tokens: list[str]
    customer_kind: list[str]  # "" ordinary, "heavy" (honest, returns a lot), or the abuse pattern
    home_store: list[int]
    employee_ids: list[str]
    employee_names: dict[str, str]
    employee_store: list[int]
    employee_tokens: list[str]
    dishonest: list[bool]
    accomplices: dict[int, list[str]] = field(default_factory=dict)


def _token(rng: np.random.Generator, prefix: str = "tok") -> str:
    return f"{prefix}-{int(rng.integers(0, 2**62)):016x}"


def make_world(config: SyntheticConfig, rng: np.random.Generator) -> World:
    from faker import Faker

    fake = Faker()
    fake.seed_instance(config.seed)
    store_ids = [f"store-{i + 1:03d}" for i in range(config.stores)]
    timezones = {s: TIMEZONES[int(rng.integers(len(TIMEZONES)))] for s in store_ids}
    merchandise_zone = {s: bool(rng.random() < 0.7) for s in store_ids}  # the rest have no merchandise zone: the camera cannot tell
    kinds = [""] * config.customers
    order = rng.permutation(config.customers)
    at = 0
    for kind, rate in (("serial_returner", config.serial_returners), ("receiptless", config.receiptless_returners), ("wardrobing", config.wardrobers),
                       ("heavy", config.heavy_returners)):
        count = round(rate * config.customers)
        for index in order[at:at + count]:
            kinds[int(index)] = kind
        at += count
    n_employees = config.stores * config.employees_per_store
    dishonest = [False] * n_employees
    for index in rng.permutation(n_employees)[:round(config.dishonest_employees * n_employees)]:
        dishonest[int(index)] = True
    employee_ids = [f"emp-{i + 1:04d}" for i in range(n_employees)]
    world = World(
        store_ids=store_ids, store_names={s: f"{fake.city()} {fake.street_suffix()}" for s in store_ids}, timezones=timezones,
        merchandise_zone=merchandise_zone, customer_tokens=[_token(rng) for _ in range(config.customers)], customer_kind=kinds,
        home_store=[int(s) for s in rng.integers(0, config.stores, config.customers)], employee_ids=employee_ids,
        employee_names={e: fake.name() for e in employee_ids}, employee_store=[i // config.employees_per_store for i in range(n_employees)],
        employee_tokens=[_token(rng, "emp") for _ in range(n_employees)], dishonest=dishonest)
    world.accomplices = {i: [_token(rng, "acc") for _ in range(int(rng.integers(1, 3)))] for i, d in enumerate(dishonest) if d}
    return world


@dataclass(order=True)
class _Event:
    time_ms: int
    seq: int
    kind: str = field(compare=False)  # "sale" or "return"
    store: int = field(compare=False)
    employee: int = field(compare=False)
    token: str = field(compare=False)
    customer: int = field(compare=False)  # -1: not a customer of the world (accomplice, mule, employee)
    total_minor: int = field(compare=False)
    items: int = field(compare=False)
    cash: bool = field(compare=False)
    sale_id: str = field(compare=False, default="")  # a return's original sale (its receipt), or a sale's own id
    camera: CameraView = field(compare=False, default=CameraView(True, True))
    pattern: str = field(compare=False, default="")


class _Clock:
    """Local store hours to event time, per store and day."""

    def __init__(self, world: World, total_days: int) -> None:
        self._midnight = {s: [int(datetime.combine((START + timedelta(days=d)).date(), datetime.min.time(), ZoneInfo(world.timezones[s])).timestamp() * 1000)
                              for d in range(total_days + 1)] for s in world.store_ids}
        self.world = world

    def at(self, store: int, day: int, hour: float) -> int:
        return self._midnight[self.world.store_ids[store]][day] + int(hour * 3_600_000)

    def day_of(self, store: int, time_ms: int) -> int:
        first = self._midnight[self.world.store_ids[store]][0]
        return int((time_ms - first) // DAY_MS)


def _shop_hour(rng: np.random.Generator) -> float:
    """Busy in the afternoon and early evening."""
    return min(max(float(rng.normal(15.5, 2.6)), OPEN_HOUR), CLOSE_HOUR - 0.05)


def _edge_hour(rng: np.random.Generator) -> float:
    """The quiet first and last hour, when an employee alone at a till is unobserved."""
    return float(rng.uniform(OPEN_HOUR, OPEN_HOUR + 1.2) if rng.random() < 0.5 else rng.uniform(CLOSE_HOUR - 1.2, CLOSE_HOUR - 0.05))


def _camera(rng: np.random.Generator, store_has_merch_zone: bool, customer_p: float, merchandise_p: float, unknown_p: float = 0.06) -> CameraView:
    if rng.random() < unknown_p:  # a coverage gap: the camera cannot tell either
        return CameraView(None, None)
    merchandise = bool(rng.random() < merchandise_p) if store_has_merch_zone else None
    return CameraView(bool(rng.random() < customer_p), merchandise)


def _simulate(config: SyntheticConfig, world: World, rng: np.random.Generator, progress: Callable[[float], None]) -> list[_Event]:
    total_days = config.warmup_days + config.days
    clock = _Clock(world, total_days)
    events: list[_Event] = []
    seq = 0
    by_store: dict[int, list[int]] = defaultdict(list)
    for c, home in enumerate(world.home_store):
        by_store[home].append(c)
    staff: dict[int, list[int]] = defaultdict(list)
    for e, s in enumerate(world.employee_store):
        staff[s].append(e)
    n_customers = len(world.customer_tokens)
    weights = np.array([3.0 if k in ("serial_returner", "wardrobing", "heavy") else 1.0 for k in world.customer_kind])
    weights /= weights.sum()
    window_ms = config.return_window_days * DAY_MS
    sales_of: dict[int, list[_Event]] = defaultdict(list)

    def add(event: _Event) -> _Event:
        nonlocal seq
        event.seq = seq
        seq += 1
        events.append(event)
        return event

    def employee_at(store: int) -> int:
        return staff[store][int(rng.integers(len(staff[store])))]

    # Sales, and the ordinary and wardrobing returns of them.
    for day in range(total_days):
        for store in range(config.stores):
            for _ in range(int(rng.poisson(config.sales_per_store_day))):
                local_pool = by_store[store]
                customer = int(local_pool[int(rng.integers(len(local_pool)))]) if local_pool and rng.random() < 0.85 else int(rng.choice(n_customers, p=weights))
                kind = world.customer_kind[customer]
                items = int(rng.integers(3, 7)) if kind == "wardrobing" else int(rng.integers(1, 5))
                total = int(sum(rng.lognormal(3.0, 0.7) for _ in range(items)) * 100)
                sale = add(_Event(clock.at(store, day, _shop_hour(rng)), 0, "sale", store, employee_at(store), world.customer_tokens[customer], customer,
                                  total, items, bool(rng.random() < 0.25)))
                sale.sale_id = f"txn-{sale.seq:07d}"
                sales_of[customer].append(sale)
                if kind == "wardrobing" and rng.random() < 0.6:
                    when = sale.time_ms + int(rng.uniform(config.return_window_days - 6, config.return_window_days - 0.3) * DAY_MS)
                    partial = rng.random() < 0.3 and items > 1
                    add(_Event(when, 0, "return", store, employee_at(store), sale.token, customer,
                               int(sale.total_minor * rng.uniform(0.4, 0.9)) if partial else sale.total_minor, items - 1 if partial else items, sale.cash,
                               sale.sale_id, _camera(rng, world.merchandise_zone[world.store_ids[store]], 0.97, 0.95), "wardrobing"))
                elif rng.random() < (config.heavy_return_rate if kind == "heavy" else config.return_rate):
                    # Mostly within days; some late, up to the end of the window.
                    delay = rng.exponential(3.0) if rng.random() < 0.75 else rng.uniform(0, config.return_window_days)
                    delay = min(delay, config.return_window_days - 0.1)
                    at_store = store if rng.random() < (0.7 if kind == "heavy" else 0.9) else int(rng.integers(config.stores))
                    with_receipt = rng.random() < (0.6 if kind == "heavy" else 0.88)  # gifts, lost receipts
                    partial = rng.random() < 0.3 and items > 1
                    amount = int(total * rng.uniform(0.2, 0.8)) if partial else total
                    count = int(rng.integers(1, items)) if partial else items
                    day_of = clock.day_of(at_store, sale.time_ms + int(delay * DAY_MS))
                    when = max(sale.time_ms + 60_000, clock.at(at_store, min(day_of, total_days), _shop_hour(rng)))
                    phone = rng.random() < 0.02  # refunds arranged by phone: nobody and nothing at the counter
                    camera = CameraView(False, False if world.merchandise_zone[world.store_ids[at_store]] else None) if phone else \
                        _camera(rng, world.merchandise_zone[world.store_ids[at_store]], 0.97, 0.92)
                    add(_Event(when, 0, "return", at_store, employee_at(at_store), sale.token, customer, amount, count,
                               sale.cash if rng.random() < 0.9 else not sale.cash, sale.sale_id if with_receipt else "", camera))
        progress(0.5 * (day + 1) / total_days)

    returned: set[str] = {e.sale_id for e in events if e.kind == "return" and e.sale_id}

    def poisson_times(rate_per_day: float) -> list[float]:
        times, t = [], rng.exponential(1 / rate_per_day)
        while t < total_days:
            times.append(t)
            t += rng.exponential(1 / rate_per_day)
        return times

    # Serial and receipt-less returners.
    for customer, kind in enumerate(world.customer_kind):
        if kind not in ("serial_returner", "receiptless"):
            continue
        stores = list(range(config.stores)) if kind == "serial_returner" else \
            [world.home_store[customer], *(int(s) for s in rng.integers(0, config.stores, int(rng.integers(1, 3))))]
        # Each abuser keeps a pace of their own: some return every few days, some every few weeks.
        for t in poisson_times(1 / float(rng.lognormal(np.log(5.0 if kind == "serial_returner" else 10.0), 0.6))):
            store = stores[int(rng.integers(len(stores)))]
            when = clock.at(store, int(t), _shop_hour(rng))
            receipt = ""
            items = int(rng.integers(1, 4))
            total = int(sum(rng.lognormal(3.6, 0.6) for _ in range(items)) * 100)
            if kind == "serial_returner" and rng.random() < 0.5:
                mine = [s for s in sales_of[customer] if s.time_ms < when and when - s.time_ms < window_ms and s.sale_id not in returned]
                if mine:
                    sale = mine[int(rng.integers(len(mine)))]
                    returned.add(sale.sale_id)
                    receipt, total, items = sale.sale_id, sale.total_minor, sale.items
            add(_Event(when, 0, "return", store, employee_at(store), world.customer_tokens[customer], customer, total, items,
                       bool(rng.random() < (0.5 if kind == "serial_returner" else 0.7)), receipt,
                       _camera(rng, world.merchandise_zone[world.store_ids[store]], 0.97, 0.93), kind))

    # Honest employees returning their own purchases at their own till (allowed with a manager's
    # approval): a refund to their own card, with receipt, the goods and themselves at the counter.
    for employee, bad in enumerate(world.dishonest):
        if bad:
            continue
        store = world.employee_store[employee]
        for t in poisson_times(1 / 60):
            items = int(rng.integers(1, 3))
            total = int(sum(rng.lognormal(3.0, 0.7) for _ in range(items)) * 100)
            when = clock.at(store, int(t), _shop_hour(rng))
            sale = add(_Event(when - int(rng.uniform(1, 10) * DAY_MS), 0, "sale", store, employee, world.employee_tokens[employee], -1, total, items, False))
            sale.sale_id = f"txn-{sale.seq:07d}"
            add(_Event(when, 0, "return", store, employee, world.employee_tokens[employee], -1, total, items, False, sale.sale_id,
                       _camera(rng, world.merchandise_zone[world.store_ids[store]], 0.7, 0.9)))

    # Dishonest employees: refunds to their own card, to accomplices, to mule cards with nobody there.
    mules = [_token(rng, "mule") for _ in range(max(2, config.stores // 2))]
    for employee, bad in enumerate(world.dishonest):
        if not bad:
            continue
        store = world.employee_store[employee]
        merch = world.merchandise_zone[world.store_ids[store]]
        for pattern, rate in (("employee_own_card", 1 / 12), ("sweethearting", 1 / 8), ("nobody_at_counter", 1 / 10)):
            for t in poisson_times(rate):
                items = int(rng.integers(1, 4))
                total = int(sum(rng.lognormal(3.4, 0.6) for _ in range(items)) * 100)
                if pattern == "sweethearting":
                    token, camera, hour = world.accomplices[employee][int(rng.integers(len(world.accomplices[employee])))], _camera(rng, merch, 0.95, 0.4), _shop_hour(rng)
                elif pattern == "employee_own_card":
                    token, camera, hour = world.employee_tokens[employee], _camera(rng, merch, 0.2, 0.2), _edge_hour(rng)
                else:
                    token, camera, hour = mules[int(rng.integers(len(mules)))], _camera(rng, merch, 0.05, 0.1), _edge_hour(rng)
                add(_Event(clock.at(store, int(t), hour), 0, "return", store, employee, token, -1, total, items,
                           bool(rng.random() < 0.6), "", camera, pattern))
    progress(0.6)
    end_ms = int((START + timedelta(days=total_days)).timestamp() * 1000)
    return sorted(e for e in events if e.time_ms < end_ms)


def generate_returns(config: SyntheticConfig, progress: Callable[[float], None] = lambda _: None) -> tuple[World, ReturnRows]:
    """Simulate the chain and compute every recorded return's features from its past (event time)."""
    rng = np.random.default_rng(config.seed)
    world = make_world(config, rng)
    events = _simulate(config, world, rng, progress)
    first_recorded = int((START + timedelta(days=config.warmup_days)).timestamp() * 1000)
    sales: dict[str, _Event] = {}
    token_history: dict[str, list[PastReturn]] = defaultdict(list)
    month: dict[int, deque[EmployeeTransaction]] = defaultdict(deque)
    own_refunds: dict[int, deque[EmployeeTransaction]] = defaultdict(deque)
    names = feature_names("return")
    X: list[list[float]] = []
    y: list[int] = []
    times: list[int] = []
    patterns: list[str] = []
    customers: list[str] = []
    employees: list[str] = []
    event_ids: list[str] = []
    step = max(1, len(events) // 40)
    for index, event in enumerate(events):
        if index % step == 0:
            progress(0.6 + 0.4 * index / len(events))
        history = month[event.employee]
        while history and history[0].time_ms <= event.time_ms - 30 * DAY_MS:
            history.popleft()
        own = own_refunds[event.employee]
        while own and own[0].time_ms <= event.time_ms - 90 * DAY_MS:
            own.popleft()
        if event.kind == "sale":
            sales[event.sale_id] = event
            history.append(EmployeeTransaction(event.time_ms, refund=False))
            continue
        store_id = world.store_ids[event.store]
        employee_token = world.employee_tokens[event.employee]
        to_own = event.token == employee_token
        if event.time_ms >= first_recorded:
            pos = PosEvent(event_id=f"ret-{event.seq:07d}", type=PosEventType.POS_EVENT_TYPE_RETURN, store_id=store_id, register_id="reg-1",
                           transaction_id=f"txn-{event.seq:07d}", employee_id=world.employee_ids[event.employee], event_time_ms=event.time_ms,
                           currency="EUR", total_minor=event.total_minor, tender="cash" if event.cash else "card", card_token=event.token,
                           original_transaction_id=event.sale_id)
            pos.items.extend(PosItem(sku=f"sku-{i}", quantity=1, unit_price_minor=event.total_minor // max(event.items, 1)) for i in range(event.items))
            sale = sales.get(event.sale_id) if event.sale_id else None
            older_own = [t for t in own if t.time_ms <= event.time_ms - 30 * DAY_MS]
            ctx = ReturnContext(
                event=pos, timezone=world.timezones[store_id], token_history=token_history[event.token],
                employee_history=[*history, *older_own], employee_tokens=frozenset({employee_token}),
                original_sale=OriginalSale(sale.time_ms, world.store_ids[sale.store], sale.total_minor) if sale else None, camera=event.camera)
            X.append(vector("return", return_features(ctx)))
            y.append(int(bool(event.pattern)))
            times.append(event.time_ms)
            patterns.append(event.pattern)
            customers.append(event.token)
            employees.append(world.employee_ids[event.employee])
            event_ids.append(pos.event_id)
        token_history[event.token].append(PastReturn(event.time_ms, store_id, event.total_minor, bool(event.sale_id)))
        refund = EmployeeTransaction(event.time_ms, refund=True, to_own_token=to_own)
        history.append(refund)
        if to_own:
            own.append(refund)
    progress(1.0)
    return world, ReturnRows(names, np.asarray(X, dtype=np.float64).reshape(-1, len(names)), np.asarray(y, dtype=np.int64), np.asarray(times, dtype=np.int64),
                             patterns, customers, employees, event_ids)


# --- alert triage ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlertConfig:
    days: int = 120
    stores: int = 12
    alerts_per_store_day: float = 4.0
    seed: int = 7


# What analysts confirm, per rule (log-odds before the other effects).
RULE_LOGIT = {"refund_without_customer": 0.2, "refund_without_merchandise": -0.6, "concealment": -0.4, "after_hours": 0.6, "loitering": -1.6,
              "return_abuse": 0.9, "employee_own_card": 1.6, "employee_own_sale": -0.5, "no_sale_rate": -0.3, "post_void": -0.8,
              "checkout_bypass": -0.2, "repeat_visits": -0.9}
RULE_SHARE = {"refund_without_customer": 0.14, "refund_without_merchandise": 0.1, "concealment": 0.14, "after_hours": 0.04, "loitering": 0.25,
              "return_abuse": 0.06, "employee_own_card": 0.03, "employee_own_sale": 0.06, "no_sale_rate": 0.08, "post_void": 0.1,
              "checkout_bypass": 0.05, "repeat_visits": 0.04}


@dataclass
class AlertRows:
    names: list[str]
    X: np.ndarray
    y: np.ndarray
    time_ms: np.ndarray
    alerts: list[Alert]


def _facts(rule: str, rng: np.random.Generator) -> tuple[dict[str, str], float]:
    """Facts as the correlator writes them, and the log-odds they add to a confirmation."""
    amount = float(rng.lognormal(3.8, 0.9))
    money = f"{amount:.2f} EUR"
    if rule in ("refund_without_customer", "refund_without_merchandise", "employee_own_card", "employee_own_sale", "post_void"):
        return {"amount": money, "employee": f"emp-{int(rng.integers(1, 80)):04d}"}, 0.9 * np.log(amount / 45.0)
    if rule == "return_abuse":
        returns = int(rng.integers(5, 20))
        return {"returns": str(returns), "total": f"{amount * 3:.2f} EUR"}, 0.5 * np.log(amount / 45.0)
    if rule == "loitering":
        exit_zone = rng.random() < 0.4
        limit = 60.0 if exit_zone else 120.0
        dwell = limit * float(1 + rng.exponential(0.8))
        return {"zone": "z-exit" if exit_zone else "z-hv", "zone_kind": "exit" if exit_zone else "high_value", "dwell_s": f"{dwell:.1f}",
                "limit_s": f"{limit:.0f}"}, 1.4 * np.log(dwell / limit) - 0.6 + (0.5 if exit_zone else 0.0)
    if rule == "concealment":
        anomaly = float(rng.lognormal(0.6, 0.35))
        return {"zone": "z-hv", "cue": "pose" if rng.random() < 0.6 else "anomaly", "anomaly_score": f"{anomaly:.2f}"}, 2.0 * (anomaly - 1.9)
    if rule == "checkout_bypass":
        reached = rng.random() < 0.4
        return {"zone": "z-hv", "reached": str(reached), "visit_s": f"{float(rng.lognormal(3.5, 0.7)):.1f}"}, 1.2 if reached else -0.3
    if rule == "repeat_visits":
        visits = int(rng.integers(4, 9))
        return {"zone": "z-hv", "visits": str(visits)}, 0.3 * (visits - 5)
    if rule == "no_sale_rate":
        count = int(rng.integers(6, 14))
        return {"count": str(count), "limit": "5"}, 0.25 * (count - 8)
    return {"persons": str(int(rng.integers(1, 3)))}, 0.0


def generate_alerts(config: AlertConfig, timezones: dict[str, str] | None = None, progress: Callable[[float], None] = lambda _: None) -> AlertRows:
    """Alerts of every rule, with verdicts; each row's store confirm rate is the one known before it."""
    rng = np.random.default_rng(config.seed + 1)
    stores = [f"store-{i + 1:03d}" for i in range(config.stores)]
    tz = {s: (timezones or {}).get(s) or TIMEZONES[i % len(TIMEZONES)] for i, s in enumerate(stores)}
    store_effect = {s: float(rng.normal(0, 0.8)) for s in stores}  # some stores' alerts are mostly real, others mostly noise
    rules = list(RULE_NAMES)
    shares = np.array([RULE_SHARE[r] for r in rules])
    pending: list[tuple[int, int, Alert, int]] = []
    n = 0
    for day in range(config.days):
        for store in stores:
            for _ in range(int(rng.poisson(config.alerts_per_store_day))):
                rule = rules[int(rng.choice(len(rules), p=shares / shares.sum()))]
                # After-hours alerts happen at night; the others while the store is open.
                hour = float(rng.uniform(21.5, 30.5)) % 24 if rule == "after_hours" else float(np.clip(rng.normal(15, 3.5), 8, 22))
                local = datetime.combine((START + timedelta(days=day)).date(), datetime.min.time(), ZoneInfo(tz[store])) + timedelta(hours=hour)
                time_ms = int(local.timestamp() * 1000)
                facts, effect = _facts(rule, rng)
                weekend = local.weekday() >= 5
                night = local.hour >= 22 or local.hour < 6
                logit = RULE_LOGIT[rule] + effect + store_effect[store] + (0.4 if weekend else 0.0) + (1.2 if night and rule == "after_hours" else 0.0) \
                    - (0.8 if rule == "after_hours" and not night else 0.0)
                confirmed = int(rng.random() < 1 / (1 + np.exp(-logit)))
                alert = Alert(alert_id=f"al-syn-{n:07d}", rule=rule, store_id=store, event_time_ms=time_ms, raised_time_ms=time_ms + 1000, score=0.7)
                for key, value in facts.items():
                    alert.facts[key] = value
                heapq.heappush(pending, (time_ms, n, alert, confirmed))
                n += 1
        progress(0.7 * (day + 1) / config.days)
    names = feature_names("triage")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    X: list[list[float]] = []
    y: list[int] = []
    times: list[int] = []
    alerts: list[Alert] = []
    while pending:
        time_ms, _, alert, confirmed = heapq.heappop(pending)
        confirmed_so_far, judged = counts[alert.store_id]
        ctx = TriageContext(timezone=tz[alert.store_id], confirm_rate=store_confirm_rate(confirmed_so_far, judged))
        X.append(vector("triage", triage_features(alert, ctx)))
        y.append(confirmed)
        times.append(time_ms)
        alerts.append(alert)
        counts[alert.store_id][0] += confirmed
        counts[alert.store_id][1] += 1
    progress(1.0)
    return AlertRows(names, np.asarray(X, dtype=np.float64).reshape(-1, len(names)), np.asarray(y, dtype=np.int64), np.asarray(times, dtype=np.int64), alerts)


def write_hq_export(path: Path, alerts: AlertRows, returns: ReturnRows | None = None, judged_returns: int = 300, seed: int = 7) -> int:
    """A JSON-lines export in HQ's shape (alerts, then verdicts on them; protobuf JSON) made from
    synthetic rows, to try `--alerts-from/--verdicts-from` without a chain. Returns are exported as
    alerts that carry their features as `risk.*` facts, as the api records a decided return.
    Returns the number of verdicts written."""
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    verdicts: list[Feedback] = []
    for alert, label in zip(alerts.alerts, alerts.y.tolist(), strict=True):
        lines.append(json.dumps(to_json_dict(alert)))
        verdicts.append(_verdict(alert, label, rng))
    if returns is not None and len(returns.y):
        for index in sorted(rng.choice(len(returns.y), size=min(judged_returns, len(returns.y)), replace=False).tolist()):
            values = dict(zip(returns.names, returns.X[index].tolist(), strict=True))
            alert = Alert(alert_id=f"al-ret-{returns.event_ids[index]}", rule="return_abuse", store_id="store-001",
                          event_time_ms=int(returns.time_ms[index]), raised_time_ms=int(returns.time_ms[index]) + 1000)
            alert.facts.update(as_facts("return", values))
            alert.facts["amount"] = f"{values['amount']:.2f} EUR"
            lines.append(json.dumps(to_json_dict(alert)))
            verdicts.append(_verdict(alert, int(returns.y[index]), rng))
    lines.extend(json.dumps(to_json_dict(v)) for v in verdicts)
    path.write_text("\n".join(lines) + "\n")
    return len(verdicts)


def _verdict(alert: Alert, confirmed: int, rng: np.random.Generator) -> Feedback:
    return Feedback(alert_id=alert.alert_id, store_id=alert.store_id, rule=alert.rule, user="hq-analyst",
                    verdict=Verdict.VERDICT_CONFIRMED if confirmed else Verdict.VERDICT_FALSE_ALARM,
                    time_ms=alert.event_time_ms + int(rng.uniform(0.5, 48) * 3_600_000))
