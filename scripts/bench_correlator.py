"""Benchmark: how many cameras one correlator worker holds, and how soon it decides live refunds.

Why ratios: absolute speeds on these shared machines drift several times between runs (a machine of
the same kind trained the sample models in 44 s, another in 4 min), so the correlator is measured against its own limit, in the same run, on the same data.

Throughput. A synthetic chain (stores of four cameras at 10 fps: a counter camera with one
register, one with two, two floor cameras with aisle, high-value and exit zones; 0-3 tracked persons
per frame; each register's POS events, one every 30-60 s: mostly sales, some returns and refunds
with card tokens, a few voids and no-sales) is written as a backlog of S seconds, in the past, into
sw.detections.v1 and sw.pos.v1 on the local Apache Kafka broker (one KRaft node started here,
topics created as production defines them). Two workers then read all of it, one after the other,
each in its own consumer group and process:
- the limit: a Faust app built by the correlator's own create_app (same settings, event loop and
  logging; app id sw-bench-decode, no tables) whose agents only decode (FrameAnalysis / PosEvent);
- the real correlator (RocksDB tables): the main() of `python -m services.correlator`, run by this
  script only to note when its first event reached an agent; it also works through the messages it
  sends itself (refunds routed to their camera, returns by token, transactions).
Each is timed from its first consumed message (each worker writes the wall time it reached its
agents; the correlator's own outputs cannot say it: it writes its register state back only when it
commits) until it last worked before its group's committed offsets reached the end of everything
it reads. The commits confirm that all was done; the worker's CPU time says when, because Faust
commits every 10,000 messages or 2.8 s and its final commit comes seconds after the work (a third
of a decode-only run). The time to
that final commit is in the JSON too (*_to_final_commit_per_s), and the decode-only worker also
times itself (decode_only_self_timed_per_s), a check on the method. ratio = correlator over
decode-only messages/s (target 0.5); cameras_per_worker = correlator messages/s over one camera's
share of the input (10 frames/s plus its share of the POS events).

Decision delay. Then, with the correlator caught up, the counter cameras of --live-registers
registers send live frames (event time = now, 10 fps, nobody at the counter) while their registers
get refunds, one per register every 1.5 s: each must raise refund_without_customer once the
camera's event time passes the refund's window. Per alert, delay = raised_time_ms - (refund time +
(after_s + pos_clock_skew_s) * 1000), from the rules of the generated store config; p50, p99 (nearest
rank) and max against a 1 s target, split into the wait for the first frame past the window and
the hop from that frame to the decision; plus the count
of the correlator's own sw_correlator_decision_delay_seconds histogram (its /metrics). The same is
repeated with every camera of the chain live (whole_chain_live). The broker answers a fetch as soon
as data arrives (Faust's consumer may wait up to 1.5 s for one, but only while there is nothing to
read); the decode-only worker, still running, reads the live frames too, and its latency
(decode_only_hop_p50_p99_s) is one hop through the broker and Faust alone, for comparison.

Progress goes to stderr every few seconds; the last line on stdout is one JSON object. Store
numbers are chosen so a small chain's cameras spread evenly over the partitions, as a real chain's
hundreds of cameras do by themselves. Before the workers start, the broker must hold every backlog
message (it refuses, for instance, a message above the topic's max.message.bytes).

    make bench-correlator ARGS="--cameras 40 --seconds 150 --live-seconds 30"
    .venv/bin/python scripts/bench_correlator.py --cameras 10 --seconds 20 --live-seconds 20   # a quick trial

A quick trial's backlog is a fraction of a second of work, too short for the CPU sampling: its
msgs/s say only that everything ran; take figures from backlogs of 10,000 messages or more.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from confluent_kafka import KafkaError, Message, Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka.partitioner import murmur2

from devplatform.kafkatools import Offsets, TopicReader, Worker, WorkerExited
from devplatform.launcher import Platform, free_port, http_ready
from devplatform.progress import Progress
from services.correlator.chain import register_key
from services.correlator.settings import CorrelatorSettings
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
from services.shared.kafka import make_producer
from services.shared.serde import encode
from services.shared.storeconfig import StoreConfig, Zone, load_store_config
from services.shared.zonevisits import Sighting, ZoneVisits

FPS = 10
FRAME_MS = 1000 // FPS
CAMERAS_PER_STORE = 4  # counter camera (1 register), counter camera (2 registers), two floor cameras
CAMERA_BYTES = (300, 480, 290, 290)  # their FrameAnalysis messages' average size
TIMEZONES = ("Europe/London", "Europe/Berlin", "America/New_York", "America/Chicago", "America/Los_Angeles", "Asia/Tokyo")
# sale, return, refund, void, no_sale, drawer_open: what a till records in a day, roughly
POS_MIX = ((PosEventType.POS_EVENT_TYPE_SALE, 0.84), (PosEventType.POS_EVENT_TYPE_RETURN, 0.05), (PosEventType.POS_EVENT_TYPE_REFUND, 0.04),
           (PosEventType.POS_EVENT_TYPE_VOID, 0.03), (PosEventType.POS_EVENT_TYPE_NO_SALE, 0.03), (PosEventType.POS_EVENT_TYPE_DRAWER_OPEN, 0.01))
REFUNDS = (PosEventType.POS_EVENT_TYPE_RETURN, PosEventType.POS_EVENT_TYPE_REFUND)
DECODE_APP_ID = "sw-bench-decode"
REFUND_EVERY_MS = 1500  # per live register
BUSY_CPU_S = 0.02  # CPU seconds in one ~50 ms sampling interval that mean a worker is working, not waiting
Rect = tuple[float, float, float, float]


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the synthetic chain -------------------------------------------------------------------------

@dataclass
class ZoneSpec:
    id: str
    kind: str
    rect: Rect  # x0, y0, x1, y1


@dataclass
class RegisterSpec:
    store_id: str
    id: str
    camera_id: str
    customer_zone: str
    goods_zone: str
    employees: list[str]

    @property
    def key(self) -> str:
        return register_key(self.store_id, self.id)


@dataclass
class CameraSpec:
    store_id: str
    id: str
    kind: str  # "counter" or "floor"
    zones: list[ZoneSpec]
    registers: list[RegisterSpec] = field(default_factory=list)


def partition_of(key: str) -> int:
    """Where Java's partitioner (and so inference's producer and Faust) puts a key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % topics.PARTITIONS


