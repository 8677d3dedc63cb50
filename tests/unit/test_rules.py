"""The correlator's rules (services/correlator/rules.py) as pure functions: no Faust, no broker.

Event times are relative to T0, a fixed instant in the past. Where a rule reads the wall clock
(received_ms, now_ms) the tests pass it explicitly, so nothing depends on when they run.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.correlator import rules
from services.correlator.chain import ChainIndex
from services.correlator.state import (
    CameraState,
    Change,
    Coverage,
    DrawerOpen,
    FeedbackState,
    PendingRefund,
    RegisterState,
    RuleFeedback,
    StateCodec,
    TillState,
    TokenReturn,
    TokenState,
    TransactionState,
    Visit,
)
from services.shared.contracts.alert_pb2 import Alert, Severity
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.contracts.frame_analysis_pb2 import BoundingBox, DetectedObject, FrameAnalysis, Keypoint, PersonObservation, ZoneObservation, ZoneVisit
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.rulesconfig import RulesConfig, Tuning, resolve
from services.shared.storeconfig import OpeningHours, StaffShift, StoreConfig

pytestmark = pytest.mark.timeout(60)

T0 = 1_736_942_400_000  # 2025-01-15 12:00:00 UTC
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
STORE, REGISTER, CAMERA = "s1", "r1", "cam-1"


def s(seconds: float) -> int:
    """Event time `seconds` after T0."""
    return T0 + round(seconds * 1000)


def of_rule(alerts: Iterable[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule == rule]


def evidence(alert: Alert) -> dict[str, str]:
    return {e.kind: e.ref for e in alert.evidence}


# --- register helpers: presence samples, refunds ----------------------------------------------------

MAX_GAP_MS = 3_000
RETENTION_MS = 900_000
# The customer window of a refund at 60 s is [55 s, 65 s], widened by the default 2 s POS clock skew to [53 s, 67 s].
REFUND_S = 60.0
WINDOW_START, WINDOW_END = s(53), s(67)


def register_ctx(config: RulesConfig | None = None, *, merchandise: bool = False, feedback: FeedbackState | None = None) -> rules.RegisterContext:
    return rules.RegisterContext(STORE, REGISTER, "UTC", ("cust-1",), ("merch-1",) if merchandise else (), config or RulesConfig(), feedback)


def seq_at(seconds: float) -> int:
    return round(seconds * 10) + 1


def feed(state: RegisterState, seconds: Iterable[float], customer: bool | Callable[[float], bool] = False,
         merchandise: int | Callable[[float], int] = -1) -> None:
    """One presence sample per second given (customer present? merchandise 1/0/-1)."""
    for sec in seconds:
        present = customer(sec) if callable(customer) else customer
        goods = merchandise(sec) if callable(merchandise) else merchandise
        rules.add_sample(state, rules.Sample(s(sec), seq_at(sec), CAMERA, present, goods), MAX_GAP_MS, RETENTION_MS)


def test_a_window_older_than_the_registers_history_is_unknown_not_nobody():
    """A refund that reaches its register long after its moment (a till uploading late): the
    presence history of its window is past retention, so the camera cannot tell, never "nobody"."""
    state = RegisterState()
    feed(state, seconds(0, 1300), customer=lambda sec: 100 <= sec <= 200)
    assert len(state.covered) == 1 and state.covered[0].start_ms <= s(120)  # one unbroken coverage, still "covering" the window
    assert rules.seen_in_window(state, s(120), s(150), "customer") is None
    recent = RegisterState()
    feed(recent, seconds(0, 300), customer=lambda sec: 100 <= sec <= 200)
    assert rules.seen_in_window(recent, s(120), s(150), "customer") is True
    assert rules.seen_in_window(recent, s(230), s(260), "customer") is False


def seconds(start: float, end: float, step: float = 1.0) -> list[float]:
    """start, start + step, ... up to and including end."""
    count = round((end - start) / step)
    return [start + i * step for i in range(count + 1)]


def pos(event_id: str, kind: PosEventType, at_ms: int, total_minor: int = 1999, employee: str = "e1", **fields: Any) -> PosEvent:
    return PosEvent(event_id=event_id, type=kind, store_id=STORE, register_id=REGISTER, transaction_id=fields.pop("transaction_id", f"T-{event_id}"),
                    employee_id=employee, event_time_ms=at_ms, currency="GBP", total_minor=total_minor, **fields)


def refund(event_id: str = "rf-1", at_s: float = REFUND_S, total_minor: int = 1999, **fields: Any) -> PosEvent:
    return pos(event_id, PosEventType.POS_EVENT_TYPE_REFUND, s(at_s), total_minor, **fields)


def decide(state: RegisterState, ctx: rules.RegisterContext, now_ms: int) -> tuple[list[Alert], list[tuple[str, str, str]]]:
    alerts, outcomes, _ = rules.decide_refunds(state, ctx, now_ms, now_ms)
    return alerts, [(o.event_id, o.rule, o.outcome) for o in outcomes]


def refund_scenario(customer: bool | Callable[[float], bool], config: RulesConfig | None = None, total_minor: int = 1999,
                    feedback: FeedbackState | None = None) -> tuple[list[Alert], list[tuple[str, str, str]], RegisterState]:
    """The camera reports 0..80 s, then a refund at 60 s arrives (late) and is decided at once."""
    state = RegisterState()
    feed(state, seconds(0, 80), customer)
    ctx = register_ctx(config, feedback=feedback)
    assert rules.add_pending(state, ctx, refund(total_minor=total_minor), s(81))
    alerts, outcomes = decide(state, ctx, s(81))
    return alerts, outcomes, state


NOBODY_OUTCOME = [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "alert")]
SEEN_OUTCOME = [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "seen")]


# --- presence bookkeeping ---------------------------------------------------------------------------

def test_add_sample_keeps_changes_and_merged_coverage_and_refuses_replays() -> None:
    state = RegisterState()
    feed(state, seconds(0, 20), lambda sec: 5 <= sec < 10)
    assert [(c.time_ms, c.customer) for c in state.changes] == [(s(0), False), (s(5), True), (s(10), False)]
    assert [(c.start_ms, c.end_ms) for c in state.covered] == [(s(0), s(20) + MAX_GAP_MS)]
    assert (state.watermark_ms, state.watermark_seq, state.camera_id) == (s(20), seq_at(20), CAMERA)
    # At or before the watermark: a replay, ignored.
    assert not rules.add_sample(state, rules.Sample(s(20), seq_at(20), CAMERA, True, -1), MAX_GAP_MS, RETENTION_MS)
    assert not rules.add_sample(state, rules.Sample(s(7), seq_at(7), CAMERA, False, -1), MAX_GAP_MS, RETENTION_MS)
    assert state.changes[-1].time_ms == s(10)


def test_a_gap_starts_new_coverage_and_retention_drops_old_history() -> None:
    state = RegisterState()
    feed(state, seconds(0, 5))
    feed(state, seconds(10, 12))  # 5 s + 3 s of vouching ends at 8 s: 10 s is after a gap
    assert [(c.start_ms, c.end_ms) for c in state.covered] == [(s(0), s(8)), (s(10), s(15))]
    assert [c.time_ms for c in state.changes] == [s(0), s(10)]  # the first sample after a gap is a change
    feed(state, [RETENTION_MS / 1000 + 20])
    # Only the change in force at the cutoff survives; coverage that ended before it is gone.
    assert [c.time_ms for c in state.changes] == [s(10), s(RETENTION_MS / 1000 + 20)]
    assert [c.start_ms for c in state.covered] == [s(RETENTION_MS / 1000 + 20)]


# --- refund_without_customer --------------------------------------------------------------------------

def test_refund_with_nobody_in_the_window_raises_one_alert_with_evidence_and_facts() -> None:
    alerts, outcomes, state = refund_scenario(customer=False)
    assert outcomes == NOBODY_OUTCOME
    (alert,) = alerts
    assert alert.rule == rules.REFUND_WITHOUT_CUSTOMER
    assert alert.alert_id == rules.alert_id(rules.REFUND_WITHOUT_CUSTOMER, STORE, REGISTER, "rf-1")
    assert (alert.store_id, alert.register_id, alert.camera_id) == (STORE, REGISTER, CAMERA)
    assert alert.severity == Severity.SEVERITY_HIGH
    assert alert.event_time_ms == s(REFUND_S) and alert.raised_time_ms == s(81)
    assert 0.6 <= alert.score <= 1.0
    refs = evidence(alert)
    assert refs["pos_event"] == "rf-1"
    assert refs["pos_transaction"] == "T-rf-1"
    assert refs["camera_window"] == f"{WINDOW_START}-{WINDOW_END}"
    # Only changes are kept (here one, at the first sample), and the frames start a frame before the
    # window's start, carried forward from it at the camera's rate, not at that first sample.
    first, last = map(int, refs["frames"].split("-"))
    assert last == state.watermark_seq and seq_at(52) <= first <= seq_at(53) and last >= seq_at(67)
    assert dict(alert.facts) == {"amount": "19.99 GBP", "employee": "e1", "zones": "cust-1", "window_start_ms": str(WINDOW_START),
                                 "window_end_ms": str(WINDOW_END), "min_total": "0.00"}
    assert "nobody in cust-1" in alert.explanation
    assert state.pending == [] and state.decided == ["rf-1"]


def test_the_alert_id_is_deterministic_and_a_replayed_refund_is_not_decided_again() -> None:
    first, _, state = refund_scenario(customer=False)
    again, _, _ = refund_scenario(customer=False)
    assert [a.alert_id for a in first] == [a.alert_id for a in again]
    other_state = RegisterState()
    feed(other_state, seconds(0, 80))
    rules.add_pending(other_state, register_ctx(), refund("rf-2"), s(81))
    (other,) = decide(other_state, register_ctx(), s(81))[0]
    assert other.alert_id != first[0].alert_id
    # The same refund event again (an at-least-once redelivery): no pending entry, no second decision.
    assert not rules.add_pending(state, register_ctx(), refund(), s(90))
    assert decide(state, register_ctx(), s(90)) == ([], [])


@pytest.mark.parametrize("present_at", [53, 55, 60, 64, 67])
def test_a_customer_present_at_any_moment_of_the_window_means_no_alert(present_at: float) -> None:
    alerts, outcomes, _ = refund_scenario(customer=lambda sec: sec == present_at)
    assert alerts == [] and outcomes == SEEN_OUTCOME


def test_a_customer_present_since_before_the_window_counts() -> None:
    alerts, outcomes, _ = refund_scenario(customer=lambda sec: 30 <= sec <= 54)
    assert alerts == [] and outcomes == SEEN_OUTCOME


@pytest.mark.parametrize("present_at", [51, 52, 68, 70])
def test_a_customer_outside_the_widened_window_does_not_count(present_at: float) -> None:
    alerts, outcomes, _ = refund_scenario(customer=lambda sec: sec == present_at)
    assert outcomes == NOBODY_OUTCOME and len(alerts) == 1


@pytest.mark.parametrize("present_at", [54, 66])
def test_pos_clock_skew_widens_the_window(present_at: float) -> None:
    # 54 s and 66 s lie outside the nominal [55 s, 65 s] but inside the skew-widened [53 s, 67 s].
    alerts, outcomes, _ = refund_scenario(customer=lambda sec: sec == present_at)
    assert alerts == [] and outcomes == SEEN_OUTCOME
    without_skew = resolve({"timing": {"pos_clock_skew_s": 0}})
    alerts, outcomes, _ = refund_scenario(customer=lambda sec: sec == present_at, config=without_skew)
    assert outcomes == NOBODY_OUTCOME and len(alerts) == 1


def test_a_refund_before_the_video_waits_until_the_watermark_passes_the_window() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 50))
    assert rules.add_pending(state, ctx, refund(), s(50.5))  # the POS is ahead of the camera
    assert decide(state, ctx, s(51)) == ([], [])
    assert [p.event_id for p in state.pending] == ["rf-1"]
    feed(state, seconds(51, 66))
    assert decide(state, ctx, s(67)) == ([], [])  # watermark 66 s < window end 67 s
    feed(state, [67])
    alerts, outcomes, _ = rules.decide_refunds(state, ctx, s(68), s(68))
    assert [(o.rule, o.outcome, o.delay_ms) for o in outcomes] == [(rules.REFUND_WITHOUT_CUSTOMER, "alert", s(68) - WINDOW_END)]
    assert len(alerts) == 1 and state.pending == []


def test_a_refund_before_the_video_with_a_customer_arriving_later_in_the_window() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 50))
    rules.add_pending(state, ctx, refund(), s(50))
    feed(state, seconds(51, 80), lambda sec: sec == 63)
    alerts, outcomes = decide(state, ctx, s(81))
    assert alerts == [] and outcomes == SEEN_OUTCOME


def test_a_late_refund_is_decided_at_once_from_history() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 200), lambda sec: sec == 58)
    rules.add_pending(state, ctx, refund(), s(201))
    assert decide(state, ctx, s(201))[1] == SEEN_OUTCOME
    rules.add_pending(state, ctx, refund("rf-2", at_s=150), s(201))
    alerts, outcomes, _ = rules.decide_refunds(state, ctx, s(202), s(202))
    assert [(o.event_id, o.outcome, o.delay_ms) for o in outcomes] == [("rf-2", "alert", s(202) - s(157))]
    assert [a.alert_id for a in alerts] == [rules.alert_id(rules.REFUND_WITHOUT_CUSTOMER, STORE, REGISTER, "rf-2")]


def test_refunds_arriving_out_of_order_are_each_decided_on_their_own_window() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 40), lambda sec: sec == 20)
    rules.add_pending(state, ctx, refund("newer", at_s=70), s(40))
    rules.add_pending(state, ctx, refund("older", at_s=22), s(40))  # arrives after the newer one
    alerts, outcomes = decide(state, ctx, s(40))
    assert outcomes == [("older", rules.REFUND_WITHOUT_CUSTOMER, "seen")] and alerts == []
    feed(state, seconds(41, 80))
    alerts, outcomes = decide(state, ctx, s(80))
    assert outcomes == [("newer", rules.REFUND_WITHOUT_CUSTOMER, "alert")] and len(alerts) == 1


@pytest.mark.parametrize(("covered", "why"), [
    ((seconds(0, 55), seconds(62, 80)), "a gap inside the window"),
    ((seconds(57, 80),), "the camera starts inside the window"),
])
def test_a_coverage_gap_in_the_window_is_no_coverage_not_an_alert(covered: tuple[list[float], ...], why: str) -> None:
    state, ctx = RegisterState(), register_ctx()
    for part in covered:
        feed(state, part)
    rules.add_pending(state, ctx, refund(), s(81))
    alerts, outcomes = decide(state, ctx, s(81))
    assert alerts == [], why
    assert outcomes == [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "no_coverage")], why


def test_a_customer_seen_in_a_partly_covered_window_still_counts() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 55))
    feed(state, seconds(62, 80), lambda sec: sec == 63)
    rules.add_pending(state, ctx, refund(), s(81))
    assert decide(state, ctx, s(81)) == ([], SEEN_OUTCOME)


def test_a_silent_camera_lets_the_refund_wait_max_wait_s_then_decides_no_coverage() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 58))  # then the camera goes silent
    received = s(59)
    rules.add_pending(state, ctx, refund(), received)
    max_wait_ms = int(ctx.rules.timing.max_wait_s * 1000)
    assert decide(state, ctx, received + max_wait_ms) == ([], [])  # not yet past max_wait_s
    assert not rules.timed_out(state, received + max_wait_ms, max_wait_ms)
    assert rules.timed_out(state, received + max_wait_ms + 1, max_wait_ms)
    alerts, outcomes, _ = rules.decide_refunds(state, ctx, received + max_wait_ms + 1, received + max_wait_ms + 1)
    assert alerts == []
    assert [(o.outcome, o.delay_ms) for o in outcomes] == [("no_coverage", 0)]
    assert state.pending == [] and state.decided == ["rf-1"]


def test_a_refund_waits_past_max_wait_s_while_its_cameras_video_is_still_arriving() -> None:
    # A backlog: the refund came long ago by the wall clock, but frames are still being taken in.
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 58))
    rules.add_pending(state, ctx, refund(), s(59))
    late = s(59) + int(ctx.rules.timing.max_wait_s * 1000) + 60_000
    state.sample_received_ms = late - 1000
    assert not rules.timed_out(state, late, int(ctx.rules.timing.max_wait_s * 1000))
    assert decide(state, ctx, late) == ([], []) and [p.event_id for p in state.pending] == ["rf-1"]


def test_a_silent_camera_after_a_customer_in_the_window_decides_seen() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 58), lambda sec: sec == 56)
    rules.add_pending(state, ctx, refund(), s(59))
    assert decide(state, ctx, s(59) + 121_000) == ([], SEEN_OUTCOME)


def test_min_total_and_the_feedback_factor_raise_the_amount_threshold() -> None:
    config = resolve({"refund_without_customer": {"min_total": 20}})
    assert refund_scenario(False, config, total_minor=1999)[1] == [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "below_amount")]
    alerts, outcomes, _ = refund_scenario(False, config, total_minor=2000)
    assert outcomes == NOBODY_OUTCOME and alerts[0].facts["min_total"] == "20.00"
    feedback = FeedbackState(rules={rules.REFUND_WITHOUT_CUSTOMER: RuleFeedback(false_alarm=5, factor=1.5)})
    assert rules.factor(feedback, rules.REFUND_WITHOUT_CUSTOMER) == 1.5
    assert rules.factor(feedback, rules.POST_VOID) == 1.0 and rules.factor(None, rules.REFUND_WITHOUT_CUSTOMER) == 1.0
    assert refund_scenario(False, config, total_minor=2999, feedback=feedback)[1] == [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "below_amount")]
    alerts, outcomes, _ = refund_scenario(False, config, total_minor=3000, feedback=feedback)
    assert outcomes == NOBODY_OUTCOME and alerts[0].facts["min_total"] == "30.00"


def test_a_disabled_refund_rule_holds_nothing() -> None:
    state, ctx = RegisterState(), register_ctx(resolve({"refund_without_customer": {"enabled": False}}))
    feed(state, seconds(0, 80))
    assert not rules.add_pending(state, ctx, refund(), s(81))
    assert state.pending == [] and decide(state, ctx, s(81)) == ([], [])


def test_restore_pending_puts_a_decision_back_to_be_decided_again() -> None:
    state, ctx = RegisterState(), register_ctx()
    feed(state, seconds(0, 80))
    rules.add_pending(state, ctx, refund(), s(81))
    alerts, _, taken = rules.decide_refunds(state, ctx, s(81), s(81))
    assert len(alerts) == 1 and state.pending == [] and state.decided == ["rf-1"]
    rules.restore_pending(state, taken)  # sending failed
    assert [p.event_id for p in state.pending] == ["rf-1"] and state.decided == []
    assert rules.add_pending(state, ctx, refund(), s(82)) is False  # still held, not twice
    again, outcomes = decide(state, ctx, s(82))
    assert [a.alert_id for a in again] == [alerts[0].alert_id] and outcomes == NOBODY_OUTCOME


def test_restore_pending_brings_back_a_rule_decided_while_another_still_waits() -> None:
    state, ctx = RegisterState(), register_ctx(merchandise=True)
    feed(state, seconds(0, 70), merchandise=0)  # past the customer window (67 s), not the merchandise one (72 s)
    rules.add_pending(state, ctx, refund(), s(70))
    alerts, outcomes, taken = rules.decide_refunds(state, ctx, s(70), s(70))
    assert [(o.rule, o.outcome) for o in outcomes] == [(rules.REFUND_WITHOUT_CUSTOMER, "alert")] and len(alerts) == 1
    assert state.pending[0].rules == [rules.REFUND_WITHOUT_MERCHANDISE]
    rules.restore_pending(state, taken)
    assert len(state.pending) == 1
    assert state.pending[0].rules == [rules.REFUND_WITHOUT_CUSTOMER, rules.REFUND_WITHOUT_MERCHANDISE]


# --- refund_without_merchandise -------------------------------------------------------------------------

# Window of a refund at 200 s: [200 - 120 - 2, 200 + 10 + 2] = [78 s, 212 s]; the customer stands there throughout.
MERCH_REFUND_S = 200


def merchandise_scenario(merchandise: int | Callable[[float], int], *, with_zones: bool = True) -> tuple[list[Alert], list[tuple[str, str, str]], RegisterState]:
    state, ctx = RegisterState(), register_ctx(merchandise=with_zones)
    feed(state, seconds(0, 230), customer=True, merchandise=merchandise)
    rules.add_pending(state, ctx, refund(at_s=MERCH_REFUND_S, transaction_id=""), s(231))
    alerts, outcomes = decide(state, ctx, s(231))
    return alerts, outcomes, state


def test_refund_without_merchandise_applies_only_with_merchandise_zones() -> None:
    state = RegisterState()
    rules.add_pending(state, register_ctx(), refund(), s(0))
    assert state.pending[0].rules == [rules.REFUND_WITHOUT_CUSTOMER]
    alerts, outcomes, _ = merchandise_scenario(0, with_zones=False)
    assert alerts == [] and [o[1] for o in outcomes] == [rules.REFUND_WITHOUT_CUSTOMER]


@pytest.mark.parametrize("put_down_at", [80, 150, 210])
def test_merchandise_seen_in_the_window_means_no_alert(put_down_at: float) -> None:
    alerts, outcomes, _ = merchandise_scenario(lambda sec: int(sec == put_down_at))
    assert alerts == []
    assert ("rf-1", rules.REFUND_WITHOUT_MERCHANDISE, "seen") in outcomes


def test_no_merchandise_throughout_the_window_raises_an_alert() -> None:
    alerts, outcomes, _ = merchandise_scenario(0)
    assert sorted(outcomes) == [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "seen"), ("rf-1", rules.REFUND_WITHOUT_MERCHANDISE, "alert")]
    (alert,) = alerts
    assert alert.rule == rules.REFUND_WITHOUT_MERCHANDISE and alert.facts["zones"] == "merch-1"
    assert alert.alert_id == rules.alert_id(rules.REFUND_WITHOUT_MERCHANDISE, STORE, REGISTER, "rf-1")
    assert alert.facts["window_start_ms"] == str(s(78)) and alert.facts["window_end_ms"] == str(s(212))
    assert "pos_transaction" not in evidence(alert)  # the refund named no transaction


def test_merchandise_put_down_outside_the_window_does_not_count() -> None:
    alerts, outcomes, _ = merchandise_scenario(lambda sec: int(sec == 60))
    assert ("rf-1", rules.REFUND_WITHOUT_MERCHANDISE, "alert") in outcomes and len(alerts) == 1


@pytest.mark.parametrize("merchandise", [-1, lambda sec: -1 if 100 <= sec <= 120 else 0], ids=["never observed", "unobserved for a while"])
def test_merchandise_not_observed_is_no_coverage(merchandise: int | Callable[[float], int]) -> None:
    alerts, outcomes, _ = merchandise_scenario(merchandise)
    assert alerts == [] and ("rf-1", rules.REFUND_WITHOUT_MERCHANDISE, "no_coverage") in outcomes


def test_each_refund_rule_is_decided_when_the_camera_passes_its_own_window() -> None:
    state, ctx = RegisterState(), register_ctx(merchandise=True)
    feed(state, seconds(0, 199), customer=False, merchandise=0)
    rules.add_pending(state, ctx, refund(at_s=MERCH_REFUND_S), s(199))
    feed(state, seconds(200, 207), customer=False, merchandise=0)
    alerts, outcomes = decide(state, ctx, s(207))
    assert outcomes == [("rf-1", rules.REFUND_WITHOUT_CUSTOMER, "alert")]
    assert state.pending[0].rules == [rules.REFUND_WITHOUT_MERCHANDISE] and state.decided == []
    feed(state, seconds(208, 212), customer=False, merchandise=0)
    alerts, outcomes = decide(state, ctx, s(212))
    assert outcomes == [("rf-1", rules.REFUND_WITHOUT_MERCHANDISE, "alert")] and len(alerts) == 1
    assert state.pending == [] and state.decided == ["rf-1"]


# --- camera helpers: zones, poses, analyses ---------------------------------------------------------------

HV, HV2, EXIT, COUNTER = "hv-1", "hv-2", "exit-1", "counter-1"
ZONE_KINDS = {HV: "high_value", HV2: "high_value", EXIT: "exit", COUNTER: "counter_customer"}

# A person facing the camera: shoulder centre (0.50, 0.30), hip centre (0.50, 0.60), so one torso
# length is 0.30 and the body centre is (0.50, 0.45). A hand counts at the hip within 0.35 torso (0.105).
SHOULDERS = {"left_shoulder": (0.45, 0.30), "right_shoulder": (0.55, 0.30)}
HIPS = {"left_hip": (0.47, 0.60), "right_hip": (0.53, 0.60)}
NEUTRAL = {"left_wrist": (0.40, 0.45), "right_wrist": (0.60, 0.45)}  # 0.1 from the centre, 0.17 from the hips
REACH = {"left_wrist": (0.40, 0.45), "right_wrist": (0.90, 0.30)}  # 0.43 from the centre: more than a torso
AT_HIP = {"left_wrist": (0.48, 0.62), "right_wrist": (0.60, 0.45)}  # 0.02 from the left hip
IN_BAG = {"left_wrist": (0.40, 0.45), "right_wrist": (0.70, 0.45)}  # inside BAG_BOX, 0.23 from the right hip
BAG_BOX = BoundingBox(xmin=0.62, xmax=0.78, ymin=0.35, ymax=0.55)


def person(track: int = 1, zones: dict[str, int] | None = None, wrists: dict[str, tuple[float, float]] = NEUTRAL, first_seen_ms: int = T0,
           keypoint_score: float = 0.9) -> PersonObservation:
    points = {**SHOULDERS, **HIPS, **wrists}
    return PersonObservation(track_id=track, score=0.9, detected=True, first_seen_ms=first_seen_ms,
                             zones=[ZoneVisit(zone_id=z, entered_ms=e) for z, e in (zones or {}).items()],
                             keypoints=[Keypoint(name=n, x=x, y=y, score=keypoint_score) for n, (x, y) in points.items()])


def analysis(at_ms: int, seq: int, persons: Sequence[PersonObservation] = (), anomaly: dict[str, float] | None = None,
             objects: Sequence[DetectedObject] = (), heartbeat: bool = False, camera_id: str = CAMERA) -> FrameAnalysis:
    zones = [ZoneObservation(zone_id=z, kind=ZONE_KINDS.get(z, ""), anomaly_score=score) for z, score in (anomaly or {}).items()]
    return FrameAnalysis(store_id=STORE, camera_id=camera_id, capture_time_ms=at_ms, frame_sequence=seq, persons=persons, zones=zones,
                         objects=objects, heartbeat=heartbeat)


def camera_ctx(zone_rules: dict[str, RulesConfig] | None = None, *, hours: OpeningHours | None = None, holidays: Sequence[date] = (),
               timezone: str = "UTC", store_rules: RulesConfig | None = None, camera_id: str = CAMERA,
               feedback: FeedbackState | None = None, shifts: Sequence[StaffShift] = ()) -> rules.CameraContext:
    default = RulesConfig()
    return rules.CameraContext(STORE, camera_id, timezone, hours, tuple(holidays), dict(ZONE_KINDS),
                               zone_rules if zone_rules is not None else dict.fromkeys(ZONE_KINDS, default), store_rules or default, feedback,
                               tuple(shifts))


ENTERED = s(0)


class Camera:
    """Feeds one camera's analyses to camera_rules at 5 frames/s and keeps every alert."""

    def __init__(self, ctx: rules.CameraContext | None = None, start_s: float = 1.0) -> None:
        self.ctx = ctx or camera_ctx()
        self.state = CameraState()
        self.at_ms = s(start_s)
        self.seq = 0
        self.alerts: list[Alert] = []

    def frame(self, persons: Sequence[PersonObservation] = (), anomaly: dict[str, float] | None = None, objects: Sequence[DetectedObject] = (),
              heartbeat: bool = False) -> list[Alert]:
        self.seq += 1
        self.at_ms += 200
        found, _ = rules.camera_rules(self.state, self.ctx, analysis(self.at_ms, self.seq, persons, anomaly, objects, heartbeat), self.at_ms + 50)
        self.alerts += found
        return found

    def poses(self, *wrists: dict[str, tuple[float, float]], track: int = 1, entered_ms: int = ENTERED, zone: str = HV,
              objects: Sequence[DetectedObject] = (), heartbeat: bool = False) -> list[Alert]:
        found: list[Alert] = []
        for w in wrists:
            found += self.frame([person(track, {zone: entered_ms}, w)], objects=objects, heartbeat=heartbeat)
        return found

    def of(self, rule: str) -> list[Alert]:
        return of_rule(self.alerts, rule)


