"""`make chaos` (`python -m devplatform.chaos`): the whole pipeline under load and faults, checked.

Starts a three-node Kafka cluster, Redis with its append-only file, the model server, the receivers,
an MJPEG camera and every service (two correlator workers, two inference and two notifier
replicas), plays the chain's cameras and tills, runs the fault schedule (or, with --soak N, no
faults for N seconds), stops the load, waits for every consumer group to catch up, and checks the
ledger. Progress lines go to stderr; the last line of stdout is the JSON summary. The exit status
is 0 only when nothing was lost, no page was repeated beyond --max-duplicate-pages, every group
caught up and every fault healed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from devplatform.chaos import chain
from devplatform.chaos.check import Observed, judge, pages_from_records, read_jsonl, traced_pages
from devplatform.chaos.faults import KINDS, Fault, FaultError, Injector, full_schedule, short_schedule
from devplatform.chaos.load import Tills, plan
from devplatform.chaos.monitor import Sampler, committed_offsets, group_lags
from devplatform.demo import SAMPLE_DIR, ensure_sample_assets
from devplatform.devusers import dev_pos_key
from devplatform.kafkatools import TopicReader
from devplatform.launcher import ROOT, LaunchError, Platform, free_port, http_ready, stop_pid
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.pos_event_pb2 import PosEvent
from services.shared.deliveries import PREFIX
from services.shared.evidence import EvidenceStore
from services.shared.incidents import IncidentLedger

DEFAULT_RUN_DIR = ROOT / "var" / "chaos"


def log(line: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devplatform.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=2, help="stores in the chain (default 2)")
    parser.add_argument("--cameras", type=int, default=2, help="cameras per store, at least 2 (default 2; the first store also has an MJPEG aisle camera)")
    parser.add_argument("--schedule", choices=["full", "short"], default="full", help="the fault schedule (short: one of each kind, the suite's)")
    parser.add_argument("--only", default="", metavar="KINDS", help=f"comma-separated fault kinds ({', '.join(KINDS)}) or names (\"kill correlator\") to keep from the schedule")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="no faults: hold the load this long and report per service figures")
    parser.add_argument("--fraud-every", type=float, default=30.0, metavar="SECONDS", help="each store rings up a fraud this often (default 30)")
    parser.add_argument("--sale-every", type=float, default=8.0, metavar="SECONDS", help="each store's till 1 sells this often (default 8)")
    parser.add_argument("--settle", type=float, default=20.0, metavar="SECONDS", help="plain load between faults (default 20)")
    parser.add_argument("--warm-up", type=float, default=30.0, metavar="SECONDS", help="load before the first fault (default 30)")
    parser.add_argument("--max-duplicate-pages", type=int, default=2, help="repeats allowed (the README's bound for this schedule)")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.cameras < 2:
        parser.error("--cameras: at least 2 (the counter with the clip and the empty counter)")
    return args


class LagWatch:
    """Every consumer group's lag every `every_s` in a thread: the peak during the run."""

    def __init__(self, bootstrap: str, every_s: float = 15.0) -> None:
        self.bootstrap, self.every_s = bootstrap, every_s
        self.peak: Counter[str] = Counter()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                for group, lag in group_lags(self.bootstrap).items():
                    self.peak[group] = max(self.peak[group], lag)
            except Exception:  # a broker down is a fault of the schedule; the next sample is taken
                continue


def wait_for_drain(bootstrap: str, timeout_s: float, stuck_s: float = 120.0) -> dict[str, int]:
    """Until every group has consumed everything, the time is up, or the lags have not moved for
    `stuck_s` (a consumer that stopped fetching); the lags at the end."""
    deadline = time.monotonic() + timeout_s
    lags: dict[str, int] = {}
    unchanged_since, previous = time.monotonic(), None
    while time.monotonic() < deadline:
        try:
            lags = group_lags(bootstrap)
        except Exception as exc:  # retried until the deadline
            log(f"lag not readable yet: {exc}")
            time.sleep(5)
            continue
        if lags and not any(lags.values()):
            return lags
        if lags != previous:
            unchanged_since, previous = time.monotonic(), lags
        elif time.monotonic() - unchanged_since > stuck_s:
            log(f"no group moved for {stuck_s:.0f}s: stuck")
            return lags
        log("catching up: " + ", ".join(f"{g} {n}" for g, n in lags.items() if n))
        time.sleep(10)
    return lags


