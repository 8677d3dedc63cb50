"""Scenario runner: replays scripted store scenarios through a real correlator and scores its alerts.

`python -m devplatform.scenarios [--dir DIR] [--keep-logs] [--busy-day-stores N] [--seed N]` (`make scenarios`). Each JSON file in
DIR describes stores, a timeline of POS events, what each camera saw (at the FrameAnalysis level, as
inference would publish it) and the alerts that must follow (format: scenarios/README.md). The runner
starts Apache Kafka and one correlator for all of them, sends every scenario's detections and POS
events in event-time order, waits until the correlator has consumed everything and no alert comes
any more, and matches the alerts on sw.alerts.v1 to the expectations. It prints one line per
scenario and ends with a JSON line (precision, recall); the exit status is 0 only when both are 1
and no alert id was raised twice.

With it goes a generated busy trading day of N stores (busyday.py, default rules): one line per
store-day (alerts, incidents, false incidents, injected frauds caught) and `busy_day` in the JSON
line; the exit status is also non-zero when a fraud was missed or a store-day had 2 false incidents.

Scenarios share one chain and one correlator, so every store, camera, employee id and token is
prefixed with the scenario's file stem ("refund-ok.store-1"): chain-wide rules (return abuse, own
card) never mix scenarios. Event times are in the past (a fixed `start` plus seconds), which is how
the correlator sees a backlog replayed: its rules run on event time, not the wall clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO, cast

import yaml
from confluent_kafka import Message

from devplatform.kafkatools import Offsets, TopicReader
from devplatform.launcher import LaunchError, Platform, is_ours
from devplatform.progress import Progress
from devplatform.scenarios import busyday
from devplatform.scenarios.scoring import DeadLetter, describe_incident, score
from devplatform.scenarios.spec import DEFAULT_DIR, Scenario, ScenarioError, load_dir, scenario_config
from devplatform.scenarios.synth import Outgoing, messages, refund_waits
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.storeconfig import StoreConfigError, load_store_config

# The correlator's tick for refunds whose camera stays silent (services/correlator/agents.py TICK_INTERVAL_S).
TICK_S = 5.0
# Detections and POS events not yet consumed, per partition: the runner writes at most this far ahead of
# the correlator, so a scenario's late messages still arrive after what the correlator has read.
MAX_UNCONSUMED_BYTES = 2 * 1024 * 1024
CORRELATOR_GROUP = topics.CORRELATOR_APP_ID
CONSUMED_TOPICS = (topics.DETECTIONS, topics.POS, topics.CAMERA_EVENTS, topics.RETURNS_BY_TOKEN, topics.TRANSACTIONS, topics.STORE_STEPS)
DLQ_TOPICS = tuple(topics.dlq(t) for t in CONSUMED_TOPICS)


class _Collector:
    """sw.alerts.v1 and the correlator's DLQs, read from the beginning in the background."""

    def __init__(self, bootstrap: str) -> None:
        self.alerts = TopicReader(bootstrap, [topics.ALERTS], lambda msg: Alert.FromString(msg.value()))
        self.dead = TopicReader(bootstrap, DLQ_TOPICS, _dead_letter)

    def start(self) -> None:
        self.alerts.start()
        self.dead.start()

    @property
    def error(self) -> str:
        return self.alerts.error or self.dead.error

    def stop(self) -> None:
        self.alerts.stop()
        self.dead.stop()


def _dead_letter(msg: Message) -> DeadLetter:
    headers = dict(msg.headers() or [])
    key, error = msg.key(), headers.get("sw-error") or b""
    return (msg.topic() or "", key.decode(errors="replace") if isinstance(key, bytes) else str(key or ""),
            error.decode(errors="replace") if isinstance(error, bytes) else str(error))