def bag(label: str = "handbag") -> DetectedObject:
    return DetectedObject(label=label, score=0.8, box=BAG_BOX, track_id=77, first_seen_ms=T0)


# --- concealment ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("wrists", "objects", "cues"), [
    (NEUTRAL, (), (False, False)),
    (REACH, (), (True, False)),
    (AT_HIP, (), (False, True)),
    (IN_BAG, (bag(),), (False, True)),
    (IN_BAG, (), (False, False)),
])
def test_hand_cues(wrists: dict[str, tuple[float, float]], objects: tuple[DetectedObject, ...], cues: tuple[bool, bool]) -> None:
    assert rules.hand_cues(person(wrists=wrists), list(objects), 0.35, 0.3) == cues


def test_hand_cues_ignore_low_score_keypoints() -> None:
    assert rules.hand_cues(person(wrists=REACH, keypoint_score=0.2), [], 0.35, 0.3) == (False, False)


def test_reach_then_hands_at_the_hip_in_k_of_n_frames_raises_one_alert_per_visit() -> None:
    cam = Camera()
    assert cam.poses(REACH, AT_HIP, AT_HIP) == []
    (alert,) = cam.poses(AT_HIP)  # the third of pose_k = 3 in the last 8 frames
    cam.poses(*[AT_HIP, NEUTRAL, REACH] * 15)  # many more frames of the same visit
    assert cam.of(rules.CONCEALMENT) == [alert]
    assert alert.alert_id == rules.alert_id(rules.CONCEALMENT, STORE, CAMERA, f"1:{HV}:{ENTERED}")
    assert alert.severity == Severity.SEVERITY_HIGH and alert.camera_id == CAMERA
    assert alert.event_time_ms == s(1) + 4 * 200 and alert.raised_time_ms == alert.event_time_ms + 50
    assert {k: alert.facts[k] for k in ("track", "zone", "cue", "pose_frames", "pose_k")} == {
        "track": "1", "zone": HV, "cue": "pose", "pose_frames": "3", "pose_k": "3"}
    assert evidence(alert) == {"frames": "2-4", "frame": "4"}  # from the first cue frame to the alerting one