def wait_for_quiet(record: Path, quiet_s: float, timeout_s: float) -> None:
    """Until the receivers' record has not grown for `quiet_s` (pages in flight, retries)."""
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = record.stat().st_size if record.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(2)


def collect(platform: Platform) -> Observed:
    """What the run left: the alerts and POS topics, the receivers' record, the notifier's log
    contact, the notifier's incident ledger and the evidence store."""
    import redis

    bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
    observed = Observed()

    def parse_alert(message: Any) -> Alert | None:
        try:
            alert = Alert.FromString(message.value())
        except Exception:  # the run's own poison
            return None
        return alert if alert.alert_id.startswith("al-") else None

    for alert in TopicReader(bootstrap, [topics.ALERTS], parse_alert).read_to_end(60):
        if alert is None:
            observed.undecodable_alerts += 1
            continue
        observed.alert_copies[alert.alert_id] += 1
        observed.alert_rules[alert.alert_id] = alert.rule
        observed.alert_stores[alert.alert_id] = alert.store_id

    def parse_pos(message: Any) -> str:
        try:
            return PosEvent.FromString(message.value()).event_id
        except Exception:  # poison
            return ""

    observed.pos_copies = Counter(e for e in TopicReader(bootstrap, [topics.POS], parse_pos).read_to_end(60) if e)

    def parse_dead(message: Any) -> tuple[str, str]:
        reason = dict(message.headers() or []).get("sw-error", b"").decode(errors="replace")
        return parse_pos(message), f"{message.topic()}: {reason}"

    dlqs = [topics.dlq(name) for name in topics.RETENTION_MS]
    observed.dead_lettered = {event: why for event, why in TopicReader(bootstrap, dlqs, parse_dead).read_to_end(60) if event}
    sink = read_jsonl(Path(platform.components["webhook-sink"]["record"]))
    notifier_lines = [line for name in platform.components if name.startswith("notifier")
                      for line in (platform.log_dir / f"{name}.log").read_text(errors="replace").splitlines()]
    observed.pages = pages_from_records(sink, notifier_lines)
    observed.correlation = traced_pages(sink)
    client = redis.Redis.from_url(platform.env["SW_REDIS_URL"])
    ledger = IncidentLedger(client, f"{PREFIX}incidents:", keep_ms=30 * 86400 * 1000)
    evidence = EvidenceStore(platform.env["SW_EVIDENCE_URL"])
    for alert_id, store in observed.alert_stores.items():
        incident = ledger.incident_of(alert_id)
        if incident is not None:
            observed.incident_of[alert_id] = incident.incident_id
        observed.evidence[alert_id] = evidence.manifest(store, alert_id)
    return observed


def histogram_p99s(metrics_text: str) -> dict[str, float]:
    """p99 (upper bucket bound) of each `*_seconds` histogram in a Prometheus text page, all labels summed."""
    buckets: dict[str, dict[float, float]] = {}
    for match in re.finditer(r'^(sw_\w+_seconds)_bucket\{([^}]*)\} (\S+)$', metrics_text, re.M):
        bound = re.search(r'le="([^"]+)"', match.group(2))
        if bound:
            counts = buckets.setdefault(match.group(1), {})
            counts[float(bound.group(1))] = counts.get(float(bound.group(1)), 0.0) + float(match.group(3))
    result: dict[str, float] = {}
    for name, counts in buckets.items():
        total = counts.get(float("inf"), 0.0)
        if total <= 0:
            continue
        result[name] = next(bound for bound in sorted(counts) if counts[bound] >= 0.99 * total)
    return result


