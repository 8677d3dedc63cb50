"""Scoring a run: each scenario's expectations matched to the alerts raised for it, and the summary.

Alerts belong to the scenario whose prefix their store id carries; each expectation takes one alert
that fits it, an alert id raised again is a duplicate, and alerts left over are extras. The alerts
are also folded into incidents as every reader of sw.alerts.v1 folds them (per store, in the order
read: services/shared/incidents.py); a scenario that states `incidents` must give exactly those.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from devplatform.scenarios.spec import Expectation, IncidentExpectation, Scenario
from services.shared.contracts.alert_pb2 import Alert
from services.shared.incidents import Incident, fold_all

# A message the correlator dead-lettered: (topic, key, error).
DeadLetter = tuple[str, str, str]


def _matches(sc: Scenario, exp: Expectation, alert: Alert) -> bool:
    if alert.rule != exp.rule or alert.store_id != sc.pid(sc.store_of(exp.store, "expect")):
        return False
    if exp.register_id and alert.register_id != exp.register_id:
        return False
    if exp.camera and alert.camera_id != sc.pid(exp.camera):
        return False
    if exp.pos_event and exp.pos_event not in {e.ref for e in alert.evidence if e.kind == "pos_event"}:
        return False
    return not (exp.track is not None and alert.facts.get("track") != str(exp.track))


def incident_matches(sc: Scenario, exp: IncidentExpectation, incident: Incident, alerts: dict[str, Alert]) -> bool:
    """Exactly the expected rules among the incident's reasons, and each place given named by one of them."""
    if sorted(set(incident.rules)) != exp.rules or incident.store_id != sc.pid(sc.store_of(exp.store, "incidents")):
        return False
    if exp.camera and all(r.camera_id != sc.pid(exp.camera) for r in incident.reasons):
        return False
    if exp.register_id and all(r.register_id != exp.register_id for r in incident.reasons):
        return False
    events = {e.ref for r in incident.reasons if r.alert_id in alerts for e in alerts[r.alert_id].evidence if e.kind == "pos_event"}
    return not (exp.pos_event and exp.pos_event not in events)


@dataclass
class Outcome:
    scenario: Scenario
    alerts: list[Alert]
    duplicates: list[Alert]
    matched: list[tuple[Expectation, Alert]] = field(default_factory=list)
    missed: list[Expectation] = field(default_factory=list)
    extra: list[Alert] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    incidents_matched: list[tuple[IncidentExpectation, Incident]] = field(default_factory=list)
    incidents_missed: list[IncidentExpectation] = field(default_factory=list)
    incidents_extra: list[Incident] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missed or self.extra or self.duplicates or self.incidents_missed or self.incidents_extra)


def match(sc: Scenario, alerts: list[Alert], duplicates: list[Alert], incidents: list[Incident] | None = None) -> Outcome:
    """Each expectation takes one alert that fits it (the most specific expectations choose first);
    likewise incidents, when the scenario states them (folded from `alerts` when not given)."""
    outcome = Outcome(sc, alerts, duplicates)
    free = list(alerts)
    specificity = sorted(sc.spec.expect, key=lambda e: -(sum(1 for v in (e.register_id, e.camera, e.pos_event) if v) + (e.track is not None)))
    for exp in specificity:
        found = next((a for a in free if _matches(sc, exp, a)), None)
        if found is None:
            outcome.missed.append(exp)
        else:
            free.remove(found)
            outcome.matched.append((exp, found))
    outcome.extra = free
    outcome.incidents = fold_all(alerts) if incidents is None else incidents
    if sc.spec.incidents is not None:
        by_id = {a.alert_id: a for a in alerts}
        left = list(outcome.incidents)
        for inc in sorted(sc.spec.incidents, key=lambda e: -sum(1 for v in (e.register_id, e.camera, e.pos_event) if v)):
            hit = next((i for i in left if incident_matches(sc, inc, i, by_id)), None)
            if hit is None:
                outcome.incidents_missed.append(inc)
            else:
                left.remove(hit)
                outcome.incidents_matched.append((inc, hit))
        outcome.incidents_extra = left
    return outcome


def _describe(alert: Alert) -> str:
    where = " ".join(f"{k}={v}" for k, v in (("register", alert.register_id), ("camera", alert.camera_id)) if v)
    events = [e.ref for e in alert.evidence if e.kind == "pos_event"]
    named = f" [pos events {', '.join(events)}]" if events else f" [track {alert.facts['track']}]" if "track" in alert.facts else ""
    return f"{alert.rule} {where} id={alert.alert_id}: {alert.explanation}{named}"