def test_hands_at_the_hip_without_reaching_first_raise_nothing() -> None:
    cam = Camera()
    cam.poses(*[AT_HIP] * 30)
    assert cam.of(rules.CONCEALMENT) == []


def test_reaching_while_a_hand_is_at_the_hip_is_not_a_cue() -> None:
    both = {"left_wrist": (0.48, 0.62), "right_wrist": (0.90, 0.30)}
    cam = Camera()
    cam.poses(*[both] * 20)
    assert cam.of(rules.CONCEALMENT) == []


def test_cues_fewer_than_k_in_any_n_frames_raise_nothing() -> None:
    cam = Camera()
    cam.poses(REACH, AT_HIP, AT_HIP, *[NEUTRAL] * 10)
    cam.poses(AT_HIP, *[NEUTRAL] * 6, AT_HIP, *[NEUTRAL] * 6, AT_HIP)  # one cue per 7 frames
    assert cam.of(rules.CONCEALMENT) == []


def test_a_wrist_in_a_bag_after_reaching_is_a_cue() -> None:
    cam = Camera()
    cam.poses(REACH, IN_BAG, IN_BAG, IN_BAG, objects=[bag()])
    (alert,) = cam.of(rules.CONCEALMENT)
    assert alert.facts["cue"] == "pose"


@pytest.mark.parametrize("objects", [(), (bag("bottle"),)], ids=["no object", "not a bag"])
def test_a_wrist_in_a_box_that_is_not_a_bag_is_no_cue(objects: tuple[DetectedObject, ...]) -> None:
    cam = Camera()
    cam.poses(REACH, IN_BAG, IN_BAG, IN_BAG, IN_BAG, objects=objects)
    assert cam.of(rules.CONCEALMENT) == []


def test_zone_anomaly_in_k_of_n_frames_with_a_person_there_raises_one_alert() -> None:
    cam = Camera()
    for _ in range(5):
        cam.frame([person(zones={HV: ENTERED})], anomaly={HV: 2.0})
    assert cam.of(rules.CONCEALMENT) == []
    cam.frame([person(zones={HV: ENTERED})], anomaly={HV: 1.5})  # at the level counts
    for _ in range(10):
        cam.frame([person(zones={HV: ENTERED})], anomaly={HV: 2.0})
    (alert,) = cam.of(rules.CONCEALMENT)
    assert alert.facts["cue"] == "anomaly" and alert.facts["anomaly_frames"] == "6" and alert.facts["anomaly_k"] == "6"
    assert alert.facts["anomaly_score"] == "1.50"


def test_zone_anomaly_below_k_or_below_the_level_raises_nothing() -> None:
    cam = Camera()
    for i in range(40):  # 5 of every 10 frames above the level
        cam.frame([person(zones={HV: ENTERED})], anomaly={HV: 2.0 if i % 10 < 5 else 1.0})
    for _ in range(20):
        cam.frame([person(zones={HV: ENTERED})], anomaly={HV: 1.49})
    assert cam.of(rules.CONCEALMENT) == []


def test_zone_anomaly_without_a_person_in_the_zone_raises_nothing() -> None:
    cam = Camera()
    for _ in range(20):
        cam.frame([], anomaly={HV: 3.0})
        cam.frame([person(zones={COUNTER: ENTERED})], anomaly={HV: 3.0, COUNTER: 3.0})
    assert cam.of(rules.CONCEALMENT) == []


