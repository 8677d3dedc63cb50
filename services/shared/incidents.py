"""Incidents: the alerts that describe one situation, folded into one page, one verdict.

A person alone in the closed store who lingers at the high-value shelf trips two rules (after hours,
loitering); a refund with neither customer nor goods at the counter trips two more. Each rule keeps
its alert (per-rule precision is counted on them), but the people who act on them see one incident
with several reasons: one page, one evidence package, one verdict. A later reason raises the
incident's severity instead of paging again.

Folding is pure and deterministic: the same alerts in the same order give the same incidents and
the same ids, so every reader of sw.alerts.v1 (the notifier, the HQ api, the scenario runner)
folds the topic itself and they agree, as they agree on alert ids. The topic is keyed by store, so a
store's alerts come in one order to every reader and on every replay.

When two alerts are one situation: they share a subject (the same person's track on a camera, or
any of their tracks on the store's cameras when the alert followed them across cameras, the
same camera, the same register, the same POS event, the same card or customer token, the same
closed period of the store) and their times overlap, within `gap_ms`, an incident lasting at most `max_span_ms`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import cast

import redis

from services.shared.contracts.alert_pb2 import Alert, Severity

CAMERA_EVIDENCE = ("camera_window", "frames", "frame")
# Alerts this far apart (event time) still overlap: a loitering alert fires a while after the
# after-hours alert of the same person, a refund's two rules are decided seconds apart.
DEFAULT_GAP_MS = 5 * 60_000
# An incident keeps taking reasons for at most this long, so a busy camera is not one endless incident.
DEFAULT_MAX_SPAN_MS = 60 * 60_000
SEVERITY_NAMES = {Severity.SEVERITY_LOW: "low", Severity.SEVERITY_MEDIUM: "medium", Severity.SEVERITY_HIGH: "high", Severity.SEVERITY_CRITICAL: "critical"}


def incident_id(store_id: str, opening_alert_id: str) -> str:
    """Named after the alert that opened it, so a replay of the same alerts opens the same incident."""
    digest = hashlib.sha256(f"{store_id}|{opening_alert_id}".encode()).hexdigest()
    return f"in-{digest[:24]}"


def subjects(alert: Alert) -> list[str]:
    """What the alert is about: the keys another alert must share to be the same situation."""
    keys: list[str] = []
    camera = alert.camera_id
    track = alert.facts.get("track", "")
    if camera and track:
        keys.append(f"track:{camera}:{track}")
    # A person followed across cameras (checkout bypass, repeat visits): each of their tracks.
    keys += [f"track:{t}" for t in alert.facts.get("tracks", "").split(",") if t.count(":") == 1]
    if camera:
        keys.append(f"camera:{camera}")
    if alert.register_id:
        keys.append(f"register:{alert.register_id}")
    if alert.facts.get("token"):
        keys.append(f"token:{alert.facts['token']}")
    if alert.facts.get("closed_period"):
        # Anyone on any camera of the closed store is one intrusion (the entrance, then the floor).
        keys.append(f"closed:{alert.facts['closed_period']}")
    keys += [f"pos:{ref.ref}" for ref in alert.evidence if ref.kind == "pos_event" and ref.ref]
    return list(dict.fromkeys(keys))


def extent(alert: Alert) -> tuple[int, int]:
    """Event-time span the alert covers: from its camera evidence's start (a person's visit, a
    refund's window) to the moment it was raised for. POS evidence of other days (a serial
    returner's earlier returns) does not stretch it."""
    start = alert.event_time_ms
    for ref in alert.evidence:
        if ref.kind not in CAMERA_EVIDENCE:
            continue
        if ref.kind == "camera_window":
            first, _, _ = ref.ref.partition("-")
            if first.isdigit():
                start = min(start, int(first))
        elif ref.time_ms:
            start = min(start, ref.time_ms)
    return start, alert.event_time_ms


@dataclass
class Reason:
    """One alert of an incident, with what the incident's views need of it."""

    alert_id: str
    rule: str
    severity: int
    event_time_ms: int
    explanation: str
    camera_id: str = ""
    register_id: str = ""


@dataclass
class Incident:
    incident_id: str
    store_id: str
    severity: int
    start_ms: int
    end_ms: int
    reasons: list[Reason] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    @property
    def opening_alert_id(self) -> str:
        return self.reasons[0].alert_id

    @property
    def rules(self) -> list[str]:
        return list(dict.fromkeys(r.rule for r in self.reasons))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Incident:
        data = json.loads(raw)
        data["reasons"] = [Reason(**r) for r in data["reasons"]]
        return cls(**data)

    def view(self) -> dict:
        """JSON for people: severity by name, each reason with its rule."""
        return {"incident_id": self.incident_id, "store_id": self.store_id, "severity": SEVERITY_NAMES.get(cast(Severity, self.severity), "unspecified"),
                "start_ms": self.start_ms, "end_ms": self.end_ms, "opening_alert_id": self.opening_alert_id, "rules": self.rules,
                "reasons": [{**asdict(r), "severity": SEVERITY_NAMES.get(cast(Severity, r.severity), "unspecified")} for r in self.reasons]}


@dataclass(frozen=True)
class Folded:
    """Where an alert went. `opening`: it opened the incident (the one that pages); `added`: it was
    new to the incident (False for a replay); `escalated`: the incident's severity rose."""

    incident: Incident
    opening: bool
    added: bool
    escalated: bool


