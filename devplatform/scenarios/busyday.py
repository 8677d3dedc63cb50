"""A realistic busy day: a store's whole trading day, generated, with a few frauds injected and known.

Scripted scenarios each show one situation for a few minutes with shortened limits. A day is what
the rules meet in production: hundreds of shoppers browsing, dwelling at the high-value cabinet,
queueing at two tills, buying and returning things with the goods on the counter, staff behind the
counter all day, cleaners after close, and among all that a handful of frauds. Replayed with the
DEFAULT rules, it measures what a team would keep: every injected fraud must be caught, and each
store-day must raise fewer than 2 incidents that match no injected fraud.

What is drawn (seeded, per store; `generate(seed, stores, day)`):
- arrivals: a non-homogeneous Poisson process over the opening hours (thinning), a morning base with
  peaks at lunch (12:45) and late afternoon (17:30), `customers` expected per day;
- each shopper: through the door (exit zone, a few seconds) and the lobby on the entrance camera,
  then the sales floor: aisle browsing (lognormal, median 2 min), a visit to the high-value cabinet
  for a third of them (lognormal dwell, median 150 s: most 1-6 minutes, a tail beyond), reaching to
  the shelf now and then; 55% then queue for a till and buy (goods on the counter mat, a sale);
  5% come to return something (the customer and the goods at the counter, a return or refund);
  everybody leaves through the door before closing time;
- two tills served first come, first served (till 2 opens at the lunch and evening peaks);
  cashiers behind the counter (staff zone) from half an hour before opening to a quarter of an
  hour after closing; a few drawer opens without a sale, voids before tender and small post-voids;
- a cleaner after close on every camera, the high-value cabinet included.
- frauds, with their ground truth (`Fraud`): a refund keyed in with nobody at the counter; a
  concealment at the cabinet (reach, then a hand at the hip for several seconds); a person in the
  closed store at night; a cashier refunding to their own card (an accomplice at the counter); a
  post-void of a tendered sale after the customer left; and, with 3 stores or more, one card
  returning goods in 3 stores within 2 days (serial returner).

Cameras send what a motion-gated camera sends the correlator, at `fps` (default 1): the counter
camera continuously from the first arrival of staff until the cleaner leaves (it watches the
registers: a refund needs coverage around it); the sales floor and entrance cameras only while
somebody is in view. A frame without persons changes nothing in the correlator's camera rules
(services/correlator/agents.py returns before any state), so leaving them out changes no alert.

The day is the local date `day` in every store's own time zone (two days before today by default,
so the night after it is in the past too); nothing depends on the wall clock or the machine's time
zone beyond that choice.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from devplatform.scenarios.spec import Scenario, build_scenario
from devplatform.scenarios.synth import Outgoing
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.incidents import Incident, fold_all

NAME = "busyday"
FPS = 1.0
CUSTOMERS_PER_DAY = 450
# Visitors of the high-value cabinet who once put a hand to a pocket right after reaching to the shelf.
POCKET_RATE = 0.05


@dataclass(frozen=True)
class StorePlan:
    id: str
    timezone: str
    open: time
    close: time


# Stores in different time zones, taken in this order (then again with a number).
STORES = (
    StorePlan("london", "Europe/London", time(8), time(21)),
    StorePlan("newyork", "America/New_York", time(9), time(21)),
    StorePlan("tokyo", "Asia/Tokyo", time(10), time(20)),
    StorePlan("berlin", "Europe/Berlin", time(9), time(20)),
    StorePlan("sydney", "Australia/Sydney", time(9), time(18)),
)

# Camera and zone layout of every store.
COUNTER, FLOOR, ENTRANCE = "cam-counter", "cam-floor", "cam-entrance"
TILL_ZONES = {"reg-1": ("till-1-customer", "till-1-goods"), "reg-2": ("till-2-customer", "till-2-goods")}
CABINET = "electronics"
GOODS = ("book", "bottle", "cell phone", "laptop", "cup")


def store_layout(plan: StorePlan) -> dict[str, Any]:
    """The store as the scenario format (and the store config) describes it."""
    return {
        "id": plan.id, "timezone": plan.timezone, "opening_hours": {"open": plan.open.strftime("%H:%M"), "close": plan.close.strftime("%H:%M")},
        "cameras": [
            {"id": COUNTER, "zones": [
                {"id": "till-1-customer", "kind": "counter_customer"}, {"id": "till-1-goods", "kind": "counter_merchandise"},
                {"id": "till-2-customer", "kind": "counter_customer"}, {"id": "till-2-goods", "kind": "counter_merchandise"},
                {"id": "queue", "kind": "aisle"}, {"id": "staff", "kind": "staff_only"}]},
            {"id": FLOOR, "stages": [{"kind": "detector"}, {"kind": "pose"}], "zones": [
                {"id": CABINET, "kind": "high_value"}, {"id": "aisle-1", "kind": "aisle"}, {"id": "aisle-2", "kind": "aisle"}]},
            {"id": ENTRANCE, "zones": [{"id": "door", "kind": "exit"}, {"id": "lobby", "kind": "aisle"}]},
        ],
        "registers": [{"id": reg, "camera": COUNTER, "customer_zones": [cust], "merchandise_zones": [goods]}
                      for reg, (cust, goods) in TILL_ZONES.items()],
        # Staff open up from 45 minutes before opening; they close up and the cleaner works for 3 hours after.
        "staff_shifts": [{"name": "opening", "start": _hhmm(plan.open, -45), "end": plan.open.strftime("%H:%M"), "max_persons": 3},
                         {"name": "closing and cleaning", "start": plan.close.strftime("%H:%M"), "end": _hhmm(plan.close, 180), "max_persons": 3}],
    }


def _hhmm(at: time, minutes: int) -> str:
    return (datetime.combine(date(2000, 1, 3), at) + timedelta(minutes=minutes)).strftime("%H:%M")


def store_plans(count: int) -> list[StorePlan]:
    plans = []
    for i in range(count):
        base = STORES[i % len(STORES)]
        plans.append(base if i < len(STORES) else StorePlan(f"{base.id}{i // len(STORES) + 1}", base.timezone, base.open, base.close))
    return plans


def default_day(now: datetime | None = None) -> date:
    """Two days before today (UTC): the whole local day and the night after it are past in every time zone."""
    return (now or datetime.now(UTC)).date() - timedelta(days=2)


# --- distributions -------------------------------------------------------------------------------

def arrival_shape(hour: float) -> float:
    """Relative arrival rate at a local hour: a base, a lunch peak and a late-afternoon peak."""
    return 0.35 + 1.0 * math.exp(-0.5 * ((hour - 12.75) / 1.0) ** 2) + 0.85 * math.exp(-0.5 * ((hour - 17.5) / 1.25) ** 2)


def arrivals(rng: random.Random, open_s: float, close_s: float, expected: float) -> list[float]:
    """Arrival times (seconds after local midnight) of a non-homogeneous Poisson process whose rate
    follows `arrival_shape`, scaled so `expected` arrive between open and close (thinning)."""
    step = 60.0
    grid = [open_s + i * step for i in range(int((close_s - open_s) / step))]
    mass = sum(arrival_shape(s / 3600) for s in grid) * step
    scale = expected / mass  # per second, per unit of shape
    peak = max(arrival_shape(s / 3600) for s in grid) * scale
    out: list[float] = []
    t = open_s
    while True:
        t += rng.expovariate(peak)
        if t >= close_s:
            return out
        if rng.random() * peak < arrival_shape(t / 3600) * scale:
            out.append(t)


def lognormal(rng: random.Random, median: float, sigma: float, low: float = 1.0, high: float = math.inf) -> float:
    return min(max(rng.lognormvariate(math.log(median), sigma), low), high)


# High-value cabinet dwell: median 150 s, sigma 0.55 (5% under 61 s, 5% over 370 s).
CABINET_MEDIAN_S, CABINET_SIGMA = 150.0, 0.55


def cabinet_dwell(rng: random.Random) -> float:
    return lognormal(rng, CABINET_MEDIAN_S, CABINET_SIGMA, low=10)


# --- what the cameras see ----------------------------------------------------------------------------

@dataclass
class Presence:
    """One person or object in view of one camera for [start, end) (whole seconds after local
    midnight): the zone from each change on, and for persons the named pose from each change on."""

    camera: str
    track: int
    start: int
    end: int
    zones: list[tuple[int, str]]
    poses: list[tuple[int, str]] = field(default_factory=list)
    label: str = ""  # an object's label; persons have none
    box: tuple[float, float, float, float] | None = None

    def at(self, changes: list[tuple[int, str]], s: int) -> str:
        current = ""
        for when, what in changes:
            if when <= s:
                current = what
            else:
                break
        return current


@dataclass(frozen=True)
class Fraud:
    """One injected fraud and what catches it: an alert of one of `rules` at `store` (any store of the
    chain when empty) naming, where given, the register, camera, track or one of the POS events."""

    kind: str
    store: str
    what: str
    time_ms: int
    rules: tuple[str, ...]
    register: str = ""
    camera: str = ""
    track: int | None = None
    pos_events: tuple[str, ...] = ()

    def caught_by(self, sc: Scenario, alert: Alert) -> bool:
        if alert.rule not in self.rules or (self.store and alert.store_id != sc.pid(self.store)):
            return False
        if self.register and alert.register_id != self.register:
            return False
        if self.camera and alert.camera_id != sc.pid(self.camera):
            return False
        if self.track is not None and alert.facts.get("track") != str(self.track):
            return False
        return not (self.pos_events and not {e.ref for e in alert.evidence if e.kind == "pos_event"} & set(self.pos_events))


@dataclass
class StoreDay:
    plan: StorePlan
    day: date
    base_ms: int  # local midnight of the day, epoch ms
    presences: list[Presence] = field(default_factory=list)
    pos: list[dict[str, Any]] = field(default_factory=list)
    frauds: list[Fraud] = field(default_factory=list)
    employees: list[dict[str, Any]] = field(default_factory=list)
    counter_span: tuple[int, int] = (0, 0)
    customers: int = 0
    cabinet_dwells: list[float] = field(default_factory=list)
    arrivals_s: list[float] = field(default_factory=list)

    def local_s(self, hour: float, day_offset: int = 0) -> int:
        """Seconds after local midnight of the day at a local wall-clock hour (DST-aware)."""
        tz = ZoneInfo(self.plan.timezone)
        wall = datetime.combine(self.day + timedelta(days=day_offset), time(0), tz) + timedelta(hours=hour)
        return round(wall.timestamp() * 1000 - self.base_ms) // 1000


@dataclass
class BusyDay:
    seed: int
    day: date
    stores: list[StoreDay]
    chain_frauds: list[Fraud]
    raw: dict[str, Any]
    pocket_rate: float = POCKET_RATE

    @property
    def frauds(self) -> list[Fraud]:
        return [f for s in self.stores for f in s.frauds] + self.chain_frauds

    def scenario(self, path: Path | None = None) -> Scenario:
        return build_scenario(path or Path(f"{NAME}.json"), self.raw)


class _Tills:
    """Two tills, first come first served among those open; who serves at each."""

    def __init__(self, sd: StoreDay) -> None:
        self.sd = sd
        h = sd.local_s
        self.reg2_open = [(h(11.5), h(14.5)), (h(16.5), h(19.0))]
        self.free_at = {"reg-1": 0.0, "reg-2": 0.0}
        self.busy: dict[str, list[tuple[float, float]]] = {"reg-1": [], "reg-2": []}
        self.shift_change = h(15.0)

    def is_open(self, reg: str, s: float) -> bool:
        return reg == "reg-1" or any(a <= s < b for a, b in self.reg2_open)

    def cashier(self, reg: str, s: float) -> str:
        if reg == "reg-2":
            return f"{self.sd.plan.id}-emp-c"
        return f"{self.sd.plan.id}-emp-a" if s < self.shift_change else f"{self.sd.plan.id}-emp-b"

    def serve(self, arrive: float, service: float) -> tuple[str, float]:
        """The till and the time service starts for a customer who queues at `arrive`."""
        options = [(max(arrive, self.free_at[r]), r) for r in ("reg-1", "reg-2") if self.is_open(r, arrive)]
        start, reg = min(options)
        self.free_at[reg] = start + service
        self.busy[reg].append((start, start + service))
        return reg, start

    def quiet_after(self, reg: str, after: float, need: float) -> float | None:
        """The first moment after `after` at which the till's customer zone stays empty `need` s either side."""
        spans = sorted(self.busy[reg])
        candidate = after
        for a, b in spans:
            if b <= candidate - need:
                continue
            if a >= candidate + need:
                return candidate
            candidate = b + need + 1
        return candidate


