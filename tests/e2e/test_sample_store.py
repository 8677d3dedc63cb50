"""The sample store through the launcher and every service, as `shrinkwatch demo` runs it, with the
store closed: the refund with nobody at the counter raises its alert, the cashier on camera after
hours raises a critical one; both are one situation (the same counter camera, at the same time), so
one incident with two reasons, paged once. The store config is written for the moment the
test runs (closed for hours either side), so what it expects does not depend on the clock; the
browser test (test_dashboard.py) plays the same clip with the store open."""

import json
from datetime import UTC, datetime

import pytest

from devplatform.demo import SAMPLE_DIR, report, run_demo
from devplatform.expected import store_config_for_the_moment
from devplatform.launcher import ROOT, Platform, free_port, pid_alive

pytestmark = pytest.mark.e2e


def test_fraudulent_refund_and_a_person_after_hours_raise_one_alert_each_in_one_incident_paged_once(tmp_path):
    closed = store_config_for_the_moment(ROOT / "config" / "sample-store.yaml", tmp_path / "store-closed.yaml", store_open=False, now=datetime.now(UTC))
    platform = Platform(run_dir=tmp_path / "run", api_port=free_port(), store_config=closed)
    lines: list[str] = []
    result = run_demo(platform, echo=lines.append)

    assert result.expected is not None and result.expected.after_hours_required and "closed while the clip plays" in "\n".join(lines)
    [after_hours] = [a for a in result.alerts if a["rule"] == "after_hours"]
    assert after_hours["severity"] == "critical" and after_hours["camera_id"] == "cam-counter-1" and after_hours["store_id"] == "store-001"
    assert [after_hours["facts"]["closed_period"]] == list(result.expected.after_hours_required)
    [alert] = [a for a in result.alerts if a["rule"] != "after_hours"]
    assert alert["rule"] == "refund_without_customer"
    assert alert["register_id"] == "reg-1" and alert["store_id"] == "store-001" and alert["camera_id"] == "cam-counter-1"
    assert alert["evidence"][0]["ref"] == "pos-store-001-0003"  # the refund with nobody at the counter
    # The cashier is seen first: the after-hours alert opens the incident, the refund joins it.
    assert alert["incident_id"] == after_hours["incident_id"]
    [delivery] = result.deliveries
    paged = delivery["body"]["alert"]
    assert delivery["alert_id"] == after_hours["alert_id"] and paged["facts"]["incident_id"] == after_hours["incident_id"]
    assert delivery["signature"] == "valid"
    [push] = result.pushes
    assert push["title"].startswith("[CRITICAL] after hours") and push["message"].endswith("/incidents/" + after_hours["incident_id"])
    notifier_log = (tmp_path / "run" / "logs" / "notifier.log").read_text()
    # HQ's webhook, the officer's phone and log channel, once each, for the one incident
    assert notifier_log.count('"msg": "notification delivered"') == 3
    assert '"msg": "alert joined an incident"' in notifier_log
    # The refund's correlation id, from the gateway's answer to the till, in every hop's log: the
    # gateway published it, the correlator raised its alert, the notifier folded it into the incident paged.
    [refund] = [event for event in result.posted if event["event_id"] == "pos-store-001-0003"]
    correlation = refund["correlation_id"]
    assert len(correlation) == 32 and alert["correlation_id"] == correlation
    logs = {service: [json.loads(line) for line in (tmp_path / "run" / "logs" / f"{service}.log").read_text().splitlines() if correlation in line]
            for service in ("pos", "correlator", "notifier")}
    assert {"POS events published"} <= {entry["msg"] for entry in logs["pos"]}
    assert {"refund routed to its camera", "refund at its camera", "refund rule decided", "alert raised"} <= {entry["msg"] for entry in logs["correlator"]}
    [joined] = [entry for entry in logs["notifier"] if entry["msg"] == "alert joined an incident"]
    assert joined["paged_as"] == after_hours["alert_id"]
    assert report(result, echo=lines.append) == []
    # The passer-by walking down the aisle past its counting line: inference's crossing, counted by the
    # recorder in Redis, on the store page's figures.
    assert result.traffic is not None and result.traffic["in_store_now"] is None  # a count line, no door
    [aisle] = result.traffic["lines"]
    assert aisle["line_id"] == "aisle-east" and aisle["out"] >= 1, result.traffic
    # Everything the launcher started is gone.
    assert not (tmp_path / "run" / "runtime.json").exists()
    assert not any(pid_alive(c["pid"]) for c in platform.components.values())
    script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
    assert len(result.posted) == len(script["events"])
