"""The chaos run's checker: what the ledger says must have happened, against what did.

`judge` is pure (tested without a platform): for every fraud in the ledger, its alert raised (by id),
the incident it belongs to paged once to each first-level recipient and contact, its evidence
complete or partial with a reason; every POS event accepted and on sw.pos.v1 once; every repeat
page named with the fault that was under way (or had just ended) when it came. `collect` reads what
it needs from a finished run: sw.alerts.v1 and sw.pos.v1, the receivers' records, the notifier's
log channel, Redis's incident ledger and the evidence store.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.shared.incidents import incident_id

# Who must be paged for every incident, at once: (recipient, contact), as the run's routing says
# (devplatform/launcher.py `_dev_routing`). The manager is paged only if nobody acknowledges in 10 min.
FIRST_LEVEL = (("officer", "phone"), ("officer", "log"), ("hq", "webhook-sink"))
INCIDENT_ID = re.compile(r"\bin-[0-9a-f]{24}\b")
# A repeat is put down to the fault under way when it came or ended at most this long before it
# (a job leased by a killed notifier is sent again when its lease runs out).
ATTRIBUTION_S = 120.0


@dataclass(frozen=True)
class Page:
    """One notification a receiver took: for which incident, to whom, by which contact, when."""

    incident_id: str
    recipient: str
    contact: str
    received_ms: int


@dataclass
class Observed:
    """What a finished run left behind."""

    alert_copies: Counter[str] = field(default_factory=Counter)  # alert id -> messages on sw.alerts.v1
    alert_rules: dict[str, str] = field(default_factory=dict)
    alert_stores: dict[str, str] = field(default_factory=dict)
    incident_of: dict[str, str] = field(default_factory=dict)  # alert id -> incident id (the notifier's ledger)
    pages: list[Page] = field(default_factory=list)
    evidence: dict[str, dict | None] = field(default_factory=dict)  # alert id -> manifest
    pos_copies: Counter[str] = field(default_factory=Counter)  # event id -> messages on sw.pos.v1
    dead_lettered: dict[str, str] = field(default_factory=dict)  # POS event id -> "<dlq>: <sw-error>"
    undecodable_alerts: int = 0
    correlation: dict[str, int] = field(default_factory=dict)  # traced_pages of the webhook sink's record


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def fault_at(faults: Iterable[dict], at_ms: int) -> str:
    """The fault under way at `at_ms`, or the one that ended last within ATTRIBUTION_S before it."""
    best, best_end = "", -1
    for fault in faults:
        if fault["started_ms"] <= at_ms <= fault["healed_ms"] + ATTRIBUTION_S * 1000 and fault["healed_ms"] > best_end:
            best, best_end = fault["fault"], fault["healed_ms"]
    return best or "none"


def judge(ledger: list[dict], observed: Observed, faults: list[dict]) -> dict[str, Any]:
    """The run's figures; `lost` and `duplicate_pages` name each case."""
    pages_by_key: dict[tuple[str, str, str], list[Page]] = defaultdict(list)
    for page in observed.pages:
        pages_by_key[(page.incident_id, page.recipient, page.contact)].append(page)
    repeats = []
    for (incident, recipient, contact), pages in sorted(pages_by_key.items()):
        for extra in sorted(pages, key=lambda p: p.received_ms)[1:]:
            repeats.append({"incident_id": incident, "recipient": recipient, "contact": contact, "at_ms": extra.received_ms,
                            "fault": fault_at(faults, extra.received_ms)})

    expected = [entry for entry in ledger if entry.get("expect_alert_id")]
    lost, latencies, partial, pending = [], [], [], []
    delivered = 0
    for entry in expected:
        alert = entry["expect_alert_id"]
        where = {"event_id": entry["body"]["event_id"], "rule": entry["expect_rule"], "alert_id": alert, "rung_ms": entry["rung_ms"]}
        if not entry.get("accepted_ms"):
            lost.append({**where, "why": f"the till's event was never accepted ({entry.get('errors', [])[-3:]})"})
            continue
        if observed.alert_copies[alert] == 0:
            dead = observed.dead_lettered.get(entry["body"]["event_id"])
            lost.append({**where, "why": f"dead-lettered: {dead}" if dead else "no alert raised", "fault": fault_at(faults, entry["rung_ms"])})
            continue
        found = observed.incident_of.get(alert)
        if found is None:
            lost.append({**where, "why": "raised, but the notifier never folded it into an incident"})
            continue
        incident = found
        unpaged = [f"{r}/{c}" for r, c in FIRST_LEVEL if not pages_by_key.get((incident, r, c))]
        if unpaged:
            lost.append({**where, "incident_id": incident, "why": f"raised, never paged to {', '.join(unpaged)}"})
            continue
        delivered += 1
        if incident == incident_id(entry["body"]["store_id"], alert):  # it opened the incident: its own page
            first = min(p.received_ms for r, c in FIRST_LEVEL for p in pages_by_key[(incident, r, c)])
            latencies.append((first - entry["rung_ms"]) / 1000)
        manifest = observed.evidence.get(alert)
        status = (manifest or {}).get("status", "none")
        if status == "partial":
            partial.append({"alert_id": alert, "missing": manifest.get("missing", []) if manifest else []})
        elif status != "complete":
            pending.append({"alert_id": alert, "status": status})

    accepted = [entry for entry in ledger if entry.get("accepted_ms")]
    pos_missing = [entry["body"]["event_id"] for entry in accepted if observed.pos_copies[entry["body"]["event_id"]] == 0]
    rung_at = {entry["body"]["event_id"]: entry["rung_ms"] for entry in ledger}
    pos_repeated = {event: {"copies": count, "fault": fault_at(faults, rung_at.get(event, 0))} for event, count in observed.pos_copies.items() if count > 1}
    p99 = percentile(latencies, 0.99)
    return {
        "faults": len(faults),
        "expected_alerts": len(expected),
        "delivered": delivered,
        "lost": len(lost),
        "duplicate_pages": len(repeats),
        "partial_evidence": len(partial),
        "evidence_not_written": len(pending),
        "alerts_raised": len(observed.alert_copies),
        "alert_copies_on_topic": sum(observed.alert_copies.values()) - len(observed.alert_copies),
        "other_alerts": Counter(observed.alert_rules[a] for a in observed.alert_copies if a not in {e["expect_alert_id"] for e in expected}),
        "pos_events": {"rung": len(ledger), "accepted": len(accepted), "missing_on_topic": len(pos_missing), "published_twice": len(pos_repeated)},
        "p99_refund_to_page_s": round(p99, 2) if p99 is not None else None,
        "correlation": observed.correlation,
        "details": {"lost": lost, "duplicate_pages": repeats, "partial_evidence": partial, "evidence_not_written": pending,
                    "pos_missing": pos_missing[:20], "pos_published_twice": dict(list(pos_repeated.items())[:20])},
    }