class _Sender:
    """Produces in order, never letting the correlator fall more than MAX_UNCONSUMED_BYTES behind in a partition."""

    def __init__(self, bootstrap: str, offsets: Offsets, echo: Any) -> None:
        from services.shared.kafka import make_producer

        # log_level 3: no line when the broker goes away at the end of the run.
        self.producer = make_producer(bootstrap, log_level=3)
        self.offsets = offsets
        self.echo = echo
        self.sizes: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        self.failed: list[str] = []
        self.sent = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.sizes[(msg.topic(), msg.partition())].append((msg.offset(), len(msg.value() or b"")))

    def _throttle(self) -> None:
        self.producer.flush(30)
        waited = time.monotonic()
        while True:
            behind = self.offsets.behind(CORRELATOR_GROUP, (topics.DETECTIONS, topics.POS))
            pending = {}
            for key, sizes in self.sizes.items():
                done = behind.get(key, (1 << 62, 0))[0]
                sizes[:] = [(o, n) for o, n in sizes if o >= done]
                pending[key] = sum(n for _o, n in sizes)
            if max(pending.values(), default=0) <= MAX_UNCONSUMED_BYTES // 2:
                return
            if time.monotonic() - waited > 5:
                self.echo(f"  letting the correlator catch up ({max(pending.values()) / 1e6:.1f} MB unconsumed in one partition)")
                waited = time.monotonic()
            time.sleep(0.5)

    def send(self, batch: list[Outgoing], progress: Progress | None = None) -> None:
        since_check = 0
        for m in batch:
            self.producer.produce(m.topic, key=m.key.encode(), value=m.value, on_delivery=self._delivered)
            self.producer.poll(0)
            self.sent += 1
            since_check += len(m.value)
            if since_check > MAX_UNCONSUMED_BYTES // 4:
                since_check = 0
                self._throttle()
                if progress is not None:
                    progress.update(self.sent)
        if self.producer.flush(30):
            raise RuntimeError("the broker did not acknowledge every message within 30 s")
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} messages were not delivered: {self.failed[0]}")

    def close(self) -> None:
        self.producer.close()


class _EchoStream:
    """A text stream for Progress that writes its lines through the runner's echo."""

    def __init__(self, echo: Any) -> None:
        self.echo = echo

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.echo(line)
        return len(text)

    def flush(self) -> None:
        return None


def _exit_status(pid: int) -> str:
    """How a child process of ours ended, reaping it."""
    try:
        _pid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def wait_for_quiet(platform: Platform, collector: _Collector, offsets: Offsets, deadline_for_refunds: float, echo: Any,
                   quiet_s: float, limit_s: float) -> None:
    """Until the correlator consumed everything, every refund could be decided, and no alert came for quiet_s."""
    started = last_note = time.monotonic()
    while True:
        now = time.monotonic()
        if now - started > limit_s:
            raise RuntimeError(f"the correlator did not settle within {limit_s:.0f} s")
        if not is_ours(platform.components["correlator"]):
            raise RuntimeError(f"the correlator exited while the scenarios were running ({_exit_status(platform.components['correlator']['pid'])})")
        if collector.error:
            raise RuntimeError(f"reading alerts failed: {collector.error}")
        behind = offsets.behind(CORRELATOR_GROUP, CONSUMED_TOPICS)
        alerts, last_alert = len(collector.alerts.received()), collector.alerts.last_received
        refunds_left = max(0.0, deadline_for_refunds - now)
        if not behind and refunds_left == 0 and now - last_alert >= quiet_s:
            return
        if now - last_note >= 5:
            last_note = now
            left = sum(high - done for done, high in behind.values())
            state = f"{left} messages left to consume" if behind else "everything consumed"
            wait = f", refunds without video after their window decided in {refunds_left:.0f} s" if refunds_left else ""
            echo(f"  waiting: {state}, {alerts} alerts so far{wait}")
        time.sleep(0.5)


def _busy_day(stores: int, seed: int, day: dt.date | None, customers: float, pocket_rate: float, echo: Any) -> tuple[busyday.BusyDay, Scenario]:
    started = time.monotonic()
    busy = busyday.generate(seed, stores, day, customers, pocket_rate)
    sc = busy.scenario()
    echo(f"busy day: {stores} store(s) ({', '.join(f'{s.plan.id} {s.plan.timezone}' for s in busy.stores)}), local date {busy.day}, seed {seed}: "
         f"{sum(s.customers for s in busy.stores)} shoppers, {len(sc.spec.pos)} POS events, {len(busy.frauds)} injected frauds, "
         f"drawn in {time.monotonic() - started:.1f}s")
    return busy, sc


