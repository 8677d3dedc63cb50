"""Learned risk: the shared features, the synthetic chain, the trained models, the safe loader and
the per-decision reasons. The models are trained once before the tests (tests/conftest.py,
`risk_models`), never inside a test."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from modeling.risk.synthetic import PATTERNS, AlertConfig, SyntheticConfig, generate_alerts, generate_returns
from modeling.risk.train import _read_jsonl, choose_threshold, hq_rows, roc_auc, split_by_time
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
from services.shared.riskfeatures import (
    DAY_MS,
    NOT_APPLICABLE,
    RETURN_FEATURES,
    CameraView,
    EmployeeTransaction,
    OriginalSale,
    PastReturn,
    ReturnContext,
    TriageContext,
    as_facts,
    feature_names,
    from_facts,
    return_features,
    store_confirm_rate,
    triage_features,
)
from services.shared.riskmodel import MODEL_FILE, load_latest, load_version
from services.shared.rulesconfig import RULE_NAMES
from services.shared.serde import to_json_dict

# A Saturday, 14:30 in Berlin (CET, UTC+1).
NOW = int(datetime(2026, 3, 7, 13, 30, tzinfo=UTC).timestamp() * 1000)


def _days_ago(days: float) -> int:
    return NOW - int(days * DAY_MS)


def _return(**fields: object) -> PosEvent:
    event = PosEvent(event_id="r-1", type=PosEventType.POS_EVENT_TYPE_RETURN, store_id="s1", register_id="reg-1", employee_id="e1",
                     event_time_ms=NOW, currency="EUR", total_minor=2500, tender="Cash", card_token="card-A", customer_token="cust-A",
                     original_transaction_id="t-100")
    event.items.extend([PosItem(sku="a", quantity=1, unit_price_minor=500), PosItem(sku="b", quantity=2, unit_price_minor=1000)])
    for name, value in fields.items():
        setattr(event, name, value)
    return event


def _context(event: PosEvent | None = None, **fields: object) -> ReturnContext:
    base = ReturnContext(
        event=event or _return(), timezone="Europe/Berlin",
        token_history=[PastReturn(_days_ago(2), "s1", 1000, True), PastReturn(_days_ago(10), "s2", 2000, False),
                       PastReturn(_days_ago(40), "s3", 3000, False), PastReturn(_days_ago(100), "s4", 4000, False),
                       PastReturn(_days_ago(-1), "s5", 9900, False)],  # after the event: not known yet
        employee_history=[EmployeeTransaction(_days_ago(3), refund=True), EmployeeTransaction(_days_ago(5), refund=False),
                          EmployeeTransaction(_days_ago(6), refund=False), EmployeeTransaction(_days_ago(8), refund=False),
                          EmployeeTransaction(_days_ago(20), refund=True, to_own_token=True),
                          EmployeeTransaction(_days_ago(60), refund=True, to_own_token=True),
                          EmployeeTransaction(_days_ago(95), refund=True, to_own_token=True)],
        employee_tokens=frozenset({"cust-A"}), original_sale=OriginalSale(_days_ago(5), "s2", 5000), camera=CameraView(True, None))
    return ReturnContext(**{**base.__dict__, **fields})


def test_return_features_from_a_hand_made_history():
    values = return_features(_context())
    assert list(values) == feature_names("return")
    assert values == {
        # token: this return plus 1 (7 d), 2 (30 d), 3 (90 d) earlier ones; the one 100 days ago and the future one do not count
        "token_returns_7d": 2.0, "token_returns_30d": 3.0, "token_returns_90d": 4.0, "token_stores_30d": 2.0,
        "token_refunded_30d": 25.0 + 10.0 + 20.0, "token_no_receipt_90d": 2.0,
        # employee: this refund and the one 3 days ago; 3 refunds in 6 transactions of 30 days (this one included); own token 3 times in 90 days
        "employee_refunds_7d": 2.0, "employee_refund_share_30d": 0.5, "employee_own_token_refunds_90d": 3.0, "to_employee_own_token": 1.0,
        "has_receipt": 1.0, "days_since_purchase": 5.0, "same_store_as_sale": 0.0, "amount_vs_original": 0.5,
        "amount": 25.0, "item_count": 3.0, "tender_cash": 1.0, "local_hour": 14.0, "weekend": 1.0,
        "customer_present": 1.0, "merchandise_present": NOT_APPLICABLE, "camera_unknown": 1.0,
    }
    words = {f.name: f.words(values) for f in RETURN_FEATURES}
    assert words["token_returns_30d"] == "3 returns with this card or account in 30 days at 2 stores"
    assert words["token_refunded_30d"] == "55.00 refunded to this card or account in 30 days"
    assert words["employee_refund_share_30d"] == "50% of the employee's transactions in 30 days were refunds"
    assert words["to_employee_own_token"] == "refund to the employee's own card or account"
    assert words["local_hour"] == "at 14:00 store time"
    assert words["merchandise_present"] == ""  # not known: no reason to give


def test_return_features_without_receipt_or_camera_or_history():
    event = _return(original_transaction_id="", tender="card", card_token="card-Z", customer_token="")
    values = return_features(ReturnContext(event=event, timezone="UTC", camera=CameraView(False, False)))
    assert values["has_receipt"] == 0.0 and values["token_no_receipt_90d"] == 1.0 and values["token_returns_90d"] == 1.0
    assert values["days_since_purchase"] == values["same_store_as_sale"] == values["amount_vs_original"] == NOT_APPLICABLE
    assert values["to_employee_own_token"] == 0.0 and values["employee_refund_share_30d"] == 1.0 and values["tender_cash"] == 0.0
    assert (values["customer_present"], values["merchandise_present"], values["camera_unknown"]) == (0.0, 0.0, 0.0)
    words = {f.name: f.words(values) for f in RETURN_FEATURES}
    assert words["customer_present"] == "nobody at the counter per the camera"
    assert words["has_receipt"] == "no receipt (no original transaction)"
    assert words["days_since_purchase"] == "no original sale to date it by"


def test_triage_features_from_alert_facts():
    # Monday 03:15 in New York (EDT since the day before), a loitering alert whose facts name the zone but not its kind.
    loiter = Alert(alert_id="a1", rule="loitering", store_id="s9", event_time_ms=int(datetime(2026, 3, 9, 7, 15, tzinfo=UTC).timestamp() * 1000))
    loiter.facts.update({"zone": "z-9", "dwell_s": "150.5", "limit_s": "60"})
    values = triage_features(loiter, TriageContext("America/New_York", store_confirm_rate(3, 10), {"z-9": "exit"}))
    assert list(values) == feature_names("triage")
    assert [name for name in values if name.startswith("rule_") and values[name]] == ["rule_loitering"]
    assert len([n for n in values if n.startswith("rule_")]) == len(RULE_NAMES)
    assert [name for name in values if name.startswith("zone_") and values[name]] == ["zone_exit"]
    assert (values["dwell_s"], values["anomaly_level"], values["amount"]) == (150.5, NOT_APPLICABLE, NOT_APPLICABLE)
    assert (values["local_hour"], values["weekend"], values["store_confirm_rate"]) == (3.0, 0.0, 0.4)

    refund = Alert(alert_id="a2", rule="refund_without_customer", store_id="s9", event_time_ms=NOW)
    refund.facts.update({"amount": "12.50 EUR", "employee": "e1"})
    values = triage_features(refund, TriageContext("Europe/Berlin"))
    assert values["amount"] == 12.5 and values["zone_counter_customer"] == 1.0 and values["weekend"] == 1.0
    hidden = Alert(alert_id="a3", rule="concealment", store_id="s9", event_time_ms=NOW)
    hidden.facts.update({"zone": "z-1", "anomaly_score": "2.10"})
    values = triage_features(hidden, TriageContext())
    assert values["anomaly_level"] == 2.1 and values["zone_high_value"] == 1.0
    assert store_confirm_rate(0, 0) == 0.5 and store_confirm_rate(1, 1) < 0.6  # one verdict is not a 100 % store


def test_features_recorded_as_alert_facts_round_trip():
    values = return_features(_context())
    facts = as_facts("return", values)
    assert facts["risk.token_returns_30d"] == "3.0"
    assert from_facts("return", facts) == values
    del facts["risk.amount"]
    assert from_facts("return", facts) is None


SMALL = SyntheticConfig(days=30, warmup_days=15, stores=4, customers=1000, sales_per_store_day=30, seed=3)


def test_generator_is_deterministic_by_seed_with_the_abuse_rates_asked_for():
    world, rows = generate_returns(SMALL)
    again_world, again = generate_returns(SMALL)
    assert np.array_equal(rows.X, again.X) and np.array_equal(rows.y, again.y) and rows.patterns == again.patterns
    assert world.store_names == again_world.store_names and world.customer_tokens == again_world.customer_tokens  # Faker seeded too
    _, other = generate_returns(SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert len(other.y) != len(rows.y) or not np.array_equal(other.X, rows.X)

    kinds = world.customer_kind
    assert kinds.count("serial_returner") == round(SMALL.serial_returners * SMALL.customers) == 4
    assert kinds.count("receiptless") == round(SMALL.receiptless_returners * SMALL.customers)
    assert kinds.count("wardrobing") == round(SMALL.wardrobers * SMALL.customers)
    assert kinds.count("heavy") == round(SMALL.heavy_returners * SMALL.customers)
    assert sum(world.dishonest) == round(SMALL.dishonest_employees * SMALL.stores * SMALL.employees_per_store)
    assert set(rows.patterns) == {"", *PATTERNS}
    assert rows.y.tolist() == [int(bool(p)) for p in rows.patterns]
    assert 0.08 < rows.y.mean() < 0.3  # most returns are legitimate
    legit = rows.X[rows.y == 0]
    column = {name: i for i, name in enumerate(rows.names)}
    assert legit[:, column["has_receipt"]].mean() > 0.8
    linked = legit[legit[:, column["same_store_as_sale"]] >= 0]
    assert linked[:, column["same_store_as_sale"]].mean() > 0.8 and np.median(linked[:, column["days_since_purchase"]]) < 7
    wardrobing = rows.X[np.array(rows.patterns) == "wardrobing"]
    assert (wardrobing[:, column["days_since_purchase"]] > SMALL.return_window_days - 7).all()
    own = rows.X[np.array(rows.patterns) == "employee_own_card"]
    assert (own[:, column["to_employee_own_token"]] == 1).all()


def test_synthetic_alerts_carry_the_correlators_facts_and_verdicts():
    rows = generate_alerts(AlertConfig(days=20, stores=3, seed=5))
    assert {a.rule for a in rows.alerts} == set(RULE_NAMES)
    assert np.all(np.diff(rows.time_ms) >= 0) and 0.2 < rows.y.mean() < 0.7
    assert np.array_equal(rows.X, generate_alerts(AlertConfig(days=20, stores=3, seed=5)).X)


def _metadata(models: Path, kind: str) -> dict:
    return json.loads((models / "risk" / kind / "1" / "metadata.json").read_text())


def test_return_model_ranks_the_injected_abusers_above_the_rest(risk_models):
    model = load_latest(risk_models, "return").model
    assert model is not None
    # A chain the model never saw (another seed): other customers, employees and abusers.
    _, rows = generate_returns(SyntheticConfig(**{**SMALL.__dict__, "seed": 11}))
    scores = model.forest.predict_proba(rows.X)[:, 1]
    auc = roc_auc(rows.y, scores)
    # Measured: 0.9865 with the session's quick model (40 trees, 50 days of 5 stores; 0.984 and 0.995 on
    # seeds 12 and 13). The run is deterministic; the margin is for other scikit-learn versions.
    assert auc is not None and auc >= 0.95, auc
    patterns = np.array(rows.patterns)
    legit = scores[patterns == ""].mean()
    for pattern in PATTERNS:
        if (patterns == pattern).any():
            assert scores[patterns == pattern].mean() > legit, pattern
    metadata = _metadata(risk_models, "return")
    assert [t["name"] for t in metadata["thresholds"]] == ["warn", "deny"] and metadata["default_decision"] == "accept"
    assert metadata["metrics"]["synthetic"]["test_roc_auc"] >= 0.9
    by_pattern = metadata["metrics"]["synthetic"]["test_recall_by_pattern"]
    assert set(by_pattern) <= set(PATTERNS) and all(set(r) == {"rows", "warn", "deny"} for r in by_pattern.values())
    assert set(metadata["importances"]["impurity"]) == set(feature_names("return")) == set(metadata["importances"]["permutation"])
    assert metadata["versions"]["scikit-learn"] and metadata["seed"] == 7 and metadata["data"]["synthetic"]["first"]


def test_triage_model_learns_what_hq_confirms(risk_models):
    model = load_latest(risk_models, "triage").model
    assert model is not None
    rows = generate_alerts(AlertConfig(days=40, stores=5, seed=21))
    auc = roc_auc(rows.y, model.forest.predict_proba(rows.X)[:, 1])
    # Measured: 0.727 (0.720 and 0.740 on seeds 22 and 23): verdicts are noisy by design, as HQ's are.
    assert auc is not None and auc >= 0.68, auc


def test_hq_verdicts_are_trained_on_and_choose_thresholds_when_there_are_enough(risk_models):
    triage, returns = _metadata(risk_models, "triage"), _metadata(risk_models, "return")
    assert triage["data"]["hq"]["rows"] > 500 and returns["data"]["hq"]["rows"] == 300
    assert {t["chosen_on"] for t in triage["thresholds"]} == {"hq validation"}
    # 300 judged returns leave fewer than 10 abusive ones in HQ's validation period: the synthetic one decides.
    assert {t["chosen_on"] for t in returns["thresholds"]} == {"synthetic validation"}
    assert returns["metrics"]["hq"]["rows"]["train"] > 0


def _copy_version(risk_models: Path, tmp_path: Path, kind: str = "return", version: str = "1") -> Path:
    target = tmp_path / "models" / "risk" / kind / version
    shutil.copytree(risk_models / "risk" / kind / "1", target)
    return target


class EvilForest(RandomForestClassifier):
    """A forest of a type no risk model has: loading it would run this module's code."""


