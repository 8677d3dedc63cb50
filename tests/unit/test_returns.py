"""Return authorization's decision logic without infrastructure: the model or the rules, the store's
policy, the camera's view; a scripted abuse pattern denied with the facts in words, a normal return accepted."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from services.pos.returns import CAMERA_FRESH_MS, camera_view, decide, rules_score
from services.shared.cameras import CAMERA_STATUS_HASH
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType, PosItem
from services.shared.returnpolicy import ReturnPolicy
from services.shared.riskfeatures import CameraView, OriginalSale, PastReturn, ReturnContext, return_features
from services.shared.riskmodel import load_latest
from services.shared.storeconfig import load_store_config
from tests.unit.test_storeconfig import SAMPLE

NOW = 1_764_600_000_000  # a Monday, 14:40 UTC
DAY = 86_400_000


def _refund(**fields) -> PosEvent:
    base = {"event_id": "pos-r1", "type": PosEventType.POS_EVENT_TYPE_REFUND, "store_id": "store-001", "register_id": "reg-1",
            "transaction_id": "T-9001", "employee_id": "emp-042", "event_time_ms": NOW, "currency": "GBP", "total_minor": 18999,
            "items": [PosItem(sku="SKU-1", quantity=1, unit_price_minor=18999)], "tender": "card", "card_token": "tok-card-1"}
    return PosEvent(**{**base, **fields})


def abuser() -> dict[str, float]:
    """Six earlier receipt-less returns with this card in three weeks at four stores; nobody at the counter now."""
    history = [PastReturn(NOW - (i + 1) * 3 * DAY, f"store-00{i % 4 + 1}", 15000, with_receipt=False) for i in range(6)]
    return return_features(ReturnContext(_refund(), "Europe/London", token_history=history, camera=CameraView(False, False)))


def normal() -> dict[str, float]:
    """A first return with its receipt, four days after the sale in the same store, the customer and the goods at the counter."""
    sale = OriginalSale(NOW - 4 * DAY, "store-001", 18999)
    event = _refund(original_transaction_id="T-8001", tender="card")
    return return_features(ReturnContext(event, "Europe/London", original_sale=sale, camera=CameraView(True, True)))


@pytest.fixture(scope="module")
def model(risk_models):
    result = load_latest(risk_models, "return")
    assert result.model is not None, result.error
    return result.model


def test_the_model_denies_a_scripted_abuse_pattern_and_says_why_in_facts(model):
    assessment = decide(abuser(), ReturnPolicy(), model, "")
    assert assessment.outcome == "deny" and assessment.score >= assessment.deny_at and assessment.scored_by == f"model {model.version}"
    texts = " | ".join(r.text for r in assessment.reasons)
    assert any(word in texts for word in ("returns with this card", "different stores", "without a receipt", "no customer", "nobody")), texts
    assert all(r.weight > 0 for r in assessment.reasons)


def test_the_model_accepts_a_normal_return(model):
    assessment = decide(normal(), ReturnPolicy(), model, "")
    assert assessment.outcome == "accept" and assessment.score < assessment.warn_at


def test_without_a_model_the_rules_decide_with_the_warning():
    score, reasons = rules_score(abuser())
    assert score >= 0.6 and {r.feature for r in reasons} >= {"token_returns_30d", "token_stores_30d", "customer_present"}
    denied = decide(abuser(), ReturnPolicy(), None, "no return risk model in models/risk/return")
    assert (denied.outcome, denied.scored_by, denied.warning) == ("deny", "rules", "no return risk model in models/risk/return")
    assert "7 returns with this card or account in 30 days at 4 stores" in [r.text for r in denied.reasons]
    accepted = decide(normal(), ReturnPolicy(), None, "missing")
    assert accepted.outcome == "accept" and accepted.score == 0


def test_the_store_policy_sets_thresholds_and_always_warns():
    values = normal()
    assert decide(values, ReturnPolicy(warn_at=0.0), None, "").outcome == "warn"
    cash = {**values, "tender_cash": 1.0, "amount": 250.0}
    checked = decide(cash, ReturnPolicy(warn_cash_over_minor=20000), None, "")
    assert checked.outcome == "warn" and checked.reasons[-1].feature == "policy:warn_cash_over"
    no_receipt = {**values, "has_receipt": 0.0}
    assert decide(no_receipt, ReturnPolicy(always_warn=["no_receipt"]), None, "").reasons[-1].text == "store policy: returns without a receipt are checked"
    gentle = decide(abuser(), ReturnPolicy(never_deny=True), None, "")
    assert gentle.outcome == "warn" and any(r.feature == "policy:never_deny" for r in gentle.reasons)
    with pytest.raises(ValueError, match="must not be above"):
        ReturnPolicy(warn_at=0.9, deny_at=0.5)
    # Only a deny threshold below the rules' warn threshold: warn never sits above deny.
    low = decide(abuser(), ReturnPolicy(deny_at=0.2, never_deny=True), None, "")
    assert low.warn_at <= low.deny_at == 0.2 and low.outcome == "warn"
    # A register without merchandise zones is not "camera unknown" while it sees the customer.
    seen = {**values, "merchandise_present": -1.0, "camera_unknown": 1.0, "customer_present": 1.0}
    assert decide(seen, ReturnPolicy(always_warn=["camera_unknown"]), None, "").outcome == "accept"


def test_the_counter_camera_says_who_is_there_only_while_fresh():
    config = load_store_config(SAMPLE)
    register = config.stores[0].registers[0]
    status = {"store_id": "store-001", "camera_id": register.camera, "last_frame_ms": NOW, "last_seen_ms": NOW, "fps": 10, "heartbeat": False,
              "zones": {register.customer_zones[0]: {"kind": "counter_customer", "persons": 0, "objects": 0, "at_ms": NOW - 500}}}
    fake = SimpleNamespace(hget=lambda key, field: json.dumps(status).encode() if key == CAMERA_STATUS_HASH and field == register.camera else None)
    view = camera_view(fake, config, "store-001", register.id, NOW + 1000)  # type: ignore[arg-type]
    assert view.customer is False
    status["zones"][register.customer_zones[0]]["persons"] = 1  # type: ignore[index]
    assert camera_view(fake, config, "store-001", register.id, NOW + 1000).customer is True  # type: ignore[arg-type]
    assert camera_view(fake, config, "store-001", register.id, NOW + CAMERA_FRESH_MS + 1).customer is None  # type: ignore[arg-type]
    assert camera_view(fake, config, "store-001", "no-such-register", NOW) == CameraView(None, None)  # type: ignore[arg-type]


def test_a_forest_whose_trees_link_backwards_is_refused_not_walked_forever(model):
    import copy

    from services.shared.riskmodel import RiskModel, _Refused

    forest = copy.deepcopy(model.forest)
    tree = forest.estimators_[0].tree_
    node = next(i for i, child in enumerate(tree.children_left) if child != -1 and i > 0)
    tree.children_left[node] = 0  # a loop back to the root
    with pytest.raises(_Refused, match=f"tree node {node} links to 0"):
        RiskModel("return", model.path, forest, model.metadata)