def _busy_report(busy: busyday.BusyDay, sc: Scenario, alerts: list[Alert], echo: Any) -> tuple[dict[str, Any], bool]:
    results, chain_caught, chain_missed = busyday.score_day(busy, sc, alerts)
    for r in results:
        f = r.figures()
        echo(f"{'PASS' if not r.missed and len(r.false_incidents) < 2 else 'FAIL'} busy day {r.store} ({r.timezone}): alerts {f['alerts']}, "
             f"incidents {f['incidents']}, false incidents {f['false_incidents']} (of {f['false_alerts']} alerts), frauds caught {f['caught']}/{f['frauds']}")
        for fraud in r.missed:
            echo(f"    missed fraud: {fraud.kind}: {fraud.what}")
        for incident in r.false_incidents:
            echo(f"    false {describe_incident(incident)}: {incident.reasons[0].explanation}")
    for fraud in chain_caught + chain_missed:
        echo(f"{'PASS' if fraud in chain_caught else 'FAIL'} busy day chain: {fraud.kind}: {fraud.what}{'' if fraud in chain_caught else ' (missed)'}")
    return busyday.summarize(busy, results, chain_caught, chain_missed)


def run(directory: Path | None, keep_logs: bool = False, echo: Any = print, quiet_s: float = 4.0, busy_stores: int = 0, seed: int = 1,
        busy_date: dt.date | None = None, busy_customers: float = busyday.CUSTOMERS_PER_DAY, pocket_rate: float = busyday.POCKET_RATE) -> int:
    """Replay the scenario files of `directory` (None: none) and, with `busy_stores`, a busy day."""
    busy: busyday.BusyDay | None = None
    run_started = time.monotonic()
    try:
        scenarios = load_dir(directory) if directory is not None else []
        if busy_stores > 0:
            busy, busy_sc = _busy_day(busy_stores, seed, busy_date, busy_customers, pocket_rate, echo)
        if not scenarios and busy is None:
            echo("nothing to run: no scenario folder and no busy day")
            return 2
        everything = scenarios + ([busy_sc] if busy is not None else [])
        config = scenario_config(*everything)
        started = time.monotonic()
        batches = [(sc, messages(sc, config), refund_waits(sc, config)) for sc in scenarios]
        if busy is not None:
            # The counter cameras cover every refund of the day (busyday.py): no refund waits for max_wait_s.
            batches.append((busy_sc, busyday.send_order(messages(busy_sc, config)), []))
        echo(f"messages generated in {time.monotonic() - started:.1f}s")
    except ScenarioError as exc:
        echo(f"scenario error: {exc}")
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="sw-scenarios-"))
    config_path = run_dir / "store-config.yaml"
    config_path.write_text(yaml.safe_dump({"chain": "scenarios", "stores": [s for sc in everything for s in sc.stores],
                                           "employees": [e for sc in everything for e in sc.employees]}, sort_keys=False))
    try:
        load_store_config(config_path)  # what the correlator will read, read the same way
    except StoreConfigError as exc:
        echo(f"generated store config is invalid: {exc}")
        shutil.rmtree(run_dir, ignore_errors=True)
        return 2
    platform = Platform(run_dir=run_dir, store_config=config_path)
    collector: _Collector | None = None
    offsets: Offsets | None = None
    sender: _Sender | None = None
    code = 1
    try:
        started = time.monotonic()
        platform.start_broker()
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        platform.start_service("correlator")
        echo(f"Kafka and correlator ready in {time.monotonic() - started:.1f}s (pids {platform.components['broker']['pid']}, "
             f"{platform.components['correlator']['pid']}); {len(scenarios)} scenarios from {directory}" + (", and the busy day" if busy else ""))
        collector = _Collector(bootstrap)
        collector.start()
        offsets = Offsets(bootstrap)
        sender = _Sender(bootstrap, offsets, echo)
        all_messages = [m for _sc, ms, _w in batches for m in ms]
        first = [m for m in all_messages if not m.late]
        late = [m for m in all_messages if m.late]
        # One event-time order across scenarios is not needed (they share nothing); per camera and
        # register it is, and each scenario's list is sorted already.
        with Progress("sending detections and POS events", total=len(first), unit="messages", stream=cast(TextIO, _EchoStream(echo))) as progress:
            sender.send(first, progress)
            progress.update(sender.sent)
        echo(f"  sent {len(first)} messages (detections and POS events)")
        if late:
            wait_for_quiet(platform, collector, offsets, 0.0, echo, quiet_s=0.0, limit_s=300)
            sender.send(late)
            echo(f"  sent {len(late)} late messages, after the correlator had consumed the others")
        waits = [w for _sc, _ms, ws in batches for w in ws]
        slow = [name for name, wait in waits if wait is not None]
        deadline = 0.0
        if slow:
            # Refunds whose camera never passes their window are decided once they waited max_wait_s.
            max_wait = max(wait for _name, wait in waits if wait is not None)
            deadline = time.monotonic() + max_wait + TICK_S + 3
            echo(f"  {len(slow)} refund(s) without video past their window ({', '.join(slow[:4])}{'...' if len(slow) > 4 else ''}): "
                 f"decided after max_wait_s ({max_wait:g} s)")
        wait_for_quiet(platform, collector, offsets, deadline, echo, quiet_s=quiet_s, limit_s=600)
        collector.stop()
        received = collector.alerts.received()
        extra: dict[str, Any] = {}
        busy_ok = True
        lines: list[str] = []
        if busy is not None:
            mine = [a for a in received if a.store_id.startswith(busy_sc.name + ".")]
            received = [a for a in received if not a.store_id.startswith(busy_sc.name + ".")]
            extra["busy_day"], busy_ok = _busy_report(busy, busy_sc, mine, lines.append)
            extra["busy_day"]["run_s"] = round(time.monotonic() - run_started, 1)  # the whole run, the shipped files included
        code = score(scenarios, received, collector.dead.received(), echo, extra=extra, extra_ok=busy_ok, lines_before_summary=lines)
    except LaunchError as exc:
        echo(f"could not start: {exc}")
        code = 2
    except RuntimeError as exc:
        echo(f"failed: {exc}")
        tail = platform.tail("correlator") if "correlator" in platform.components else ""
        if tail:
            echo(f"  correlator log (last lines):\n{tail}")
        code = 1
    finally:
        if collector is not None:
            collector.stop()
        if sender is not None:
            sender.close()
        if offsets is not None:
            offsets.close()
        platform.down(echo=lambda *_: None)
        if keep_logs:
            echo(f"logs and the generated store config kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devplatform.scenarios", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="folder of scenario files (*.json); default scenarios/")
    parser.add_argument("--keep-logs", action="store_true", help="keep the broker and correlator logs and the generated store config")
    parser.add_argument("--busy-day-stores", type=int, default=3, metavar="N",
                        help="also replay a generated busy trading day of N stores (default 3; 0: none)")
    parser.add_argument("--busy-day-only", action="store_true", help="only the busy day, not the scenario files")
    parser.add_argument("--seed", type=int, default=1, help="the busy day's seed (default 1)")
    parser.add_argument("--busy-day-date", type=dt.date.fromisoformat, default=None, metavar="YYYY-MM-DD",
                        help="the busy day's local date (default: two days before today, UTC)")
    parser.add_argument("--busy-day-customers", type=float, default=busyday.CUSTOMERS_PER_DAY, metavar="N",
                        help=f"shoppers expected per store-day (default {busyday.CUSTOMERS_PER_DAY})")
    parser.add_argument("--busy-day-pocket-rate", type=float, default=busyday.POCKET_RATE, metavar="P",
                        help=f"share of high-value visitors who once put a hand to a pocket after reaching (default {busyday.POCKET_RATE})")
    args = parser.parse_args(argv)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run(None if args.busy_day_only else args.dir, keep_logs=args.keep_logs, echo=lambda line: print(line, flush=True),
                   busy_stores=max(args.busy_day_stores, 0), seed=args.seed, busy_date=args.busy_day_date, busy_customers=args.busy_day_customers,
                   pocket_rate=args.busy_day_pocket_rate)
    except KeyboardInterrupt:
        print("interrupted; broker and correlator stopped", flush=True)
        return 130