def test_heartbeat_analyses_count_for_nothing() -> None:
    cam = Camera()
    cam.poses(REACH, AT_HIP, AT_HIP)
    cam.poses(*[AT_HIP] * 20, heartbeat=True)
    for _ in range(20):
        cam.frame([person(zones={HV: ENTERED})], anomaly={HV: 5.0}, heartbeat=True)
    assert cam.of(rules.CONCEALMENT) == []
    (alert,) = cam.poses(AT_HIP)  # a real frame: the third cue
    assert alert.facts["pose_frames"] == "3"


def test_a_heartbeat_does_not_start_a_visit_or_record_a_reach() -> None:
    cam = Camera()
    cam.poses(REACH, heartbeat=True)
    assert cam.state.visits == {}
    cam.poses(*[AT_HIP] * 10)
    assert cam.of(rules.CONCEALMENT) == []


def test_a_new_visit_of_the_same_track_can_alert_again() -> None:
    cam = Camera()
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP)
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP)  # same visit: nothing new
    later = s(30)
    cam.poses(AT_HIP, AT_HIP, AT_HIP, entered_ms=later)  # a new visit must reach again
    assert len(cam.of(rules.CONCEALMENT)) == 1
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP, entered_ms=later)
    first, second = cam.of(rules.CONCEALMENT)
    assert second.alert_id == rules.alert_id(rules.CONCEALMENT, STORE, CAMERA, f"1:{HV}:{later}") != first.alert_id


def test_concealment_is_per_person() -> None:
    cam = Camera()
    for w in (REACH, AT_HIP, AT_HIP, AT_HIP):
        cam.frame([person(1, {HV: ENTERED}, w), person(2, {HV: ENTERED}, w), person(3, {HV: ENTERED}, NEUTRAL)])
    assert sorted(a.facts["track"] for a in cam.of(rules.CONCEALMENT)) == ["1", "2"]


def test_concealment_only_in_high_value_zones_where_enabled() -> None:
    cam = Camera()
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP, zone=EXIT)
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP, zone=COUNTER)
    assert cam.of(rules.CONCEALMENT) == []
    off = resolve({"concealment": {"enabled": False}})
    cam = Camera(camera_ctx({HV: off, HV2: RulesConfig()}))
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP, zone=HV)
    assert cam.of(rules.CONCEALMENT) == []
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP, zone=HV2)
    assert [a.facts["zone"] for a in cam.of(rules.CONCEALMENT)] == [HV2]


def test_the_feedback_factor_raises_k() -> None:
    feedback = FeedbackState(rules={rules.CONCEALMENT: RuleFeedback(factor=2.0)})
    cam = Camera(camera_ctx(feedback=feedback))
    cam.poses(REACH, AT_HIP, AT_HIP, AT_HIP, AT_HIP, AT_HIP)
    assert cam.of(rules.CONCEALMENT) == []
    cam.poses(AT_HIP)
    (alert,) = cam.of(rules.CONCEALMENT)
    assert alert.facts["pose_k"] == "6"


def test_visits_not_seen_for_a_minute_are_dropped() -> None:
    cam = Camera()
    cam.poses(REACH)
    assert list(cam.state.visits) == [f"1:{HV}"]
    cam.at_ms += 61_000
    cam.frame([])
    assert cam.state.visits == {}


# --- after_hours -----------------------------------------------------------------------------------------

DAY_HOURS = OpeningHours(open=time(9), close=time(21))
NIGHT_HOURS = OpeningHours(open=time(18), close=time(2))  # a bar-like store open across midnight


def local_ms(year: int, month: int, day: int, hour: int, minute: int = 0, tz: str = "UTC") -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


@pytest.mark.parametrize(("hours", "when", "period"), [
    (DAY_HOURS, (2025, 1, 15, 9, 0), None),
    (DAY_HOURS, (2025, 1, 15, 20, 59), None),
    (DAY_HOURS, (2025, 1, 15, 21, 0), "2025-01-15"),
    (DAY_HOURS, (2025, 1, 15, 23, 30), "2025-01-15"),
    (DAY_HOURS, (2025, 1, 16, 3, 0), "2025-01-15"),  # the same night, past midnight
    (DAY_HOURS, (2025, 1, 16, 8, 59), "2025-01-15"),
    (NIGHT_HOURS, (2025, 1, 15, 18, 0), None),
    (NIGHT_HOURS, (2025, 1, 15, 23, 0), None),
    (NIGHT_HOURS, (2025, 1, 16, 1, 59), None),
    (NIGHT_HOURS, (2025, 1, 16, 2, 0), "2025-01-16"),
    (NIGHT_HOURS, (2025, 1, 16, 12, 0), "2025-01-16"),
    (NIGHT_HOURS, (2025, 1, 16, 17, 59), "2025-01-16"),
])
def test_closed_period(hours: OpeningHours, when: tuple[int, int, int, int, int], period: str | None) -> None:
    assert rules.closed_period(hours, (), "UTC", local_ms(*when)) == period


def test_closed_period_on_holidays_and_without_opening_hours() -> None:
    christmas = date(2025, 12, 25)
    assert rules.closed_period(DAY_HOURS, (christmas,), "UTC", local_ms(2025, 12, 25, 12)) == "holiday 2025-12-25"
    assert rules.closed_period(DAY_HOURS, (christmas,), "UTC", local_ms(2025, 12, 24, 12)) is None
    assert rules.closed_period(DAY_HOURS, (christmas,), "UTC", local_ms(2025, 12, 24, 22)) == "2025-12-24"
    assert rules.closed_period(None, (christmas,), "UTC", local_ms(2025, 12, 25, 3)) is None


def test_closed_period_uses_the_store_time_zone() -> None:
    instant = local_ms(2025, 1, 15, 22)  # 22:00 in London, 17:00 in New York
    assert rules.closed_period(DAY_HOURS, (), "Europe/London", instant) == "2025-01-15"
    assert rules.closed_period(DAY_HOURS, (), "America/New_York", instant) is None
    morning = local_ms(2025, 1, 15, 12)  # 12:00 in London, 07:00 in New York
    assert rules.closed_period(DAY_HOURS, (), "Europe/London", morning) is None
    assert rules.closed_period(DAY_HOURS, (), "America/New_York", morning) == "2025-01-14"
    # In summer London is UTC+1: 20:30 UTC is 21:30 there (closed), 16:30 in New York (open).
    summer = local_ms(2025, 7, 1, 20, 30)
    assert rules.closed_period(DAY_HOURS, (), "Europe/London", summer) == "2025-07-01"
    assert rules.closed_period(DAY_HOURS, (), "America/New_York", summer) is None


def night_frame(cam: Camera, at_ms: int, tracked_s: float, track: int = 1) -> list[Alert]:
    cam.at_ms = at_ms - 200
    return of_rule(cam.frame([person(track, first_seen_ms=at_ms - round(tracked_s * 1000))]), rules.AFTER_HOURS)


def after_hours_camera(camera_id: str = CAMERA, **kwargs: Any) -> Camera:
    return Camera(camera_ctx(hours=DAY_HOURS, timezone="Europe/London", camera_id=camera_id, **kwargs))


def test_a_person_after_hours_raises_one_alert_per_camera_and_closed_period() -> None:
    cam = after_hours_camera()
    (alert,) = night_frame(cam, local_ms(2025, 1, 15, 23), tracked_s=5)
    assert alert.severity == Severity.SEVERITY_CRITICAL and alert.camera_id == CAMERA
    assert alert.alert_id == rules.alert_id(rules.AFTER_HOURS, STORE, CAMERA, "2025-01-15")
    assert alert.facts["closed_period"] == "2025-01-15" and alert.facts["timezone"] == "Europe/London"
    assert "frame" in evidence(alert)
    assert night_frame(cam, local_ms(2025, 1, 15, 23, 10), tracked_s=600) == []
    assert night_frame(cam, local_ms(2025, 1, 16, 3), tracked_s=60, track=2) == []  # the same night
    (next_night,) = night_frame(cam, local_ms(2025, 1, 16, 22), tracked_s=5)
    assert next_night.facts["closed_period"] == "2025-01-16"
    other = after_hours_camera("cam-2")
    (other_alert,) = night_frame(other, local_ms(2025, 1, 15, 23, 5), tracked_s=5)
    assert other_alert.alert_id != alert.alert_id


def test_a_short_track_after_hours_raises_nothing_until_it_lasts() -> None:
    cam = after_hours_camera()
    assert night_frame(cam, local_ms(2025, 1, 15, 23), tracked_s=2.9) == []
    assert len(night_frame(cam, local_ms(2025, 1, 15, 23, 1), tracked_s=3.0)) == 1


def test_nobody_after_hours_and_anyone_during_opening_hours_raise_nothing() -> None:
    cam = after_hours_camera()
    cam.at_ms = local_ms(2025, 1, 15, 23)
    cam.frame([])
    assert night_frame(cam, local_ms(2025, 1, 15, 12), tracked_s=3600) == []
    assert night_frame(cam, local_ms(2025, 1, 15, 20, 59), tracked_s=3600) == []
    assert cam.of(rules.AFTER_HOURS) == []


def test_after_hours_on_a_holiday_and_in_the_store_time_zone() -> None:
    cam = after_hours_camera(holidays=[date(2025, 12, 25)])
    (alert,) = night_frame(cam, local_ms(2025, 12, 25, 12), tracked_s=10)
    assert alert.facts["closed_period"] == "holiday 2025-12-25"
    new_york = Camera(camera_ctx(hours=DAY_HOURS, timezone="America/New_York"))
    assert night_frame(new_york, local_ms(2025, 1, 15, 22), tracked_s=10) == []  # 17:00 there


def test_after_hours_disabled_or_without_opening_hours_raises_nothing() -> None:
    cam = after_hours_camera(store_rules=resolve({"after_hours": {"enabled": False}}))
    assert night_frame(cam, local_ms(2025, 1, 15, 23), tracked_s=60) == []
    cam = Camera(camera_ctx(hours=None))
    assert night_frame(cam, local_ms(2025, 1, 15, 23), tracked_s=60) == []


CLEANERS = StaffShift(name="cleaners", start=time(21), end=time(22, 30))
NIGHT_FILL = StaffShift(name="night fill", days=("fri",), start=time(23), end=time(2), max_persons=3)
STOCK_TAKE = StaffShift(name="stock-take", dates=(date(2025, 1, 19), date(2025, 12, 26)), start=time(6), end=time(9))


@pytest.mark.parametrize(("when", "shift"), [
    ((2025, 1, 15, 20, 59), None),  # open anyway; a Wednesday
    ((2025, 1, 15, 21, 0), CLEANERS),
    ((2025, 1, 15, 22, 29), CLEANERS),
    ((2025, 1, 15, 22, 30), None),
    ((2025, 1, 17, 23, 30), NIGHT_FILL),  # Friday night
    ((2025, 1, 18, 1, 59), NIGHT_FILL),  # past midnight: still Friday's shift
    ((2025, 1, 18, 2, 0), None),
    ((2025, 1, 18, 23, 30), None),  # Saturday: no night fill
    ((2025, 1, 16, 0, 30), None),  # Wednesday's night is not Friday's
    ((2025, 1, 19, 7, 0), STOCK_TAKE),  # its date (a Sunday)
    ((2025, 1, 20, 7, 0), None),
])
def test_expected_shift(when: tuple[int, int, int, int, int], shift: StaffShift | None) -> None:
    assert rules.expected_shift((CLEANERS, NIGHT_FILL, STOCK_TAKE), (), "UTC", local_ms(*when)) == shift