def _goods_box(reg: str) -> tuple[float, float, float, float]:
    return (0.1, 0.55, 0.2, 0.62) if reg == "reg-1" else (0.6, 0.55, 0.7, 0.62)


class _Builder:
    """One store's day, drawn in order: staff, shoppers (and the frauds among them), cleaners, the night."""

    def __init__(self, sd: StoreDay, rng: random.Random, customers: float, pocket_rate: float) -> None:
        self.sd, self.rng, self.expected, self.pocket_rate = sd, rng, customers, pocket_rate
        self.tills = _Tills(sd)
        self.next_track: defaultdict[str, int] = defaultdict(lambda: 1000)
        self.n_pos = 0
        self.serial_event = ""
        self.store = sd.plan.id
        self.open_s, self.close_s = sd.local_s(sd.plan.open.hour + sd.plan.open.minute / 60), sd.local_s(sd.plan.close.hour + sd.plan.close.minute / 60)

    def track(self, camera: str) -> int:
        self.next_track[camera] += 1
        return self.next_track[camera]

    def pos(self, s: float, kind: str, register: str, total: float, employee: str, **extra: Any) -> str:
        self.n_pos += 1
        event_id = f"{self.store}-{kind}-{self.n_pos}"
        self.sd.pos.append({"t": s, "type": kind, "store": self.store, "register": register, "id": event_id, "total": round(total, 2),
                            "employee": employee, "transaction": f"{self.store}-T{self.n_pos}", **extra})
        return event_id

    def person(self, camera: str, track: int, start: float, zones: list[tuple[float, str]], end: float,
               poses: list[tuple[float, str]] | None = None) -> None:
        s0, s1 = int(start), max(int(end), int(start) + 1)
        self.sd.presences.append(Presence(camera, track, s0, s1, [(int(t), z) for t, z in zones], [(int(t), p) for t, p in poses or []]))

    def goods(self, reg: str, start: float, end: float) -> None:
        zone = TILL_ZONES[reg][1]
        self.sd.presences.append(Presence(COUNTER, self.track(COUNTER) + 5000, int(start), max(int(end), int(start) + 1), [(int(start), zone)],
                                          label=self.rng.choice(GOODS), box=_goods_box(reg)))

    def through_door(self, s: float, track: int, inward: bool) -> float:
        """On the entrance camera: the door (exit zone) then the lobby coming in, the reverse going out."""
        door, lobby = lognormal(self.rng, 3.0, 0.3, 2, 8), lognormal(self.rng, 3.0, 0.4, 1, 10)
        zones = [(s, "door"), (s + door, "lobby")] if inward else [(s, "lobby"), (s + lobby, "door")]
        self.person(ENTRANCE, track, s, zones, s + door + lobby)
        return s + door + lobby

    # --- staff and cleaners ---

    def staff(self) -> None:
        h = self.sd.local_s
        shifts = [("a", 1, h(self.sd.plan.open.hour - 0.5), h(15.25)), ("b", 2, h(14.75), self.close_s + 900), ("c", 3, h(11.0), h(19.25))]
        for letter, track, start, end in shifts:
            emp = f"{self.store}-emp-{letter}"
            self.sd.employees.append({"id": emp, "tokens": [f"card-{emp}", f"loyalty-{emp}"]})
            inside = self.through_door(start, track, True)
            self.person(COUNTER, track, inside + 5, [(inside + 5, "staff")], end - 15)
            self.through_door(end - 10, track, False)
            if letter != "c":
                self.no_sales(emp, "reg-1", max(inside, self.open_s) + 600, min(end, self.close_s) - 600)
            else:
                for a, b in self.tills.reg2_open:
                    self.no_sales(emp, "reg-2", a + 300, b - 300, shift_share=0.5)

    def no_sales(self, emp: str, reg: str, a: float, b: float, shift_share: float = 1.0) -> None:
        """A few drawer opens without a sale (change for a customer): Poisson, at most 4 a shift (the
        rule's limit is 5 in 8 hours), 2 in each part of a split shift."""
        lam, k, p = 1.5 * shift_share, 0, math.exp(-1.5 * shift_share)
        u, cum = self.rng.random(), p
        while u > cum and k < (4 if shift_share >= 1 else 2):
            k += 1
            p *= lam / k
            cum += p
        for _ in range(k):
            self.pos(self.rng.uniform(a, b), "no_sale", reg, 0, emp)

    def cleaner(self) -> None:
        track = 20
        start = self.close_s + 1800
        s = self.through_door(start, track, True)
        aisle1 = lognormal(self.rng, 1500, 0.2)
        cabinet = lognormal(self.rng, 180, 0.25)
        aisle2 = lognormal(self.rng, 900, 0.2)
        floor_end = s + 5 + aisle1 + cabinet + aisle2
        self.person(FLOOR, track, s + 5, [(s + 5, "aisle-1"), (s + 5 + aisle1, CABINET), (s + 5 + aisle1 + cabinet, "aisle-2")], floor_end)
        counter = lognormal(self.rng, 900, 0.2)
        self.person(COUNTER, track, floor_end + 10, [(floor_end + 10, "queue"), (floor_end + 10 + counter / 2, "staff")], floor_end + 10 + counter)
        self.through_door(floor_end + 20 + counter, track, False)

    # --- shoppers ---

    def cabinet_poses(self, start: float, end: float) -> list[tuple[float, str]]:
        """Standing, reaching to the shelf now and then; `pocket_rate` of the visitors once put a
        hand to a pocket for a second or two after a reach (a phone, a wallet: concealment's pose cue
        wants 3 of 8 frames, loitering counts a single one as a cue)."""
        poses = [(start, "standing")]
        t = start + lognormal(self.rng, 15, 0.5, 3)
        pocket = self.rng.random() < self.pocket_rate
        while t + 6 < end:
            reach = self.rng.uniform(2, 4)
            poses.append((t, "reaching"))
            t += reach
            if pocket:
                pocket = False
                poses.append((t, "hand_at_hip"))
                t += self.rng.choice((1, 2))
            poses.append((t, "standing"))
            t += lognormal(self.rng, 20, 0.6, 4)
        return poses

    def shopper(self, arrive: float, kind: str = "", latest_exit: float | None = None) -> dict[str, Any]:
        """One shopper's visit; `kind` scripts a fraud's part ("concealment", "return", "own_card",
        "post_void", "serial:<token>"). Returns what the frauds need to know."""
        rng = self.rng
        latest = latest_exit if latest_exit is not None else self.close_s - 60
        entrance_track, floor_track, counter_track = self.track(ENTRANCE), self.track(FLOOR), self.track(COUNTER)
        info: dict[str, Any] = {"floor_track": floor_track}
        s = self.through_door(arrive, entrance_track, True) + 5
        returning = kind in ("return", "own_card") or kind.startswith("serial:")
        buys = kind in ("post_void",) or (not kind and rng.random() < 0.55)
        cabinet = kind == "concealment" or (not kind and rng.random() < 0.33)
        aisle = lognormal(rng, 30 if returning else 120, 0.7, 10, 1200)
        zones: list[tuple[float, str]] = [(s, rng.choice(("aisle-1", "aisle-2")))]
        poses: list[tuple[float, str]] = []
        t = s + aisle
        if cabinet:
            if kind == "concealment":
                dwell = 40.0
                poses = [(t, "standing"), (t + 10, "reaching"), (t + 14, "hand_at_hip"), (t + 21, "standing")]
                info["concealed_at"] = t + 14
            else:
                dwell = cabinet_dwell(rng)
                poses = self.cabinet_poses(t, t + dwell)
                self.sd.cabinet_dwells.append(dwell)
            zones.append((t, CABINET))
            t += dwell
            zones.append((t, rng.choice(("aisle-1", "aisle-2"))))
            poses.append((t, "standing"))
            t += lognormal(rng, 40, 0.6, 5, 600)
        floor_end = t
        service = lognormal(rng, 55 if not returning else 90, 0.35, 25, 300)
        # Past closing time nobody is left: a late shopper skips the till or cuts browsing short.
        if floor_end + 60 + service + 20 > latest:
            buys = returning = False
        if floor_end + 20 > latest:
            scale = max(0.05, (latest - 20 - s) / max(floor_end - s, 1))
            zones = [(s + (z - s) * scale, name) for z, name in zones]
            poses = [(s + (p - s) * scale, name) for p, name in poses]
            floor_end = s + (floor_end - s) * scale
        self.person(FLOOR, floor_track, s, zones, floor_end, poses or None)
        t = floor_end + 5
        if buys or returning:
            reg, start = self.tills.serve(t, service)
            if start + service + 20 > latest:  # the queue is too long this late: leave
                self.tills.busy[reg].pop()
                self.tills.free_at[reg] = max(e for _a, e in self.tills.busy[reg]) if self.tills.busy[reg] else 0.0
            else:
                zones = ([(t, "queue")] if start > t + 1 else []) + [(start, TILL_ZONES[reg][0])]
                self.person(COUNTER, counter_track, min(t, start), zones, start + service)
                self.goods(reg, start + 4, start + service - 3)
                emp = self.tills.cashier(reg, start)
                card = f"card-{self.store}-{counter_track}"
                when = start + service - rng.uniform(6, 12)
                info.update(register=reg, served=(start, start + service), employee=emp)
                if returning:
                    if kind == "own_card":
                        card = f"card-{emp}"
                    elif kind.startswith("serial:"):
                        card = kind.partition(":")[2]
                    info["event"] = self.pos(when, rng.choice(("return", "refund")), reg, lognormal(rng, 35, 0.6, 5, 400), emp, card_token=card,
                                             original_transaction=f"{self.store}-old-{counter_track}")
                else:
                    total = lognormal(rng, 25, 0.8, 2, 900) if kind != "post_void" else rng.uniform(90, 250)
                    sale = self.pos(when, "sale", reg, total, emp, card_token=card)
                    info.update(event=sale, total=total)
                    self.legit_voids(reg, start, when, emp)
                t = start + service + 3
        self.through_door(max(t, floor_end + 5), entrance_track, False)
        return info

    def legit_voids(self, reg: str, start: float, sale: float, emp: str) -> None:
        """Voids before tender (a mis-scan) and now and then a small post-void, below the rule's 50.00."""
        if self.rng.random() < 0.03:
            self.pos(max(start + 2, sale - 5), "void", reg, lognormal(self.rng, 8, 0.5, 1, 40), emp)
        if self.rng.random() < 0.01:
            self.pos(sale + 2, "void", reg, self.rng.uniform(3, 30), emp, after_tender=True)

    # --- the day ---

    def build(self, serial_token: str, serial_hour: float | None) -> None:
        rng, sd, h = self.rng, self.sd, self.sd.local_s
        self.staff()
        times = arrivals(rng, self.open_s, self.close_s - 1200, self.expected)
        sd.arrivals_s = times
        open_h, close_h = self.open_s / 3600, self.close_s / 3600

        def when(lo: float, hi: float) -> int:
            """A moment between two local hours, inside the trading day (not in its last 90 minutes)."""
            lo, hi = max(lo, open_h + 0.25), min(hi, close_h - 1.5)
            return h(rng.uniform(lo, max(lo, hi)))

        # The frauds' moments.
        concealment_at = when(10.5, 16.5)
        own_card_at = when(15.5, 18.5)  # cashier b's shift
        post_void_at = when(9.5, 11.0)
        refund_after = when(16.0, 19.5)
        night = h(rng.uniform(1.5, 4.0), day_offset=1)
        scripted: list[tuple[float, str]] = sorted([(concealment_at, "concealment"), (post_void_at, "post_void"),
                           (own_card_at, "own_card")]
                          + ([(h(serial_hour), "serial:" + serial_token)] if serial_hour is not None else []))
        plan = sorted([(t, "") for t in times] + scripted, key=lambda x: x[0])
        rng_return = random.Random(rng.random())
        for at, kind in plan:
            if not kind and rng_return.random() < 0.05:
                kind = "return"
            info = self.shopper(at, kind)
            sd.customers += 1
            base = sd.base_ms
            if kind == "concealment":
                sd.frauds.append(Fraud("concealment", self.store, f"a shopper reaches into the {CABINET} cabinet, then a hand at the hip for 7 s",
                                       base + int(info["concealed_at"] * 1000), ("concealment", "loitering"), camera=f"{self.store}.{FLOOR}",
                                       track=info["floor_track"]))
            elif kind == "post_void" and "event" in info:
                reg, (_a, left) = info["register"], info["served"]
                void = self.pos(left + rng.uniform(40, 120), "void", reg, info["total"], info["employee"], after_tender=True,
                                original_transaction=next(p["transaction"] for p in sd.pos if p["id"] == info["event"]))
                sd.frauds.append(Fraud("post_void", self.store, f"a tendered sale of {info['total']:.2f} voided after the customer left",
                                       base + int(left * 1000), ("post_void",), register=reg, pos_events=(void,)))
            elif kind == "own_card" and "event" in info:
                sd.frauds.append(Fraud("employee_own_card", self.store, "a cashier refunds to their own card, an accomplice at the counter",
                                       base + int(info["served"][1] * 1000), ("employee_own_card", "refund_without_customer", "refund_without_merchandise"),
                                       register=info["register"], pos_events=(info["event"],)))
            elif kind.startswith("serial:") and "event" in info:
                self.serial_event = info["event"]
        # A refund keyed in while nobody is at the till (the till is quiet 30 s either side).
        reg = "reg-1"
        quiet = self.tills.quiet_after(reg, refund_after, 30)
        if quiet is not None and quiet < self.close_s - 300:
            emp = self.tills.cashier(reg, quiet)
            event = self.pos(quiet, "refund", reg, rng.uniform(60, 220), emp, card_token=f"card-{self.store}-x{self.n_pos}",
                             original_transaction=f"{self.store}-old-x")
            sd.frauds.append(Fraud("refund_without_customer", self.store, "a refund keyed in with nobody at the till", sd.base_ms + int(quiet * 1000),
                                   ("refund_without_customer", "refund_without_merchandise"), register=reg, pos_events=(event,)))
        self.cleaner()
        counter_ends = [p.end for p in sd.presences if p.camera == COUNTER]
        sd.counter_span = (int(h(sd.plan.open.hour + sd.plan.open.minute / 60 - 0.5)), max(counter_ends) + 60)
        # Night: somebody walks in, to the cabinet, and out.
        track = 900
        s = self.through_door(night, track, True)
        stay = rng.uniform(150, 300)
        self.person(FLOOR, track, s + 5, [(s + 5, "aisle-1"), (s + 25, CABINET), (s + 25 + stay, "aisle-1")], s + 45 + stay)
        self.through_door(s + 50 + stay, track, False)
        sd.frauds.append(Fraud("after_hours", self.store, "a person in the closed store at night, at the cabinet", sd.base_ms + int(night * 1000),
                               ("after_hours", "loitering", "concealment"), track=track))


