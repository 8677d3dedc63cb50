from services.correlator import rules
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType

SETTINGS = rules.RuleSettings(before_ms=5000, after_ms=5000, max_gap_ms=3000, retention_ms=60_000)
T0 = 1_800_000_000_000


def _refund(event_id="e1", at=T0 + 20_000):
    return PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_REFUND, store_id="s1", register_id="r1",
                    event_time_ms=at, total_minor=1999, currency="GBP", transaction_id="T-1")


def _state_with(presence):
    """presence: list of (seconds after T0, present), one sample each."""
    state = rules.new_state()
    for sec, present in presence:
        rules.add_presence(state, T0 + int(sec * 1000), present, "cam-1", SETTINGS)
    return state


def _window(state, start_s, end_s):
    return rules.presence_in_window(state, T0 + start_s * 1000, T0 + end_s * 1000)


def test_presence_in_a_fully_covered_window():
    state = _state_with([(s, 10 <= s < 20) for s in range(0, 40)])
    assert _window(state, 12, 15) is True  # the state in force at the start
    assert _window(state, 5, 12) is True  # a change inside the window
    assert _window(state, 21, 30) is False  # covered throughout, nobody
    assert _window(state, -10, -1) is None  # before any coverage


def test_only_changes_and_merged_coverage_are_kept():
    state = _state_with([(s, 10 <= s < 20) for s in range(0, 40)])
    assert state["changes"] == [[T0, 0], [T0 + 10_000, 1], [T0 + 20_000, 0]]
    assert state["covered"] == [[T0, T0 + 39_000 + 3000]]


def test_a_gap_in_coverage_is_unknown_not_nobody():
    # The camera reported "nobody" until 10 s, then went silent until 30 s.
    state = _state_with([(s, False) for s in range(0, 11)] + [(s, False) for s in range(30, 40)])
    assert _window(state, 15, 25) is None
    assert _window(state, 5, 12) is False  # 10 s vouches for 3 s more
    assert _window(state, 8, 32) is None  # spans the gap
    # Presence seen inside a partly covered window is still presence.
    state = _state_with([(s, False) for s in range(0, 11)] + [(31, True), (32, False)])
    assert _window(state, 25, 35) is True


def test_stale_state_before_a_gap_does_not_vouch_for_later():
    state = _state_with([(0, True), (1, True)])  # then silence
    assert _window(state, 20, 30) is None


def test_replayed_samples_are_ignored():
    state = _state_with([(s, False) for s in range(0, 10)])
    assert rules.add_presence(state, T0 + 5000, True, "cam-1", SETTINGS) is False
    assert _window(state, 3, 8) is False


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
    rules.restore_pending(state, decision)
    assert [p["event_id"] for p in state["pending"]] == ["e1"]


def test_customer_present_anywhere_in_window_means_no_alert():
    state = _state_with([(s, 17 <= s <= 18) for s in range(0, 30)])
    rules.add_pending(state, _refund(), received_ms=T0)
    [decision] = rules.decide_ready(state, SETTINGS, now_ms=T0, max_wait_ms=60_000)
    assert decision.customer_present is True


def test_camera_that_dies_before_the_window_gives_unknown_after_max_wait():
    state = _state_with([(s, False) for s in range(0, 10)])  # nobody, then silence from 10 s
    rules.add_pending(state, _refund(), received_ms=T0 + 20_000)
    assert rules.decide_ready(state, SETTINGS, now_ms=T0 + 21_000, max_wait_ms=60_000) == []
    assert not rules.timed_out(state, T0 + 21_000, 60_000) and rules.timed_out(state, T0 + 81_000, 60_000)
    [decision] = rules.decide_ready(state, SETTINGS, now_ms=T0 + 81_000, max_wait_ms=60_000)
    assert decision.customer_present is None


def test_replayed_pos_event_is_pending_once():
    state = rules.new_state()
    rules.add_pending(state, _refund(), received_ms=T0)
    rules.add_pending(state, _refund(), received_ms=T0 + 5)
    assert len(state["pending"]) == 1


def test_old_history_is_pruned_but_state_at_cutoff_kept():
    state = _state_with([(s, (s // 10) % 2 == 0) for s in range(0, 200)])
    cutoff = state["watermark"] - SETTINGS.retention_ms
    assert state["changes"][0][0] <= cutoff < state["changes"][1][0]
    assert len(state["changes"]) <= SETTINGS.retention_ms // 10_000 + 2
    assert all(end >= cutoff for _, end in state["covered"])


def test_alert_is_deterministic_and_explains_itself():
    decision = rules.Decision(_refund(), False, (T0 + 15_000, T0 + 25_000), "cam-1", {})
    first = rules.build_alert(decision, ["counter-1-customer"], raised_ms=T0 + 30_000)
    again = rules.build_alert(decision, ["counter-1-customer"], raised_ms=T0 + 99_000)
    assert first.alert_id == again.alert_id == rules.alert_id(rules.RULE_REFUND_WITHOUT_CUSTOMER, "s1", "r1", "e1")
    assert first.rule == "refund_without_customer"
    assert "19.99 GBP" in first.explanation and "counter-1-customer" in first.explanation
    assert rules.alert_id(rules.RULE_REFUND_WITHOUT_CUSTOMER, "s1", "r1", "e2") != first.alert_id