def store_numbers(stores: int, cameras: int) -> list[int]:
    """Store numbers whose cameras spread evenly over the partitions of sw.detections.v1.

    A real chain's hundreds of cameras even out by themselves; a few dozen hashed at random could
    pile onto some partitions. Numbers are skipped as chains skip them.
    """
    weights = [CAMERA_BYTES[c % CAMERAS_PER_STORE] for c in range(cameras)]
    load = [0.0] * topics.PARTITIONS
    cap = sum(weights) / topics.PARTITIONS + max(weights) / 2
    chosen: list[int] = []
    number = 0
    while len(chosen) < stores:
        first = len(chosen) * CAMERAS_PER_STORE
        for tries in range(1, 100_000):
            number += 1
            after = list(load)
            for c in range(min(CAMERAS_PER_STORE, cameras - first)):
                after[partition_of(f"store-{number:03d}-cam-{c + 1}")] += weights[first + c]
            if max(after) <= cap * (1 + tries / 2000):
                load = after
                chosen.append(number)
                break
    return chosen


def build_chain(cameras: int, rng: random.Random) -> tuple[list[CameraSpec], dict]:
    """Stores of up to four cameras each, and the store config (as a dict) that describes them."""
    specs: list[CameraSpec] = []
    stores: list[dict] = []
    employees: list[dict] = []
    numbers = store_numbers(math.ceil(cameras / CAMERAS_PER_STORE), cameras)
    for s, number in enumerate(numbers):
        store_id = f"store-{number:03d}"
        tz = TIMEZONES[s % len(TIMEZONES)]
        local = datetime.now(ZoneInfo(tz))
        # Open now whatever the hour: no after-hours alerts from the synthetic crowd.
        opening = {"open": (local - timedelta(hours=8)).strftime("%H:00"), "close": (local + timedelta(hours=8)).strftime("%H:00")}
        count = min(CAMERAS_PER_STORE, cameras - s * CAMERAS_PER_STORE)
        store_cams: list[CameraSpec] = []
        reg_no = 0
        for c in range(count):
            cam_id = f"{store_id}-cam-{c + 1}"
            if c < 2:  # counter cameras: one register, then two side by side
                n = c + 1
                zones = [ZoneSpec(f"{cam_id}-staff", "staff_only", (0.0, 0.0, 1.0, 0.42))]
                regs = []
                for i in range(n):
                    reg_no += 1
                    x0, x1 = i / n, (i + 1) / n
                    reg_id = f"reg-{reg_no}"
                    zones += [ZoneSpec(f"{reg_id}-customer", "counter_customer", (x0 + 0.02, 0.6, x1 - 0.02, 1.0)),
                              ZoneSpec(f"{reg_id}-goods", "counter_merchandise", (x0 + 0.05, 0.45, x1 - 0.05, 0.58))]
                    staff = [f"{store_id}-emp-{reg_no}{k}" for k in "ab"]
                    regs.append(RegisterSpec(store_id, reg_id, cam_id, f"{reg_id}-customer", f"{reg_id}-goods", staff))
                    employees += [{"id": e, "tokens": [f"tok-{e}"]} for e in staff]
                store_cams.append(CameraSpec(store_id, cam_id, "counter", zones, regs))
            else:
                store_cams.append(CameraSpec(store_id, cam_id, "floor", [
                    ZoneSpec(f"{cam_id}-aisle", "aisle", (0.0, 0.0, 0.5, 1.0)),
                    ZoneSpec(f"{cam_id}-high-value", "high_value", (0.5, 0.0, 0.85, 1.0)),
                    ZoneSpec(f"{cam_id}-exit", "exit", (0.85, 0.0, 1.0, 1.0))]))
        specs += store_cams
        stores.append({
            "id": store_id, "name": f"Bench store {number}", "timezone": tz, "opening_hours": opening,
            "cameras": [{"id": c.id, "source": "file:unused.mp4", "fps": FPS, "stages": [{"kind": "detector", "detect_fps": 5}],
                         "zones": [{"id": z.id, "kind": z.kind, "polygon": [[z.rect[0], z.rect[1]], [z.rect[2], z.rect[1]], [z.rect[2], z.rect[3]], [z.rect[0], z.rect[3]]]}
                                   for z in c.zones]} for c in store_cams],
            "registers": [{"id": r.id, "camera": r.camera_id, "customer_zones": [r.customer_zone], "merchandise_zones": [r.goods_zone]}
                          for c in store_cams for r in c.registers],
        })
    return specs, {"chain": "bench-chain", "stores": stores, "employees": employees}


# --- the backlog: POS events, and frames consistent with them ------------------------------------

@dataclass
class Presence:
    """A tracked person (or object) in one zone over [start, end] of event time."""

    track_id: int
    first_seen_ms: int
    start_ms: int
    end_ms: int
    zone_id: str
    x: float  # where in the zone, 0..1
    label: str = ""  # objects only