def generate(seed: int, stores: int = 3, day: date | None = None, customers: float = CUSTOMERS_PER_DAY, pocket_rate: float = POCKET_RATE) -> BusyDay:
    """The busy day of `stores` stores on local date `day`: a scenario (format: scenarios/README.md)
    and the injected frauds. Deterministic for a seed and a day."""
    day = day or default_day()
    plans = store_plans(stores)
    days: list[StoreDay] = []
    serial_token = "card-ring-1"
    serial_hours = [11.25, 14.5, 17.75]
    serial_events: list[tuple[str, str]] = []
    for i, plan in enumerate(plans):
        base_ms = int(datetime.combine(day, time(0), ZoneInfo(plan.timezone)).timestamp() * 1000)
        sd = StoreDay(plan, day, base_ms)
        builder = _Builder(sd, random.Random(f"{seed}:{plan.id}"), customers, pocket_rate)
        builder.build(serial_token, serial_hours[i] if stores >= 3 and i < 3 else None)
        if builder.serial_event:
            serial_events.append((plan.id, builder.serial_event))
        sd.presences.sort(key=lambda p: (p.camera, p.start, p.track))
        days.append(sd)
    chain: list[Fraud] = []
    if len(serial_events) >= 3:
        chain.append(Fraud("serial_returner", "", f"one card returns goods in {len(serial_events)} stores within 2 days", 0, ("return_abuse",),
                           pos_events=tuple(e for _s, e in serial_events)))
    raw = _scenario_raw(days)
    return BusyDay(seed, day, days, chain, raw, pocket_rate)


