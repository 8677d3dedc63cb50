"""The scenario runner (`make scenarios`) end to end: Apache Kafka, one correlator, the shipped scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BASE_ENV, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _run(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    # The shipped files only: the busy day (on by default) is measured by `make scenarios`, not here.
    proc = subprocess.run([sys.executable, "-m", "devplatform.scenarios", "--busy-day-stores", "0", *args], cwd=ROOT, env=BASE_ENV,
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    try:
        return proc, json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"no JSON summary (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}") from None


def test_the_shipped_scenarios_raise_exactly_the_expected_alerts():
    proc, result = _run(timeout=570)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["scenarios"] == len(list((ROOT / "scenarios").glob("*.json")))
    assert result["duplicates"] == 0 and result["dead_lettered"] == 0
    assert result["incident_precision"] == 1.0 and result["incident_recall"] == 1.0 and result["incident_scenarios"] >= 5


def test_an_expectation_that_cannot_be_met_fails_the_run(tmp_path: Path):
    # A shopper on camera at 2 pm in an open store: no after-hours alert can come.
    scenario = {
        "start": "2026-11-27T14:00:00Z",
        "stores": [{"id": "store-1", "timezone": "Europe/London", "opening_hours": {"open": "08:00", "close": "21:00"},
                    "cameras": [{"id": "cam-floor", "zones": [{"id": "aisle", "kind": "aisle"}]}]}],
        "video": {"cam-floor": [{"t": 0, "until": 6, "persons": [{"track": 1, "zones": ["aisle"]}]}]},
        "expect": [{"rule": "after_hours", "camera": "cam-floor"}],
    }
    (tmp_path / "unmet.json").write_text(json.dumps(scenario))
    proc, result = _run("--dir", str(tmp_path), timeout=240)
    assert proc.returncode != 0
    assert result["expected"] == 1 and result["true_positives"] == 0 and result["recall"] < 1
    assert "FAIL unmet" in proc.stdout and "missed: after_hours" in proc.stdout
