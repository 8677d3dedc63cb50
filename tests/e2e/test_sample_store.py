"""The sample store through the launcher and every service: one alert, for the right refund, once."""

import json

import pytest

from devplatform.demo import SAMPLE_DIR, report, run_demo
from devplatform.launcher import Platform, free_port, pid_alive

pytestmark = pytest.mark.e2e



def test_fraudulent_refund_raises_one_alert_delivered_once(tmp_path):
    platform = Platform(run_dir=tmp_path / "run", api_port=free_port())
    lines: list[str] = []
    result = run_demo(platform, echo=lines.append)

    [alert] = result.alerts
    assert alert["rule"] == "refund_without_customer"
    assert alert["register_id"] == "reg-1" and alert["store_id"] == "store-001" and alert["camera_id"] == "cam-counter-1"
    assert alert["evidence"][0]["ref"] == "pos-store-001-0003"  # the refund with nobody at the counter
    [delivery] = result.deliveries
    assert delivery["alert_id"] == alert["alert_id"] and delivery["body"]["alert"]["alert_id"] == alert["alert_id"]
    assert delivery["signature"] == "valid"
    [push] = result.pushes
    assert push["title"].startswith("[HIGH] refund without customer") and push["message"].endswith(f"/alerts/{alert['alert_id']}")
    notifier_log = (tmp_path / "run" / "logs" / "notifier.log").read_text()
    # HQ's webhook, the officer's phone and log channel, once each
    assert notifier_log.count('"msg": "notification delivered"') == 3
    assert report(result, echo=lines.append) == []
    # Everything the launcher started is gone.
    assert not (tmp_path / "run" / "runtime.json").exists()
    assert not any(pid_alive(c["pid"]) for c in platform.components.values())
    script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
    assert len(result.posted) == len(script["events"])