def test_weekly_shifts_skip_holidays_and_dated_ones_do_not() -> None:
    shifts, holidays = (CLEANERS, STOCK_TAKE), (date(2025, 12, 25), date(2025, 12, 26))
    assert rules.expected_shift(shifts, holidays, "UTC", local_ms(2025, 12, 25, 21, 30)) is None
    assert rules.expected_shift(shifts, holidays, "UTC", local_ms(2025, 12, 26, 7)) == STOCK_TAKE
    assert rules.expected_shift(shifts, (), "UTC", local_ms(2025, 12, 25, 21, 30)) == CLEANERS


def test_shifts_are_in_store_time() -> None:
    instant = local_ms(2025, 7, 1, 20, 30)  # 21:30 in London (summer time), 16:30 in New York
    assert rules.expected_shift((CLEANERS,), (), "Europe/London", instant) == CLEANERS
    assert rules.expected_shift((CLEANERS,), (), "America/New_York", instant) is None


def test_cleaners_in_their_shift_raise_nothing_and_anyone_after_it_raises_after_hours() -> None:
    """The outside review's case: cleaners 21:00-22:30 are expected; a person at 22:40 is not."""
    cam = after_hours_camera(shifts=(CLEANERS,))  # London: UTC in January
    for minute in range(0, 90, 5):
        assert night_frame(cam, local_ms(2025, 1, 15, 21) + minute * 60_000, tracked_s=600, track=7) == []
    (alert,) = night_frame(cam, local_ms(2025, 1, 15, 22, 40), tracked_s=10, track=8)
    assert alert.facts["track"] == "8" and alert.facts["closed_period"] == "2025-01-15" and "shift" not in alert.facts
    # The next evening's cleaners are expected again, and raise nothing.
    assert night_frame(cam, local_ms(2025, 1, 16, 21, 30), tracked_s=600, track=9) == []


def test_more_people_than_a_shift_expects_raise_after_hours() -> None:
    cam = Camera(camera_ctx(hours=DAY_HOURS, shifts=(NIGHT_FILL,)))
    friday_night = local_ms(2025, 1, 17, 23, 30)
    crew = [person(track, first_seen_ms=friday_night - 60_000) for track in (1, 2, 3)]
    cam.at_ms = friday_night - 200
    assert of_rule(cam.frame(crew), rules.AFTER_HOURS) == []
    (alert,) = of_rule(cam.frame([*crew, person(4, first_seen_ms=friday_night - 10_000)]), rules.AFTER_HOURS)
    assert {k: alert.facts[k] for k in ("persons", "shift", "shift_max_persons", "track")} == {
        "persons": "4", "shift": "night fill", "shift_max_persons": "3", "track": "1"}
    assert "more than the 3 expected for staff shift night fill" in alert.explanation


def test_staff_shifts_only_for_the_cameras_they_name() -> None:
    config = StoreConfig.model_validate({"chain": "c", "stores": [{
        "id": "s1", "timezone": "UTC", "opening_hours": {"open": "09:00", "close": "21:00"},
        "staff_shifts": [{"name": "cleaners", "start": "21:00", "end": "22:30"},
                         {"name": "cash-up", "start": "21:00", "end": "21:30", "cameras": ["cam-office"]}],
        "cameras": [{"id": "cam-floor", "source": "file:x.mp4"}, {"id": "cam-office", "source": "file:y.mp4"}]}]})
    index = ChainIndex.build(config)
    assert [s.name for s in index.cameras["cam-floor"].shifts] == ["cleaners"]
    assert [s.name for s in index.cameras["cam-office"].shifts] == ["cleaners", "cash-up"]


# --- loitering ---------------------------------------------------------------------------------------------

def dwell(cam: Camera, dwell_s: float, zone: str = HV, track: int = 1, entered_ms: int = ENTERED) -> list[Alert]:
    """One frame `dwell_s` into the visit (the first frame seen of it, so alone only from now)."""
    cam.at_ms = entered_ms + round(dwell_s * 1000) - 200
    return of_rule(cam.frame([person(track, {zone: entered_ms})]), rules.LOITERING)


def stay(cam: Camera, from_s: float, to_s: float, persons: Callable[[float], Sequence[PersonObservation]], step_s: float = 1.0) -> list[Alert]:
    """A frame every `step_s` from `from_s` to `to_s` (seconds after ENTERED), as a camera sends them."""
    found: list[Alert] = []
    for sec in seconds(from_s, to_s, step_s):
        cam.at_ms = ENTERED + round(sec * 1000) - 200
        found += of_rule(cam.frame(persons(sec)), rules.LOITERING)
    return found


def shopper(track: int = 1, zone: str = HV, entered_ms: int = ENTERED, wrists: dict[str, tuple[float, float]] = NEUTRAL) -> PersonObservation:
    return person(track, {zone: entered_ms}, wrists)


def test_three_minutes_at_a_high_value_fixture_is_browsing() -> None:
    """The outside review's case: three minutes at the electronics shelf, alone or with others, raise nothing by default."""
    alone = Camera()
    assert stay(alone, 0, 180, lambda sec: [shopper()]) == []
    together = Camera()
    assert stay(together, 0, 180, lambda sec: [shopper(1), shopper(2)]) == []
    reaching = Camera()  # taking boxes off the shelf and reading them is browsing too
    assert stay(reaching, 0, 180, lambda sec: [shopper(wrists=REACH if int(sec) % 20 < 5 else NEUTRAL)]) == []
    assert reaching.of(rules.CONCEALMENT) == []


def test_the_plain_limit_applies_with_other_people_in_the_zone() -> None:
    cam = Camera()
    assert stay(cam, 0, 899, lambda sec: [shopper(1), shopper(2)]) == []
    found = stay(cam, 900, 920, lambda sec: [shopper(1), shopper(2)])
    assert sorted(a.facts["track"] for a in found) == ["1", "2"]  # once per person and visit
    alert = found[0]
    assert alert.severity == Severity.SEVERITY_MEDIUM
    assert alert.alert_id == rules.alert_id(rules.LOITERING, STORE, CAMERA, f"{alert.facts['track']}:{HV}:{ENTERED}")
    assert {k: alert.facts[k] for k in ("zone", "zone_kind", "dwell_s", "limit", "limit_s")} == {
        "zone": HV, "zone_kind": "high_value", "dwell_s": "900.0", "limit": "plain", "limit_s": "900"}


def test_the_alone_limit_counts_from_when_the_person_was_last_with_someone() -> None:
    cam = Camera()
    assert stay(cam, 0, 500, lambda sec: [shopper(1)]) == []
    # Somebody else comes to the cabinet for ten seconds: the time alone starts again when they leave.
    assert stay(cam, 201, 210, lambda sec: [shopper(1), shopper(2, entered_ms=s(201))]) == []
    assert stay(cam, 211, 810, lambda sec: [shopper(1)]) == []
    (alert,) = stay(cam, 811, 820, lambda sec: [shopper(1)])
    assert {k: alert.facts[k] for k in ("track", "limit", "limit_s", "counted_s", "dwell_s")} == {
        "track": "1", "limit": "alone", "limit_s": "600", "counted_s": "600.0", "dwell_s": "811.0"}
    assert "alone" in alert.explanation


def test_a_zone_counted_occupied_by_inference_is_not_alone() -> None:
    """An untracked second person the zone's own count reports (person_count) means company."""
    cam = Camera()
    for sec in seconds(0, 800, 2):
        cam.at_ms = ENTERED + round(sec * 1000) - 200
        cam.seq += 1
        frame = analysis(cam.at_ms + 200, cam.seq, [shopper()])
        frame.zones.add(zone_id=HV, kind="high_value", person_count=2)
        found, _ = rules.camera_rules(cam.state, cam.ctx, frame, cam.at_ms)
        assert of_rule(found, rules.LOITERING) == []


def test_a_concealment_cue_shortens_the_limit_to_cue_s_from_the_cue_on() -> None:
    cam = Camera()
    assert stay(cam, 0, 100, lambda sec: [shopper(1), shopper(2)]) == []
    # Reaches to the shelf, then one frame with a hand at the hip: a phone or a wallet as often as not, no cue yet.
    poses = {101.0: REACH, 102.0: AT_HIP, 110.0: AT_HIP}
    assert stay(cam, 101, 109, lambda sec: [shopper(1, wrists=poses.get(sec, NEUTRAL)), shopper(2)]) == []
    assert cam.state.cues == {}
    # A second frame with the hand at the hip: a cue, still below concealment's 3 of 8 frames.
    assert stay(cam, 110, 409, lambda sec: [shopper(1, wrists=poses.get(sec, NEUTRAL)), shopper(2)]) == []
    assert cam.state.cues == {"1": s(110)}
    (alert,) = stay(cam, 410, 415, lambda sec: [shopper(1), shopper(2)])
    assert {k: alert.facts[k] for k in ("track", "limit", "limit_s", "counted_s", "dwell_s")} == {
        "track": "1", "limit": "cue", "limit_s": "300", "counted_s": "300.0", "dwell_s": "410.0"}
    assert cam.of(rules.CONCEALMENT) == []
    # Then at the exit: the cue's own exit limit, 20 s, raised at medium severity.
    at_exit = s(500)
    (exit_alert,) = stay(cam, 500, 530, lambda sec: [shopper(1, EXIT, at_exit), shopper(2, EXIT, at_exit)])
    assert {k: exit_alert.facts[k] for k in ("zone_kind", "limit", "limit_s", "dwell_s")} == {
        "zone_kind": "exit", "limit": "cue", "limit_s": "20", "dwell_s": "20.0"}
    assert exit_alert.severity == Severity.SEVERITY_MEDIUM


def test_a_hand_at_the_hip_without_reaching_first_is_no_cue() -> None:
    cam = Camera()
    assert stay(cam, 0, 200, lambda sec: [shopper(1, wrists=AT_HIP), shopper(2)]) == []
    assert cam.state.cues == {}


def test_exit_limits_plain_and_alone() -> None:
    cam = Camera()
    assert stay(cam, 0, 179, lambda sec: [shopper(1, EXIT), shopper(2, EXIT)]) == []
    found = stay(cam, 180, 181, lambda sec: [shopper(1, EXIT), shopper(2, EXIT)])
    assert [(a.facts["limit"], a.facts["limit_s"]) for a in found] == [("plain", "180")] * 2
    assert all(a.severity == Severity.SEVERITY_LOW for a in found)
    alone = Camera()
    assert stay(alone, 0, 119, lambda sec: [shopper(1, EXIT)]) == []
    (alert,) = stay(alone, 120, 121, lambda sec: [shopper(1, EXIT)])
    assert (alert.facts["limit"], alert.facts["limit_s"], alert.severity) == ("alone", "120", Severity.SEVERITY_LOW)


def test_a_new_visit_of_the_same_track_can_loiter_again() -> None:
    cam = Camera()
    assert len(dwell(cam, 900)) == 1
    assert dwell(cam, 901) == [] and dwell(cam, 3600) == []
    assert len(dwell(cam, 900, entered_ms=s(5000))) == 1


def test_no_loitering_in_other_zones() -> None:
    cam = Camera()
    assert stay(cam, 0, 1200, lambda sec: [shopper(1, COUNTER), shopper(2, "unknown-zone")], step_s=10) == []
    assert cam.state.visits == {}