def pos_events(reg: RegisterSpec, t0: int, t1: int, rng: random.Random, store_sales: list[PosEvent]) -> list[tuple[PosEvent, bool]]:
    """A register's POS events over [t0, t1], one every 30-60 s; True where a customer stood there.

    Returns name a sale of the store's (rung before them) half of the time, else one older than the backlog."""
    events: list[tuple[PosEvent, bool]] = []
    own: list[PosEvent] = []
    t = t0 + rng.randint(5_000, 45_000)
    n = 0
    kinds, weights = zip(*POS_MIX, strict=True)
    while t < t1 - 10_000:
        n += 1
        kind = rng.choices(kinds, weights)[0]
        employee = rng.choice(reg.employees)
        event = PosEvent(event_id=f"{reg.key}:e{n}", type=kind, store_id=reg.store_id, register_id=reg.id, employee_id=employee,
                         event_time_ms=t, currency="EUR")
        customer = True
        if kind == PosEventType.POS_EVENT_TYPE_SALE:
            items = [PosItem(sku=f"sku-{rng.randint(1000, 9999)}", description="item", quantity=rng.randint(1, 3), unit_price_minor=rng.randint(99, 4999))
                     for _ in range(rng.randint(1, 4))]
            event.items.extend(items)
            event.transaction_id = f"{reg.key}:t{n}"
            event.total_minor = sum(i.quantity * i.unit_price_minor for i in items)
            event.tender = rng.choice(("card", "card", "cash"))
            if event.tender == "card":
                event.card_token = f"card-{rng.getrandbits(48):012x}"
            own.append(event)
        elif kind in REFUNDS:
            earlier = [s for s in store_sales if s.event_time_ms < t] + own
            original = rng.choice(earlier) if earlier and rng.random() < 0.5 else None
            event.original_transaction_id = original.transaction_id if original else f"{reg.key}:old{rng.randint(1, 99999)}"
            event.transaction_id = f"{reg.key}:t{n}"
            event.total_minor = original.total_minor if original else rng.randint(500, 15000)
            event.tender = "card"
            event.card_token = f"tok-{employee}" if rng.random() < 0.03 else f"card-{rng.getrandbits(48):012x}"
            if rng.random() < 0.3:
                event.customer_token = f"cust-{rng.getrandbits(40):010x}"
            customer = rng.random() > 0.15  # the fraud the camera is there for
        elif kind == PosEventType.POS_EVENT_TYPE_VOID:
            event.total_minor = rng.randint(500, 12000)
            if rng.random() < 0.5 and own:
                event.after_tender, event.original_transaction_id = True, own[-1].transaction_id
            else:
                event.transaction_id = f"{reg.key}:t{n}"
        else:
            customer = False
        events.append((event, customer))
        t += rng.randint(30_000, 60_000)
    store_sales += own
    return events


def counter_presences(cam: CameraSpec, t0: int, t1: int, pos: dict[str, list[tuple[PosEvent, bool]]], rng: random.Random) -> tuple[list[Presence], list[Presence]]:
    """Cashiers behind the counter all along; a customer (and goods) around each transaction."""
    persons: list[Presence] = []
    objects: list[Presence] = []
    track = 0
    staff = cam.zones[0].id
    for reg in cam.registers:
        track += 1
        since = t0 - rng.randint(600_000, 3_600_000)
        persons.append(Presence(track, since, since, t1 + 60_000, staff, rng.random()))
        blocked_until = 0
        for event, customer in pos.get(reg.key, []):
            t = event.event_time_ms
            if not customer:
                blocked_until = t + 9_000  # keep the next customer out of this refund's window
                continue
            track += 1
            start, end = max(t - rng.randint(8_000, 25_000), blocked_until), t + rng.randint(2_000, 6_000)
            persons.append(Presence(track, start, start, end, reg.customer_zone, rng.random()))
            if event.type != PosEventType.POS_EVENT_TYPE_VOID:
                track += 1
                put = max(start, t - rng.randint(4_000, 12_000))
                objects.append(Presence(track, put, put, end, reg.goods_zone, rng.random(), rng.choice(("bottle", "book", "handbag", "cup"))))
    return persons, objects


def floor_presences(cam: CameraSpec, t0: int, t1: int, rng: random.Random) -> list[Presence]:
    """Shoppers arriving every ~15 s: the aisle, often the high-value shelf, then the exit; at most 3 at once."""
    aisle, high_value, exit_zone = (z.id for z in cam.zones)
    persons: list[Presence] = []
    ends: list[int] = []
    track = 0
    t = t0 - 30_000
    while t < t1:
        t += int(rng.expovariate(1 / 15_000))
        if sum(1 for e in ends if e > t) >= 3:
            continue
        track += 1
        legs = [(aisle, rng.randint(3_000, 15_000))]
        if rng.random() < 0.6:
            legs.append((high_value, rng.randint(130_000, 150_000) if rng.random() < 0.03 else rng.randint(5_000, 40_000)))
        legs.append((exit_zone, rng.randint(1_500, 3_000)))
        start = t
        for zone, dwell in legs:
            persons.append(Presence(track, t, start, start + dwell, zone, rng.random()))
            start += dwell
        ends.append(start)
    return persons


