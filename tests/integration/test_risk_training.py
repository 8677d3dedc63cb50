"""HQ's verdicts for the risk models, read from a real (dev) broker: `make train-risk ARGS="--alerts-from
BOOTSTRAP --verdicts-from BOOTSTRAP"` reads sw.alerts.v1 and sw.feedback.v1 to their end and joins them."""

from __future__ import annotations

import pytest

from modeling.risk.train import hq_rows, read_source
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.kafka import make_producer, produce_and_wait
from services.shared.riskfeatures import as_facts, feature_names
from services.shared.serde import encode
from services.shared.topics import ALERTS, FEEDBACK

pytestmark = pytest.mark.integration


def test_alerts_and_verdicts_are_read_from_the_broker_to_their_end_and_joined(broker):
    producer = make_producer(broker)
    returns = dict.fromkeys(feature_names("return"), 1.0)
    for i in range(20):
        alert = Alert(alert_id=f"al-{i}", rule="post_void" if i % 4 else "return_abuse", store_id=f"store-{i % 3}", event_time_ms=1_000 * i,
                      raised_time_ms=1_000 * i + 10)
        alert.facts["amount"] = f"{10 + i}.00 EUR"
        if not i % 4:
            alert.facts.update(as_facts("return", returns))  # a decided return's features, recorded with its alert
        produce_and_wait(producer, ALERTS, alert.store_id, encode(alert))
    produce_and_wait(producer, ALERTS, "store-0", b"\xff\x01 not an alert")
    for i in range(15):
        verdict = Verdict.VERDICT_CONFIRMED if i % 3 else Verdict.VERDICT_FALSE_ALARM
        produce_and_wait(producer, FEEDBACK, f"store-{i % 3}", encode(Feedback(alert_id=f"al-{i}", store_id=f"store-{i % 3}", verdict=verdict,
                                                                                time_ms=1_000 * i + 500)))
    producer.flush(10)

    found, judged = read_source(broker, ALERTS), read_source(broker, FEEDBACK)
    alerts, verdicts = found.alerts, judged.verdicts
    assert sorted(a.alert_id for a in alerts) == sorted(f"al-{i}" for i in range(20)) and found.unreadable == 1
    assert len(verdicts) == 15 and judged.unreadable == 0
    rows = hq_rows(alerts, verdicts)
    assert rows["triage"][1].tolist() == [int(bool(i % 3)) for i in range(15)]
    assert rows["return"][1].tolist() == [int(bool(i % 3)) for i in (0, 4, 8, 12)]