LOITERING_OVERRIDE = {"high_value_s": 100, "high_value_alone_s": 50, "high_value_cue_s": 10, "exit_s": 40, "exit_alone_s": 30, "exit_cue_s": 5}


@pytest.mark.parametrize(("field", "value"), LOITERING_OVERRIDE.items())
def test_each_loitering_limit_is_overridden_per_chain_store_register_and_zone(field: str, value: float) -> None:
    chain, store, register, zone = ({"loitering": {field: v}} for v in (value * 4, value * 3, value * 2, value))
    assert getattr(resolve(chain).loitering, field) == value * 4
    assert getattr(resolve(chain, store).loitering, field) == value * 3
    assert getattr(resolve(chain, store, register).loitering, field) == value * 2
    merged = resolve(chain, store, {}, zone).loitering
    assert getattr(merged, field) == value
    assert all(getattr(merged, other) == getattr(RulesConfig().loitering, other) for other in LOITERING_OVERRIDE if other != field)


def test_zone_overrides_of_each_limit_take_effect() -> None:
    override = resolve({"loitering": LOITERING_OVERRIDE})
    cam = Camera(camera_ctx({HV: override, HV2: RulesConfig(), EXIT: override}))
    found = stay(cam, 0, 100, lambda sec: [shopper(1, HV), shopper(2, HV), shopper(3, HV2), shopper(4, HV2)])
    assert [(a.facts["zone"], a.facts["limit"], a.facts["dwell_s"]) for a in found] == [(HV, "plain", "100.0")] * 2
    alone = Camera(camera_ctx({HV: override}))
    assert [(a.facts["limit"], a.facts["dwell_s"]) for a in stay(alone, 0, 60, lambda sec: [shopper()])] == [("alone", "50.0")]
    cue = Camera(camera_ctx({HV: override, EXIT: override}))
    poses = {1.0: REACH, 2.0: AT_HIP, 3.0: AT_HIP}
    found = stay(cue, 0, 20, lambda sec: [shopper(1, wrists=poses.get(sec, NEUTRAL)), shopper(2)])
    assert [(a.facts["track"], a.facts["limit"], a.facts["dwell_s"]) for a in found] == [("1", "cue", "13.0")]
    at_exit = Camera(camera_ctx({EXIT: override}))
    found = stay(at_exit, 0, 60, lambda sec: [shopper(1, EXIT), shopper(2, EXIT)]) + stay(at_exit, 100, 200, lambda sec: [shopper(3, EXIT, s(100))])
    assert [(a.facts["track"], a.facts["limit"], a.facts["dwell_s"]) for a in found] == [("1", "plain", "40.0"), ("2", "plain", "40.0"),
                                                                                          ("3", "alone", "30.0")]


def test_loitering_disabled_in_a_zone_or_no_rules_for_it() -> None:
    disabled = Camera(camera_ctx({HV: resolve({"loitering": {"enabled": False}})}))
    assert dwell(disabled, 3600, zone=HV) == []
    assert dwell(disabled, 3600, zone=EXIT) == []  # no rules in force for this zone


def test_the_feedback_factor_lengthens_every_loitering_limit() -> None:
    feedback = FeedbackState(rules={rules.LOITERING: RuleFeedback(factor=1.5)})
    cam = Camera(camera_ctx(feedback=feedback))
    assert stay(cam, 0, 899, lambda sec: [shopper()], step_s=7) == []
    (alert,) = stay(cam, 900, 901, lambda sec: [shopper()])
    assert (alert.facts["limit"], alert.facts["limit_s"]) == ("alone", "900")
    plain = Camera(camera_ctx(feedback=feedback))
    assert dwell(plain, 1349) == []
    assert len(dwell(plain, 1350)) == 1


def test_loitering_still_applies_in_a_staff_shift() -> None:
    """Cleaners are expected after hours; one standing fifteen minutes at the spirits cabinet still loiters."""
    cleaners = StaffShift(name="cleaners", start=time(21), end=time(22, 30))
    cam = Camera(camera_ctx(hours=DAY_HOURS, shifts=(cleaners,)))
    night = local_ms(2025, 1, 15, 21, 10) - ENTERED
    found = stay(cam, night / 1000, night / 1000 + 900, lambda sec: [shopper(1, HV, ENTERED + round(night)), shopper(2, HV, ENTERED + round(night))],
                 step_s=5)
    assert [a.facts["limit"] for a in found] == ["plain", "plain"]
    assert cam.of(rules.AFTER_HOURS) == []


# --- return_abuse --------------------------------------------------------------------------------------------

TOKEN = "tok-AAAAAAAAAAAAAAAA"


def ret(event_id: str, day: float, store: str = "s1", total_minor: int = 2500) -> PosEvent:
    return PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_RETURN, store_id=store, register_id="r1", employee_id="e9",
                    event_time_ms=T0 + round(day * DAY_MS), currency="GBP", total_minor=total_minor, card_token=TOKEN)


def returns(state: TokenState, events: Iterable[PosEvent], config: RulesConfig | None = None, feedback: FeedbackState | None = None) -> list[list[Alert]]:
    """The alerts raised by each event in turn."""
    return [rules.return_abuse(state, TOKEN, e, config or RulesConfig(), feedback, T0 + 30 * DAY_MS) for e in events]


FIVE_STORES = [ret(f"r{i}", i, f"s{i}") for i in range(5)]  # days 0..4, stores s0..s4


def test_returns_in_min_stores_stores_within_the_period_raise_one_alert() -> None:
    state = TokenState()
    found = returns(state, FIVE_STORES)
    assert [len(f) for f in found] == [0, 0, 0, 0, 1]
    (alert,) = found[-1]
    assert alert.rule == rules.RETURN_ABUSE and alert.severity == Severity.SEVERITY_HIGH
    # Named by the window's first return, so arrival order and which token found it do not matter.
    assert alert.alert_id == rules.alert_id(rules.RETURN_ABUSE, "s4", "r0")
    assert alert.facts["stores"] == "s0,s1,s2,s3,s4" and alert.facts["returns"] == "5" and alert.facts["total"] == "125.00 GBP"
    assert alert.facts["window"] == "slow" and alert.facts["period_days"] == "30" and alert.facts["token"] == TOKEN
    assert [e.ref for e in alert.evidence] == ["r0", "r1", "r2", "r3", "r4"]
    # Quiet for the period: more returns within it raise nothing more.
    assert returns(state, [ret("r5", 5, "s5"), ret("r6", 6.5, "s6")]) == [[], []]


def test_min_returns_in_one_store_within_the_period_raise_one_alert() -> None:
    state = TokenState()
    found = returns(state, [ret(f"r{i}", i * 0.5) for i in range(9)])
    assert [len(f) for f in found] == [0] * 7 + [1, 0]
    assert found[7][0].facts["returns"] == "8"


def test_returns_spread_over_more_than_the_period_raise_nothing() -> None:
    state = TokenState()
    # Every 8 days in a new store: any 30 days hold 4 returns in 4 stores, any 2 days one.
    assert all(f == [] for f in returns(state, [ret(f"r{i}", 8 * i, f"s{i}") for i in range(12)]))


def test_after_the_quiet_period_a_new_burst_alerts_again() -> None:
    state = TokenState()
    first = returns(state, FIVE_STORES)[-1]
    assert all(f == [] for f in returns(state, [ret(f"p{i}", 20 + i, f"s{i}") for i in range(5)]))  # within 30 days of r0
    second = returns(state, [ret(f"q{i}", 31 + i, f"s{i}") for i in range(5)])
    assert [len(f) for f in second] == [0, 0, 0, 0, 1]
    assert second[-1][0].alert_id != first[0].alert_id


def test_the_same_return_twice_counts_once() -> None:
    state = TokenState()
    assert returns(state, [*FIVE_STORES[:4], FIVE_STORES[3], FIVE_STORES[3]]) == [[]] * 6
    assert len(state.returns) == 4
    state = TokenState()
    same_store = [ret(f"r{i}", i * 0.5) for i in range(7)]
    assert all(f == [] for f in returns(state, [*same_store, same_store[0], same_store[6]]))


def test_returns_arriving_out_of_order_count_in_their_place() -> None:
    state = TokenState()
    shuffled = [FIVE_STORES[i] for i in (3, 1, 0, 2, 4)]
    assert [len(f) for f in returns(state, shuffled)] == [0, 0, 0, 0, 1]
    # An old return arriving after newer ones outside the period raises nothing.
    state = TokenState()
    assert all(f == [] for f in returns(state, [ret("new1", 20, "s1"), ret("new2", 22.5, "s2"), ret("new3", 25, "s3"), ret("new4", 27.5, "s4"),
                                                 ret("old", -8, "s5")]))


def test_an_old_return_arriving_last_completes_the_period() -> None:
    state = TokenState()
    late_oldest = [FIVE_STORES[i] for i in (1, 2, 3, 4, 0)]
    assert [len(f) for f in returns(state, late_oldest)] == [0, 0, 0, 0, 1]


def test_return_abuse_disabled_and_feedback_factor() -> None:
    state = TokenState()
    assert all(f == [] for f in returns(state, FIVE_STORES, resolve({"return_abuse": {"enabled": False}})))
    assert len(state.returns) == 5  # still remembered
    feedback = FeedbackState(rules={rules.RETURN_ABUSE: RuleFeedback(factor=1.2)})  # 5 stores -> 6
    state = TokenState()
    six = [*FIVE_STORES, ret("r5", 5, "s5")]
    found = returns(state, six, feedback=feedback)
    assert [len(f) for f in found] == [0] * 5 + [1]
    assert found[-1][0].facts["min_stores"] == "6"


def test_three_stores_within_36_hours_raise_one_fast_alert() -> None:
    """The outside review's case: the same card refunded at three stores of the chain within 36 hours."""
    state = TokenState()
    run = [ret("a", 0, "north"), ret("b", 0.5, "south"), ret("c", 1.5, "east")]
    found = returns(state, run)
    assert [len(f) for f in found] == [0, 0, 1]
    (alert,) = found[-1]
    assert alert.alert_id == rules.alert_id(rules.RETURN_ABUSE, "east", "a")
    assert {k: alert.facts[k] for k in ("token", "window", "returns", "stores", "period_days", "min_stores")} == {
        "token": TOKEN, "window": "fast", "returns": "3", "stores": "east,north,south", "period_days": "2", "min_stores": "3"}
    assert "48 hours" in alert.explanation
    # More stores in the same run add nothing: one alert per token per period.
    assert returns(state, [ret("d", 1.8, "west"), ret("e", 2, "central")]) == [[], []]


def test_three_stores_spread_over_more_than_two_days_are_not_a_run() -> None:
    state = TokenState()
    assert all(f == [] for f in returns(state, [ret("a", 0, "north"), ret("b", 1, "south"), ret("c", 2.1, "east")]))


def test_the_slow_serial_returner_raises_one_alert() -> None:
    state = TokenState()
    found = returns(state, [ret(f"r{i}", 3.5 * i, "s1" if i % 2 else "s2") for i in range(9)])  # two stores, 8 returns in 24.5 days
    assert [len(f) for f in found] == [0] * 7 + [1, 0]
    (alert,) = found[7]
    assert alert.facts["window"] == "slow" and alert.facts["returns"] == "8" and alert.facts["min_returns"] == "8"
    assert alert.alert_id == rules.alert_id(rules.RETURN_ABUSE, "s1", "r0")