def traced_pages(sink_records: Iterable[dict]) -> dict[str, int]:
    """How many webhook pages of alerts a POS event raised carry that event's correlation id (the
    tills send their event id as X-Request-Id, so the two are equal when the id went all the way)."""
    pages = carrying = 0
    for record in sink_records:
        alert = (record.get("body") or {}).get("alert") or {} if record.get("kind") == "webhook" else {}
        trigger = next((ref["ref"] for ref in alert.get("evidence", []) if ref.get("kind") == "pos_event"), "")
        if trigger:
            pages += 1
            carrying += record.get("correlation_id") == trigger == alert.get("correlation_id")
    return {"webhook_pages_of_pos_alerts": pages, "carrying_the_tills_request_id": carrying}


def pages_from_records(sink_records: Iterable[dict], notifier_log_lines: Iterable[str]) -> list[Page]:
    """Pages from the webhook sink's record (HQ's webhook, the phones' ntfy topics) and the officer's
    log contact (the notifier's own log lines); digests and anything naming no incident are left out."""
    pages = []
    for record in sink_records:
        if record.get("kind") == "webhook":
            body = record.get("body") or {}
            found = (body.get("alert") or {}).get("facts", {}).get("incident_id", "")
            if found:
                pages.append(Page(found, "hq", "webhook-sink", int(record["received_ms"])))
        elif record.get("kind") == "ntfy":
            found = INCIDENT_ID.search(record.get("message", "") + " " + record.get("title", ""))
            recipient = str(record.get("topic", "")).removeprefix("lp-")
            if found:
                pages.append(Page(found.group(0), recipient, "phone", int(record["received_ms"])))
    for line in notifier_log_lines:
        if '"ALERT ' not in line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        found = INCIDENT_ID.search(f"{entry.get('url', '')} {entry.get('msg', '')}")
        if found and entry.get("kind") == "alert":
            pages.append(Page(found.group(0), str(entry.get("recipient", "")), "log", _iso_ms(entry.get("ts", ""))))
    return pages


def _iso_ms(stamp: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
