"""The fault schedule of a chaos run: what is broken, for how long, and how it is healed.

Each fault is applied, held, then healed (a killed process started again as a supervisor would, a
stopped one continued), and its times are recorded so that the checker can name the fault behind
any repeat it finds. The full schedule breaks each part in turn, then two at once; the short one
(the test suite's) breaks one of each kind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devplatform import broker as kafka
from devplatform.launcher import Platform, is_ours
from services.shared import topics
from services.shared.topicadmin import admin_client

# The topics poison is sent to: every topic a service consumes.
POISONED_TOPICS = tuple(topics.RETENTION_MS)
POISON_PER_TOPIC = 20


class FaultError(RuntimeError):
    """A fault could not be applied or healed (a process that would not come back): the run fails."""


@dataclass
class Fault:
    """One fault: `kind` applied to `target` for `hold_s`, or several at once (`together`)."""

    kind: str
    target: str = ""
    hold_s: float = 10.0
    together: tuple[Fault, ...] = ()
    # filled in as it runs
    detail: str = ""
    started_ms: int = 0
    healed_ms: int = 0

    @property
    def name(self) -> str:
        if self.together:
            return " + ".join(part.name for part in self.together)
        return f"{self.kind} {self.target}".strip()

    def record(self) -> dict[str, Any]:
        parts = [part.record() for part in self.together]
        return {"fault": self.name, "detail": self.detail, "started_ms": self.started_ms, "healed_ms": self.healed_ms,
                "held_s": round((self.healed_ms - self.started_ms) / 1000, 1), **({"parts": parts} if parts else {})}


KINDS = ("kill", "kill-broker-leader", "kill-controller", "restart-redis", "stop-modelserver", "drop-camera", "poison", "pause")


def full_schedule(platform: Platform) -> list[Fault]:
    """Every service killed in turn; the broker leading most partitions, then the active controller;
    Redis; the model server for 30 s; a camera; poison on every topic; a consumer stopped for 20 s;
    then two at once."""
    services = [name for name in platform.service_components() if not name[-1].isdigit()]
    schedule = [Fault("kill", name, 10.0) for name in services]
    schedule += [Fault("kill-broker-leader", hold_s=20.0), Fault("kill-controller", hold_s=20.0), Fault("restart-redis", "redis", 5.0),
                 Fault("stop-modelserver", "modelserver", 30.0), Fault("drop-camera", "camera", 20.0), Fault("poison", hold_s=0.0),
                 Fault("pause", _second("correlator", platform), 20.0), Fault("pause", _second("inference", platform), 20.0),
                 Fault("pause", _second("notifier", platform), 20.0)]
    schedule += [
        Fault("together", together=(Fault("kill", _second("inference", platform), 10.0), Fault("kill-broker-leader", hold_s=20.0))),
        Fault("together", together=(Fault("kill", "notifier", 10.0), Fault("restart-redis", "redis", 5.0))),
        Fault("together", together=(Fault("pause", "correlator", 20.0), Fault("poison", hold_s=0.0))),
    ]
    return schedule


def short_schedule(platform: Platform) -> list[Fault]:
    """One fault of each kind, short holds: the test suite's version. The kills are of a notifier
    (pages in flight) and of a correlator worker (tables handed over in a rebalance)."""
    return [Fault("kill", "notifier", 5.0), Fault("kill", _second("correlator", platform), 5.0), Fault("kill-broker-leader", hold_s=10.0),
            Fault("restart-redis", "redis", 3.0), Fault("stop-modelserver", "modelserver", 10.0), Fault("drop-camera", "camera", 10.0),
            Fault("poison", hold_s=0.0), Fault("pause", _second("inference", platform), 10.0)]


def _second(service: str, platform: Platform) -> str:
    """The service's second replica where it runs two (the first otherwise)."""
    return f"{service}-2" if f"{service}-2" in platform.service_components() else service


