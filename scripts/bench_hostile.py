"""Benchmark: hostile load on the HQ api while the till's `POST /v1/returns/assess` keeps its p99 (target 50 ms).

The store-facing service (`python -m services.pos`) and the HQ api (`python -m services.api`) run as
their own processes on the local platform's parts (the dev broker, a redis-server, the dev users and
POS keys of devplatform/devusers.py), started and stopped by PID through devplatform.launcher. A
small chain history (--tokens cards) is written through sw.pos.v1 and projected by the pos service
into Redis, and the counter camera's status is kept fresh in Redis, so that every question takes the
production path. Then, in one run:

1. idle: a till asks --assess questions one after another (a till waits for each answer) -> p50, p99;
2. hostile, for as long as the till takes to ask --assess more questions: --flood-clients concurrent
   clients loop `POST /v1/auth/login` on the api from the loopback address with wrong passwords
   for `admin` and made-up names (answers counted by status: the api lets one password check per
   address run at a time and locks an address out after 50 failures, so mostly 429 at once, some 401);
   one --big-mb body streamed chunked (no length) to the api's `POST /v1/auth/login` and one
   with a declared Content-Length to the pos's `POST /v1/pos/events` (no key, as a stranger):
   each should get 413 at once; the time to the answer and the bytes sent are measured.
   Meanwhile the till keeps asking -> p50, p99 under attack, and their ratio to the idle ones;
3. the resident memory (VmRSS from /proc) of the api and pos processes, sampled every 0.2 s in
   each phase (max), and their peak (VmHWM) at the end.

What the numbers are, and are not:
- The till asks back to back, far faster than a real till (a few a minute) and than the pos's own
  per-key limit (SW_POS_ASSESS_PER_KEY_PER_S, 2/s); that limit is raised for this run only, so it is
  the route's latency that is measured, not its rate limit.
- The attacker runs on the same machine (its own process, niced by --attacker-nice, 10 by default,
  so that the attacking client's own CPU, which a real attacker spends elsewhere, competes less
  with the services); the api serving the flood is not niced and shares the cores with the pos.
- "bytes_sent" of a big body is what the client's generator handed to the socket: an upper bound,
  within one 64 KiB chunk, of what the kernel accepted (and the server may not have read all of it).
- Other work on a shared machine moves the absolute times; the ratio of p99 under attack to p99
  idle, measured in the same run, is the number to compare. The 1-minute load average is recorded.

Progress goes to stderr; a summary and, as the last line, one JSON object go to stdout. The exit
code is 0 whether or not the target is met (the numbers say so); it is not 0 only when the platform
could not be started or measured.

    make bench-hostile ARGS="--assess 300 --flood-clients 50 --big-mb 1024"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devplatform.devusers import dev_pos_key  # noqa: E402
from devplatform.launcher import Platform, free_port, http_ready, stop_pid  # noqa: E402
from devplatform.progress import Progress  # noqa: E402
from services.pos.returns import token_key  # noqa: E402
from services.shared import topics  # noqa: E402
from services.shared.cameras import CAMERA_STATUS_HASH  # noqa: E402
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType  # noqa: E402
from services.shared.kafka import make_producer  # noqa: E402

DAY_MS = 86_400_000
TARGET_P99_MS = 50.0
STORE, REGISTER, CAMERA, ZONE = "store-001", "reg-1", "cam-counter-1", "counter-1-customer"
CHUNK = b"x" * 65536


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# ---- the chain's history and the till ------------------------------------------------------------

def history(rng: random.Random, tokens: int, now_ms: int) -> list[PosEvent]:
    """Cards with 0-12 returns in the last 90 days at 1-5 stores, a sale for every other return."""
    events: list[PosEvent] = []
    for t in range(tokens):
        for r in range(rng.choice([0, 0, 1, 1, 2, 3, 5, 8, 12])):
            when = now_ms - rng.randint(1, 89) * DAY_MS
            txn = f"T-{t}-{r}"
            if r % 2 == 0:
                events.append(PosEvent(event_id=f"s-{t}-{r}", type=PosEventType.POS_EVENT_TYPE_SALE, store_id=STORE, register_id=REGISTER,
                                       transaction_id=txn, employee_id=f"emp-{rng.randint(1, 40)}", event_time_ms=when - 5 * DAY_MS,
                                       total_minor=rng.randint(500, 30000), card_token=f"tok-{t}"))
            events.append(PosEvent(event_id=f"r-{t}-{r}", type=PosEventType.POS_EVENT_TYPE_RETURN, store_id=f"store-00{rng.randint(1, 5)}",
                                   register_id=REGISTER, employee_id=f"emp-{rng.randint(1, 40)}", event_time_ms=when,
                                   total_minor=rng.randint(500, 30000), card_token=f"tok-{t}", original_transaction_id=txn if r % 2 == 0 else ""))
    return events


def write_history(platform: Platform, rng: random.Random, tokens: int) -> int:
    """Publish the history to sw.pos.v1 and wait until the pos service has projected every card."""
    import redis

    store = redis.Redis.from_url(platform.env["SW_REDIS_URL"])
    events = history(rng, tokens, int(time.time() * 1000))
    producer = make_producer(platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"])
    for event in events:
        while True:
            try:
                producer.produce(topics.POS, key=f"{event.store_id}:{event.register_id}", value=event.SerializeToString())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(30)
    cards = {e.card_token for e in events if e.type == PosEventType.POS_EVENT_TYPE_RETURN}
    deadline = time.monotonic() + 120
    with Progress("pos projecting the history", total=len(cards), unit="cards", every_s=5) as progress:
        while True:
            done = sum(1 for t in cards if store.exists(token_key(t)))
            progress.update(done)
            if done >= len(cards):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the pos service projected {done} of {len(cards)} cards in 120 s; see {platform.log_dir / 'pos.log'}")
            time.sleep(0.5)
    return len(events)


class CameraStatus:
    """The counter camera's status in Redis, rewritten about once a second as the recorder does."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url)
        self.written = 0.0

    def refresh(self) -> None:
        if time.monotonic() - self.written < 1.0:
            return
        now_ms = int(time.time() * 1000)
        status = {"store_id": STORE, "camera_id": CAMERA, "last_frame_ms": now_ms, "last_seen_ms": now_ms, "fps": 10.0, "heartbeat": False,
                  "zones": {ZONE: {"kind": "counter_customer", "persons": 1, "objects": 0, "at_ms": now_ms}}}
        self.redis.hset(CAMERA_STATUS_HASH, CAMERA, json.dumps(status))
        self.written = time.monotonic()