def test_loader_refuses_a_file_with_untrusted_types_without_loading_it(risk_models, tmp_path, monkeypatch):
    import skops.io as sio

    version = _copy_version(risk_models, tmp_path)
    evil = EvilForest(n_estimators=2, random_state=0).fit(np.random.default_rng(0).random((20, len(RETURN_FEATURES))), [0, 1] * 10)
    sio.dump(evil, version / MODEL_FILE)

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("skops.io.load was called on an untrusted file")

    monkeypatch.setattr(sio, "load", must_not_load)
    result = load_version(version, "return")
    assert result.model is None
    assert "refused without loading" in result.error and "test_risk.EvilForest" in result.error


def test_loader_names_a_missing_file_or_a_file_that_is_not_skops(risk_models, tmp_path):
    version = _copy_version(risk_models, tmp_path)
    (version / MODEL_FILE).write_bytes(b"\x80\x04not a zip at all")
    assert "is not a skops file" in load_version(version, "return").error
    (version / MODEL_FILE).unlink()
    result = load_version(version, "return")
    assert result.model is None and result.error == f"{version / MODEL_FILE} is missing"
    (version / "metadata.json").unlink()
    assert load_version(version, "return").error == f"{version / 'metadata.json'} is missing"
    empty = load_latest(tmp_path / "nowhere", "triage")
    assert empty.model is None and "no triage risk model" in empty.error and "make train-risk" in empty.error