def describe_incident(incident: Incident) -> str:
    where = sorted({f"camera={r.camera_id}" for r in incident.reasons if r.camera_id} | {f"register={r.register_id}" for r in incident.reasons if r.register_id})
    return f"incident {incident.incident_id} {'+'.join(incident.rules)} ({len(incident.reasons)} alerts) {' '.join(where)}"


def report(outcome: Outcome, echo: Any = print) -> None:
    sc = outcome.scenario
    status = "PASS" if outcome.ok else "FAIL"
    stated = sc.spec.incidents is not None
    incidents = f", incidents {len(outcome.incidents)}" + (f" (expected {len(sc.spec.incidents or [])})" if stated else "")
    echo(f"{status} {sc.name}: expected {len(sc.spec.expect)}, raised {len(outcome.alerts)}, matched {len(outcome.matched)}, "
         f"missed {len(outcome.missed)}, extra {len(outcome.extra)}" + (f", duplicates {len(outcome.duplicates)}" if outcome.duplicates else "")
         + incidents)
    for exp in outcome.missed:
        echo(f"    missed: {exp.describe()}")
    for alert in outcome.extra:
        echo(f"    extra: {_describe(alert)}")
    for alert in outcome.duplicates:
        echo(f"    duplicate (raised again): {_describe(alert)}")
    for inc in outcome.incidents_missed:
        echo(f"    missed: {inc.describe()}")
    for incident in outcome.incidents_extra:
        echo(f"    extra: {describe_incident(incident)}")


def summary(outcomes: list[Outcome], dead_lettered: int = 0) -> dict[str, Any]:
    expected = sum(len(o.scenario.spec.expect) for o in outcomes)
    raised = sum(len(o.alerts) for o in outcomes)
    tp = sum(len(o.matched) for o in outcomes)
    # Incident precision and recall over the scenarios that state their incidents.
    stated = [o for o in outcomes if o.scenario.spec.incidents is not None]
    inc_expected = sum(len(o.scenario.spec.incidents or []) for o in stated)
    inc_raised = sum(len(o.incidents) for o in stated)
    inc_tp = sum(len(o.incidents_matched) for o in stated)
    return {"scenarios": len(outcomes), "expected": expected, "raised": raised, "true_positives": tp,
            "precision": round(tp / raised, 4) if raised else 1.0, "recall": round(tp / expected, 4) if expected else 1.0,
            "duplicates": sum(len(o.duplicates) for o in outcomes), "dead_lettered": dead_lettered,
            "incidents": sum(len(o.incidents) for o in outcomes), "incident_scenarios": len(stated), "incidents_expected": inc_expected,
            "incident_precision": round(inc_tp / inc_raised, 4) if inc_raised else 1.0,
            "incident_recall": round(inc_tp / inc_expected, 4) if inc_expected else 1.0}


def score(scenarios: list[Scenario], alerts: list[Alert], dead: list[DeadLetter], echo: Any, extra: dict[str, Any] | None = None,
          extra_ok: bool = True, lines_before_summary: list[str] | None = None) -> int:
    """Print each scenario's outcome, `lines_before_summary`, and the summary line (JSON, with
    `extra` such as the busy day's figures); 0 only when everything matched and `extra_ok`."""
    by_scenario: dict[str, list[Alert]] = defaultdict(list)
    duplicates: dict[str, list[Alert]] = defaultdict(list)
    seen = Counter[str]()
    names = sorted((sc.name for sc in scenarios), key=len, reverse=True)

    def owner(key: str) -> str:
        return next((n for n in names if key.startswith(n + ".")), "")

    for alert in alerts:
        seen[alert.alert_id] += 1
        target = duplicates if seen[alert.alert_id] > 1 else by_scenario
        target[owner(alert.store_id)].append(alert)
    outcomes = [match(sc, by_scenario.pop(sc.name, []), duplicates.pop(sc.name, [])) for sc in scenarios]
    for outcome in outcomes:
        report(outcome, echo)
    stray = [a for owned in by_scenario.values() for a in owned]
    for alert in stray:
        echo(f"    alert for no scenario: {alert.store_id} {_describe(alert)}")
    for topic, key, error in dead:
        echo(f"    dead-lettered by the correlator ({topic}, key {key}, scenario {owner(key) or '?'}): {error}")
    result = summary(outcomes, len(dead))
    if stray:
        result["raised"] += len(stray)
        result["precision"] = round(result["true_positives"] / result["raised"], 4)
    for line in lines_before_summary or []:
        echo(line)
    result.update(extra or {})
    echo(json.dumps(result))
    ok = (result["precision"] == 1.0 and result["recall"] == 1.0 and result["incident_precision"] == 1.0 and result["incident_recall"] == 1.0
          and not result["duplicates"] and not dead and extra_ok)
    return 0 if ok else 1