# --- as a scenario --------------------------------------------------------------------------------------

def _segments(presences: list[Presence], continuous: tuple[int, int] | None, fps: float) -> list[dict[str, Any]]:
    """A camera's presences cut into the scenario format's segments: one per stretch of time in
    which nobody enters, leaves, changes zone or pose. Without `continuous`, only where somebody is in view."""
    cuts: set[int] = set()
    for p in presences:
        cuts.update((p.start, p.end))
        cuts.update(t for t, _z in p.zones if p.start < t < p.end)
        cuts.update(t for t, _q in p.poses if p.start < t < p.end)
    if continuous:
        cuts.update(continuous)
    bounds = sorted(cuts)
    members: list[list[Presence]] = [[] for _ in bounds]
    for p in presences:
        for i in range(bisect.bisect_left(bounds, p.start), bisect.bisect_left(bounds, p.end)):
            members[i].append(p)
    segments = []
    for i in range(len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        inside = continuous is not None and continuous[0] <= a < continuous[1]
        if not members[i] and not inside:
            continue
        persons, objects = [], []
        for p in sorted(members[i], key=lambda q: (q.label != "", q.track)):
            zone = p.at(p.zones, a)
            if p.label:
                objects.append({"label": p.label, "track": p.track, "box": list(p.box or (0.1, 0.55, 0.2, 0.62)), "zones": [zone] if zone else []})
            else:
                person: dict[str, Any] = {"track": p.track, "zones": [zone] if zone else []}
                pose = p.at(p.poses, a)
                if pose and zone == CABINET:
                    person["pose"] = pose
                persons.append(person)
        segment: dict[str, Any] = {"t": a, "until": b, "fps": fps, "persons": persons}
        if objects:
            segment["objects"] = objects
        segments.append(segment)
    return segments


def _scenario_raw(days: list[StoreDay], fps: float = FPS) -> dict[str, Any]:
    """One scenario for the whole chain's day (tokens are shared between its stores, so the serial
    returner is one customer). Event times: seconds after the earliest event of any store."""
    start_ms = min(sd.base_ms + 1000 * min(p.start for p in sd.presences) for sd in days) - 60_000
    start_ms -= start_ms % 1000
    video: dict[str, list[dict[str, Any]]] = {}
    pos: list[dict[str, Any]] = []
    for sd in days:
        shift = (sd.base_ms - start_ms) // 1000
        by_camera: dict[str, list[Presence]] = defaultdict(list)
        for p in sd.presences:
            by_camera[p.camera].append(Presence(p.camera, p.track, p.start + shift, p.end + shift, [(t + shift, z) for t, z in p.zones],
                                                [(t + shift, q) for t, q in p.poses], p.label, p.box))
        for camera, presences in by_camera.items():
            continuous = (sd.counter_span[0] + shift, sd.counter_span[1] + shift) if camera == COUNTER else None
            video[f"{sd.plan.id}.{camera}"] = _segments(presences, continuous, fps)
        pos += [{**e, "t": round(e["t"] + shift, 3)} for e in sd.pos]
    pos.sort(key=lambda e: e["t"])
    stores = []
    for sd in days:
        layout = store_layout(sd.plan)
        for camera in layout["cameras"]:
            camera["id"] = f"{sd.plan.id}.{camera['id']}"
        for register in layout["registers"]:
            register["camera"] = f"{sd.plan.id}.{register['camera']}"
        stores.append(layout)
    return {
        "description": f"a busy trading day in {len(days)} stores ({', '.join(sd.plan.timezone for sd in days)}), local date {days[0].day}",
        "start": datetime.fromtimestamp(start_ms / 1000, UTC).isoformat(),
        "employees": [e for sd in days for e in sd.employees],
        "stores": stores,
        "pos": pos,
        "video": video,
    }


# POS events go this far (event time) ahead of the frames when a day is replayed; see send_order.
POS_LEAD_MS = 30 * 60_000


def send_order(messages: list[Outgoing]) -> list[Outgoing]:
    """The day's messages in the order the runner sends them: event time, each POS event
    POS_LEAD_MS earlier than its own time.

    Live, a refund reaches the correlator seconds after it is keyed in, long before its camera's
    history of the moment (kept SW_REGISTER_RETENTION_S, 15 minutes of camera time) is dropped. A
    replay runs through event time hundreds of times faster than that: a refund that takes a second
    longer than the frames on its way (POS agent, then the camera-events topic) finds its camera
    half an hour on. The correlator then judges it on the pruned history (a covered window with no
    change in it reads as "nobody"), which raises refund alerts no live day would. Sending POS
    events ahead is the refund-before-video case, which the correlator decides exactly (it waits
    for the camera); the order of each register's events and each camera's frames is kept."""
    return sorted(messages, key=lambda m: (m.late, m.time_ms - (POS_LEAD_MS if m.topic == topics.POS else 0), m.order))


# --- scoring ------------------------------------------------------------------------------------------

@dataclass
class StoreDayResult:
    store: str
    timezone: str
    alerts: list[Alert]
    incidents: list[Incident]
    false_incidents: list[Incident]
    caught: list[Fraud]
    missed: list[Fraud]
    false_alerts: int = 0  # alerts of no injected fraud (an incident may fold several)

    def figures(self) -> dict[str, Any]:
        frauds = len(self.caught) + len(self.missed)
        by_rule: dict[str, int] = defaultdict(int)
        for a in self.alerts:
            by_rule[a.rule] += 1
        by_id = {a.alert_id: a for a in self.alerts}
        why: dict[str, int] = defaultdict(int)
        for incident in self.false_incidents:
            why[reason_name(by_id[incident.reasons[0].alert_id])] += 1
        return {"alerts": len(self.alerts), "alerts_by_rule": dict(sorted(by_rule.items())), "incidents": len(self.incidents),
                "false_alerts": self.false_alerts, "false_incidents": len(self.false_incidents),
                "false_incidents_by_first_reason": dict(sorted(why.items())),
                "frauds": frauds, "caught": len(self.caught), "recall": round(len(self.caught) / frauds, 4) if frauds else 1.0}


def reason_name(alert: Alert) -> str:
    """The rule, and for loitering which of its limits was passed (plain, alone, cue)."""
    return f"{alert.rule}:{alert.facts['limit']}" if alert.rule == "loitering" and "limit" in alert.facts else alert.rule


def score_day(busy: BusyDay, sc: Scenario, alerts: Iterable[Alert]) -> tuple[list[StoreDayResult], list[Fraud], list[Fraud]]:
    """Per store-day: its alerts, incidents (folded in the order read), those matching no injected
    fraud, and its frauds caught or missed; and the chain's frauds caught and missed."""
    unique = list({a.alert_id: a for a in reversed(list(alerts))}.values())[::-1]  # each alert once, where it came first
    frauds = busy.frauds
    results = []
    for sd in busy.stores:
        mine = [a for a in unique if a.store_id == sc.pid(sd.plan.id)]
        incidents = fold_all(mine)
        by_id = {a.alert_id: a for a in mine}
        false = [i for i in incidents if not any(f.caught_by(sc, by_id[r.alert_id]) for r in i.reasons for f in frauds)]
        caught = [f for f in sd.frauds if any(f.caught_by(sc, a) for a in unique)]
        missed = [f for f in sd.frauds if f not in caught]
        false_alerts = sum(1 for a in mine if not any(f.caught_by(sc, a) for f in frauds))
        results.append(StoreDayResult(sd.plan.id, sd.plan.timezone, mine, incidents, false, caught, missed, false_alerts))
    chain_caught = [f for f in busy.chain_frauds if any(f.caught_by(sc, a) for a in unique)]
    chain_missed = [f for f in busy.chain_frauds if f not in chain_caught]
    return results, chain_caught, chain_missed


def summarize(busy: BusyDay, results: list[StoreDayResult], chain_caught: list[Fraud], chain_missed: list[Fraud]) -> tuple[dict[str, Any], bool]:
    """The `busy_day` object of the run's last line, and whether the target was met (every fraud
    caught, fewer than 2 false incidents in every store-day)."""
    frauds = sum(len(r.caught) + len(r.missed) for r in results) + len(chain_caught) + len(chain_missed)
    caught = sum(len(r.caught) for r in results) + len(chain_caught)
    ok = caught == frauds and all(len(r.false_incidents) < 2 for r in results)
    return {"seed": busy.seed, "day": busy.day.isoformat(), "stores": len(results), "pocket_rate": busy.pocket_rate,
            "customers": sum(sd.customers for sd in busy.stores),
            "alerts": sum(len(r.alerts) for r in results), "incidents": sum(len(r.incidents) for r in results),
            "false_incidents": sum(len(r.false_incidents) for r in results),
            "false_incidents_per_store_day": round(sum(len(r.false_incidents) for r in results) / max(len(results), 1), 2),
            "frauds": frauds, "caught": caught, "recall": round(caught / frauds, 4) if frauds else 1.0,
            "per_store": {r.store: r.figures() for r in results}, "target_met": ok}, ok
