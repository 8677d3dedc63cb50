"""The incident ledger on a real redis-server folds as the pure fold does, once per alert however
often it is replayed, and reads only the incidents an alert could join."""

import random

import pytest
import redis

from services.shared.contracts.alert_pb2 import Alert, EvidenceRef, Severity
from services.shared.incidents import IncidentLedger, fold_all

pytestmark = pytest.mark.integration

T0 = 1_780_000_000_000
RULES = ["loitering", "concealment", "after_hours", "refund_without_customer", "post_void"]


def _stream(seed: int, count: int) -> list[Alert]:
    rng = random.Random(seed)
    alerts = []
    for i in range(count):
        t = T0 + i * rng.randint(5_000, 120_000)
        camera, register = f"cam-{rng.randint(1, 4)}", rng.choice(["", "reg-1", "reg-2"])
        alert = Alert(alert_id=f"al-{seed}-{i}", rule=rng.choice(RULES), severity=rng.randint(1, 4), store_id=rng.choice(["s-1", "s-2"]),  # type: ignore[arg-type]
                      camera_id=camera, register_id=register, event_time_ms=t, explanation=f"#{i}")
        alert.facts["track"] = str(rng.randint(1, 6))
        alert.evidence.append(EvidenceRef(kind="frames", ref="1-9", camera_id=camera, time_ms=t - rng.randint(0, 90_000)))
        alerts.append(alert)
    return alerts


def test_the_ledger_folds_as_the_pure_fold_and_once_per_alert(redis_url):
    client = redis.Redis.from_url(redis_url)
    alerts = _stream(7, 400)
    expected = {(i.incident_id, tuple(r.alert_id for r in i.reasons), i.severity) for i in fold_all(alerts)}
    ledger = IncidentLedger(client, "test:inc:", keep_ms=86_400_000)
    for alert in alerts + alerts[::3]:  # a replay of every third alert changes nothing
        ledger.fold(alert)
    got = {i.incident_id: i for i in (ledger.incident_of(a.alert_id) for a in alerts) if i is not None}
    folded = {(i.incident_id, tuple(r.alert_id for r in i.reasons), i.severity) for i in got.values()}
    assert folded == expected and len(expected) > 20
    again = ledger.fold(alerts[5])
    assert not again.added and again.incident.incident_id == ledger.incident_of(alerts[5].alert_id).incident_id  # type: ignore[union-attr]


def test_a_store_with_thousands_of_open_incidents_reads_only_those_an_alert_could_join(redis_url):
    client = redis.Redis.from_url(redis_url)
    ledger = IncidentLedger(client, "test:busy:", keep_ms=86_400_000)
    for i in range(3000):  # a burst: each at a register of its own, all at once
        ledger.fold(Alert(alert_id=f"al-{i}", rule="post_void", severity=Severity.SEVERITY_MEDIUM, store_id="s-1", register_id=f"reg-{i}", event_time_ms=T0))
    joined = ledger.fold(Alert(alert_id="al-late", rule="no_sale_rate", severity=Severity.SEVERITY_MEDIUM, store_id="s-1", register_id="reg-42",
                               event_time_ms=T0 + 60_000))
    assert joined.added and not joined.opening and [r.alert_id for r in joined.incident.reasons] == ["al-42", "al-late"]
    assert client.zcard("test:busy:open:s-1:register:reg-42") == 1
