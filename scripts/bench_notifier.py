"""Benchmark: alerts/s the notifier delivers, latency from sw.alerts.v1 to the receiver, and how
often a SIGKILL repeats a notification.

Everything runs on the local platform's parts, over real connections: the local Apache Kafka
broker (one KRaft node), a redis-server, the webhook sink (signed webhooks, checked; an
ntfy-compatible push server) and `python -m services.notifier` as its own process, with two
recipients: `hq` (a signed webhook) and `officer` (ntfy through Apprise). Each alert carries the time it was produced (raised_time_ms); the
sink records when each request arrived.

- burst: --burst alerts produced at once; alerts/s = alerts delivered to both contacts over the time
  from the first produce to the last arrival. The limit, measured in the same run: one client
  POSTing the same signed webhooks straight to the sink (no Kafka, Redis or routing), one at a time;
  ratio = notifier webhooks/s over that.
- paced: --rate alerts/s for --seconds; per alert and contact, produce -> request arrival; p50, p99
  (nearest rank) and max.
- kills (--kills K): K bursts of --kill-burst alerts; each time the notifier is SIGKILLed at a random
  moment in the middle of the burst and started again; every alert must arrive on both contacts,
  and the notifications that arrived twice (the window between a receiver taking a request and the
  notifier recording it) are counted.

Progress goes to stderr; the last line on stdout is one JSON object.

    make bench-notifier ARGS="--burst 2000 --rate 20 --seconds 30 --kills 10"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml
from confluent_kafka import KafkaError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devplatform.launcher import Platform, free_port, http_ready, stop_pid  # noqa: E402
from devplatform.progress import Progress  # noqa: E402
from services.shared import topics  # noqa: E402
from services.shared.contracts.alert_pb2 import Alert, Severity  # noqa: E402
from services.shared.incidents import incident_id  # noqa: E402
from services.shared.kafka import make_producer  # noqa: E402
from services.shared.webhooks import signed_headers  # noqa: E402

CONTACTS = ("hq/hook", "officer/phone")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else float("nan")


class Bench:
    def __init__(self, run_dir: Path) -> None:
        self.platform = Platform(run_dir=run_dir)
        self.run_dir = run_dir
        self.notifier: subprocess.Popen | None = None
        self.http = ""
        self.seq = 0
        # incident id -> the bench alert that opened it (pushes link to the incident)
        self.opened_by: dict[str, str] = {}
        self.refused: list[str] = []

    def _delivered(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self.refused.append(err.str())

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for step in (self.platform.start_broker, self.platform.start_redis, self.platform.start_webhook_sink):
            step()
        sink = self.platform.components["webhook-sink"]
        self.sink_url, self.record = sink["url"], Path(sink["record"])
        routing = {"recipients": {"hq": {"contacts": [{"type": "webhook", "name": "hook", "url": self.sink_url, "secret": "${SW_ROUTING_DEV_WEBHOOK_SECRET}"}]},
                                  "officer": {"contacts": [{"type": "apprise", "name": "phone", "url": f"{sink['ntfy']}/lp-officer"}]}},
                   "routes": [{"name": "all", "levels": [{"notify": ["officer", "hq"]}]}],
                   "limits": {"max_per_window": 1_000_000}}
        self.routing_file = self.run_dir / "routing.yaml"
        self.routing_file.write_text(yaml.safe_dump(routing))
        self.producer = make_producer(self.platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"])
        self.start_notifier()

    def start_notifier(self) -> None:
        port = free_port()
        env = {**os.environ, **self.platform.env, "SW_NOTIFIER_ROUTING_FILE": str(self.routing_file), "SW_HTTP_PORT": str(port),
               "SW_NOTIFIER_SNAPSHOT_WAIT_S": "0", "SW_EVIDENCE_URL": str(self.run_dir / "evidence"), "SW_LOG_LEVEL": "WARNING"}
        with (self.run_dir / "notifier.log").open("ab") as out:
            self.notifier = subprocess.Popen([sys.executable, "-m", "services.notifier"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        self.http = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not http_ready(self.http + "/readyz"):
            if self.notifier.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"notifier did not start; see {self.run_dir / 'notifier.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.notifier is not None and self.notifier.poll() is None:
            stop_pid(self.notifier.pid)
        self.platform.down(echo=lambda *_: None)

    def produce(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            self.seq += 1
            now = int(time.time() * 1000)
            # Each at a register of its own: a separate situation, so an incident (and a page) of its own.
            alert = Alert(alert_id=f"bench-{self.seq:07d}", rule="refund_without_customer", severity=Severity.SEVERITY_HIGH, store_id="store-001",
                          register_id=f"reg-{self.seq}", explanation="benchmark alert", event_time_ms=now, raised_time_ms=now)
            self.opened_by[incident_id("store-001", alert.alert_id)] = alert.alert_id
            while True:
                try:
                    self.producer.produce(topics.ALERTS, key="store-001", value=alert.SerializeToString(), on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            ids.append(alert.alert_id)
        left = self.producer.flush(30)
        if left or self.refused:
            raise SystemExit(f"the broker did not take {left + len(self.refused)} alerts ({left} unacknowledged; refused: {self.refused[:3]})")
        return ids

    def arrivals(self) -> dict[str, list[tuple[str, int]]]:
        """contact -> [(alert id, arrival ms)], every request, repeats included."""
        out: dict[str, list[tuple[str, int]]] = {c: [] for c in CONTACTS}
        for line in self.record.read_text().splitlines() if self.record.exists() else []:
            entry = json.loads(line)
            if entry["kind"] == "webhook":
                out["hq/hook"].append((entry["body"]["alert"]["alert_id"], entry["received_ms"]))
            elif entry["kind"] == "ntfy":
                # The push links to the incident's page; each bench alert opened its own incident.
                incident = entry["message"].rsplit("/incidents/", 1)[-1]
                out["officer/phone"].append((self.opened_by.get(incident, incident), entry["received_ms"]))
        return out

    def wait_all(self, ids: list[str], what: str, timeout_s: float = 600) -> dict[str, list[tuple[str, int]]]:
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        with Progress(what, total=len(ids) * len(CONTACTS), unit="notifications", every_s=5) as progress:
            while True:
                got = self.arrivals()
                done = sum(len(wanted & {a for a, _ in got[c]}) for c in CONTACTS)
                progress.update(done)
                if done == len(ids) * len(CONTACTS):
                    return got
                if time.monotonic() > deadline:
                    raise SystemExit(f"{what}: {done} of {len(ids) * len(CONTACTS)} notifications after {timeout_s:.0f}s")
                time.sleep(0.25)


def bare_posts(url: str, secret: str, count: int) -> float:
    """The receiver's own limit: signed webhook POSTs from one client, one at a time."""
    client = httpx.Client(timeout=10)
    alert = {"alert_id": "limit", "rule": "refund_without_customer"}
    started = time.perf_counter()
    for i in range(count):
        body = json.dumps({"kind": "alert", "delivery_id": f"limit-{i}", "alert": alert}).encode()
        headers = {"Content-Type": "application/json", **signed_headers(secret, int(time.time()), body)}
        client.post(url, content=body, headers=headers).raise_for_status()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20.0, help="paced alerts per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="paced duration")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kill-burst", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bench = Bench(Path(tempfile.mkdtemp(prefix="sw-bench-notifier-")))
    result: dict = {"benchmark": "notifier", "contacts": list(CONTACTS), "cpus": os.cpu_count()}
    try:
        bench.start()
        # The limit first; what it posted is discarded from the record.
        limit = bare_posts(bench.sink_url, bench.platform.env["SW_ROUTING_DEV_WEBHOOK_SECRET"], min(args.burst, 1000))
        bench.record.unlink(missing_ok=True)

        log(f"burst: {args.burst} alerts at once")
        started_ms = int(time.time() * 1000)
        ids = bench.produce(args.burst)
        got = bench.wait_all(ids, "burst")
        wanted = set(ids)
        last = max(ms for c in CONTACTS for a, ms in got[c] if a in wanted)
        hook_last = max(ms for a, ms in got["hq/hook"] if a in wanted)
        seconds = (last - started_ms) / 1000
        result["burst"] = {"alerts": args.burst, "alerts_per_s": round(args.burst / seconds, 1),
                           "notifications_per_s": round(args.burst * len(CONTACTS) / seconds, 1),
                           "webhooks_per_s": round(args.burst / ((hook_last - started_ms) / 1000), 1),
                           "receiver_limit_webhooks_per_s": round(limit, 1)}
        result["burst"]["ratio_webhooks_over_limit"] = round(result["burst"]["webhooks_per_s"] / limit, 3)

        log(f"paced: {args.rate:g} alerts/s for {args.seconds:g}s")
        bench.record.unlink(missing_ok=True)
        paced: list[str] = []
        began = time.monotonic()
        while time.monotonic() - began < args.seconds:
            due = began + len(paced) / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
            paced += bench.produce(1)
        got = bench.wait_all(paced, "paced")
        # raised_time_ms (when it was produced) is in each webhook body; ntfy's message names the alert only.
        raised_ms = {}
        for line in bench.record.read_text().splitlines():
            entry = json.loads(line)
            if entry["kind"] == "webhook":
                raised_ms[entry["body"]["alert"]["alert_id"]] = int(entry["body"]["alert"]["raised_time_ms"])
        latencies: dict[str, list[float]] = {}
        for contact in CONTACTS:
            firsts: dict[str, int] = {}
            for alert_id, ms in got[contact]:
                firsts.setdefault(alert_id, ms)
            latencies[contact] = [(firsts[a] - raised_ms[a]) / 1000 for a in paced]
        every = [v for values in latencies.values() for v in values]
        result["paced"] = {"alerts": len(paced), "rate_per_s": args.rate,
                           "latency_s": {"p50": round(percentile(every, 50), 3), "p99": round(percentile(every, 99), 3), "max": round(max(every), 3)},
                           "by_contact": {c: {"p50": round(percentile(v, 50), 3), "p99": round(percentile(v, 99), 3)} for c, v in latencies.items()}}

        repeats, kills = 0, []
        for k in range(args.kills):
            bench.record.unlink(missing_ok=True)
            ids = bench.produce(args.kill_burst)
            target = rng.randint(args.kill_burst // 10, args.kill_burst // 2)
            while min(len(v) for v in bench.arrivals().values()) < target:
                time.sleep(0.01)
            assert bench.notifier is not None
            bench.notifier.kill()
            bench.notifier.wait(10)
            at_kill = {c: len(v) for c, v in bench.arrivals().items()}
            bench.start_notifier()
            got = bench.wait_all(ids, f"kill {k + 1}/{args.kills}: after the restart")
            time.sleep(22)  # past the lease of what was in flight (timeout + 10 s): a repeat arrives meanwhile
            counts = {c: Counter(a for a, _ in bench.arrivals()[c]) for c in CONTACTS}
            missing = sum(1 for c in CONTACTS for a in ids if counts[c][a] == 0)
            twice = sum(n - 1 for c in CONTACTS for n in counts[c].values() if n > 1)
            repeats += twice
            kills.append({"delivered_at_kill": at_kill, "missing": missing, "repeated": twice})
            if missing:
                raise SystemExit(f"kill {k + 1}: {missing} notifications never arrived")
        if args.kills:
            result["sigkill"] = {"kills": args.kills, "alerts_per_burst": args.kill_burst, "lost": 0, "repeated_notifications": repeats,
                                 "repeats_per_kill": round(repeats / args.kills, 3), "per_kill": kills}
    finally:
        bench.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