class CameraSim:
    """One camera's FrameAnalysis messages at any event time: its presences are tracks that inference's
    own helper (services/shared/zonevisits.py) places in zones, as its detector stage does."""

    def __init__(self, cam: CameraSpec, zones: Sequence[Zone], persons: list[Presence], objects: list[Presence], seq0: int) -> None:
        self.cam = cam
        self.rects = {z.id: z.rect for z in cam.zones}
        self.persons = sorted(persons, key=lambda p: p.start_ms)
        self.objects = sorted(objects, key=lambda p: p.start_ms)
        self.visits = ZoneVisits(zones)
        self.seq = seq0

    @staticmethod
    def present(presences: list[Presence], t: int) -> list[Presence]:
        """Who is there at t, once per track: a shopper moving on, on the boundary, is in the zone entered."""
        here: dict[int, Presence] = {}
        for p in presences:
            if p.start_ms > t:
                break
            if p.end_ms >= t:
                here[p.track_id] = p
        return list(here.values())

    def frame(self, t: int) -> bytes:
        self.seq += 1
        detected = self.seq % 2 == 0  # detect_fps 5: the tracker carries people in between
        analysis = FrameAnalysis(store_id=self.cam.store_id, camera_id=self.cam.id, capture_time_ms=t, frame_sequence=self.seq)
        for z in self.cam.zones:
            analysis.zones.add(zone_id=z.id, kind=z.kind)
        persons, objects = self.present(self.persons, t), self.present(self.objects, t)
        # The simulation knows when each presence began, also before the first frame it sends.
        seen = [Sighting(p.track_id, True, 0.55 + 0.4 * p.x, [p.zone_id], entered_ms={p.zone_id: p.start_ms}) for p in persons]
        placed = self.visits.fill(analysis, seen + [Sighting(o.track_id, False, 0.6, [o.zone_id], entered_ms={o.zone_id: o.start_ms}) for o in objects], t)
        for p, sighting, zones in zip(persons, seen, placed[:len(persons)], strict=True):
            x0, y0, x1, y1 = self.rects[p.zone_id]
            cx = x0 + (x1 - x0) * (0.2 + 0.6 * p.x) + 0.01 * math.sin(t / 700 + p.track_id)
            feet = y0 + (y1 - y0) * 0.7
            analysis.persons.add(track_id=p.track_id, box={"xmin": cx - 0.05, "ymin": max(0.0, feet - 0.35), "xmax": cx + 0.05, "ymax": feet},
                                 score=sighting.score, first_seen_ms=p.first_seen_ms, detected=detected, zones=zones)
        for o, zones in zip(objects, placed[len(persons):], strict=True):
            x0, y0, x1, y1 = self.rects[o.zone_id]
            cx, cy = x0 + (x1 - x0) * (0.2 + 0.6 * o.x), (y0 + y1) / 2
            analysis.objects.add(label=o.label, score=0.6, box={"xmin": cx - 0.03, "ymin": cy - 0.03, "xmax": cx + 0.03, "ymax": cy + 0.03},
                                 class_id=44, track_id=o.track_id, first_seen_ms=o.first_seen_ms, zones=zones)
        self.visits.keep_only({p.track_id for p in persons + objects})
        if detected:
            analysis.models.add(name="detector", version=1)
        return encode(analysis)


def simulate(cam: CameraSpec, config: StoreConfig, t0: int, t1: int, pos: dict[str, list[tuple[PosEvent, bool]]], rng: random.Random) -> CameraSim:
    """The camera over [t0, t1]: counter cameras follow their registers' POS events (none: cashiers only)."""
    if cam.kind == "counter":
        persons, objects = counter_presences(cam, t0, t1, pos, rng)
    else:
        persons, objects = floor_presences(cam, t0, t1, rng), []
    return CameraSim(cam, config.camera(cam.id)[1].zones, persons, objects, rng.randint(1, 10**6))


@dataclass
class Backlog:
    messages: list[tuple[int, str, bytes, bytes]]  # event time, topic, key, value
    frames: int
    pos: int
    pos_kinds: Counter


def make_backlog(cams: list[CameraSpec], config: StoreConfig, seconds: float, rng: random.Random) -> Backlog:
    t1 = now_ms() - 60_000
    t0 = t1 - int(seconds * 1000)
    messages: list[tuple[int, str, bytes, bytes]] = []
    kinds: Counter = Counter()
    pos: dict[str, list[tuple[PosEvent, bool]]] = {}
    sales: dict[str, list[PosEvent]] = {}
    for cam in cams:
        for reg in cam.registers:
            pos[reg.key] = pos_events(reg, t0, t1, rng, sales.setdefault(reg.store_id, []))
            for event, _ in pos[reg.key]:
                messages.append((event.event_time_ms, topics.POS, reg.key.encode(), encode(event)))
                kinds[PosEventType.Name(event.type).removeprefix("POS_EVENT_TYPE_").lower()] += 1
    pos_count = len(messages)
    with Progress("generating the backlog", len(cams), "cameras", every_s=5) as progress:
        for cam in cams:
            sim = simulate(cam, config, t0, t1, pos, rng)
            for t in range(t0 + rng.randint(0, FRAME_MS - 1), t1, FRAME_MS):
                messages.append((t, topics.DETECTIONS, cam.id.encode(), sim.frame(t)))
            progress.advance()
    messages.sort(key=lambda m: m[0])  # as it piled up: in event time across cameras and registers
    return Backlog(messages, len(messages) - pos_count, pos_count, kinds)