class Till:
    """One till asking one question at a time, timed end to end by the client."""

    def __init__(self, pos_url: str, key: str, tokens: int, rng: random.Random, camera: CameraStatus) -> None:
        self.client = httpx.Client(base_url=pos_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        self.tokens = tokens
        self.rng = rng
        self.camera = camera
        self.asked = 0
        self.scored_by = ""

    def ask(self, n: int, label: str) -> tuple[list[float], Counter[str], Counter[str]]:
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        with Progress(f"till asking ({label})", total=n, unit="questions", every_s=5) as progress:
            for _ in range(n):
                self.camera.refresh()
                self.asked += 1
                rng = self.rng
                body = {"event_id": f"hostile-{self.asked}", "type": "return", "store_id": STORE, "register_id": REGISTER,
                        "event_time": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "employee_id": f"emp-{rng.randint(1, 40)}",
                        "currency": "GBP", "total_minor": rng.randint(500, 30000), "tender": rng.choice(["card", "cash"]),
                        "card_token": f"tok-{rng.randrange(self.tokens)}", "original_transaction_id": rng.choice(["", "T-1-0"])}
                started = time.perf_counter()
                try:
                    response = self.client.post("/v1/returns/assess", json=body)
                except httpx.HTTPError as exc:
                    latencies.append(time.perf_counter() - started)
                    errors[type(exc).__name__] += 1
                    progress.advance()
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    answer = response.json()
                    outcomes[answer["outcome"]] += 1
                    self.scored_by = answer.get("scored_by", self.scored_by)
                else:
                    errors[str(response.status_code)] += 1
                progress.advance()
        return latencies, outcomes, errors


# ---- memory ------------------------------------------------------------------------------------------

def proc_status_mb(pid: int, field: str) -> float | None:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler(threading.Thread):
    """The largest VmRSS of each process in each phase, sampled every `every_s` seconds."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.2) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids = pids
        self.every_s = every_s
        self.phase = "idle"
        self.largest: dict[str, dict[str, float]] = {name: {} for name in pids}
        self.stopped = threading.Event()

    def sample(self) -> None:
        phase = self.phase
        for name, pid in self.pids.items():
            value = proc_status_mb(pid, "VmRSS")
            if value is not None:
                self.largest[name][phase] = max(self.largest[name].get(phase, 0.0), value)

    def run(self) -> None:
        self.sample()
        while not self.stopped.wait(self.every_s):
            self.sample()


# ---- the attacker (a process of its own, so that its threads do not take the till's GIL) -----------

def send_big(url: str, size: int, declared: bool) -> dict[str, Any]:
    """POST `size` bytes from a generator, chunked or with a declared Content-Length; the answer,
    the time to it, and how many bytes the generator handed to the socket."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        while sent < size:
            piece = CHUNK if size - sent >= len(CHUNK) else CHUNK[: size - sent]
            sent += len(piece)
            yield piece

    headers = {"content-type": "application/json"}
    if declared:
        headers["content-length"] = str(size)
    started = time.perf_counter()
    result: dict[str, Any] = {"framing": "content-length" if declared else "chunked", "body_bytes": size}
    try:
        with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
            response = client.post(url, content=body(), headers=headers)
        result.update(status=response.status_code, detail=response.text[:160])
    except httpx.HTTPError as exc:
        result.update(status=None, error=f"{type(exc).__name__}: {exc}"[:200])
    result.update(seconds=round(time.perf_counter() - started, 3), bytes_sent=sent, sent_fraction=round(sent / max(1, size), 6))
    return result


async def flood(api_url: str, clients: int, stop: Any, flooding: Any) -> dict[str, Any]:
    """`clients` concurrent sign-ins with wrong passwords, each client looping until `stop` is set."""
    statuses: Counter[str] = Counter()
    rng = random.Random()
    done = asyncio.Event()
    signalled = False
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=api_url, timeout=30, limits=limits) as client:

        async def one() -> None:
            nonlocal signalled
            while not done.is_set():
                name = "admin" if rng.random() < 0.5 else f"user-{rng.randrange(1 << 32):08x}"
                try:
                    response = await client.post("/v1/auth/login", json={"username": name, "password": secrets.token_urlsafe(12)})
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    await asyncio.sleep(0.01)  # a refused connection fails at once; do not spin
                if not signalled and sum(statuses.values()) >= clients:
                    signalled = True
                    flooding.set()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            done.set()

        started = time.monotonic()
        await asyncio.gather(watch(), *(one() for _ in range(clients)))
        seconds = time.monotonic() - started
    return {"statuses": dict(statuses), "seconds": round(seconds, 2), "per_s": round(sum(statuses.values()) / max(seconds, 1e-9), 1)}


