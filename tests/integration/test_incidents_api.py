"""Incidents in the HQ api over a real broker and Redis: two alerts of one situation are one incident
with two reasons, whatever the replay or rebuild; one verdict on it is one Feedback per reason with
its rule; store managers see only their stores' incidents; the live feed announces incident changes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from itertools import pairwise

import httpx
import pytest
import redis

from services.notifier.outbox import Job, Outbox
from services.shared import topics
from services.shared.contracts.alert_pb2 import Severity
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.incidents import incident_id
from tests.conftest import BASE_ENV, ROOT, consume_all, wait_for
from tests.integration.test_hq_api import client, hq, make_alert, publish_alerts, wait_listed, write_evidence

pytestmark = pytest.mark.integration
__all__ = ["hq"]  # the fixture, imported for its name


def one_refund(prefix: str, store_id: str = "store-001", minutes_ago: float = 2.0):
    """The two refund rules on one refund at one till, seconds apart: one situation."""
    return (make_alert(f"{prefix}-cust", store_id, minutes_ago, rule="refund_without_customer", severity=Severity.SEVERITY_HIGH),
            make_alert(f"{prefix}-merch", store_id, minutes_ago - 0.05, rule="refund_without_merchandise", severity=Severity.SEVERITY_MEDIUM))


def wait_incidents(api: httpx.Client, count: int, **params) -> list[dict]:
    def listed() -> list[dict]:
        response = api.get("/v1/incidents", params=params)
        assert response.status_code == 200, response.text
        return response.json()["incidents"]

    return wait_for(lambda: len(items := listed()) >= count and items, 30, f"{count} incidents listed")


def test_two_alerts_of_one_refund_are_one_incident_through_replays_rebuilds_and_roles(hq):
    first, second = one_refund("al-a")
    other = make_alert("al-b", "store-002", 1.0)
    publish_alerts(hq.broker, [first, second, other])
    write_evidence(hq.evidence, first)
    outbox = Outbox(redis.Redis.from_url(hq.redis_url), keep_ms=3_600_000)
    outbox.enqueue(first.alert_id, "officer", [("officer/phone", "apprise")], 1_000, 0, 5, 300_000, 60_000, "route all, level 1")
    job = outbox.claim("officer/phone", 1_000, 20_000)
    assert isinstance(job, Job)
    outbox.complete(job, 1_400, {"n": 1, "outcome": "delivered", "ms": 30}, "sent via ntfy")
    analyst = client(hq, "hq")
    wait_listed(analyst, 3)
    listed = wait_incidents(analyst, 2)
    time.sleep(1)
    listed = analyst.get("/v1/incidents").json()["incidents"]
    expected_id = incident_id("store-001", first.alert_id)
    assert [i["incident_id"] for i in listed] == [incident_id("store-002", "al-b"), expected_id]  # newest first
    mine = listed[1]
    assert mine["rules"] == ["refund_without_customer", "refund_without_merchandise"] and mine["reason_count"] == 2
    assert (mine["severity"], mine["status"], mine["store_id"], mine["opening_alert_id"]) == ("critical", "new", "store-001", first.alert_id)
    assert mine["camera_ids"] == ["cam-counter-1"] and mine["register_ids"] == ["reg-1"] and mine["store_name"]
    assert analyst.get(f"/v1/alerts/{second.alert_id}").json()["incident_id"] == expected_id
    assert {a["alert_id"]: a["incident_id"] for a in analyst.get("/v1/alerts").json()["alerts"]}[first.alert_id] == expected_id

    # The incident's page: both reasons with their alerts, the opening alert's evidence and notifications.
    detail = analyst.get(f"/v1/incidents/{expected_id}").json()
    assert [(r["alert_id"], r["rule"], r["severity"], r["alert"]["rule"], r["status"]) for r in detail["reasons"]] == [
        (first.alert_id, "refund_without_customer", "high", "refund_without_customer", "new"),
        (second.alert_id, "refund_without_merchandise", "medium", "refund_without_merchandise", "new")]
    assert detail["evidence_package"]["snapshot_url"] == f"/v1/alerts/{first.alert_id}/evidence/snapshot.jpg"
    assert analyst.get(detail["evidence_package"]["snapshot_url"]).status_code == 200
    assert detail["pos_events"][0]["event_id"] == f"pos-{first.alert_id}"
    [push] = detail["deliveries"]
    assert (push["recipient"], push["status"]) == ("officer", "delivered") and detail["history"] == []

    # Filters like the alerts list.
    def ids(**params) -> list[str]:
        response = analyst.get("/v1/incidents", params=params)
        assert response.status_code == 200, response.text
        return [i["incident_id"] for i in response.json()["incidents"]]

    assert ids(rule="refund_without_merchandise") == [expected_id]
    assert ids(store_id="store-002") == [incident_id("store-002", "al-b")] and ids(region="north") == [incident_id("store-002", "al-b")]
    assert ids(severity="critical") == [expected_id] and ids(severity="high") == [incident_id("store-002", "al-b")]
    assert ids(status="new") == ids() and ids(status="confirmed") == []
    assert ids(since_ms=other.event_time_ms + 1) == [] and ids(until_ms=first.event_time_ms) == [expected_id]
    page = analyst.get("/v1/incidents", params={"limit": 1}).json()
    assert len(page["incidents"]) == 1 and page["next_cursor"]
    rest = analyst.get("/v1/incidents", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [i["incident_id"] for i in rest["incidents"]] == [expected_id]
    assert analyst.get("/v1/incidents", params={"rule": "no_such_rule"}).status_code == 422
    assert analyst.get("/v1/incidents", params={"cursor": "garbage!"}).status_code == 400
    assert analyst.get("/v1/incidents/not-an-incident").status_code == 422
    assert analyst.get(f"/v1/incidents/in-{'0' * 24}").status_code == 404

    # A store manager sees their stores' incidents only; another store's is "not found", to read or judge.
    manager, manager2, officer = client(hq, "manager"), client(hq, "manager2"), client(hq, "officer")
    other_id = incident_id("store-002", "al-b")
    assert [i["incident_id"] for i in manager.get("/v1/incidents").json()["incidents"]] == [expected_id]
    assert [i["incident_id"] for i in manager2.get("/v1/incidents").json()["incidents"]] == [other_id]
    assert manager.get(f"/v1/incidents/{other_id}").status_code == 404
    assert manager.post(f"/v1/incidents/{other_id}/verdict", json={"verdict": "confirmed"}).status_code == 404
    assert manager.get("/v1/incidents", params={"store_id": "store-002"}).status_code == 404
    assert officer.get(f"/v1/incidents/{other_id}").status_code == 404
    assert manager.get(f"/v1/incidents/{expected_id}").status_code == 200

    # A replay of the topic (the alerts again) keeps one incident with the same id and two reasons.
    publish_alerts(hq.broker, [first, second, other, make_alert("al-marker", "store-002", 30)])
    wait_listed(analyst, 4)
    time.sleep(1)
    again = {i["incident_id"]: i for i in analyst.get("/v1/incidents").json()["incidents"]}
    assert set(again) == {expected_id, other_id, incident_id("store-002", "al-marker")}
    assert [r["alert_id"] for r in again[expected_id]["reasons"]] == [first.alert_id, second.alert_id]
    stats = analyst.get("/v1/stats", params={"days": 2}).json()
    assert stats["totals"] == {"alerts": 4, "incidents": 3}
    by_store = {row["store_id"]: row for row in stats["by_store"]}
    assert (by_store["store-001"]["incidents"], by_store["store-001"]["alerts"]) == (1, 2)
    assert {row["rule"]: row["incidents"] for row in stats["by_rule"]} == {"refund_without_customer": 3, "refund_without_merchandise": 1}

    # Redis loses the alert store and its incidents: `rebuild` folds the topic again into the same incidents.
    store = redis.Redis.from_url(hq.redis_url)
    for pattern in ("sw:alerts*", "sw:stats:*", "sw:incidents*"):
        for key in store.scan_iter(pattern):
            store.delete(key)
    assert analyst.get("/v1/incidents").json()["incidents"] == []
    before = {k: v for k, v in again.items()}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "services.api", "rebuild"], cwd=ROOT, env={**BASE_ENV, **hq.env}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        rebuilt = {i["incident_id"]: i for i in analyst.get("/v1/incidents").json()["incidents"]}
        assert rebuilt == before
        assert analyst.get("/v1/stats", params={"days": 2}).json()["totals"] == {"alerts": 4, "incidents": 3}


def test_one_verdict_on_the_incident_is_one_feedback_per_reason_with_its_rule(hq):
    first, second = one_refund("al-v")
    publish_alerts(hq.broker, [first, second])
    analyst, officer = client(hq, "hq"), client(hq, "officer")
    the_id = incident_id("store-001", first.alert_id)
    wait_for(lambda: [i["reason_count"] for i in analyst.get("/v1/incidents").json()["incidents"]] == [2], 30, "the incident with both reasons")

    # An officer acknowledges; confirming and dismissing are for store managers and HQ.
    assert officer.post(f"/v1/incidents/{the_id}/verdict", json={"verdict": "confirmed"}).status_code == 403
    acked = officer.post(f"/v1/incidents/{the_id}/verdict", json={"verdict": "acknowledged", "note": "on my way"})
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
    for body in ({"verdict": "maybe"}, {"verdict": "confirmed", "note": "x" * 1001}, {"verdict": "confirmed", "extra": 1}):
        assert analyst.post(f"/v1/incidents/{the_id}/verdict", json=body).status_code == 422

    confirmed = analyst.post(f"/v1/incidents/{the_id}/verdict", json={"verdict": "confirmed", "note": "seen on the clip"})
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed"
    messages = consume_all(hq.broker, topics.FEEDBACK, expect=4)
    feedbacks = [Feedback.FromString(m.value()) for m in messages]
    assert all(m.key() == b"store-001" for m in messages)
    acks, confirms = feedbacks[:2], feedbacks[2:]
    assert {(f.alert_id, f.rule, f.verdict, f.user) for f in acks} == {
        (first.alert_id, "refund_without_customer", Verdict.VERDICT_ACKNOWLEDGED, "officer"),
        (second.alert_id, "refund_without_merchandise", Verdict.VERDICT_ACKNOWLEDGED, "officer")}
    assert {(f.alert_id, f.rule, f.verdict, f.user, f.comment) for f in confirms} == {
        (first.alert_id, "refund_without_customer", Verdict.VERDICT_CONFIRMED, "hq", "seen on the clip"),
        (second.alert_id, "refund_without_merchandise", Verdict.VERDICT_CONFIRMED, "hq", "seen on the clip")}
    assert len({f.time_ms for f in confirms}) == 1  # one verdict, given once

    # Each alert has the verdict under its own rule: per-rule precision counts both.
    time.sleep(2)  # the api reads its own verdicts back from the topic: kept once
    for alert in (first, second):
        view = analyst.get(f"/v1/alerts/{alert.alert_id}").json()
        assert view["status"] == "confirmed" and [h["verdict"] for h in view["history"]] == ["acknowledged", "confirmed"]
    stats = analyst.get("/v1/stats", params={"days": 2}).json()
    assert {r["rule"]: (r["confirmed"], r["precision"]) for r in stats["by_rule"]} == {
        "refund_without_customer": (1, 1.0), "refund_without_merchandise": (1, 1.0)}
    assert stats["totals"] == {"alerts": 2, "incidents": 1}
    detail = analyst.get(f"/v1/incidents/{the_id}").json()
    assert [(h["verdict"], h["user"], sorted(h["alert_ids"])) for h in detail["history"]] == [
        ("acknowledged", "officer", sorted([first.alert_id, second.alert_id])), ("confirmed", "hq", sorted([first.alert_id, second.alert_id]))]
    assert [r["status"] for r in detail["reasons"]] == ["confirmed", "confirmed"]
    assert analyst.get("/v1/incidents", params={"status": "confirmed"}).json()["incidents"][0]["incident_id"] == the_id
    assert analyst.get("/v1/incidents", params={"status": "new"}).json()["incidents"] == []

    # A verdict on one of its alerts alone (an older client of the alert routes): the incident follows the newest.
    assert analyst.post(f"/v1/alerts/{second.alert_id}/verdict", json={"verdict": "false_alarm"}).status_code == 200
    assert analyst.get(f"/v1/incidents/{the_id}").json()["status"] == "dismissed"
    assert [i["incident_id"] for i in analyst.get("/v1/incidents", params={"status": "dismissed"}).json()["incidents"]] == [the_id]

    admin = client(hq, "admin")
    verdicts = [e for e in admin.get("/v1/audit", params={"action": "verdict"}).json()["entries"] if the_id in e["detail"]]
    assert sorted(e["alert_id"] for e in verdicts) == sorted([first.alert_id, second.alert_id] * 2)


def test_the_live_feed_announces_a_new_incident_and_the_reason_that_raised_it(hq):
    analyst, manager2 = client(hq, "hq"), client(hq, "manager2")
    received: dict[str, list[str]] = {"hq": [], "manager2": []}

    def listen(name: str, api: httpx.Client) -> None:
        try:
            with api.stream("GET", "/v1/alerts/stream", timeout=httpx.Timeout(30, read=30)) as response:
                for line in response.iter_lines():
                    received[name].append(line)
                    if '"change": "escalated"' in line:
                        return
        except httpx.RemoteProtocolError:
            pass

    threads = [threading.Thread(target=listen, args=(n, c), daemon=True) for n, c in (("hq", analyst), ("manager2", manager2))]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(": connected" in lines for lines in received.values()), 15, "both streams connected")
    first, second = one_refund("al-l")
    publish_alerts(hq.broker, [first])
    wait_for(lambda: any('"change": "opened"' in line for line in received["hq"]), 30, "the new incident on the analyst's stream")
    publish_alerts(hq.broker, [second])
    threads[0].join(30)
    events = [line for line in received["hq"] if line.startswith(("event:", "data:"))]
    incident_events = [data for kind, data in pairwise(events) if kind == "event: incident"]
    assert len(incident_events) == 2, events
    assert '"severity": "high"' in incident_events[0] and '"change": "opened"' in incident_events[0]
    assert '"severity": "critical"' in incident_events[1] and '"refund_without_merchandise"' in incident_events[1]
    assert "event: alert" in received["hq"]  # raw alerts still stream for the clients that want them
    assert not any("al-l" in line for line in received["manager2"])  # another store's manager never sees it