def produce(bootstrap: str, backlog: Backlog) -> int:
    """Write the backlog; the bytes written (keys and values)."""
    producer = make_producer(bootstrap, **{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    refused: Counter = Counter()

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            refused[err.str()] += 1

    written = 0
    with Progress("writing the backlog to the broker", len(backlog.messages), "messages", every_s=5) as progress:
        for i, (_, topic, key, value) in enumerate(backlog.messages):
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            written += len(key) + len(value)
            if i % 5000 == 0:
                producer.poll(0)
                progress.update(i)
        left = producer.flush(60)
        progress.update(len(backlog.messages))
    if left or refused:
        reasons = "; ".join(f"{n} {reason}" for reason, n in refused.most_common(3))
        raise SystemExit(f"bench-correlator: the broker did not take {left + sum(refused.values())} of {len(backlog.messages)} backlog messages"
                         f" ({left} unacknowledged{'; refused: ' + reasons if reasons else ''})")
    return written


# --- watching a worker ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


@dataclass
class Drained:
    """How a worker went through the backlog."""

    first: float  # wall time of its first consumed message
    # Wall time it last worked (see last_busy) before its commits reached the end. Faust
    # commits every 10,000 messages or 2.8 s, so the final commit comes up to 2.8 s after the work:
    # a third of a decode-only run. The commits confirm that everything was done; the CPU says when.
    last_busy: float
    end: float  # its commits reached the end of its inputs and of what it derived from them
    total: int
    cpu_s: float  # from its first message to last_busy
    derived_messages: int

    @property
    def per_s(self) -> float:
        return self.total / (self.last_busy - self.first)

    @property
    def to_end_per_s(self) -> float:
        return self.total / (self.end - self.first)

    @property
    def cores(self) -> float:
        return self.cpu_s / (self.last_busy - self.first)


def last_busy(samples: list[tuple[float, float]], after: float) -> float | None:
    """When the worker last worked: the end of the last sampling interval (~50 ms) in which it used
    at least BUSY_CPU_S of CPU. An idle Faust worker (heartbeats, timers) uses a few ms a second."""
    for (_, cpu0), (t1, cpu1) in zip(reversed(samples[:-1]), reversed(samples[1:]), strict=True):
        if t1 <= after:
            break
        if cpu1 - cpu0 >= BUSY_CPU_S:
            return t1
    return None


def drain(offsets: Offsets, worker: Worker, group: str, inputs: list[str], derived: list[str], total: int, first_at: Callable[[], float]) -> Drained:
    """Wait until the group's commits reach the end of its input topics and of what it derived from them."""
    ends = offsets.ends(inputs)
    deadline = time.monotonic() + max(300.0, total / 100)
    cpu: list[tuple[float, float]] = []
    first = 0.0
    own_note = ""
    with Progress(f"{worker.name} working through the backlog", total, "messages", every_s=3) as progress:
        while True:
            worker.check("working through the backlog")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-correlator: {worker.name} did not finish the backlog in time; last log lines:\n{worker.tail()}")
            cpu.append((time.time(), cpu_seconds(worker.popen.pid)))
            committed = offsets.committed(group, inputs + derived)
            seen = time.time()
            done = sum(min(committed.get(tp, 0), end) for tp, end in ends.items())
            first = first or first_at()
            if derived and len(cpu) % 20 == 1:
                own = offsets.ends(derived)
                own_note = f", its own messages {sum(min(committed.get(tp, 0), e) for tp, e in own.items())}/{sum(own.values())} done"
            progress.update(done, note=f"{done / (seen - first):,.0f} msgs/s committed{own_note}" if first and done else "waiting for its first message")
            if done >= total:
                more = offsets.ends(derived) if derived else {}
                if all(committed.get(tp, 0) >= end for tp, end in more.items()):
                    if derived:
                        progress.note = f"its own {sum(more.values())} messages done too"
                    break
            time.sleep(0.05)
    if not first:
        raise SystemExit(f"bench-correlator: could not tell when {worker.name} consumed its first message")
    busy = last_busy(cpu, first) or seen
    cpu_at = dict(cpu)
    cpu_first = next((c for t, c in cpu if t >= first), cpu[-1][1])
    return Drained(first, busy, seen, total, cpu_at.get(busy, cpu[-1][1]) - cpu_first, sum(offsets.ends(derived).values()) if derived else 0)


# --- the decode-only worker (a mode of this script, run as its own process) -------------------------

def decode_worker() -> int:
    """The limit: the correlator's own create_app, settings and worker set-up; agents that only decode.

    Writes {"first": wall time of its first message, "last": of the message that made the count
    BENCH_EXPECT}, a check on how the bench times workers from outside; and, for frames captured in the last minute
    (the live phase), "capture ms, wall ms when decoded" lines: one hop through the broker and Faust,
    the reference for the correlator's own hops."""
    import faust
    import mode.loop

    from services.correlator.app import create_app
    from services.shared.logs import configure_logging, logging_dict_config
    from services.shared.settings import load_settings

    settings = load_settings(CorrelatorSettings)
    configure_logging("bench-decode", settings.log_level)
    app = create_app(settings)
    marker = Path(os.environ["BENCH_TIMES_FILE"])
    expect = int(os.environ["BENCH_EXPECT"])
    times: dict[str, float] = {}
    count = 0
    hops = Path(os.environ["BENCH_HOPS_FILE"]).open("a", buffering=1 << 16)  # noqa: SIM115 (open while the worker runs)
    flushed = [0.0]

    def seen() -> None:
        nonlocal count
        count += 1
        if count == 1 or count == expect:
            times["first" if count == 1 else "last"] = time.time()
            marker.write_text(json.dumps(times))

    async def detections(stream: Any) -> None:
        async for event in stream.events():
            analysis = FrameAnalysis.FromString(event.value)
            seen()
            now = time.time()
            if now * 1000 - analysis.capture_time_ms < 60_000:
                hops.write(f"{analysis.capture_time_ms} {int(now * 1000)}\n")
                if now - flushed[0] > 1.0:
                    hops.flush()
                    flushed[0] = now

    async def pos(stream: Any) -> None:
        async for event in stream.events():
            PosEvent.FromString(event.value)
            seen()

    app.agent(app.topic(topics.DETECTIONS, key_serializer="raw", value_serializer="raw"), name=f"{DECODE_APP_ID}.detections")(detections)
    app.agent(app.topic(topics.POS, key_serializer="raw", value_serializer="raw"), name=f"{DECODE_APP_ID}.pos")(pos)
    mode.loop.use("uvloop")
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False,
                          logging_config=logging_dict_config("bench-decode", settings.log_level))
    worker.execute_from_commandline()
    return 0


def correlator_worker() -> int:
    """The real correlator, `python -m services.correlator`'s main(), noting in BENCH_TIMES_FILE
    {"first": wall time} when its first event reaches an agent; after that one event it runs as is."""
    from services.correlator import agents
    from services.correlator.__main__ import main as correlator_main

    marker = Path(os.environ["BENCH_TIMES_FILE"])
    guarded = agents.Correlator._guarded

    async def first_guarded(self: Any, event: Any, work: Any) -> None:
        agents.Correlator._guarded = guarded  # type: ignore[method-assign]
        marker.write_text(json.dumps({"first": time.time()}))
        await guarded(self, event, work)

    agents.Correlator._guarded = first_guarded  # type: ignore[method-assign]
    return correlator_main()


# --- the live phase --------------------------------------------------------------------------------

def metric(url: str, name: str) -> float:
    """A sample without labels from a Prometheus /metrics page (NaN when unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def refund_period(config: StoreConfig, regs: list[RegisterSpec], seconds: float) -> tuple[int, int]:
    """When in a live part of `seconds` refunds are made (ms from its start): once the camera covers
    a whole window before them, and until the last window closes 2 s before the frames stop."""
    rules = [config.rules_for(r.store_id, register_id=r.id) for r in regs]
    before_s = max(v.refund_without_customer.before_s + v.timing.pos_clock_skew_s for v in rules)
    after_s = max(v.refund_without_customer.after_s + v.timing.pos_clock_skew_s for v in rules)
    return int((before_s + 1.5) * 1000), int((seconds - after_s - 2) * 1000)


def _alert_and_sent_ms(msg: Message) -> tuple[Alert, int]:
    """An alert, and when the broker took it (its message's timestamp)."""
    return Alert.FromString(msg.value()), msg.timestamp()[1]


def live_phase(bootstrap: str, offsets: Offsets, correlator: Worker, cams: list[CameraSpec], refund_cams: list[CameraSpec], config: StoreConfig,
               seconds: float, rng: random.Random, label: str, hops_file: Path) -> dict:
    """Live frames from `cams` (the refund cameras with nobody at their counters), refunds at the
    refund cameras' registers; how long after each refund's window closed its alert was raised.

    The broker answers a waiting fetch as soon as data arrives, so a hop costs the broker's and
    Faust's own handling, not the consumer's fetch wait. The decode-only worker, still running, reads
    the same live frames: its latency is that hop alone, for comparison."""
    regs = [r for c in refund_cams for r in c.registers]
    rules = {r.key: config.rules_for(r.store_id, register_id=r.id) for r in regs}
    settle_s = {k: v.refund_without_customer.after_s + v.timing.pos_clock_skew_s for k, v in rules.items()}
    warmup_ms, stop_ms = refund_period(config, regs, seconds)
    schedule: list[tuple[int, int]] = []
    for j in range(len(regs)):
        at = warmup_ms + j * REFUND_EVERY_MS // len(regs)
        while at < stop_ms:
            schedule.append((at, j))
            at += REFUND_EVERY_MS
    schedule.sort()
    start_ms = now_ms()
    # No POS events: counter cameras see only their cashiers; floor cameras their shoppers.
    sims = [simulate(cam, config, start_ms, start_ms + int(seconds * 1000) + 5000, {}, rng) for cam in cams]
    alerts_from = offsets.ends([topics.ALERTS])
    metrics_url = correlator.http + "/metrics"
    histogram = "sw_correlator_decision_delay_seconds_count"
    count_before = metric(metrics_url, histogram)
    producer: Producer = make_producer(bootstrap)
    refunds: dict[str, tuple[RegisterSpec, int]] = {}
    frame_times: list[int] = []
    start = start_ms / 1000
    late_ticks = 0
    with Progress(f"live {label}: {len(cams)} cameras at {FPS} fps, refunds at {len(regs)} registers", seconds, "s", every_s=5) as progress:
        tick = 0
        while (elapsed_ms := now_ms() - start_ms) < seconds * 1000:
            correlator.check("deciding live refunds")
            while schedule and schedule[0][0] <= elapsed_ms:
                _, j = schedule.pop(0)
                reg, t, n = regs[j], now_ms(), len(refunds)
                event = PosEvent(event_id=f"{reg.key}:{label}{n}", type=PosEventType.POS_EVENT_TYPE_REFUND, store_id=reg.store_id, register_id=reg.id,
                                 transaction_id=f"{reg.key}:{label}-t{n}", employee_id=reg.employees[0], event_time_ms=t, currency="EUR",
                                 total_minor=4999, tender="card", card_token=f"card-{label}-{n}")
                producer.produce(topics.POS, key=reg.key.encode(), value=encode(event))
                refunds[event.event_id] = (reg, t)
            t = now_ms()
            frame_times.append(t)
            for sim in sims:
                producer.produce(topics.DETECTIONS, key=sim.cam.id.encode(), value=sim.frame(t))
            producer.poll(0)
            tick += 1
            progress.update(elapsed_ms / 1000, note=f"{len(refunds)} refunds")
            pause = start + tick * FRAME_MS / 1000 - time.time()
            if pause > 0:
                time.sleep(pause)
            else:
                late_ticks += 1
    producer.flush(10)
    # Every refund's window closed before the last frame: each must raise its alert.
    found: dict[str, tuple[Alert, int]] = {}
    reader = TopicReader(bootstrap, [topics.ALERTS], _alert_and_sent_ms, since=alerts_from)
    reader.start()
    deadline = time.monotonic() + 20
    while len(found) < len(refunds) and time.monotonic() < deadline:
        for alert, sent_ms in reader.received():
            refs = [e.ref for e in alert.evidence if e.kind == "pos_event"]
            if alert.rule == "refund_without_customer" and refs and refs[0] in refunds:
                found[refs[0]] = (alert, sent_ms)
        time.sleep(0.5)
    reader.stop()
    # Where the time went: from the window's end to the first frame at or past it (frames go out
    # every FRAME_MS), and from that frame's capture time to the decision (the alert's raised time).
    delays, sent = [], []
    parts: dict[str, list[float]] = {"until_deciding_frame": [], "frame_to_decision": []}
    for event_id, (alert, sent_ms) in found.items():
        reg, t = refunds[event_id]
        window_end = t + settle_s[reg.key] * 1000
        delays.append((alert.raised_time_ms - window_end) / 1000)
        sent.append((sent_ms - window_end) / 1000)
        deciding = next((f for f in frame_times if f >= window_end), None)
        if deciding is not None:
            parts["until_deciding_frame"].append((deciding - window_end) / 1000)
            parts["frame_to_decision"].append((alert.raised_time_ms - deciding) / 1000)
    if not delays:
        raise SystemExit(f"bench-correlator: none of the {len(refunds)} live refunds raised refund_without_customer; last log lines:\n{correlator.tail()}")
    result = {
        "p50_decision_delay_s": round(nearest_rank(delays, 0.5), 3),
        "p99_decision_delay_s": round(nearest_rank(delays, 0.99), 3),
        "max_decision_delay_s": round(max(delays), 3),
        "p99_alert_sent_delay_s": round(nearest_rank(sent, 0.99), 3),
        "delay_parts_p50_p99_s": {k: [round(nearest_rank(v, 0.5), 3), round(nearest_rank(v, 0.99), 3)] for k, v in parts.items() if v},
        "decision_alerts": len(delays),
        "live_refunds": len(refunds),
        "live_cameras": len(cams),
        "metrics_decision_delay_count": metric(metrics_url, histogram) - count_before,
        "late_frame_ticks": late_ticks,
    }
    hops = []
    for line in hops_file.read_text().splitlines() if hops_file.exists() else []:
        captured, decoded = (int(v) for v in line.split())
        if start_ms <= captured <= start_ms + seconds * 1000:
            hops.append((decoded - captured) / 1000)
    if hops:
        result["decode_only_hop_p50_p99_s"] = [round(nearest_rank(hops, 0.5), 3), round(nearest_rank(hops, 0.99), 3)]
    print(f"live {label}: {result}", flush=True)
    return result


# --- the run ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=40, help="cameras in the chain (stores of four: two counter cameras, two floor cameras)")
    parser.add_argument("--seconds", type=float, default=150.0, help="event time the backlog covers, at 10 fps per camera")
    parser.add_argument("--live-seconds", type=float, default=30.0, help="length of each live part (decision delay): few cameras, then the whole chain")
    parser.add_argument("--live-registers", type=int, default=4, help="registers (and their counter cameras) that get live refunds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="run the correlator under cProfile and write its stats here (figures are then not comparable)")
    parser.add_argument("--decode-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--correlator-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decode_worker:
        return decode_worker()
    if args.correlator_worker:
        return correlator_worker()
    if args.cameras < 1 or args.seconds < 20 or args.live_registers < 1:
        parser.error("--cameras and --live-registers must be at least 1, --seconds at least 20")
    # The workers get the settings this script gives them and no others (the launcher passes its own environment on).
    for name in [name for name in os.environ if name.startswith("SW_")]:
        del os.environ[name]

    rng = random.Random(args.seed)
    cams, raw_config = build_chain(args.cameras, rng)
    stores = len(raw_config["stores"])
    refund_cams: list[CameraSpec] = []
    for cam in cams:
        if cam.kind == "counter" and sum(len(c.registers) for c in refund_cams) < args.live_registers:
            refund_cams.append(cam)
    workers: list[Worker] = []
    with tempfile.TemporaryDirectory(prefix="bench-correlator-") as tmp_name:
        tmp = Path(tmp_name)
        config_path = tmp / "stores.yaml"
        config_path.write_text(yaml.safe_dump(raw_config, sort_keys=False))
        config = load_store_config(config_path)
        warmup_ms, stop_ms = refund_period(config, [r for c in refund_cams for r in c.registers], args.live_seconds)
        if stop_ms <= warmup_ms:
            least = math.ceil(args.live_seconds + (warmup_ms - stop_ms + REFUND_EVERY_MS) / 1000)
            parser.error(f"--live-seconds {args.live_seconds:g} leaves no time for refunds; use at least {least}")
        platform = Platform(run_dir=tmp / "run")
        offsets: Offsets | None = None
        try:
            print(f"chain: {stores} stores, {len(cams)} cameras, {sum(len(c.registers) for c in cams)} registers; backlog {args.seconds:g} s at {FPS} fps", flush=True)
            platform.start_broker()
            bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
            backlog = make_backlog(cams, config, args.seconds, rng)
            written = produce(bootstrap, backlog)
            offsets = Offsets(bootstrap)
            total = backlog.frames + backlog.pos
            held = offsets.watermarks([topics.DETECTIONS, topics.POS]).values()
            ends, lows = sum(high for _low, high in held), sum(low for low, _high in held)
            if ends != total or lows:
                raise SystemExit(f"bench-correlator: the broker holds {ends - lows} of {total} backlog messages ({lows} gone from the start of their partitions)")
            print(f"backlog: {backlog.frames} frames and {backlog.pos} POS events ({dict(backlog.pos_kinds)}), "
                  f"{written / 2**20:.1f} MiB", flush=True)
            settings_env = {"SW_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "SW_STORE_CONFIG": str(config_path), "SW_LOG_LEVEL": "INFO"}

            # 1. the limit: decode only
            times_file, hops_file = tmp / "decode-times.json", tmp / "decode-hops.txt"
            decode = Worker.start(platform, "decode-only worker", [sys.executable, str(Path(__file__).resolve()), "--decode-worker"],
                                  {**settings_env, "SW_CORRELATOR_APP_ID": DECODE_APP_ID, "SW_TABLE_STORE": "memory",
                                   "SW_CORRELATOR_DATA_DIR": str(tmp / "decode-data"), "BENCH_TIMES_FILE": str(times_file), "BENCH_EXPECT": str(total),
                                   "BENCH_HOPS_FILE": str(hops_file)})
            workers.append(decode)

            def decode_times() -> dict[str, float]:
                try:
                    return json.loads(times_file.read_text())
                except (OSError, ValueError):
                    return {}

            # It stays up, idle, to read the live frames later.
            limit = drain(offsets, decode, DECODE_APP_ID, [topics.DETECTIONS, topics.POS], [], total, lambda: decode_times().get("first", 0.0))
            own = decode_times()
            self_timed = total / (own["last"] - own["first"]) if "last" in own else float("nan")
            print(f"decode-only: {limit.per_s:,.0f} msgs/s ({limit.to_end_per_s:,.0f} to its final commit, {self_timed:,.0f} as timed by itself; "
                  f"{limit.cores:.2f} cores)", flush=True)

            # 2. the correlator
            port = free_port()
            correlator_times = tmp / "correlator-times.json"
            correlator_env = {**settings_env, "SW_HTTP_PORT": str(port), "SW_CORRELATOR_DATA_DIR": str(tmp / "correlator-data"),
                              "BENCH_TIMES_FILE": str(correlator_times)}
            group = correlator_env.get("SW_CORRELATOR_APP_ID", CorrelatorSettings.model_fields["correlator_app_id"].default)
            argv_c = [sys.executable, str(Path(__file__).resolve()), "--correlator-worker"]
            if args.profile:
                argv_c = [sys.executable, "-m", "cProfile", "-o", str(args.profile.resolve()), *argv_c[1:]]
            correlator = Worker.start(platform, "correlator", argv_c, correlator_env)
            correlator.http = f"http://127.0.0.1:{port}"
            workers.append(correlator)

            def correlator_first() -> float:
                try:
                    return float(json.loads(correlator_times.read_text())["first"])
                except (OSError, ValueError, KeyError):
                    return 0.0

            real = drain(offsets, correlator, group, [topics.DETECTIONS, topics.POS], [topics.CAMERA_EVENTS, topics.RETURNS_BY_TOKEN, topics.TRANSACTIONS, topics.STORE_STEPS],
                         total, correlator_first)
            rss = rss_mb(correlator.popen.pid)
            print(f"correlator: {real.per_s:,.0f} msgs/s ({real.to_end_per_s:,.0f} to its final commit; {real.cores:.2f} cores, "
                  f"{real.derived_messages} messages it sent itself, RSS {rss:.0f} MB)", flush=True)
            backlog_alerts = Counter(alert.rule for alert, _sent in TopicReader(bootstrap, [topics.ALERTS], _alert_and_sent_ms).read_to_end(timeout_s=10))
            dlq_topics = [topics.dlq(t) for t in (topics.DETECTIONS, topics.POS, topics.CAMERA_EVENTS, topics.RETURNS_BY_TOKEN, topics.TRANSACTIONS, topics.STORE_STEPS)]
            dlq = sum(offsets.ends(dlq_topics).values())
            print(f"alerts from the backlog: {dict(backlog_alerts)}; dead-lettered: {dlq}", flush=True)

            # 3. live decisions: the refund cameras alone, then the whole chain live
            if not http_ready(correlator.http + "/readyz"):
                raise SystemExit(f"bench-correlator: the correlator is not ready for the live phase; last log lines:\n{correlator.tail()}")
            few = live_phase(bootstrap, offsets, correlator, refund_cams, refund_cams, config, args.live_seconds, rng, "few", hops_file)
            chain = live_phase(bootstrap, offsets, correlator, cams, refund_cams, config, args.live_seconds, rng, "chain", hops_file)
            metrics_count = metric(correlator.http + "/metrics", "sw_correlator_decision_delay_seconds_count")
            for worker in (correlator, decode):
                code = worker.stop()
                if code != 0:
                    print(f"warning: the {worker.name} exited with {code} on SIGTERM; last log lines:\n{worker.tail()}", flush=True)
        except WorkerExited as exc:
            raise SystemExit(f"bench-correlator: {exc}") from None
        finally:
            for worker in workers:
                if worker.popen.poll() is None:
                    worker.stop()
            if offsets is not None:
                offsets.close()
            platform.down(echo=lambda *_: None)

    if args.profile:
        import pstats

        pstats.Stats(str(args.profile), stream=sys.stderr).sort_stats("tottime").print_stats(30)
    pos_per_camera_s = backlog.pos / (len(cams) * args.seconds)
    cameras_per_worker = real.per_s / (FPS + pos_per_camera_s)
    summary = {
        "events_per_s": round(real.per_s, 1),
        "decode_only_per_s": round(limit.per_s, 1),
        "ratio": round(real.per_s / limit.per_s, 3),
        "target_ratio": 0.5,
        "cameras_per_worker": round(cameras_per_worker, 1),
        "stores_per_worker": round(cameras_per_worker / (len(cams) / stores), 1),
        "p50_decision_delay_s": few["p50_decision_delay_s"],
        "p99_decision_delay_s": few["p99_decision_delay_s"],
        "max_decision_delay_s": few["max_decision_delay_s"],
        "target_p99_s": 1.0,
        "decision_alerts": few["decision_alerts"],
        "live_refunds": few["live_refunds"],
        "live_cameras": few["live_cameras"],
        "p99_alert_sent_delay_s": few["p99_alert_sent_delay_s"],
        "delay_parts_p50_p99_s": few["delay_parts_p50_p99_s"],
        "decode_only_hop_p50_p99_s": few.get("decode_only_hop_p50_p99_s"),
        "whole_chain_live": {k: chain[k] for k in ("live_cameras", "p50_decision_delay_s", "p99_decision_delay_s", "max_decision_delay_s", "decision_alerts",
                                                   "live_refunds", "delay_parts_p50_p99_s", "decode_only_hop_p50_p99_s") if k in chain},
        "metrics_decision_delay_count": metrics_count,
        "metrics_decision_delay_count_live": few["metrics_decision_delay_count"] + chain["metrics_decision_delay_count"],
        "backlog_messages": total,
        "cameras": len(cams),
        "stores": stores,
        "seconds": args.seconds,
        "pos_events": backlog.pos,
        "pos_per_camera_s": round(pos_per_camera_s, 4),
        "events_to_final_commit_per_s": round(real.to_end_per_s, 1),
        "decode_only_to_final_commit_per_s": round(limit.to_end_per_s, 1),
        "decode_only_self_timed_per_s": round(self_timed, 1),
        "correlator_cores": round(real.cores, 2),
        "decode_only_cores": round(limit.cores, 2),
        "correlator_sent_messages": real.derived_messages,
        "correlator_rss_mb": round(rss),
        "backlog_alerts": dict(backlog_alerts),
        "dead_lettered": dlq,
        "profiled": bool(args.profile),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
