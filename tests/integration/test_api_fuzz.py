"""Hostile input against the whole published OpenAPI: schemathesis generates requests (valid and
invalid) for every operation, signed in as an admin and with a store's POS key, and no answer may be a 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.test_hq_api import client, hq, make_alert, publish_alerts, wait_listed, write_evidence

pytestmark = pytest.mark.integration
__all__ = ["hq"]  # the fixture, imported for its name

EXAMPLES_PER_OPERATION = int(os.environ.get("SW_FUZZ_EXAMPLES", "40"))


def run_schemathesis(hq, token: str, report: Path, config: Path | None = None) -> tuple[int, str, list[dict]]:
    """One schemathesis run over every operation; its exit code, output and report events. It signs
    in as an admin for the HQ routes and carries a store's POS key for the POS gateway's."""
    argv = [sys.executable, "-m", "schemathesis.cli", *(["--config-file", str(config)] if config else []),
            "run", f"{hq.url}/openapi.json", "--checks", "not_a_server_error",
            "--max-examples", str(EXAMPLES_PER_OPERATION), "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "20261201",
            "--generation-database", "none", "--request-timeout", "20", "--no-color", "-H", f"Authorization: Bearer {token}",
            "-H", f"X-ShrinkWatch-Pos-Key: {hq.pos_key}",
            # The live feed never ends by design, and signing out would end the fuzzer's own session.
            "--exclude-path", "/v1/alerts/stream", "--exclude-path", "/v1/auth/logout",
            "--report", "ndjson", "--report-dir", str(report)]
    done = subprocess.run(argv, cwd=report.parent, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    print(output[-2500:])
    events = [json.loads(line) for path in report.glob("*.ndjson") for line in path.read_text().splitlines() if line.strip()]
    return done.returncode, output, events


def test_no_request_gets_a_server_error(hq, tmp_path: Path):
    admin = client(hq, "admin")
    alert = make_alert("al-fuzz", "store-001", 3)
    publish_alerts(hq.broker, [alert])
    write_evidence(hq.evidence, alert)
    wait_listed(admin, 1)
    token = admin.headers["Authorization"].split()[1]
    schema = httpx.get(f"{hq.url}/openapi.json").json()
    assert sum(len(methods) for methods in schema["paths"].values()) >= 21
    assert {"/v1/pos/events", "/v1/pos/poslog", "/v1/pos/webhooks/shopify", "/v1/pos/webhooks/square"} <= set(schema["paths"])

    # First any identifiers at all (hostile ones included), then a real alert's, so the evidence,
    # export and verdict routes are fuzzed past their "not found" too.
    code, output, events = run_schemathesis(hq, token, tmp_path / "any-ids")
    assert events and code == 0, f"schemathesis found server errors:\n{output[-6000:]}"
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.alert_id" = "al-fuzz"\n"path.name" = "snapshot.jpg"\n')
    code, output, events = run_schemathesis(hq, token, tmp_path / "real-alert", config)
    assert events and code == 0, f"schemathesis found server errors with a real alert:\n{output[-6000:]}"
    assert "Missing test data" not in output or "/v1/alerts/{alert_id}/export" not in output.split("Missing test data")[1].split("SUMMARY")[0]
    assert "Exception in ASGI application" not in hq.proc.log_text()