def attack(api_url: str, pos_url: str, clients: int, big_bytes: int, nice: int, stop: Any, flooding: Any, results: Any) -> None:
    """The hostile phase's client side: the sign-in flood, and once it runs, the two big bodies."""
    if nice:
        os.nice(nice)
    big: dict[str, Any] = {}

    def big_bodies() -> None:
        if not flooding.wait(60):
            return
        senders = [threading.Thread(target=lambda: big.__setitem__("api_login_chunked", send_big(api_url + "/v1/auth/login", big_bytes, declared=False))),
                   threading.Thread(target=lambda: big.__setitem__("pos_events_declared", send_big(pos_url + "/v1/pos/events", big_bytes, declared=True)))]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()

    bodies = threading.Thread(target=big_bodies, name="big-bodies")
    bodies.start()
    try:
        signin = asyncio.run(flood(api_url, clients, stop, flooding))
    except Exception as exc:  # reported, not raised: the main process reads the queue
        signin = {"statuses": {}, "error": f"{type(exc).__name__}: {exc}"}
        flooding.set()
    bodies.join(130)
    results.put({"signin": signin, "big": big})


# ---- the run ---------------------------------------------------------------------------------------

def summary_of(latencies: list[float]) -> dict[str, float]:
    return {"p50": ms(percentile(latencies, 50)), "p99": ms(percentile(latencies, 99)), "max": ms(max(latencies))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assess", type=int, default=300, help="questions the till asks in each phase")
    parser.add_argument("--flood-clients", type=int, default=50, help="concurrent sign-in clients against the api")
    parser.add_argument("--big-mb", type=int, default=1024, help="size of each big body (MiB)")
    parser.add_argument("--tokens", type=int, default=1000, help="cards in the chain's history")
    parser.add_argument("--warmup", type=int, default=20, help="questions asked first and not counted")
    parser.add_argument("--attacker-nice", type=int, default=10, help="niceness of the attacking client's process (0: none)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    if args.assess < 1 or args.flood_clients < 1 or args.big_mb < 1:
        parser.error("--assess, --flood-clients and --big-mb must be at least 1")
    rng = random.Random(args.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="sw-bench-hostile-"))
    platform = Platform(run_dir=run_dir, api_port=free_port())
    ctx = multiprocessing.get_context("spawn")
    stop, flooding = ctx.Event(), ctx.Event()
    attacker: Any = None
    sampler: RssSampler | None = None
    finished = False
    result: dict[str, Any] = {"benchmark": "hostile", "assess": args.assess, "flood_clients": args.flood_clients, "big_mb": args.big_mb,
                              "tokens": args.tokens, "attacker_nice": args.attacker_nice}
    try:
        started = time.monotonic()
        say(f"starting broker, redis, pos and api (run folder {run_dir})")
        platform.start_broker()
        platform.start_redis()
        platform.env["SW_EVIDENCE_URL"] = str(run_dir / "evidence")
        # The till here asks back to back; a real one asks a few times a minute (the default limit is 2/s per key).
        platform.env["SW_POS_ASSESS_PER_KEY_PER_S"] = "10000"
        platform.env["SW_POS_ASSESS_BURST"] = "100000"
        platform.start_service("pos")
        platform.start_service("api")
        api_url, pos_url = platform.components["api"]["http"], platform.components["pos"]["http"]
        pids = {"api": platform.components["api"]["pid"], "pos": platform.components["pos"]["pid"]}
        say(f"platform up in {time.monotonic() - started:.0f}s: api {api_url} (pid {pids['api']}), pos {pos_url} (pid {pids['pos']})")
        result["history_events"] = write_history(platform, rng, args.tokens)

        till = Till(pos_url, dev_pos_key(run_dir, STORE), args.tokens, rng, CameraStatus(platform.env["SW_REDIS_URL"]))
        if args.warmup:
            till.ask(args.warmup, "warm-up, not counted")
        sampler = RssSampler(pids)
        sampler.start()
        result["loadavg_1m"] = {"idle": round(os.getloadavg()[0], 2)}
        say(f"phase 1/2 idle: the till asks {args.assess} questions, nothing else runs against the services")
        idle, idle_outcomes, idle_errors = till.ask(args.assess, "idle")
        idle_summary = summary_of(idle)
        say(f"phase 1/2 idle: p50 {idle_summary['p50']} ms, p99 {idle_summary['p99']} ms, max {idle_summary['max']} ms, errors {sum(idle_errors.values())}")
        sampler.sample()

        sampler.phase = "attack"
        result["loadavg_1m"]["before_attack"] = round(os.getloadavg()[0], 2)
        say(f"phase 2/2 hostile: {args.flood_clients} sign-in clients against the api, {args.big_mb} MiB bodies to api and pos; the till asks {args.assess} questions")
        results = ctx.Queue()
        attacker = ctx.Process(target=attack, name="hostile-attacker", daemon=True,
                               args=(api_url, pos_url, args.flood_clients, args.big_mb * 1024 * 1024, args.attacker_nice, stop, flooding, results))
        attacker.start()
        if not flooding.wait(90):
            raise SystemExit("the sign-in flood did not get its first answers within 90 s")
        attack_started = time.monotonic()
        hostile, hostile_outcomes, hostile_errors = till.ask(args.assess, "under attack")
        attack_seconds = time.monotonic() - attack_started
        result["loadavg_1m"]["end_of_attack"] = round(os.getloadavg()[0], 2)
        sampler.sample()
        stop.set()
        report = results.get(timeout=180)
        attacker.join(30)
        sampler.stopped.set()
        sampler.join(5)
        hostile_summary = summary_of(hostile)
        say(f"phase 2/2 hostile: p50 {hostile_summary['p50']} ms, p99 {hostile_summary['p99']} ms, max {hostile_summary['max']} ms, errors {sum(hostile_errors.values())}")

        def memory(name: str) -> dict[str, float | None]:
            largest = sampler.largest[name] if sampler is not None else {}
            hwm = proc_status_mb(pids[name], "VmHWM")
            return {"idle": round(largest.get("idle", 0.0), 1), "max": round(max(largest.values(), default=0.0), 1),
                    "peak_hwm": round(hwm, 1) if hwm is not None else None}

        ratio = hostile_summary["p99"] / idle_summary["p99"] if idle_summary["p99"] > 0 else None
        errors = {"idle": dict(idle_errors), "attack": dict(hostile_errors)}
        result.update({
            "assess_p50_idle_ms": idle_summary["p50"], "assess_p99_idle_ms": idle_summary["p99"], "assess_max_idle_ms": idle_summary["max"],
            "assess_p50_attack_ms": hostile_summary["p50"], "assess_p99_attack_ms": hostile_summary["p99"], "assess_max_attack_ms": hostile_summary["max"],
            "p99_ratio": round(ratio, 3) if ratio is not None else None, "p99_target_ms": int(TARGET_P99_MS),
            "p99_attack_under_target": hostile_summary["p99"] < TARGET_P99_MS,
            "assess_errors": {phase: sum(kinds.values()) for phase, kinds in errors.items()},
            "assess_error_kinds": errors, "outcomes": dict(idle_outcomes + hostile_outcomes), "scored_by": till.scored_by,
            "attack_seconds": round(attack_seconds, 1),
            "signin_answers": report["signin"].get("statuses", {}), "signin_per_s": report["signin"].get("per_s"),
            "signin_error": report["signin"].get("error"),
            "big_body_answer": report["big"],
            "api_rss_mb": memory("api"), "pos_rss_mb": memory("pos"),
            "api_ready_after": http_ready(api_url + "/readyz"), "pos_ready_after": http_ready(pos_url + "/readyz"),
            "cores": os.cpu_count(),
        })
        if result["signin_error"] is None:
            del result["signin_error"]
        finished = True
    finally:
        stop.set()
        if attacker is not None:
            attacker.join(10)
            if attacker.is_alive() and attacker.pid is not None:
                stop_pid(attacker.pid, timeout=5)
        if sampler is not None:
            sampler.stopped.set()
        platform.down(echo=lambda *_: None)
        if finished:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            say(f"logs kept in {platform.log_dir}")

    print_summary(result)
    print(json.dumps(result))
    return 0


def print_summary(result: dict[str, Any]) -> None:
    line = print
    verdict = "UNDER" if result["p99_attack_under_target"] else "OVER"
    line(f"till, {result['assess']} questions per phase ({result['cores']} cores, 1-min load {result['loadavg_1m']}):")
    line(f"  idle          p50 {result['assess_p50_idle_ms']:7.2f} ms   p99 {result['assess_p99_idle_ms']:7.2f} ms   errors {result['assess_errors']['idle']}")
    line(f"  under attack  p50 {result['assess_p50_attack_ms']:7.2f} ms   p99 {result['assess_p99_attack_ms']:7.2f} ms   errors {result['assess_errors']['attack']}"
         f"   ({result['attack_seconds']} s)")
    line(f"  p99 under attack / idle: {result['p99_ratio']}; p99 under attack is {verdict} the {result['p99_target_ms']} ms target")
    line(f"sign-in flood ({result['flood_clients']} clients, {result['signin_per_s']}/s): answers {result['signin_answers']}")
    for name, big in result["big_body_answer"].items():
        answer = big.get("status") or big.get("error")
        line(f"{name}: {answer} after {big['seconds']} s, {big['bytes_sent']:,} of {big['body_bytes']:,} bytes sent")
    for name in ("api", "pos"):
        rss = result[f"{name}_rss_mb"]
        line(f"{name} RSS: idle {rss['idle']} MiB, max {rss['max']} MiB (peak {rss['peak_hwm']} MiB); ready after: {result[f'{name}_ready_after']}")


if __name__ == "__main__":
    sys.exit(main())
