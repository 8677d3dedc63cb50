"""The chaos run's pure parts: the till plan, the checker's verdicts, memory growth, and the platform's
replica names; the run itself is `make chaos` (and tests/e2e/test_chaos.py for the short schedule)."""

import json
from collections import Counter

from devplatform.chaos import chain
from devplatform.chaos.check import FIRST_LEVEL, Observed, Page, fault_at, judge, pages_from_records, percentile, traced_pages
from devplatform.chaos.load import FRAUD_KINDS, plan
from devplatform.chaos.monitor import Series, growth
from devplatform.launcher import Platform, service_of
from services.correlator.rules import POST_VOID, REFUND_WITHOUT_CUSTOMER, alert_id
from services.shared.incidents import incident_id


def test_the_plan_rings_sales_throughout_and_each_fraud_kind_in_turn_with_the_correlators_alert_id():
    events = plan(stores=2, duration_s=600, fraud_every_s=30, sale_every_s=8, seed=3)
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)
    frauds = [e for e in events if e.expect_rule]
    # Store 1 from 15 s, store 2 from 30 s, every 30 s: 20 and 19 frauds, each kind in turn.
    assert Counter(e.body["store_id"] for e in frauds) == {"chaos-001": 20, "chaos-002": 19}
    for store in ("chaos-001", "chaos-002"):
        kinds = Counter(e.expect_rule for e in frauds if e.body["store_id"] == store)
        assert set(kinds) == set(FRAUD_KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    for event in frauds:
        assert event.expect_alert_id == alert_id(event.expect_rule, event.body["store_id"], event.body["register_id"], event.event_id)
    refunds = [e for e in frauds if e.expect_rule == REFUND_WITHOUT_CUSTOMER]
    assert refunds and all(e.body["register_id"] == chain.EMPTY_REGISTER and e.body["type"] == "refund" for e in refunds)
    assert len({e.event_id for e in events}) == len(events)
    assert plan(2, 600, 30, 8, seed=3)[5].body == events[5].body


def _entry(event_id: str, rule: str, store: str = "chaos-001", rung_ms: int = 1_000, accepted: bool = True) -> dict:
    return {"body": {"event_id": event_id, "store_id": store}, "expect_rule": rule, "expect_alert_id": alert_id(rule, "reg-1", event_id),
            "rung_ms": rung_ms, "accepted_ms": rung_ms + 50 if accepted else 0, "errors": [] if accepted else ["ConnectError"]}


def _paged(observed: Observed, incident: str, at_ms: int, times: int = 1) -> None:
    for _ in range(times):
        observed.pages += [Page(incident, recipient, contact, at_ms) for recipient, contact in FIRST_LEVEL]


def test_the_checker_counts_delivered_lost_and_repeated_pages_and_names_the_fault_behind_a_repeat():
    ok, joined, unpaged, never = (_entry(f"e{n}", POST_VOID, rung_ms=10_000 * n) for n in range(1, 5))
    refused = _entry("e5", POST_VOID, rung_ms=50_000, accepted=False)
    observed = Observed()
    for entry in (ok, joined, unpaged):
        observed.alert_copies[entry["expect_alert_id"]] += 1
        observed.alert_rules[entry["expect_alert_id"]] = POST_VOID
    observed.alert_copies[ok["expect_alert_id"]] += 1  # a copy on the topic after a correlator kill: harmless, counted
    own = incident_id("chaos-001", ok["expect_alert_id"])
    observed.incident_of = {ok["expect_alert_id"]: own, joined["expect_alert_id"]: own, unpaged["expect_alert_id"]: "in-" + "0" * 24}
    _paged(observed, own, 12_500)
    observed.pages.append(Page(own, "hq", "webhook-sink", 70_000))  # the repeat
    observed.evidence = {ok["expect_alert_id"]: {"status": "complete"}, joined["expect_alert_id"]: {"status": "partial", "missing": ["clip: camera down"]}}
    faults = [{"fault": "kill notifier", "started_ms": 60_000, "healed_ms": 65_000}]
    observed.pos_copies = Counter({"e1": 1, "e2": 2, "e3": 1, "e4": 1})
    result = judge([ok, joined, unpaged, never, refused], observed, faults)
    assert result["expected_alerts"] == 5 and result["delivered"] == 2 and result["lost"] == 3
    observed.dead_lettered = {"e4": "sw.correlator.camera-events.v1.dlq: unexpected ValueError"}
    assert judge([never], observed, faults)["details"]["lost"][0]["why"] == "dead-lettered: sw.correlator.camera-events.v1.dlq: unexpected ValueError"
    observed.dead_lettered = {}
    why = {item["event_id"]: item["why"] for item in result["details"]["lost"]}
    assert why["e3"].startswith("raised, never paged to officer/phone") and why["e4"] == "no alert raised" and why["e5"].startswith("the till's event was never accepted")
    assert result["duplicate_pages"] == 1 and result["details"]["duplicate_pages"][0]["fault"] == "kill notifier"
    assert result["alert_copies_on_topic"] == 1 and result["partial_evidence"] == 1 and result["evidence_not_written"] == 0
    assert result["pos_events"] == {"rung": 5, "accepted": 4, "missing_on_topic": 0, "published_twice": 1}
    assert result["details"]["pos_published_twice"] == {"e2": {"copies": 2, "fault": "none"}}
    # Only the alert that opened its incident has a latency of its own: rung at 10 s, paged at 12.5 s.
    assert result["p99_refund_to_page_s"] == 2.5


def test_a_repeat_long_after_every_fault_is_put_down_to_none():
    faults = [{"fault": "kill api", "started_ms": 0, "healed_ms": 1_000}, {"fault": "poison", "started_ms": 5_000, "healed_ms": 5_000}]
    assert fault_at(faults, 500) == "kill api" and fault_at(faults, 6_000) == "poison" and fault_at(faults, 10_000_000) == "none"
    assert percentile([], 0.99) is None and percentile([1.0, 2.0, 3.0], 0.99) == 3.0 and percentile(list(map(float, range(1, 101))), 0.99) == 99.0


def test_pages_are_read_from_the_webhook_the_phones_and_the_log_contact_but_not_digests():
    incident = "in-" + "ab" * 12
    records = [
        {"kind": "webhook", "received_ms": 5, "body": {"alert": {"facts": {"incident_id": incident}}}},
        {"kind": "ntfy", "received_ms": 6, "topic": "lp-officer", "title": "[HIGH] refund", "message": f"... http://x/incidents/{incident}"},
        {"kind": "ntfy", "received_ms": 7, "topic": "lp-officer", "title": "3 incidents", "message": "digest"},
    ]
    lines = [json.dumps({"ts": "2026-12-07T10:00:00.000Z", "msg": "ALERT refund", "kind": "alert", "recipient": "officer", "url": f"http://x/incidents/{incident}"}),
             json.dumps({"ts": "2026-12-07T10:00:00.000Z", "msg": "ALERT 3 incidents", "kind": "digest", "recipient": "officer", "url": ""}),
             "not json"]
    pages = pages_from_records(records, lines)
    assert {(p.incident_id, p.recipient, p.contact) for p in pages} == {(incident, "hq", "webhook-sink"), (incident, "officer", "phone"), (incident, "officer", "log")}


def test_a_page_is_traced_when_its_webhook_and_alert_carry_the_request_id_of_the_pos_event_behind_it():
    def page(header: str, in_alert: str, kind: str = "pos_event") -> dict:
        return {"kind": "webhook", "correlation_id": header,
                "body": {"alert": {"correlation_id": in_alert, "evidence": [{"kind": "camera_window", "ref": "1-2"}, {"kind": kind, "ref": "fraud-1"}]}}}

    records = [page("fraud-1", "fraud-1"), page("", "fraud-1"), page("fraud-1", ""), page("", "", kind="frames"),
               {"kind": "webhook", "body": {"alerts": []}}, {"kind": "ntfy", "message": "x"}]
    assert traced_pages(records) == {"webhook_pages_of_pos_alerts": 3, "carrying_the_tills_request_id": 1}


def test_memory_growth_is_the_settled_start_against_the_end_and_needs_a_long_enough_series():
    flat = Series("api", 1, [(t, 200.0 + (50.0 if t < 60 else 0.0)) for t in range(0, 600, 5)])
    assert growth(flat) == {"start_mb": 200.0, "end_mb": 200.0, "growth_mb": 0.0, "span_s": 595}
    leaking = Series("notifier", 2, [(t, 100.0 + t / 10) for t in range(0, 600, 5)])
    grown = growth(leaking)
    assert grown is not None and grown["growth_mb"] > 40
    assert growth(Series("short", 3, [(t, 1.0) for t in range(0, 90, 5)])) is None


def test_replicas_get_numbered_names_and_only_scalable_services_scale(tmp_path):
    platform = Platform(run_dir=tmp_path, replicas={"inference": 2, "correlator": 2, "recorder": 3})
    names = platform.service_components()
    assert names == ["correlator", "correlator-2", "inference", "inference-2", "notifier", "recorder", "pos", "api", "ingest"]
    assert service_of("inference-2") == "inference" and service_of("webhook-sink") == "webhook-sink" and service_of("broker-2") == "broker-2"


def test_the_chain_has_an_empty_counter_per_store_and_one_network_camera(tmp_path):
    from services.shared.storeconfig import load_store_config

    path = chain.write_chain(tmp_path / "chain.yaml", tmp_path, stores=3, cameras=3, mjpeg_url="http://127.0.0.1:9/video")
    config = load_store_config(path)
    assert [s.id for s in config.stores] == ["chaos-001", "chaos-002", "chaos-003"]
    first = config.stores[0]
    assert [c.id for c in first.cameras] == ["chaos-001-cam-1", "chaos-001-cam-2", "chaos-001-cam-3", "chaos-001-cam-aisle"]
    assert [c.id for c in config.stores[1].cameras] == ["chaos-002-cam-1", "chaos-002-cam-2", "chaos-002-cam-3"]
    empty = next(r for r in first.registers if r.id == chain.EMPTY_REGISTER)
    assert next(c for c in first.cameras if c.id == empty.camera).source.endswith("counter-empty.mp4")
    assert first.opening_hours is None and config.employee_tokens()[chain.EMPLOYEE] == {chain.EMPLOYEE_CARD}