def test_loader_refuses_a_feature_list_that_differs_from_riskfeatures(risk_models, tmp_path):
    version = _copy_version(risk_models, tmp_path)
    metadata = json.loads((version / "metadata.json").read_text())
    metadata["features"][0]["name"] = "token_returns_1d"
    (version / "metadata.json").write_text(json.dumps(metadata))
    result = load_version(version, "return")
    assert result.model is None
    assert "features differ from services/shared/riskfeatures.py (missing token_returns_7d; unknown token_returns_1d)" in result.error
    assert "make train-risk" in result.error
    assert "is a 'return' model, not 'triage'" in load_version(_copy_version(risk_models, tmp_path / "t"), "triage").error


def test_a_newer_version_that_fails_leaves_the_older_one_serving_with_a_warning(risk_models, tmp_path):
    _copy_version(risk_models, tmp_path, version="1")
    broken = _copy_version(risk_models, tmp_path, version="2")
    (broken / MODEL_FILE).unlink()
    result = load_latest(tmp_path / "models", "return")
    assert result.model is not None and result.model.version == 1
    assert result.warnings == (f"{broken / MODEL_FILE} is missing",)


def test_per_decision_reasons_name_the_facts(risk_models):
    model = load_latest(risk_models, "return").model
    assert model is not None
    # A card returning without receipts at five stores this month, for cash.
    event = _return(original_transaction_id="", card_token="card-S", customer_token="", total_minor=18900)
    history = [PastReturn(_days_ago(d), f"s{d % 5 + 1}", 15000, False) for d in (1, 3, 6, 9, 12, 16, 20, 25)]
    serial = return_features(_context(event, token_history=history, employee_tokens=frozenset(), original_sale=None, camera=CameraView(True, True)))
    ordinary = return_features(_context(_return(card_token="card-O", customer_token=""), token_history=[], employee_tokens=frozenset(),
                                        camera=CameraView(True, True), original_sale=OriginalSale(_days_ago(2), "s1", 2500)))
    risky, plain = model.score(serial), model.score(ordinary)
    assert risky.probability > 0.5 > plain.probability and risky.probability > plain.probability + 0.3
    assert risky.decision in ("warn", "deny") and plain.decision == "accept"
    assert risky.reasons and all(r.contribution > 0 for r in risky.reasons)
    worded = {f.name: f for f in RETURN_FEATURES}
    for reason in risky.reasons:
        assert reason.text == worded[reason.feature].words(serial) and reason.value == serial[reason.feature]
    assert any(r.feature.startswith("token_") for r in risky.reasons)
    texts = " / ".join(r.text for r in risky.reasons)
    assert any(fact in texts for fact in ("9 returns with this card or account in 30 days at 5 stores", "9 returns without a receipt",
                                          "1389.00 refunded", "returns at 5 different stores")), texts
    # The reasons come from an exact decomposition of this decision's probability.
    probability, contributions = model.contributions(serial)
    assert probability == pytest.approx(model.base_rate + contributions.sum(), abs=1e-9)
    forest_p = model.forest.predict_proba(np.array([[serial[n] for n in feature_names("return")]]))[0, 1]
    assert probability == pytest.approx(forest_p, abs=1e-9) and risky.probability == round(forest_p, 4)


