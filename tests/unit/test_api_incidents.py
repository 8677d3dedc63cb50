"""The HQ api's incident index, its pure parts: filters, the merged verdict history, live changes."""

from __future__ import annotations

from services.api.incidents import IncidentFilter, change_of, merged_history
from services.shared.contracts.alert_pb2 import Severity
from services.shared.incidents import Folded, Incident, Reason

VIEW = {"incident_id": "in-1", "store_id": "store-001", "rules": ["after_hours", "loitering"], "severity": "critical", "status": "new",
        "start_ms": 1_000, "end_ms": 5_000}


def test_filter_matches_any_reasons_rule_and_an_overlapping_time_range():
    assert IncidentFilter().matches(VIEW)
    assert IncidentFilter(stores=frozenset({"store-001"}), rule="loitering", severity="critical", status="new").matches(VIEW)
    assert not IncidentFilter(stores=frozenset({"store-002"})).matches(VIEW)
    assert not IncidentFilter(rule="post_void").matches(VIEW)
    assert not IncidentFilter(severity="high").matches(VIEW)
    assert not IncidentFilter(status="confirmed").matches(VIEW)
    # The span [1000, 5000] overlaps a range that holds either end or lies inside it.
    assert IncidentFilter(since_ms=4_000).matches(VIEW) and IncidentFilter(until_ms=1_000).matches(VIEW)
    assert IncidentFilter(since_ms=2_000, until_ms=3_000).matches(VIEW)
    assert not IncidentFilter(since_ms=5_001).matches(VIEW) and not IncidentFilter(until_ms=999).matches(VIEW)


def test_one_verdict_on_the_incident_is_one_history_entry_naming_its_alerts():
    on_incident = {"verdict": "confirmed", "user": "hq", "time_ms": 20, "note": "seen"}
    ack = {"verdict": "acknowledged", "user": "officer", "time_ms": 10, "note": ""}
    history = merged_history({"al-1": [ack, on_incident], "al-2": [dict(on_incident)]})
    assert [(e["verdict"], e["alert_ids"]) for e in history] == [("acknowledged", ["al-1"]), ("confirmed", ["al-1", "al-2"])]
    assert merged_history({}) == []


def test_live_change_names_what_happened_to_the_incident():
    incident = Incident("in-1", "store-001", Severity.SEVERITY_HIGH, 0, 1, [Reason("al-1", "after_hours", Severity.SEVERITY_HIGH, 1, "")])
    assert change_of(Folded(incident, opening=True, added=True, escalated=False)) == "opened"
    assert change_of(Folded(incident, opening=False, added=True, escalated=True)) == "escalated"
    assert change_of(Folded(incident, opening=False, added=True, escalated=False)) == "reason"
