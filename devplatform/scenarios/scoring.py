"""Scoring a run: each scenario's expectations matched to the alerts raised for it, and the summary.

Alerts belong to the scenario whose prefix their store id carries; each expectation takes one alert
that fits it, an alert id raised again is a duplicate, and alerts left over are extras.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from devplatform.scenarios.spec import Expectation, Scenario
from services.shared.contracts.alert_pb2 import Alert

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


@dataclass
class Outcome:
    scenario: Scenario
    alerts: list[Alert]
    duplicates: list[Alert]
    matched: list[tuple[Expectation, Alert]] = field(default_factory=list)
    missed: list[Expectation] = field(default_factory=list)
    extra: list[Alert] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missed or self.extra or self.duplicates)


def match(sc: Scenario, alerts: list[Alert], duplicates: list[Alert]) -> Outcome:
    """Each expectation takes one alert that fits it (the most specific expectations choose first)."""
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
    return outcome


def _describe(alert: Alert) -> str:
    where = " ".join(f"{k}={v}" for k, v in (("register", alert.register_id), ("camera", alert.camera_id)) if v)
    events = [e.ref for e in alert.evidence if e.kind == "pos_event"]
    named = f" [pos events {', '.join(events)}]" if events else f" [track {alert.facts['track']}]" if "track" in alert.facts else ""
    return f"{alert.rule} {where} id={alert.alert_id}: {alert.explanation}{named}"


def report(outcome: Outcome, echo: Any = print) -> None:
    sc = outcome.scenario
    status = "PASS" if outcome.ok else "FAIL"
    echo(f"{status} {sc.name}: expected {len(sc.spec.expect)}, raised {len(outcome.alerts)}, matched {len(outcome.matched)}, "
         f"missed {len(outcome.missed)}, extra {len(outcome.extra)}" + (f", duplicates {len(outcome.duplicates)}" if outcome.duplicates else ""))
    for exp in outcome.missed:
        echo(f"    missed: {exp.describe()}")
    for alert in outcome.extra:
        echo(f"    extra: {_describe(alert)}")
    for alert in outcome.duplicates:
        echo(f"    duplicate (raised again): {_describe(alert)}")


def summary(outcomes: list[Outcome], dead_lettered: int = 0) -> dict[str, Any]:
    expected = sum(len(o.scenario.spec.expect) for o in outcomes)
    raised = sum(len(o.alerts) for o in outcomes)
    tp = sum(len(o.matched) for o in outcomes)
    return {"scenarios": len(outcomes), "expected": expected, "raised": raised, "true_positives": tp,
            "precision": round(tp / raised, 4) if raised else 1.0, "recall": round(tp / expected, 4) if expected else 1.0,
            "duplicates": sum(len(o.duplicates) for o in outcomes), "dead_lettered": dead_lettered}


def score(scenarios: list[Scenario], alerts: list[Alert], dead: list[DeadLetter], echo: Any) -> int:
    """Print each scenario's outcome and the summary line (JSON); 0 only when everything matched."""
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
    echo(json.dumps(result))
    ok = result["precision"] == 1.0 and result["recall"] == 1.0 and not result["duplicates"] and not dead
    return 0 if ok else 1