def severity_of(reasons: Iterable[Reason]) -> int:
    """The highest reason's severity, one level higher when two different rules agree (two
    independent signals of one situation are worth more than either), at most critical."""
    reasons = list(reasons)
    highest = max(r.severity for r in reasons)
    if len({r.rule for r in reasons}) > 1:
        highest = min(highest + 1, Severity.SEVERITY_CRITICAL)
    return highest


def _reason(alert: Alert) -> Reason:
    return Reason(alert.alert_id, alert.rule, int(alert.severity), alert.event_time_ms, alert.explanation, alert.camera_id, alert.register_id)


def fold(open_incidents: list[Incident], alert: Alert, gap_ms: int = DEFAULT_GAP_MS, max_span_ms: int = DEFAULT_MAX_SPAN_MS) -> Folded:
    """The incident the alert belongs to: an open one of its store that shares a subject and
    overlaps in time (the most recently active when several do), or a new one. Changes the
    incident in place; an alert already folded changes nothing."""
    for incident in open_incidents:
        if any(r.alert_id == alert.alert_id for r in incident.reasons):
            return Folded(incident, incident.opening_alert_id == alert.alert_id, False, False)
    start, end = extent(alert)
    keys = subjects(alert)
    matching = [i for i in open_incidents
                if i.store_id == alert.store_id and set(keys) & set(i.keys)
                and start <= i.end_ms + gap_ms and end >= i.start_ms - gap_ms
                and max(end, i.end_ms) - min(start, i.start_ms) <= max_span_ms]
    if not matching:
        incident = Incident(incident_id(alert.store_id, alert.alert_id), alert.store_id, int(alert.severity), start, end, [_reason(alert)], keys)
        return Folded(incident, True, True, False)
    incident = max(matching, key=lambda i: (i.end_ms, i.incident_id))
    before = incident.severity
    incident.reasons.append(_reason(alert))
    incident.keys = list(dict.fromkeys(incident.keys + keys))
    incident.start_ms, incident.end_ms = min(incident.start_ms, start), max(incident.end_ms, end)
    incident.severity = severity_of(incident.reasons)
    return Folded(incident, False, True, incident.severity > before)


def fold_all(alerts: Iterable[Alert], gap_ms: int = DEFAULT_GAP_MS, max_span_ms: int = DEFAULT_MAX_SPAN_MS) -> list[Incident]:
    """Every incident of a stream of alerts, in the order they opened (scenarios, tests, rebuilds)."""
    incidents: list[Incident] = []
    by_store: dict[str, list[Incident]] = {}
    for alert in alerts:
        folded = fold(by_store.setdefault(alert.store_id, []), alert, gap_ms, max_span_ms)
        if folded.opening and folded.added:
            by_store[alert.store_id].append(folded.incident)
            incidents.append(folded.incident)
    return incidents


class IncidentLedger:
    """A reader's fold state in Redis: each incident, the incident of each alert, and per store and
    subject the incidents open to it (a sorted set by end time), so folding one alert reads only the
    incidents it could join, however many a store has open.

    Each reader keeps its own (`prefix`): readers at different offsets of the topic must not fold
    into each other's state. One writer per store at a time (the topic's partition owner).
    """

    def __init__(self, client: redis.Redis, prefix: str, keep_ms: int, gap_ms: int = DEFAULT_GAP_MS, max_span_ms: int = DEFAULT_MAX_SPAN_MS) -> None:
        self.redis = client
        self.prefix = prefix
        self.keep_ms = keep_ms
        self.gap_ms = gap_ms
        self.max_span_ms = max_span_ms

    def _subject_key(self, store_id: str, subject: str) -> str:
        return f"{self.prefix}open:{store_id}:{subject}"

    def _incident_key(self, incident_id: str) -> str:
        return f"{self.prefix}incident:{incident_id}"

    def _alert_key(self, alert_id: str) -> str:
        return f"{self.prefix}of:{alert_id}"

    def fold(self, alert: Alert) -> Folded:
        """Fold one alert and keep the result (idempotent: a replayed alert finds its incident)."""
        known = self.incident_of(alert.alert_id)
        if known is not None:
            return Folded(known, known.opening_alert_id == alert.alert_id, False, False)
        start, _ = extent(alert)
        pipe = self.redis.pipeline(transaction=False)
        for subject in subjects(alert):
            pipe.zrangebyscore(self._subject_key(alert.store_id, subject), start - self.gap_ms, "+inf")
        ids = sorted({_text(i) for found in pipe.execute() for i in found})
        raw = cast(list, self.redis.mget([self._incident_key(i) for i in ids])) if ids else []
        candidates = [Incident.from_json(r) for r in raw if r is not None]
        folded = fold(candidates, alert, self.gap_ms, self.max_span_ms)
        incident = folded.incident
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._incident_key(incident.incident_id), incident.to_json(), px=self.keep_ms)
        for subject in incident.keys:
            key = self._subject_key(incident.store_id, subject)
            pipe.zadd(key, {incident.incident_id: incident.end_ms})
            # Only what is past keeping leaves: an alert may come late (event time), and must still
            # find the incident the pure fold would give it.
            pipe.zremrangebyscore(key, "-inf", incident.end_ms - self.keep_ms)
            pipe.pexpire(key, self.keep_ms)
        pipe.set(self._alert_key(alert.alert_id), incident.incident_id, px=self.keep_ms)
        pipe.execute()
        return folded

    def get(self, incident_id: str) -> Incident | None:
        raw = self.redis.get(self._incident_key(incident_id))
        return Incident.from_json(cast(bytes, raw)) if raw is not None else None

    def incident_of(self, alert_id: str) -> Incident | None:
        known = self.redis.get(self._alert_key(alert_id))
        return self.get(_text(known)) if known is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
