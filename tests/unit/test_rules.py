from services.correlator import rules
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType

SETTINGS = rules.RuleSettings(before_ms=5000, after_ms=5000, retention_ms=60_000)
T0 = 1_800_000_000_000


def _refund(event_id="e1", at=T0 + 20_000):
    return PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_REFUND, store_id="s1", register_id="r1",
                    event_time_ms=at, total_minor=1999, currency="GBP", transaction_id="T-1")


def _state_with(presence):
    """presence: list of (seconds after T0, present)."""
    state = rules.new_state()
    for sec, present in presence:
        rules.add_presence(state, T0 + int(sec * 1000), present, "cam-1", SETTINGS)
    return state


def test_presence_in_window():
    samples = [[0, 0], [10, 1], [20, 0]]
    assert rules.presence_in_window(samples, 12, 15) is True  # state in force at the start
    assert rules.presence_in_window(samples, 5, 12) is True  # a change inside the window
    assert rules.presence_in_window(samples, 21, 30) is False
    assert rules.presence_in_window(samples, -10, -1) is None  # before any coverage
    assert rules.presence_in_window([], 0, 10) is None


def test_refund_waits_for_the_camera_to_cover_its_window():
    state = _state_with([(s, False) for s in range(0, 23)])
    rules.add_pending(state, _refund(), received_ms=T0)
    assert rules.decide_ready(state, SETTINGS, now_ms=T0, max_wait_ms=60_000) == []
    for s in range(23, 26):
        rules.add_presence(state, T0 + s * 1000, False, "cam-1", SETTINGS)
    [decision] = rules.decide_ready(state, SETTINGS, now_ms=T0, max_wait_ms=60_000)
    assert decision.customer_present is False
    assert decision.window == (T0 + 15_000, T0 + 25_000)
    assert state["pending"] == []


def test_customer_present_anywhere_in_window_means_no_alert():
    state = _state_with([(s, 17 <= s <= 18) for s in range(0, 30)])
    rules.add_pending(state, _refund(), received_ms=T0)
    [decision] = rules.decide_ready(state, SETTINGS, now_ms=T0, max_wait_ms=60_000)
    assert decision.customer_present is True


def test_silent_camera_is_decided_after_max_wait_as_unverifiable():
    state = rules.new_state()
    rules.add_pending(state, _refund(), received_ms=T0)
    assert rules.decide_ready(state, SETTINGS, now_ms=T0 + 1000, max_wait_ms=60_000) == []
    [decision] = rules.decide_ready(state, SETTINGS, now_ms=T0 + 61_000, max_wait_ms=60_000)
    assert decision.customer_present is None


def test_replayed_pos_event_is_pending_once():
    state = rules.new_state()
    rules.add_pending(state, _refund(), received_ms=T0)
    rules.add_pending(state, _refund(), received_ms=T0 + 5)
    assert len(state["pending"]) == 1


def test_old_samples_are_pruned_but_state_at_cutoff_kept():
    state = _state_with([(s, s == 0) for s in range(0, 200, 10)])
    assert state["samples"][0][0] <= state["watermark"] - SETTINGS.retention_ms
    assert len(state["samples"]) <= SETTINGS.retention_ms // 10_000 + 2


def test_alert_is_deterministic_and_explains_itself():
    decision = rules.Decision(_refund(), False, (T0 + 15_000, T0 + 25_000), "cam-1")
    first = rules.build_alert(decision, ["counter-1-customer"], raised_ms=T0 + 30_000)
    again = rules.build_alert(decision, ["counter-1-customer"], raised_ms=T0 + 99_000)
    assert first.alert_id == again.alert_id == rules.alert_id(rules.RULE_REFUND_WITHOUT_CUSTOMER, "s1", "r1", "e1")
    assert first.rule == "refund_without_customer"
    assert "19.99 GBP" in first.explanation and "counter-1-customer" in first.explanation
    assert rules.alert_id(rules.RULE_REFUND_WITHOUT_CUSTOMER, "s1", "r1", "e2") != first.alert_id