class Injector:
    """Applies and heals faults on a running platform. `camera` is the run's MJPEG camera: a
    callable pair (kill, start again)."""

    def __init__(self, platform: Platform, camera: tuple[Callable[[], None], Callable[[], None]] | None, echo: Callable[[str], object] = print) -> None:
        self.platform, self.camera, self.echo = platform, camera, echo

    def run(self, fault: Fault) -> None:
        """Apply, hold, heal; for faults together, apply all, then heal each when its hold is over."""
        parts = list(fault.together) or [fault]
        fault.started_ms = int(time.time() * 1000)
        started = time.monotonic()
        heals: list[tuple[float, Fault, Callable[[], None]]] = []
        for part in parts:
            part.started_ms = int(time.time() * 1000)
            heals.append((part.hold_s, part, self._apply(part)))
        fault.detail = "; ".join(part.detail for part in parts if part.detail) if fault.together else fault.detail
        for hold, part, heal in sorted(heals, key=lambda h: h[0]):
            time.sleep(max(0.0, started + hold - time.monotonic()))
            heal()
            part.healed_ms = int(time.time() * 1000)
        fault.healed_ms = int(time.time() * 1000)

    def _apply(self, fault: Fault) -> Callable[[], None]:
        platform = self.platform
        if fault.kind in ("kill", "restart-redis", "stop-modelserver"):
            return self._kill(fault.target)
        if fault.kind == "kill-broker-leader":
            fault.target, leads = self.busiest_leader()
            fault.detail = f"{fault.target} led {leads} partitions"
            return self._kill(fault.target)
        if fault.kind == "kill-controller":
            fault.target = self.active_controller()
            fault.detail = f"{fault.target} was the active controller"
            return self._kill(fault.target)
        if fault.kind == "drop-camera":
            if self.camera is None:
                raise FaultError("drop-camera: this run has no network camera")
            drop, bring_back = self.camera
            drop()
            return bring_back
        if fault.kind == "poison":
            fault.detail = f"{POISON_PER_TOPIC} undecodable messages on each of {len(POISONED_TOPICS)} topics"
            self.poison()
            return lambda: None
        if fault.kind == "pause":
            platform.signal(fault.target, signal.SIGSTOP)
            return lambda: platform.signal(fault.target, signal.SIGCONT)
        raise FaultError(f"unknown fault kind {fault.kind!r} (one of {', '.join(KINDS)})")

    def _kill(self, name: str) -> Callable[[], None]:
        if name not in self.platform.components or not is_ours(self.platform.components[name]):
            raise FaultError(f"{name} is not running; cannot kill it")
        self.platform.kill_component(name)

        def restart() -> None:
            try:
                self.platform.restart(name)
            except Exception as exc:  # named, and the run fails with it
                raise FaultError(f"{name} did not come back after its kill: {exc}") from exc

        return restart

    def busiest_leader(self) -> tuple[str, int]:
        """The node that leads the most partitions now (the broker whose loss moves most leaders)."""
        metadata = admin_client(self.platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"], quiet=True).list_topics(timeout=10)
        leads = Counter(p.leader for t in metadata.topics.values() for p in t.partitions.values() if p.leader >= 0)
        node, count = leads.most_common(1)[0]
        return self.platform.broker_name(node), count

    def active_controller(self) -> str:
        """The KRaft quorum's leader, as Kafka's own metadata-quorum tool reports it."""
        argv = [kafka.java_binary(), "-XX:TieredStopAtLevel=1", "-Xmx256m", f"-Dlog4j2.configurationFile={kafka.LOG_CONFIG}", "-cp", kafka.classpath(),
                "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", self.platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"], "describe", "--status"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
        found = re.search(r"LeaderId:\s+(\d+)", result.stdout)
        if found is None:
            raise FaultError(f"kill-controller: the quorum tool named no leader (exit {result.returncode}): {result.stderr[-500:]}")
        return self.platform.broker_name(int(found.group(1)))

    def poison(self) -> None:
        """Bytes no service can decode, on every topic a service reads (keys as the topic's own)."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"], "enable.idempotence": True, "acks": "all"})
        for topic in POISONED_TOPICS:
            for number in range(POISON_PER_TOPIC):
                producer.produce(topic, key=f"poison-{number % 6}".encode(), value=os.urandom(64) + b"\xff\x00chaos-poison")
        remaining = producer.flush(60)
        if remaining:
            raise FaultError(f"poison: {remaining} messages still unsent after 60 s")


@dataclass
class ScheduleResult:
    faults: list[Fault] = field(default_factory=list)
    error: str = ""