def test_a_fast_run_inside_a_serial_returners_month_raises_one_alert_naming_its_first_return() -> None:
    """Both windows complete on the same return: one alert, the window that holds more (the slow one)."""
    state = TokenState()
    run = [*(ret(f"r{i}", i, "home") for i in range(5)), ret("x", 10, "s1"), ret("y", 10.5, "s2"), ret("z", 11, "s3")]
    found = returns(state, run)
    assert [len(f) for f in found] == [0] * 7 + [1]
    (alert,) = found[-1]
    assert alert.facts["window"] == "slow" and alert.alert_id == rules.alert_id(rules.RETURN_ABUSE, "s3", "r0")


def test_the_fast_and_slow_windows_never_alert_on_the_same_returns() -> None:
    """Random histories of one token (stores, times over 120 days, arrival order): the alerts' returns
    never overlap, and their first returns lie at least the slow period apart."""
    rng = random.Random(24)
    for _ in range(300):
        events = [ret(f"r{i}", rng.uniform(0, 120), f"s{rng.randrange(6)}") for i in range(rng.randrange(3, 30))]
        order = rng.sample(events, len(events))
        alerts = [a for f in returns(TokenState(), order) for a in f]
        refs = [{e.ref for e in a.evidence} for a in alerts]
        assert all(not (refs[i] & refs[j]) for i in range(len(refs)) for j in range(i))
        firsts = sorted(min(e.time_ms for e in a.evidence) for a in alerts)
        assert all(later - earlier >= 30 * DAY_MS for earlier, later in itertools.pairwise(firsts))
        # A replay in the same order (one token, one partition) raises the same ids.
        assert [a.alert_id for f in returns(TokenState(), order) for a in f] == [a.alert_id for a in alerts]


def test_the_same_returns_give_the_same_fast_alert_id_in_any_arrival_order() -> None:
    run = [ret("a", 0, "north"), ret("b", 0.5, "south"), ret("c", 1.5, "east")]
    ids = set()
    for order in itertools.permutations(run):
        (alert,) = [a for f in returns(TokenState(), order) for a in f]
        ids.add(alert.alert_id)
    assert ids == {rules.alert_id(rules.RETURN_ABUSE, "east", "a")}


RETURN_ABUSE_OVERRIDE = {"period_days": 10, "min_stores": 4, "min_returns": 6, "fast_period_h": 24, "fast_min_stores": 2}


@pytest.mark.parametrize(("field", "value"), RETURN_ABUSE_OVERRIDE.items())
def test_each_return_abuse_setting_is_overridden_per_chain_store_and_register(field: str, value: float) -> None:
    chain, store, register = ({"return_abuse": {field: v}} for v in (value * 3, value * 2, value))
    assert getattr(resolve(chain).return_abuse, field) == value * 3
    assert getattr(resolve(chain, store).return_abuse, field) == value * 2
    merged = resolve(chain, store, register).return_abuse
    assert getattr(merged, field) == value
    assert all(getattr(merged, other) == getattr(RulesConfig().return_abuse, other) for other in RETURN_ABUSE_OVERRIDE if other != field)


def test_return_abuse_overrides_take_effect_and_fast_period_h_0_turns_the_fast_window_off() -> None:
    run = [ret("a", 0, "north"), ret("b", 0.5, "south"), ret("c", 1.5, "east")]
    assert all(f == [] for f in returns(TokenState(), run, resolve({"return_abuse": {"fast_period_h": 0}})))
    assert all(f == [] for f in returns(TokenState(), run, resolve({"return_abuse": {"fast_period_h": 24}})))
    (alert,) = returns(TokenState(), run[:2], resolve({"return_abuse": {"fast_min_stores": 2}}))[-1]
    assert alert.facts["min_stores"] == "2"
    found = returns(TokenState(), [ret(f"r{i}", i) for i in range(6)], resolve({"return_abuse": {"min_returns": 6, "period_days": 10}}))
    assert [len(f) for f in found] == [0] * 5 + [1] and found[-1][0].facts["period_days"] == "10"
    # Scaled by feedback like the slow window: 3 stores x 1.2 -> 4.
    feedback = FeedbackState(rules={rules.RETURN_ABUSE: RuleFeedback(factor=1.2)})
    assert all(f == [] for f in returns(TokenState(), run, feedback=feedback))
    (alert,) = returns(TokenState(), [*run, ret("d", 1.6, "west")], feedback=feedback)[-1]
    assert (alert.facts["window"], alert.facts["min_stores"]) == ("fast", "4")


# --- employee_own_card -----------------------------------------------------------------------------------------

EMPLOYEE_TOKENS = {"e1": {"card-e1", "cust-e1"}, "e2": {"card-e2"}}


def own_card(event: PosEvent, state: TillState | None = None, config: RulesConfig | None = None) -> list[Alert]:
    return rules.employee_own_card(state or TillState(), register_ctx(config), event, EMPLOYEE_TOKENS, s(100))


def test_a_refund_to_the_employees_own_card_or_account_raises_an_alert() -> None:
    (alert,) = own_card(refund(card_token="card-e1"))
    assert alert.rule == rules.EMPLOYEE_OWN_CARD and alert.severity == Severity.SEVERITY_CRITICAL
    assert alert.facts["token"] == "card-e1" and alert.facts["employee"] == "e1"
    assert alert.alert_id == rules.alert_id(rules.EMPLOYEE_OWN_CARD, STORE, REGISTER, "rf-1")
    assert evidence(alert)["pos_event"] == "rf-1"
    returned = pos("rt-1", PosEventType.POS_EVENT_TYPE_RETURN, s(60), customer_token="cust-e1")
    assert len(own_card(returned)) == 1


def test_refunds_to_other_tokens_raise_nothing() -> None:
    assert own_card(refund(card_token="card-e2")) == []  # another employee's card
    assert own_card(refund(card_token="card-stranger")) == []
    assert own_card(refund(card_token="card-e1", employee="")) == []
    assert own_card(pos("sale-1", PosEventType.POS_EVENT_TYPE_SALE, s(60), card_token="card-e1")) == []
    assert own_card(refund(card_token="card-e1"), config=resolve({"employee_own_card": {"enabled": False}})) == []


def test_a_replayed_own_card_refund_raises_once() -> None:
    state = TillState()
    assert len(own_card(refund(card_token="card-e1"), state)) == 1
    assert own_card(refund(card_token="card-e1"), state) == []


# --- employee_own_sale -----------------------------------------------------------------------------------------

def sale(employee: str = "e1") -> PosEvent:
    return PosEvent(event_id="sale-1", type=PosEventType.POS_EVENT_TYPE_SALE, store_id=STORE, register_id="r2", transaction_id="T-100",
                    employee_id=employee, event_time_ms=T0, currency="GBP", total_minor=4999)


def sale_refund(event_id: str = "rf-1", employee: str = "e1") -> PosEvent:
    return refund(event_id, at_s=2 * 3600, employee=employee, original_transaction_id="T-100")


def own_sale(state: TransactionState, event: PosEvent, config: RulesConfig | None = None) -> list[Alert]:
    return rules.employee_own_sale(state, event, config or RulesConfig(), s(7300))


def test_a_refund_by_the_employee_who_rang_the_sale_raises_an_alert() -> None:
    state = TransactionState()
    assert rules.record_sale(state, sale()) == []
    (alert,) = own_sale(state, sale_refund())
    assert alert.rule == rules.EMPLOYEE_OWN_SALE and alert.facts["original_transaction"] == "T-100" and alert.facts["sale_register"] == "r2"
    assert ("pos_transaction", "T-100", T0) in [(e.kind, e.ref, e.time_ms) for e in alert.evidence]
    assert "2.0 h earlier" in alert.explanation
    assert own_sale(state, sale_refund()) == []  # replayed


def test_a_refund_of_a_sale_older_than_the_retention_is_not_judged() -> None:
    state = TransactionState()
    rules.record_sale(state, sale())
    config = resolve({"employee_own_sale": {"sale_retention_days": 0.05}})  # 1.2 h; the refund comes 2 h later
    assert own_sale(state, sale_refund(), config) == []


def test_a_refund_by_another_employee_raises_nothing() -> None:
    state = TransactionState()
    rules.record_sale(state, sale("e1"))
    assert own_sale(state, sale_refund(employee="e2")) == []
    assert own_sale(state, sale_refund("rf-2", employee="")) == []
    state = TransactionState()
    rules.record_sale(state, sale("e1"))
    assert own_sale(state, sale_refund(), resolve({"employee_own_sale": {"enabled": False}})) == []


def test_a_refund_before_its_sale_waits_and_is_decided_when_the_sale_comes() -> None:
    state = TransactionState()
    assert own_sale(state, sale_refund()) == []
    assert own_sale(state, sale_refund()) == []  # redelivered while waiting: held once
    assert own_sale(state, sale_refund("rf-2", employee="e2")) == []
    assert len(state.waiting) == 2
    waiting = rules.record_sale(state, sale("e1"))
    assert [w.event_id for w in waiting] == ["rf-1", "rf-2"] and state.waiting == []
    decided = [own_sale(state, w) for w in waiting]
    assert [len(d) for d in decided] == [1, 0]
    assert decided[0][0].alert_id == rules.alert_id(rules.EMPLOYEE_OWN_SALE, STORE, REGISTER, "rf-1")


# --- no_sale_rate -------------------------------------------------------------------------------------------------

def drawer(event_id: str, minutes: float, employee: str = "e1", kind: PosEventType = PosEventType.POS_EVENT_TYPE_NO_SALE) -> PosEvent:
    return pos(event_id, kind, T0 + round(minutes * 60_000), 0, employee)


def drawers(state: TillState, events: Iterable[PosEvent], config: RulesConfig | None = None) -> list[list[Alert]]:
    ctx = register_ctx(config)
    return [rules.no_sale_rate(state, ctx, e, s(0)) for e in events]


SIX_OPENS = [drawer(f"d{i}", 10 * i, kind=PosEventType.POS_EVENT_TYPE_DRAWER_OPEN if i % 2 else PosEventType.POS_EVENT_TYPE_NO_SALE)
             for i in range(6)]


def test_more_than_max_per_shift_drawer_opens_raise_one_alert_per_shift() -> None:
    state = TillState()
    found = drawers(state, SIX_OPENS)
    assert [len(f) for f in found] == [0] * 5 + [1]
    (alert,) = found[-1]
    assert alert.rule == rules.NO_SALE_RATE and alert.facts["count"] == "6" and alert.facts["limit"] == "5" and alert.facts["employee"] == "e1"
    assert alert.alert_id == rules.alert_id(rules.NO_SALE_RATE, STORE, REGISTER, "e1", "d5")
    assert [e.ref for e in alert.evidence] == [f"d{i}" for i in range(6)]
    assert drawers(state, [drawer("d6", 70), drawer("d7", 80)]) == [[], []]  # the same shift
    later = drawers(state, [drawer(f"n{i}", 9 * 60 + 10 * i) for i in range(6)])
    assert [len(f) for f in later] == [0] * 5 + [1]


def test_drawer_opens_spread_out_raise_nothing() -> None:
    state = TillState()
    assert all(f == [] for f in drawers(state, [drawer(f"d{i}", 120 * i) for i in range(12)]))


def test_another_employees_opens_do_not_count() -> None:
    state = TillState()
    mixed = [drawer(f"d{i}", 5 * i, employee="e1" if i % 2 else "e2") for i in range(10)]
    assert all(f == [] for f in drawers(state, mixed))
    (alert,) = drawers(state, [drawer("d10", 60, employee="e1")])[0]
    assert alert.facts["employee"] == "e1" and alert.facts["count"] == "6"