def test_hq_rows_join_alerts_with_their_latest_verdict(tmp_path):
    first = Alert(alert_id="a1", rule="post_void", store_id="s1", event_time_ms=1_000, raised_time_ms=1_000)
    first.facts["amount"] = "80.00 EUR"
    second = Alert(alert_id="a2", rule="return_abuse", store_id="s1", event_time_ms=5_000, raised_time_ms=5_000)
    second.facts.update(as_facts("return", return_features(_context())))
    unjudged = Alert(alert_id="a3", rule="loitering", store_id="s2", event_time_ms=6_000)
    verdicts = [Feedback(alert_id="a1", store_id="s1", verdict=Verdict.VERDICT_CONFIRMED, time_ms=2_000),
                Feedback(alert_id="a2", store_id="s1", verdict=Verdict.VERDICT_FALSE_ALARM, time_ms=6_000),
                Feedback(alert_id="a2", store_id="s1", verdict=Verdict.VERDICT_CONFIRMED, time_ms=7_000),  # changed: the latest counts
                Feedback(alert_id="a1", store_id="s1", verdict=Verdict.VERDICT_ACKNOWLEDGED, time_ms=8_000)]  # no verdict
    # A return decided at the till, recorded with its features (the api's decision record, as JSON), and judged by HQ.
    features = return_features(_context())
    decided = {"decision_id": "rd-1", "event_id": "r-1", "store_id": "s1", "decided_time_ms": "9000", "features": {**features, "amount": 99.0}}
    undecided = {"decision_id": "rd-2", "decided_time_ms": "9500", "features": {"amount": 1.0}}  # features missing: no row
    verdicts += [Feedback(alert_id="rd-1", store_id="s1", verdict=Verdict.VERDICT_FALSE_ALARM, time_ms=9_900),
                 Feedback(alert_id="rd-2", store_id="s1", verdict=Verdict.VERDICT_CONFIRMED, time_ms=9_900)]
    export = tmp_path / "hq.jsonl"
    lines = [json.dumps(to_json_dict(m)) for m in (first, second, unjudged, *verdicts)] + [json.dumps(decided), json.dumps(undecided)]
    export.write_text("\n".join([*lines, "{not json", "[1, 2]"]) + "\n")
    records = _read_jsonl(export)
    assert [a.alert_id for a in records.alerts] == ["a1", "a2", "a3"] and len(records.verdicts) == 6 and records.unreadable == 2
    assert [d.decision_id for d in records.decisions] == ["rd-1", "rd-2"] and records.decisions[0].time_ms == 9_000
    rows = hq_rows(records.alerts, records.verdicts, decisions=records.decisions)
    X, y, times = rows["triage"]
    assert y.tolist() == [1, 1] and times.tolist() == [1_000, 5_000]
    rate = feature_names("triage").index("store_confirm_rate")
    # a1's verdict (2 s) was known when a2 was raised (5 s); nothing was known before a1.
    assert X[:, rate].tolist() == [store_confirm_rate(0, 0), store_confirm_rate(1, 1)]
    X, y, times = rows["return"]
    assert y.tolist() == [1, 0] and times.tolist() == [5_000, 9_000]
    assert X[0].tolist() == list(features.values()) and X[1].tolist() == list({**features, "amount": 99.0}.values())


def test_thresholds_and_the_time_split():
    y = np.array([1] * 12 + [0] * 3 + [1] * 3 + [0] * 30)
    scores = np.linspace(1, 0, len(y))
    threshold = choose_threshold(y, scores, 0.8)
    assert threshold == pytest.approx(scores[17], abs=1e-4)  # the top 18 hold 15 abusers: 0.83
    assert choose_threshold(y, scores, 1.0) == pytest.approx(scores[11], abs=1e-4)
    assert choose_threshold(np.zeros(20, dtype=int), np.linspace(1, 0, 20), 0.5) is None
    times = np.random.default_rng(0).permutation(np.arange(20) * 1000)
    train, validation, test = split_by_time(times)
    assert times[train].max() < times[validation].min() <= times[validation].max() < times[test].min()
    assert (len(train), len(validation), len(test)) == (14, 3, 3)
