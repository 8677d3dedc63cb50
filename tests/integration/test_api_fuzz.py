"""Hostile input against both published OpenAPI documents: schemathesis generates requests (valid and
invalid) for every operation of the HQ api (signed in as an admin) and of the store-facing pos
service (with a store's POS key), and no answer may be a 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.shared.incidents import incident_id
from tests.integration.pos_files import write_pos_keys, write_pos_secrets
from tests.integration.test_hq_api import client, hq, make_alert, publish_alerts, wait_listed, write_evidence

pytestmark = pytest.mark.integration
__all__ = ["hq"]  # the fixture, imported for its name

EXAMPLES_PER_OPERATION = int(os.environ.get("SW_FUZZ_EXAMPLES", "40"))


def run_schemathesis(service, headers: list[str], report: Path, config: Path | None = None) -> tuple[int, str, list[dict]]:
    """One schemathesis run over every operation of a service (its document from the health port,
    its requests to the public one); its exit code, output and report events."""
    argv = [sys.executable, "-m", "schemathesis.cli", *(["--config-file", str(config)] if config else []),
            "run", f"{service.health}/openapi.json", "--url", service.http, "--checks", "not_a_server_error",
            "--max-examples", str(EXAMPLES_PER_OPERATION), "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "20261201",
            "--generation-database", "none", "--request-timeout", "20", "--no-color", *[arg for header in headers for arg in ("-H", header)],
            # The live feed never ends by design, and signing out would end the fuzzer's own session.
            "--exclude-path", "/v1/alerts/stream", "--exclude-path", "/v1/auth/logout",
            "--report", "ndjson", "--report-dir", str(report)]
    done = subprocess.run(argv, cwd=report.parent, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    print(output[-2500:])
    events = [json.loads(line) for path in report.glob("*.ndjson") for line in path.read_text().splitlines() if line.strip()]
    return done.returncode, output, events


def test_no_request_to_the_hq_api_gets_a_server_error(hq, tmp_path: Path):
    admin = client(hq, "admin")
    alert = make_alert("al-fuzz", "store-001", 3)
    publish_alerts(hq.broker, [alert])
    write_evidence(hq.evidence, alert)
    wait_listed(admin, 1)
    token = admin.headers["Authorization"].split()[1]
    service = type("Service", (), {"http": hq.url, "health": hq.health})
    schema = httpx.get(f"{hq.health}/openapi.json").json()
    assert sum(len(methods) for methods in schema["paths"].values()) >= 20
    assert {"/v1/incidents", "/v1/incidents/{incident_id}", "/v1/incidents/{incident_id}/verdict"} <= set(schema["paths"])
    assert not any(path.startswith("/v1/pos/") for path in schema["paths"])
    headers = [f"Authorization: Bearer {token}"]

    # First any identifiers at all (hostile ones included), then a real alert's and its incident's, so
    # the evidence, export, incident and verdict routes are fuzzed past their "not found" too.
    code, output, events = run_schemathesis(service, headers, tmp_path / "any-ids")
    assert events and code == 0, f"schemathesis found server errors:\n{output[-6000:]}"
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.alert_id" = "al-fuzz"\n"path.incident_id" = "{incident_id("store-001", "al-fuzz")}"\n"path.name" = "snapshot.jpg"\n')
    code, output, events = run_schemathesis(service, headers, tmp_path / "real-alert", config)
    assert events and code == 0, f"schemathesis found server errors with a real alert:\n{output[-6000:]}"
    assert "Missing test data" not in output or "/v1/alerts/{alert_id}/export" not in output.split("Missing test data")[1].split("SUMMARY")[0]
    assert "Exception in ASGI application" not in hq.proc.log_text()


def test_no_request_to_the_store_facing_service_gets_a_server_error(broker, redis_url, start_service, tmp_path: Path):
    keys = write_pos_keys(tmp_path / "pos-keys.yaml", {"tills-001": ["store-001"]})
    secrets = write_pos_secrets(tmp_path / "pos-secrets.yaml")
    pos = start_service("pos", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_REDIS_URL": redis_url, "SW_POS_KEYS_FILE": str(tmp_path / "pos-keys.yaml"),
                                "SW_POS_SECRETS_FILE": str(tmp_path / "pos-secrets.yaml"), "SW_POS_SQUARE_NOTIFICATION_URL": secrets["square_url"],
                                # The fuzzer asks far faster than a till: the per-key limits are not what is tested here.
                                "SW_POS_ASSESS_PER_KEY_PER_S": "10000", "SW_POS_EVENTS_PER_KEY_PER_S": "10000"})
    schema = httpx.get(f"{pos.health}/openapi.json").json()
    assert {"/v1/pos/events", "/v1/pos/poslog", "/v1/pos/webhooks/shopify", "/v1/pos/webhooks/square", "/v1/returns/assess"} <= set(schema["paths"])
    code, output, events = run_schemathesis(pos, [f"X-ShrinkWatch-Pos-Key: {keys['tills-001']}"], tmp_path / "pos")
    assert events and code == 0, f"schemathesis found server errors:\n{output[-6000:]}"
    assert "Exception in ASGI application" not in pos.log_text()