def service_figures(metrics: dict[str, str], committed_before: dict[str, int], committed_after: dict[str, int], seconds: float,
                    rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Messages/s each consumer group committed over the soak; per process, the p99 of its latency
    histograms (from its /metrics page) and its RSS at the start and the end."""
    processes: dict[str, Any] = {name: {"rss_start_mb": fig["start_mb"], "rss_end_mb": fig["end_mb"]} for name, fig in rss.items()}
    for name, text in metrics.items():
        processes.setdefault(name, {})["p99_s"] = histogram_p99s(text)
    rates = {group: round((after - committed_before.get(group, 0)) / max(seconds, 1e-9), 1) for group, after in committed_after.items()}
    return {"messages_per_s": rates, "processes": processes}


def save_metrics(platform: Platform, folder: Path) -> dict[str, str]:
    """Every running service's /metrics page at the end, kept for reading a run afterwards (why a
    refund raised nothing: sw_correlator_refund_rule_outcomes_total); returned by component."""
    folder.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}
    for name, comp in platform.components.items():
        url = comp.get("health") or comp.get("http")
        if url:
            try:
                pages[name] = httpx.get(url + "/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            (folder / f"{name}.txt").write_text(pages[name])
    return pages


def committed_totals(bootstrap: str) -> dict[str, int]:
    """Per group, the sum of its committed offsets outside the DLQs (throughput over an interval)."""
    return {group: sum(offset for (topic, _), offset in found.items() if not topic.endswith(".dlq"))
            for group, found in committed_offsets(bootstrap).items()}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    ensure_sample_assets(log)
    shutil.rmtree(args.run_dir, ignore_errors=True)
    args.run_dir.mkdir(parents=True)
    camera_port = free_port()
    config = chain.write_chain(args.run_dir / "chain.yaml", SAMPLE_DIR, args.stores, args.cameras, f"http://127.0.0.1:{camera_port}/video")
    platform = Platform(run_dir=args.run_dir / "run", api_port=free_port(), store_config=config, brokers=3,
                        replicas={"correlator": 2, "inference": 2, "notifier": 2}, ingest_loop_files=True, redis_appendonly=True,
                        page_burst_limit=100_000, ready_timeout_s=240.0)
    log(f"starting the platform: 3 Kafka nodes, Redis (AOF), model server, receivers, {len(platform.service_components())} service processes")
    platform.up(echo=lambda line: log(line.strip()))
    faults: list[Fault] = []
    error = ""
    try:
        platform.spawn("camera-aisle", [sys.executable, "-m", "devplatform.mjpeg_server", "--port", str(camera_port), "--fps", "2"])

        def drop_camera() -> None:
            platform.kill_component("camera-aisle")

        def bring_camera_back() -> None:
            platform.restart("camera-aisle", wait=False)

        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        sampler = Sampler(platform)
        sampler.start()
        lags = LagWatch(bootstrap)
        lags.start()
        keys = {chain.store_id(i): dev_pos_key(platform.run_dir, chain.store_id(i)) for i in range(args.stores)}
        ledger_path = args.run_dir / "ledger.jsonl"
        events = plan(args.stores, 6 * 3600, args.fraud_every, args.sale_every, args.seed, frauds_from_s=args.warm_up)
        tills = Tills(platform.components["pos"]["http"], keys, events, ledger_path, echo=log)
        tills.start()
        log(f"load: {args.stores} stores x {args.cameras} cameras (+1 MJPEG), a sale every {args.sale_every:g}s and a fraud every "
            f"{args.fraud_every:g}s per store; warm-up {args.warm_up:g}s")
        time.sleep(args.warm_up)
        soak_before: dict[str, int] = {}
        started = time.monotonic()
        if args.soak:
            soak_before = committed_totals(bootstrap)
            while time.monotonic() - started < args.soak:
                time.sleep(min(60.0, args.soak - (time.monotonic() - started)))
                log(f"soak: {time.monotonic() - started:.0f}/{args.soak:.0f}s")
        else:
            schedule = full_schedule(platform) if args.schedule == "full" else short_schedule(platform)
            if args.only:
                kinds = set(args.only.split(","))
                schedule = [f for f in schedule if {f.kind, f.name} & kinds or any({part.kind, part.name} & kinds for part in f.together)]
            injector = Injector(platform, (drop_camera, bring_camera_back), echo=log)
            for number, fault in enumerate(schedule, 1):
                log(f"fault {number}/{len(schedule)}: {fault.name} (held {max([fault.hold_s, *(p.hold_s for p in fault.together)]):g}s)")
                try:
                    injector.run(fault)
                except FaultError as exc:
                    error = str(exc)
                    log(f"FAILED: {exc}")
                    break
                faults.append(fault)
                log(f"  healed{': ' + fault.detail if fault.detail else ''}")
                time.sleep(args.settle)
        held_s = time.monotonic() - started
        soak_after = committed_totals(bootstrap) if args.soak else {}
        # The tills stop; the cameras run on until the last refunds' windows have passed (5 s, plus
        # the POS clock skew, plus the frames' way through inference), then ingest stops.
        tills.stop.set()
        tills.join(60)
        time.sleep(30.0)
        stop_pid(platform.components["ingest"]["pid"])
        log("load stopped; waiting for every consumer group to catch up")
        end_lags = wait_for_drain(bootstrap, 600)
        wait_for_quiet(Path(platform.components["webhook-sink"]["record"]), quiet_s=20, timeout_s=300)
        lags.stop.set()
        sampler.close()
        observed = collect(platform)
        records = [f.record() for f in faults]
        result = judge(read_jsonl(ledger_path), observed, [part for f in records for part in (f.get("parts") or [f])])
        result.update(max_lag=max(end_lags.values(), default=0), lag_at_end=end_lags, peak_lag=dict(lags.peak),
                      rss_growth_mb={name: fig["growth_mb"] for name, fig in sampler.report().items()}, rss=sampler.report(),
                      schedule=records, run_s=round(held_s), error=error)
        metrics = save_metrics(platform, args.run_dir / "metrics")
        if args.soak:
            result["per_service"] = service_figures(metrics, soak_before, soak_after, held_s, sampler.report())
        ready = {name: http_ready(comp["http"] + "/readyz") for name, comp in platform.components.items() if "http" in comp and name != "ingest"}
        result["not_ready_at_end"] = [name for name, ok in ready.items() if not ok]
    finally:
        platform.down(echo=lambda *_: None)
    passed = (not error and result["lost"] == 0 and result["duplicate_pages"] <= args.max_duplicate_pages and result["max_lag"] == 0
              and not result["not_ready_at_end"] and result["pos_events"]["missing_on_topic"] == 0)
    return result, passed


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (a CI job cancelled, `kill`) stops the platform as Ctrl-C does, rather than orphaning it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result, passed = run(args)
    except LaunchError as exc:
        log(f"the platform did not start: {exc}")
        return 2
    (args.run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    details = result.pop("details")
    for kind in ("lost", "duplicate_pages", "partial_evidence"):
        for item in details[kind]:
            log(f"{kind}: {json.dumps(item)}")
    for event_id, repeat in details["pos_published_twice"].items():
        log(f"POS event on {topics.POS} {repeat['copies']} times: {event_id} (rung during: {repeat['fault']})")
    log(f"{'PASSED' if passed else 'FAILED'}; everything in {args.run_dir / 'result.json'}")
    summary = {key: result[key] for key in ("faults", "expected_alerts", "delivered", "lost", "duplicate_pages", "partial_evidence",
                                            "max_lag", "p99_refund_to_page_s", "correlation", "rss_growth_mb")}
    summary.update(passed=passed, alerts_raised=result["alerts_raised"], evidence_not_written=result["evidence_not_written"],
                   pos_events=result["pos_events"], run_s=result["run_s"])
    if "per_service" in result:
        summary["per_service"] = result["per_service"]
    print(json.dumps(summary, default=str))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