def test_a_replayed_drawer_open_counts_once_and_sales_do_not_count() -> None:
    state = TillState()
    assert all(f == [] for f in drawers(state, [*SIX_OPENS[:5], SIX_OPENS[4], SIX_OPENS[0]]))
    assert all(f == [] for f in drawers(state, [pos("sale", PosEventType.POS_EVENT_TYPE_SALE, T0 + 60_000)]))
    assert len(state.drawer_opens) == 5


def test_no_sale_rate_disabled_and_feedback_factor() -> None:
    assert all(f == [] for f in drawers(TillState(), SIX_OPENS, resolve({"no_sale_rate": {"enabled": False}})))
    state = TillState()
    ctx = register_ctx(feedback=FeedbackState(rules={rules.NO_SALE_RATE: RuleFeedback(factor=1.2)}))  # limit 6
    found = [rules.no_sale_rate(state, ctx, e, s(0)) for e in [*SIX_OPENS, drawer("d6", 61)]]
    assert [len(f) for f in found] == [0] * 6 + [1]


def test_drawer_opens_arriving_out_of_order_count_in_their_place() -> None:
    state = TillState()
    shuffled = [SIX_OPENS[i] for i in (2, 0, 4, 1, 3, 5)]
    assert [len(f) for f in drawers(state, shuffled)] == [0] * 5 + [1]


def test_an_old_drawer_open_arriving_last_completes_the_shift() -> None:
    state = TillState()
    late_oldest = [SIX_OPENS[i] for i in (1, 2, 3, 4, 5, 0)]
    assert [len(f) for f in drawers(state, late_oldest)] == [0] * 5 + [1]


# --- post_void ------------------------------------------------------------------------------------------------------

def void(event_id: str = "v-1", total_minor: int = 6000, **fields: Any) -> PosEvent:
    return pos(event_id, PosEventType.POS_EVENT_TYPE_VOID, s(10), total_minor, **fields)


def post_void(event: PosEvent, state: TillState | None = None, config: RulesConfig | None = None) -> list[Alert]:
    return rules.post_void(state or TillState(), register_ctx(config), event, s(11))


@pytest.mark.parametrize("fields", [{"after_tender": True}, {"original_transaction_id": "T-9"}, {"after_tender": True, "original_transaction_id": "T-9"}])
def test_a_void_after_tender_above_the_amount_raises_an_alert(fields: dict[str, Any]) -> None:
    (alert,) = post_void(void(**fields))
    assert alert.rule == rules.POST_VOID and alert.severity == Severity.SEVERITY_MEDIUM and alert.facts["min_total"] == "50.00"
    assert alert.alert_id == rules.alert_id(rules.POST_VOID, STORE, REGISTER, "v-1")
    assert alert.facts["voided_transaction"] == fields.get("original_transaction_id", "T-v-1")


def test_post_void_amount_threshold_uses_the_absolute_total() -> None:
    assert len(post_void(void(total_minor=5000, after_tender=True))) == 1
    assert len(post_void(void(total_minor=-6000, after_tender=True))) == 1
    assert post_void(void(total_minor=4999, after_tender=True)) == []
    assert post_void(void(total_minor=4999 * 2, after_tender=True), config=resolve({"post_void": {"min_total": 100}})) == []


def test_in_transaction_voids_and_other_events_raise_nothing() -> None:
    assert post_void(void(total_minor=100_000)) == []  # neither after tender nor naming a completed sale
    assert post_void(pos("rf", PosEventType.POS_EVENT_TYPE_REFUND, s(10), 100_000, after_tender=True)) == []
    assert post_void(void(after_tender=True), config=resolve({"post_void": {"enabled": False}})) == []


def test_a_replayed_post_void_raises_once() -> None:
    state = TillState()
    assert len(post_void(void(after_tender=True), state)) == 1
    assert post_void(void(after_tender=True), state) == []


# --- feedback -------------------------------------------------------------------------------------------------------

def verdict(alert_id: str, kind: Verdict, rule: str = rules.LOITERING) -> Feedback:
    return Feedback(alert_id=alert_id, store_id=STORE, verdict=kind, user="hq", time_ms=T0, rule=rule)


CONFIRMED, FALSE_ALARM, ACK = Verdict.VERDICT_CONFIRMED, Verdict.VERDICT_FALSE_ALARM, Verdict.VERDICT_ACKNOWLEDGED


def test_verdicts_count_once_per_alert_and_move_the_factor() -> None:
    state, tuning = FeedbackState(), Tuning()
    assert rules.apply_feedback(state, verdict("a1", FALSE_ALARM), tuning)
    assert not rules.apply_feedback(state, verdict("a1", FALSE_ALARM), tuning)  # replayed
    stats = state.rules[rules.LOITERING]
    assert (stats.confirmed, stats.false_alarm, stats.factor) == (0, 1, 1.1)
    assert rules.apply_feedback(state, verdict("a2", CONFIRMED), tuning)
    assert (stats.confirmed, stats.false_alarm, stats.factor) == (1, 1, 1.05)
    assert rules.precision(stats) == 0.5
    assert rules.factor(state, rules.LOITERING) == 1.05 and rules.factor(state, rules.CONCEALMENT) == 1.0


def test_a_changed_verdict_moves_its_count() -> None:
    state, tuning = FeedbackState(), Tuning()
    rules.apply_feedback(state, verdict("a1", CONFIRMED), tuning)
    assert rules.apply_feedback(state, verdict("a1", FALSE_ALARM), tuning)
    stats = state.rules[rules.LOITERING]
    assert (stats.confirmed, stats.false_alarm) == (0, 1)
    assert rules.precision(stats) == 0.0
    assert state.verdicts == {"a1": FALSE_ALARM}


def test_a_flip_flopping_verdict_moves_the_factor_as_its_last_verdict_alone() -> None:
    state, tuning = FeedbackState(), Tuning()
    for kind in (FALSE_ALARM, CONFIRMED, FALSE_ALARM, CONFIRMED, FALSE_ALARM):
        rules.apply_feedback(state, verdict("a1", kind), tuning)
    alone = FeedbackState()
    rules.apply_feedback(alone, verdict("a1", FALSE_ALARM), tuning)
    assert state.rules[rules.LOITERING].factor == alone.rules[rules.LOITERING].factor == 1.1


def test_the_factor_stays_within_bounds() -> None:
    state, tuning = FeedbackState(), Tuning(step=0.25, min_factor=0.5, max_factor=2.0)
    for i in range(20):
        rules.apply_feedback(state, verdict(f"fa{i}", FALSE_ALARM), tuning)
    assert state.rules[rules.LOITERING].factor == 2.0
    # The factor follows the counts: 40 confirmations balance the 20 false alarms at half a step each.
    for i in range(40):
        rules.apply_feedback(state, verdict(f"ok{i}", CONFIRMED), tuning)
    assert state.rules[rules.LOITERING].factor == 1.0
    for i in range(40, 80):
        rules.apply_feedback(state, verdict(f"ok{i}", CONFIRMED), tuning)
    stats = state.rules[rules.LOITERING]
    assert stats.factor == 0.5 and (stats.confirmed, stats.false_alarm) == (80, 20)


def test_acknowledgements_and_verdicts_without_a_rule_change_nothing() -> None:
    state = FeedbackState()
    assert not rules.apply_feedback(state, verdict("a1", ACK), Tuning())
    assert not rules.apply_feedback(state, verdict("a2", Verdict.VERDICT_UNSPECIFIED), Tuning())
    assert not rules.apply_feedback(state, verdict("a3", FALSE_ALARM, rule=""), Tuning())
    assert state == FeedbackState()
    rules.apply_feedback(state, verdict("a1", CONFIRMED), Tuning())
    assert not rules.apply_feedback(state, verdict("a1", ACK), Tuning())  # an ack after a verdict keeps it
    assert state.verdicts == {"a1": CONFIRMED}


def test_tuning_disabled_counts_but_keeps_the_factor() -> None:
    state = FeedbackState()
    for i in range(5):
        rules.apply_feedback(state, verdict(f"a{i}", FALSE_ALARM), Tuning(enabled=False))
    stats = state.rules[rules.LOITERING]
    assert stats.false_alarm == 5 and stats.factor == 1.0 and rules.factor(state, rules.LOITERING) == 1.0


def test_precision_without_verdicts_is_unknown() -> None:
    assert rules.precision(RuleFeedback()) is None
    assert rules.precision(RuleFeedback(confirmed=3, false_alarm=1)) == 0.75


# --- state codec --------------------------------------------------------------------------------------------------------

STATES: list[Any] = [
    RegisterState(
        changes=[Change(T0, False, -1, 1), Change(T0 + 500, True, 1, 6)],
        covered=[Coverage(T0, T0 + 3500, 1), Coverage(T0 + 9000, T0 + 12_000, 90)],
        watermark_ms=T0 + 9000, watermark_seq=90, camera_id=CAMERA,
        pending=[PendingRefund("rf-1", T0 + 100, T0 + 200, "AAEC", [rules.REFUND_WITHOUT_CUSTOMER, rules.REFUND_WITHOUT_MERCHANDISE])],
        decided=["a"], sample_received_ms=T0 + 9100,
    ),
    TillState(drawer_opens=[DrawerOpen("d1", T0, "e1"), DrawerOpen("d2", T0 + 1, "")], no_sale_quiet_until={"e1": T0 + HOUR_MS},
              decided=["a", "own-card:b"]),
    CameraState(visits={f"1:{HV}": Visit(T0, T0 + 1000, True, 0b101, 0b11, 7, T0 + 200), f"2:{HV2}": Visit(T0, T0)},
                raised={f"{rules.CONCEALMENT}:1:{HV}:{T0}": T0 + 1000}, cues={"1": T0 + 500}),
    TokenState(returns=[TokenReturn("r1", T0, "s1", "r1", 2500), TokenReturn("r2", T0 + DAY_MS, "s2", "r3", -10)], quiet_until_ms=T0 + 7 * DAY_MS),
    TransactionState(sale_employee="e1", sale_time_ms=T0, sale_register="r2", sale_seen=True, waiting=["CgR4"], decided=["rf-1"]),
    FeedbackState(rules={rules.LOITERING: RuleFeedback(3, 1, 0.95), rules.CONCEALMENT: RuleFeedback()}, verdicts={"a1": 1, "a2": 2}),
    RegisterState(), CameraState(), TokenState(), TransactionState(), FeedbackState(),
]


@pytest.mark.parametrize("value", STATES, ids=lambda v: type(v).__name__)
def test_state_codec_round_trip(value: Any) -> None:
    codec = StateCodec(type(value))
    loaded = codec.loads(codec.dumps(value))
    assert type(loaded) is type(value)
    assert loaded == value
    assert dataclasses.asdict(loaded) == dataclasses.asdict(value)


def test_state_codec_round_trips_a_state_the_rules_built() -> None:
    state = RegisterState()
    feed(state, seconds(0, 80), lambda sec: 20 <= sec < 30, merchandise=lambda sec: int(sec > 40))
    rules.add_pending(state, register_ctx(merchandise=True), refund(), s(81))
    codec = StateCodec(RegisterState)
    loaded = codec.loads(codec.dumps(state))
    assert loaded == state
    # The reloaded state decides like the original.
    assert decide(loaded, register_ctx(merchandise=True), s(81)) == decide(state, register_ctx(merchandise=True), s(81))

