"""Rule logic of the correlator, free of Faust so it can be tested on its own.

Every function takes a rule's typed state (services/correlator/state.py), the input and the rule
settings in force, updates the state and returns the alerts to raise. Time is event time
throughout: capture times for cameras, POS event times for POS events; the wall clock is only used
to give up on a camera that stays silent (Timing.max_wait_s).

Alert ids are derived from the rule and the input that triggered it (never from arrival order or the
wall clock), so a replay or a restarted worker produces the same id again.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.correlator.state import (
    CameraState,
    Change,
    Coverage,
    Departure,
    DrawerOpen,
    FeedbackState,
    HighValueVisit,
    Journey,
    PendingRefund,
    RegisterState,
    RuleFeedback,
    StoreExit,
    StoreJourneys,
    TillState,
    TokenReturn,
    TokenState,
    TrackStep,
    TransactionState,
    Visit,
    ZoneStay,
)
from services.shared.contracts.alert_pb2 import Alert, EvidenceRef, Severity
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis, PersonObservation, ZoneVisit
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.rulesconfig import RulesConfig, Tuning
from services.shared.storeconfig import Handover, OpeningHours, StaffShift

REFUND_WITHOUT_CUSTOMER = "refund_without_customer"
REFUND_WITHOUT_MERCHANDISE = "refund_without_merchandise"
CONCEALMENT = "concealment"
AFTER_HOURS = "after_hours"
LOITERING = "loitering"
RETURN_ABUSE = "return_abuse"
EMPLOYEE_OWN_CARD = "employee_own_card"
EMPLOYEE_OWN_SALE = "employee_own_sale"
NO_SALE_RATE = "no_sale_rate"
POST_VOID = "post_void"
CHECKOUT_BYPASS = "checkout_bypass"
REPEAT_VISITS = "repeat_visits"

REFUND_TYPES = {PosEventType.POS_EVENT_TYPE_REFUND, PosEventType.POS_EVENT_TYPE_RETURN}
DRAWER_TYPES = {PosEventType.POS_EVENT_TYPE_NO_SALE, PosEventType.POS_EVENT_TYPE_DRAWER_OPEN}
BAG_LABELS = {"backpack", "handbag", "suitcase"}
DECIDED_KEPT = 100
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# Zone kinds loitering watches; concealment watches high_value only.
LOITERING_KINDS = ("high_value", "exit")
# A person's concealment cue shortens their loitering limits for this long (a shop visit).
CUE_KEPT_MS = HOUR_MS
# The cue must show in this many frames of a visit to shorten the loitering limits: a single frame
# with a hand at the hip is as often a phone or a wallet (concealment itself wants 3 of 8).
LOITERING_CUE_FRAMES = 2


def alert_id(rule: str, *parts: str) -> str:
    """Same rule and same triggering input give the same id, so replays never page twice."""
    digest = hashlib.sha256("|".join((rule, *parts)).encode()).hexdigest()
    return f"al-{digest[:24]}"


def _clock(ms: int, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).strftime("%H:%M:%S")


def _money(minor: int, currency: str) -> str:
    return f"{minor / 100:.2f} {currency}".strip()


def _kind(event: PosEvent) -> str:
    return PosEventType.Name(event.type).removeprefix("POS_EVENT_TYPE_").lower()


def _pos_evidence(alert: Alert, event: PosEvent) -> None:
    """The triggering POS event (and its transaction) as evidence; its correlation id goes on to the page."""
    alert.correlation_id = event.correlation_id
    alert.evidence.append(EvidenceRef(kind="pos_event", ref=event.event_id, time_ms=event.event_time_ms))
    if event.transaction_id:
        alert.evidence.append(EvidenceRef(kind="pos_transaction", ref=event.transaction_id, time_ms=event.event_time_ms))


def _alert(rule: str, severity: Severity, score: float, explanation: str, store_id: str, event_time_ms: int, raised_ms: int,
           facts: dict[str, object], *id_parts: str, camera_id: str = "", register_id: str = "") -> Alert:
    alert = Alert(
        alert_id=alert_id(rule, store_id, *id_parts), rule=rule, severity=severity, score=round(min(max(score, 0.0), 1.0), 3),
        explanation=explanation, store_id=store_id, camera_id=camera_id, register_id=register_id,
        event_time_ms=event_time_ms, raised_time_ms=raised_ms,
    )
    for name, value in facts.items():
        alert.facts[name] = str(value)
    return alert


def _remember(decided: list[str], event_id: str) -> None:
    decided.append(event_id)
    del decided[:-DECIDED_KEPT]


# --- feedback -------------------------------------------------------------------------------------

def factor(feedback: FeedbackState | None, rule: str) -> float:
    """How much feedback has scaled this rule's threshold at this store (1: as configured)."""
    if feedback is None or rule not in feedback.rules:
        return 1.0
    return feedback.rules[rule].factor


VERDICTS_KEPT = 5000


def apply_feedback(state: FeedbackState, verdict: Feedback, tuning: Tuning) -> bool:
    """Count a verdict once per alert (a changed verdict moves its count) and nudge the factor.

    A false alarm raises the rule's threshold factor by `step`, a confirmation lowers it by half a
    step (a confirmed alert says the threshold may be a little too strict), both within bounds.
    Returns False when it changes nothing (a replay, an acknowledgement).
    """
    if verdict.verdict not in (Verdict.VERDICT_CONFIRMED, Verdict.VERDICT_FALSE_ALARM) or not verdict.rule:
        return False
    previous = state.verdicts.get(verdict.alert_id)
    if previous == verdict.verdict:
        return False
    stats = state.rules.setdefault(verdict.rule, RuleFeedback())
    if previous == Verdict.VERDICT_CONFIRMED:
        stats.confirmed -= 1
    elif previous == Verdict.VERDICT_FALSE_ALARM:
        stats.false_alarm -= 1
    if verdict.verdict == Verdict.VERDICT_CONFIRMED:
        stats.confirmed += 1
    else:
        stats.false_alarm += 1
    if tuning.enabled:
        # From the counts, not step by step, so a changed verdict moves the factor as its last verdict alone.
        raw = 1.0 + tuning.step * stats.false_alarm - tuning.step / 2 * stats.confirmed
        stats.factor = round(min(max(raw, tuning.min_factor), tuning.max_factor), 4)
    state.verdicts.pop(verdict.alert_id, None)
    state.verdicts[verdict.alert_id] = verdict.verdict
    while len(state.verdicts) > VERDICTS_KEPT:
        del state.verdicts[next(iter(state.verdicts))]
    return True


def precision(stats: RuleFeedback) -> float | None:
    judged = stats.confirmed + stats.false_alarm
    return stats.confirmed / judged if judged else None


# --- register: presence, coverage and watermark -----------------------------------------------------

@dataclass(slots=True)
class Sample:
    """One frame reduced to a register's zones: customer present, merchandise newly put down."""

    time_ms: int
    seq: int
    camera_id: str
    customer: bool
    merchandise: int  # 1 seen, 0 not seen, -1 the camera does not watch merchandise here


def add_sample(state: RegisterState, sample: Sample, max_gap_ms: int, retention_ms: int) -> bool:
    """Record one sample; False for one at or before the watermark (a replay).

    Samples of one register come from one camera in capture order (one partition), so anything not
    newer than the watermark has been seen already. Only changes and merged coverage are kept.
    """
    if sample.time_ms <= state.watermark_ms:
        return False
    covered, changes = state.covered, state.changes
    after_gap = not covered or sample.time_ms > covered[-1].end_ms
    if after_gap:
        covered.append(Coverage(sample.time_ms, sample.time_ms + max_gap_ms, sample.seq))
    else:
        covered[-1].end_ms = sample.time_ms + max_gap_ms
    last = changes[-1] if changes else None
    # After a gap the state is unknown, so the first sample is always recorded as a change.
    if after_gap or last is None or last.customer != sample.customer or last.merchandise != sample.merchandise:
        changes.append(Change(sample.time_ms, sample.customer, sample.merchandise, sample.seq))
    state.watermark_ms, state.watermark_seq, state.camera_id = sample.time_ms, sample.seq, sample.camera_id
    # Drop history older than the retention (checked cheaply first: this runs on every frame).
    cutoff = sample.time_ms - retention_ms
    if covered[0].end_ms < cutoff:
        state.covered = [c for c in covered if c.end_ms >= cutoff]
    # Keep the last change before the cutoff: it is the state in force at the cutoff.
    if len(changes) > 1 and changes[1].time_ms < cutoff:
        first_kept = next((i for i, c in enumerate(changes) if c.time_ms >= cutoff), len(changes))
        del changes[: first_kept - 1]
    return True


def seen_in_window(state: RegisterState, start_ms: int, end_ms: int, what: str) -> bool | None:
    """True if `what` ("customer" or "merchandise") was seen at any moment of the window, False if
    the camera covered all of it and saw none, None if it did not (a gap, a silent camera, a camera
    that does not watch merchandise at this register)."""
    covers_window = any(c.start_ms <= start_ms and end_ms <= c.end_ms for c in state.covered)
    covers_start = any(c.start_ms <= start_ms <= c.end_ms for c in state.covered)
    in_force: int | None = None
    observed = True
    for change in state.changes:
        value = int(change.customer) if what == "customer" else change.merchandise
        if change.time_ms <= start_ms:
            in_force = value
            continue
        if change.time_ms > end_ms:
            break
        if value == 1:
            return True
        observed = observed and value >= 0
    if in_force == 1 and covers_start:
        return True
    if in_force == -1 or not observed:
        return None
    if in_force is None:
        # Covered, yet no change at or before the window's start: the history of the window's start
        # was dropped (a refund decided past the register's retention). Not "nobody": unknown.
        return None
    return False if covers_window else None


def _frames_around(state: RegisterState, start_ms: int) -> int:
    """Sequence number of a frame at or before `start_ms`. Only changes are kept, and the change in
    force can be minutes old (a quiet counter: `make chaos`'s empty one sent the recorder back to the
    camera's first frame, and its evidence was "partial"), so the sequence is carried forward from
    there at the camera's own rate up to the watermark, rounded down."""
    points = [(c.time_ms, c.seq) for c in state.changes if c.time_ms <= start_ms] + [(c.start_ms, c.start_seq) for c in state.covered if c.start_ms <= start_ms]
    if not points:
        return 0
    time_ms, seq = max(points, key=lambda point: point[0])
    if state.watermark_ms <= time_ms or state.watermark_seq <= seq:
        return seq  # no rate to carry it forward (or the camera's sequence started again)
    per_ms = (state.watermark_seq - seq) / (state.watermark_ms - time_ms)
    return max(seq, seq + math.floor((start_ms - time_ms) * per_ms) - 1)


# --- register: refunds and returns -------------------------------------------------------------------

@dataclass(frozen=True)
class RegisterContext:
    """What a register's rules need to know besides its state: names, rules in force, feedback."""

    store_id: str
    register_id: str
    timezone: str
    customer_zones: tuple[str, ...]
    merchandise_zones: tuple[str, ...]
    rules: RulesConfig
    feedback: FeedbackState | None = None


@dataclass(frozen=True)
class RefundOutcome:
    """What the camera said about one decided refund (for metrics and logs)."""

    event_id: str
    rule: str
    outcome: str  # "alert", "seen", "no_coverage", "below_amount", "disabled"
    # Wall time from the window's end passing to this decision (0 when decided by waiting it out).
    delay_ms: int = 0
    correlation_id: str = ""


def _window(event_ms: int, before_s: float, after_s: float, skew_s: float) -> tuple[int, int]:
    return event_ms - int((before_s + skew_s) * 1000), event_ms + int((after_s + skew_s) * 1000)


def refund_window(rule: str, event_ms: int, rules: RulesConfig) -> tuple[int, int]:
    """[start, end] of event time a refund rule looks at, widened by the POS clock's skew."""
    settings = rules.refund_without_customer if rule == REFUND_WITHOUT_CUSTOMER else rules.refund_without_merchandise
    skew_ms = rules.timing.pos_clock_skew_s * 1000
    return event_ms - int(settings.before_s * 1000 + skew_ms), event_ms + int(settings.after_s * 1000 + skew_ms)


def add_pending(state: RegisterState, ctx: RegisterContext, event: PosEvent, received_ms: int) -> bool:
    """Hold a refund until the camera passes the windows of the refund rules that apply here."""
    if event.event_id in state.decided or any(p.event_id == event.event_id for p in state.pending):
        return False
    applicable = []
    if ctx.rules.refund_without_customer.enabled:
        applicable.append(REFUND_WITHOUT_CUSTOMER)
    if ctx.rules.refund_without_merchandise.enabled and ctx.merchandise_zones:
        applicable.append(REFUND_WITHOUT_MERCHANDISE)
    if not applicable:
        return False
    encoded = base64.b64encode(event.SerializeToString()).decode()
    state.pending.append(PendingRefund(event.event_id, event.event_time_ms, received_ms, encoded, applicable))
    return True


def decide_refunds(state: RegisterState, ctx: RegisterContext, now_ms: int, raised_ms: int) -> tuple[list[Alert], list[RefundOutcome], list[PendingRefund]]:
    """Decide each pending refund rule whose window the camera has passed (or whose refund waited
    longer than max_wait_s: then what was covered decides, and an uncovered window raises nothing).

    Returns the alerts, the outcomes, and copies of the pending entries as they were before (to put
    back with `restore_pending` if the alerts cannot be sent).
    """
    alerts: list[Alert] = []
    outcomes: list[RefundOutcome] = []
    taken: list[PendingRefund] = []
    max_wait_ms = int(ctx.rules.timing.max_wait_s * 1000)
    still: list[PendingRefund] = []
    for pending in state.pending:
        # Only a camera that went silent makes a refund wait out: video still flowing (a backlog) is awaited.
        waited_out = now_ms - pending.received_ms > max_wait_ms and now_ms - state.sample_received_ms > max_wait_ms
        due = [r for r in pending.rules if waited_out or state.watermark_ms >= refund_window(r, pending.event_time_ms, ctx.rules)[1]]
        if not due:
            still.append(pending)
            continue
        taken.append(dataclasses.replace(pending, rules=list(pending.rules)))
        event = PosEvent.FromString(base64.b64decode(pending.event))
        for rule in due:
            start, end = refund_window(rule, pending.event_time_ms, ctx.rules)
            alert, outcome = _judge_refund(state, ctx, event, rule, start, end, raised_ms)
            outcomes.append(RefundOutcome(event.event_id, rule, outcome, max(0, now_ms - end) if not waited_out else 0, event.correlation_id))
            if alert:
                alerts.append(alert)
        pending.rules = [r for r in pending.rules if r not in due]
        if pending.rules:
            still.append(pending)
        else:
            _remember(state.decided, pending.event_id)
    state.pending = still
    return alerts, outcomes, taken


def _judge_refund(state: RegisterState, ctx: RegisterContext, event: PosEvent, rule: str, start: int, end: int, raised_ms: int) -> tuple[Alert | None, str]:
    settings = ctx.rules.refund_without_customer if rule == REFUND_WITHOUT_CUSTOMER else ctx.rules.refund_without_merchandise
    if not settings.enabled:
        return None, "disabled"
    what = "customer" if rule == REFUND_WITHOUT_CUSTOMER else "merchandise"
    seen = seen_in_window(state, start, end, what)
    if seen is None:
        return None, "no_coverage"
    if seen:
        return None, "seen"
    min_total = settings.min_total * factor(ctx.feedback, rule)
    if event.total_minor < min_total * 100:
        return None, "below_amount"
    zones = ctx.customer_zones if what == "customer" else ctx.merchandise_zones
    amount = _money(event.total_minor, event.currency)
    nobody = "nobody" if what == "customer" else "no merchandise newly put"
    explanation = (
        f"{_kind(event)} {event.transaction_id or event.event_id} of {amount} at register {event.register_id} "
        f"with {nobody} in {', '.join(zones)} between {_clock(start, ctx.timezone)} and {_clock(end, ctx.timezone)} "
        f"store time (camera {state.camera_id}, employee {event.employee_id or 'unknown'})"
    )
    # A bigger refund is a likelier loss; the score grows with the amount over the threshold.
    score = 0.6 + 0.4 * min(1.0, event.total_minor / max(100.0, 4 * min_total * 100 or 20000))
    alert = _alert(rule, Severity.SEVERITY_HIGH, score, explanation, event.store_id, event.event_time_ms, raised_ms,
                   {"amount": amount, "employee": event.employee_id, "zones": ",".join(zones), "window_start_ms": start,
                    "window_end_ms": end, "min_total": f"{min_total:.2f}"},
                   event.register_id, event.event_id, camera_id=state.camera_id, register_id=event.register_id)
    _pos_evidence(alert, event)
    alert.evidence.append(EvidenceRef(kind="camera_window", ref=f"{start}-{end}", camera_id=state.camera_id, time_ms=event.event_time_ms))
    first = _frames_around(state, start)
    alert.evidence.append(EvidenceRef(kind="frames", ref=f"{first}-{state.watermark_seq}", camera_id=state.camera_id, time_ms=start))
    return alert, "alert"


def restore_pending(state: RegisterState, taken: Iterable[PendingRefund]) -> None:
    """Put decisions back as they were, to be decided again on the register's next event."""
    for pending in taken:
        if pending.event_id in state.decided:
            state.decided.remove(pending.event_id)
        state.pending = [p for p in state.pending if p.event_id != pending.event_id] + [pending]


def timed_out(state: RegisterState, now_ms: int, max_wait_ms: int) -> bool:
    return now_ms - state.sample_received_ms > max_wait_ms and any(now_ms - p.received_ms > max_wait_ms for p in state.pending)


# --- register: decided on arrival ---------------------------------------------------------------------

def post_void(state: TillState, ctx: RegisterContext, event: PosEvent, raised_ms: int) -> list[Alert]:
    """A void after tender (flagged, or naming a completed transaction) above the amount."""
    settings = ctx.rules.post_void
    if not settings.enabled or event.type != PosEventType.POS_EVENT_TYPE_VOID:
        return []
    if not (event.after_tender or event.original_transaction_id):
        return []
    min_total = settings.min_total * factor(ctx.feedback, POST_VOID)
    if abs(event.total_minor) < min_total * 100 or event.event_id in state.decided:
        return []
    _remember(state.decided, event.event_id)
    amount = _money(abs(event.total_minor), event.currency)
    explanation = (f"post-void of {event.original_transaction_id or event.transaction_id or event.event_id} ({amount}) at register "
                   f"{event.register_id} at {_clock(event.event_time_ms, ctx.timezone)} store time by employee {event.employee_id or 'unknown'}, "
                   f"after the transaction was tendered (threshold {min_total:.2f})")
    score = 0.5 + 0.5 * min(1.0, abs(event.total_minor) / max(100.0, 4 * min_total * 100))
    alert = _alert(POST_VOID, Severity.SEVERITY_MEDIUM, score, explanation, event.store_id, event.event_time_ms, raised_ms,
                   {"amount": amount, "employee": event.employee_id, "voided_transaction": event.original_transaction_id or event.transaction_id,
                    "min_total": f"{min_total:.2f}"},
                   event.register_id, event.event_id, register_id=event.register_id)
    _pos_evidence(alert, event)
    return [alert]


def employee_own_card(state: TillState, ctx: RegisterContext, event: PosEvent, employee_tokens: dict[str, set[str]], raised_ms: int) -> list[Alert]:
    """A refund or return to a card or customer token of the employee who keyed it in."""
    if not ctx.rules.employee_own_card.enabled or event.type not in REFUND_TYPES or not event.employee_id:
        return []
    own = employee_tokens.get(event.employee_id, set())
    matched = [t for t in (event.card_token, event.customer_token) if t and t in own]
    key = f"own-card:{event.event_id}"
    if not matched or key in state.decided:
        return []
    _remember(state.decided, key)
    amount = _money(event.total_minor, event.currency)
    explanation = (f"{_kind(event)} {event.transaction_id or event.event_id} of {amount} at register {event.register_id} paid out to a card or "
                   f"customer account of employee {event.employee_id}, who keyed it in")
    alert = _alert(EMPLOYEE_OWN_CARD, Severity.SEVERITY_CRITICAL, 0.95, explanation, event.store_id, event.event_time_ms, raised_ms,
                   {"amount": amount, "employee": event.employee_id, "token": matched[0]},
                   event.register_id, event.event_id, register_id=event.register_id)
    _pos_evidence(alert, event)
    return [alert]


def no_sale_rate(state: TillState, ctx: RegisterContext, event: PosEvent, raised_ms: int) -> list[Alert]:
    """Drawer opens without a sale by one employee at this register, over `max_per_shift` within a
    sliding shift; one alert per employee per shift. Late and out-of-order events count where they belong."""
    settings = ctx.rules.no_sale_rate
    if event.type not in DRAWER_TYPES or any(d.event_id == event.event_id for d in state.drawer_opens):
        return []
    shift_ms = int(settings.shift_h * 3600 * 1000)
    state.drawer_opens.append(DrawerOpen(event.event_id, event.event_time_ms, event.employee_id))
    state.drawer_opens.sort(key=lambda d: d.time_ms)
    newest = state.drawer_opens[-1].time_ms
    state.drawer_opens = [d for d in state.drawer_opens if d.time_ms > newest - 2 * shift_ms]
    if not settings.enabled:
        return []
    limit = math.ceil(settings.max_per_shift * factor(ctx.feedback, NO_SALE_RATE))
    theirs = [d for d in state.drawer_opens if d.employee_id == event.employee_id]
    mine = _crowded_window(theirs, event.event_time_ms, shift_ms, limit, lambda d: d.time_ms)
    if mine is None or mine[0].time_ms < state.no_sale_quiet_until.get(event.employee_id, 0):
        return []
    state.no_sale_quiet_until[event.employee_id] = mine[0].time_ms + shift_ms
    explanation = (f"{len(mine)} drawer opens without a sale by employee {event.employee_id or 'unknown'} at register {event.register_id} "
                   f"between {_clock(mine[0].time_ms, ctx.timezone)} and {_clock(mine[-1].time_ms, ctx.timezone)} store time "
                   f"(limit {limit} per {settings.shift_h:g} h shift)")
    alert = _alert(NO_SALE_RATE, Severity.SEVERITY_MEDIUM, min(1.0, 0.5 + 0.1 * (len(mine) - limit)), explanation, event.store_id,
                   event.event_time_ms, raised_ms,
                   {"count": len(mine), "limit": limit, "shift_h": settings.shift_h, "employee": event.employee_id},
                   event.register_id, event.employee_id, event.event_id, register_id=event.register_id)
    for drawer in mine:
        alert.evidence.append(EvidenceRef(kind="pos_event", ref=drawer.event_id, time_ms=drawer.time_ms))
    alert.correlation_id = event.correlation_id
    return [alert]


def _crowded_window(items: list, event_ms: int, span_ms: int, limit: int, time_of: Callable[[Any], int],
                    crowded: Callable[[list], bool] | None = None) -> list | None:
    """The first window of `span_ms` holding the event at `event_ms` that is crowded (more than
    `limit` items, or `crowded(window)`), ending at that event or at a later item: so an old event
    that arrives late still completes the window it belongs to. None if there is none."""
    ordered = sorted(items, key=time_of)
    for end in [time_of(i) for i in ordered if event_ms <= time_of(i) < event_ms + span_ms]:
        window = [i for i in ordered if end - span_ms < time_of(i) <= end]
        if (crowded(window) if crowded else len(window) > limit):
            return window
    return None


# --- chain-wide: returns per card or customer token -----------------------------------------------

def return_abuse(state: TokenState, token: str, event: PosEvent, rules: RulesConfig, feedback: FeedbackState | None, raised_ms: int) -> list[Alert]:
    """The same token returning in `min_stores` stores or `min_returns` times within `period_days`
    (slow window: the serial returner), or in `fast_min_stores` stores within `fast_period_h` (fast
    window: a run through the chain), sliding, in event time.

    One alert per token per period: after an alert, only returns from its first return plus the
    longer period on count again, so the fast and the slow window never alert on the same returns.
    """
    settings = rules.return_abuse
    if any(r.event_id == event.event_id for r in state.returns):
        return []
    period_ms = int(settings.period_days * DAY_MS)
    fast_ms = int(settings.fast_period_h * HOUR_MS)
    longest_ms = max(period_ms, fast_ms)
    state.returns.append(TokenReturn(event.event_id, event.event_time_ms, event.store_id, event.register_id, event.total_minor))
    state.returns.sort(key=lambda r: r.time_ms)
    newest = state.returns[-1].time_ms
    state.returns = [r for r in state.returns if r.time_ms > newest - 2 * longest_ms]
    if not settings.enabled or event.event_time_ms < state.quiet_until_ms:
        return []
    scale = factor(feedback, RETURN_ABUSE)
    min_stores, min_returns = max(2, math.ceil(settings.min_stores * scale)), max(2, math.ceil(settings.min_returns * scale))
    fast_min_stores = max(2, math.ceil(settings.fast_min_stores * scale))
    # Returns of an earlier alert's period count for nothing more (its alert already names the token).
    counting = [r for r in state.returns if r.time_ms >= state.quiet_until_ms]
    found: list[tuple[str, list]] = []
    if fast_ms:
        fast = _crowded_window(counting, event.event_time_ms, fast_ms, 0, lambda r: r.time_ms,
                               lambda window: len({r.store_id for r in window}) >= fast_min_stores)
        if fast is not None:
            found.append(("fast", fast))
    slow = _crowded_window(counting, event.event_time_ms, period_ms, 0, lambda r: r.time_ms,
                           lambda window: len({r.store_id for r in window}) >= min_stores or len(window) >= min_returns)
    if slow is not None:
        found.append(("slow", slow))
    if not found:
        return []
    # The window that would have been complete first (in event time), the longer one of two that end together.
    window, recent = min(found, key=lambda f: (f[1][-1].time_ms, f[1][0].time_ms))
    stores = sorted({r.store_id for r in recent})
    state.quiet_until_ms = recent[0].time_ms + longest_ms
    total = sum(r.total_minor for r in recent)
    latest = recent[-1]
    facts: dict[str, object] = {"token": token, "window": window, "returns": len(recent), "stores": ",".join(stores)}
    if window == "fast":
        span, limits = f"{settings.fast_period_h:g} hours", f"limit: {fast_min_stores} stores"
        score = 0.7 * len(stores) / fast_min_stores
        facts |= {"period_days": f"{settings.fast_period_h / 24:g}", "min_stores": fast_min_stores}
    else:
        span, limits = f"{settings.period_days:g} days", f"limits: {min_returns} returns or {min_stores} stores"
        score = 0.5 * max(len(stores) / min_stores, len(recent) / min_returns)
        facts |= {"period_days": f"{settings.period_days:g}", "min_stores": min_stores, "min_returns": min_returns}
    facts["total"] = _money(total, event.currency)
    explanation = (f"card or customer token {token[:12]} returned goods {len(recent)} times in {len(stores)} stores "
                   f"within {span} ({limits}), {_money(total, event.currency)} in all; latest at {latest.store_id} register {latest.register_id}")
    # The id names the window's first return, not the token, the window or the return that happened
    # to arrive last: the same returns give the same id whatever their arrival order, and a return
    # that carries both a card and a customer token gives one alert id through both tokens' tables.
    alert = _alert(RETURN_ABUSE, Severity.SEVERITY_HIGH, max(min(score, 1.0), 0.6), explanation, latest.store_id, latest.time_ms, raised_ms,
                   facts, recent[0].event_id, register_id=latest.register_id)
    for r in recent:
        alert.evidence.append(EvidenceRef(kind="pos_event", ref=r.event_id, time_ms=r.time_ms))
    alert.correlation_id = event.correlation_id
    return [alert]


# --- per transaction: the employee who rang the sale ---------------------------------------------------

def record_sale(state: TransactionState, sale: PosEvent) -> list[PosEvent]:
    """Remember who rang the sale; returns the refunds that were waiting for it."""
    state.sale_employee, state.sale_time_ms, state.sale_register, state.sale_seen = sale.employee_id, sale.event_time_ms, sale.register_id, True
    waiting = [PosEvent.FromString(base64.b64decode(w)) for w in state.waiting]
    state.waiting = []
    return waiting


def employee_own_sale(state: TransactionState, refund: PosEvent, rules: RulesConfig, raised_ms: int) -> list[Alert]:
    """A refund keyed in by the employee who rang up the original sale. A refund that arrives before
    its sale waits in the transaction's state for it."""
    if not rules.employee_own_sale.enabled or refund.event_id in state.decided:
        return []
    if not state.sale_seen:
        encoded = base64.b64encode(refund.SerializeToString()).decode()
        if encoded not in state.waiting:
            state.waiting.append(encoded)
        return []
    _remember(state.decided, refund.event_id)
    too_old = refund.event_time_ms - state.sale_time_ms > rules.employee_own_sale.sale_retention_days * DAY_MS
    if not refund.employee_id or refund.employee_id != state.sale_employee or too_old:
        return []
    amount = _money(refund.total_minor, refund.currency)
    explanation = (f"{_kind(refund)} of {amount} at register {refund.register_id} keyed in by employee {refund.employee_id}, who also rang up "
                   f"the original sale {refund.original_transaction_id} at register {state.sale_register} "
                   f"({(refund.event_time_ms - state.sale_time_ms) / 3_600_000:.1f} h earlier)")
    alert = _alert(EMPLOYEE_OWN_SALE, Severity.SEVERITY_MEDIUM, 0.7, explanation, refund.store_id, refund.event_time_ms, raised_ms,
                   {"amount": amount, "employee": refund.employee_id, "original_transaction": refund.original_transaction_id,
                    "sale_register": state.sale_register},
                   refund.register_id, refund.event_id, register_id=refund.register_id)
    _pos_evidence(alert, refund)
    alert.evidence.append(EvidenceRef(kind="pos_transaction", ref=refund.original_transaction_id, time_ms=state.sale_time_ms))
    return [alert]


# --- camera: after hours, loitering, concealment ------------------------------------------------------

def closed_period(hours: OpeningHours | None, holidays: tuple[date, ...], timezone: str, time_ms: int) -> str | None:
    """The closed period `time_ms` falls in, named by its local date ("2026-12-24" for a night that
    starts that evening, "holiday 2026-12-25" for a whole day), or None while the store is open or
    has no opening hours configured. Handles hours past midnight (open 18:00, close 02:00)."""
    if hours is None:
        return None
    return _closed_period_at_second(hours, holidays, timezone, time_ms // 1000)


@functools.lru_cache(maxsize=4096)
def _closed_period_at_second(hours: OpeningHours, holidays: tuple[date, ...], timezone: str, second: int) -> str | None:
    """closed_period, cached per second: every frame of every camera of a store asks it."""
    local = datetime.fromtimestamp(second, ZoneInfo(timezone))
    today, now = local.date(), local.time()
    if today in set(holidays):
        return f"holiday {today.isoformat()}"
    if hours.open <= hours.close:
        if hours.open <= now < hours.close:
            return None
        night_of = today if now >= hours.close else today - timedelta(days=1)
    else:  # open across midnight: closed between close and open
        if now >= hours.open or now < hours.close:
            return None
        night_of = today
    return night_of.isoformat()


def expected_shift(shifts: tuple[StaffShift, ...], holidays: tuple[date, ...], timezone: str, time_ms: int) -> StaffShift | None:
    """The staff shift (cleaners, a stock-take) during which people are expected at `time_ms`, in
    store time, or None. A shift whose end is before its start runs past midnight and belongs to
    the day it started."""
    if not shifts:
        return None
    return _shift_at_second(shifts, holidays, timezone, time_ms // 1000)


@functools.lru_cache(maxsize=4096)
def _shift_at_second(shifts: tuple[StaffShift, ...], holidays: tuple[date, ...], timezone: str, second: int) -> StaffShift | None:
    local = datetime.fromtimestamp(second, ZoneInfo(timezone))
    today, now = local.date(), local.time()
    yesterday = today - timedelta(days=1)
    for shift in shifts:
        if shift.start < shift.end:
            if shift.start <= now < shift.end and shift.starts_on(today, holidays):
                return shift
        elif (now >= shift.start and shift.starts_on(today, holidays)) or (now < shift.end and shift.starts_on(yesterday, holidays)):
            return shift
    return None


@dataclass(frozen=True)
class CameraContext:
    store_id: str
    camera_id: str
    timezone: str
    opening_hours: OpeningHours | None
    holidays: tuple[date, ...]
    # zone id -> kind, and the rules in force in each zone (store rules for zone-less rules)
    zone_kinds: dict[str, str]
    zone_rules: dict[str, RulesConfig]
    store_rules: RulesConfig
    feedback: FeedbackState | None = None
    # The store's staff shifts that cover this camera: people expected while the store is closed.
    shifts: tuple[StaffShift, ...] = ()
    # Zones whose visits go to the store's journeys (checkout bypass, repeat visits), by kind; empty
    # when both rules are off at the store. Handover zones are followed whatever their kind.
    followed: dict[str, str] = field(default_factory=dict)
    # Whether the camera's door lines go to the store's journeys (an exit for checkout bypass).
    door_lines: bool = False


def _camera_evidence(alert: Alert, analysis: FrameAnalysis, first_seq: int, first_ms: int) -> None:
    alert.evidence.append(EvidenceRef(kind="frames", ref=f"{first_seq}-{analysis.frame_sequence}", camera_id=analysis.camera_id, time_ms=first_ms))
    alert.evidence.append(EvidenceRef(kind="frame", ref=str(analysis.frame_sequence), camera_id=analysis.camera_id, time_ms=analysis.capture_time_ms))


def _raise_once(state: CameraState, key: str, time_ms: int) -> bool:
    if key in state.raised:
        return False
    state.raised[key] = time_ms
    return True


def camera_rules(state: CameraState, ctx: CameraContext, analysis: FrameAnalysis, raised_ms: int) -> tuple[list[Alert], bool]:
    """After hours, loitering and concealment on one analysed frame. Returns the alerts and whether
    the state changed (only then is it written to the table)."""
    alerts: list[Alert] = []
    changed = False
    now = analysis.capture_time_ms
    alerts += _after_hours(state, ctx, analysis)
    hand_cues_now, visits_changed = _update_visits(state, ctx, analysis)
    alerts += _concealment(state, ctx, analysis, hand_cues_now)
    alerts += _loitering(state, ctx, analysis)
    changed = bool(alerts) or visits_changed
    stale = [k for k, t in state.raised.items() if now - t > DAY_MS]
    for key in stale:
        del state.raised[key]
    for alert in alerts:
        alert.raised_time_ms = raised_ms
    return alerts, changed or bool(stale)


def _after_hours(state: CameraState, ctx: CameraContext, analysis: FrameAnalysis) -> list[Alert]:
    rules = ctx.store_rules.after_hours
    if not rules.enabled or not analysis.persons:
        return []
    period = closed_period(ctx.opening_hours, ctx.holidays, ctx.timezone, analysis.capture_time_ms)
    if period is None:
        return []
    min_ms = rules.min_track_s * 1000 * factor(ctx.feedback, AFTER_HOURS)
    lasting = [p for p in analysis.persons if analysis.capture_time_ms - p.first_seen_ms >= min_ms]
    if not lasting:
        return []
    # Cleaners and stock-takers are expected in their shift; more of them than the shift has are not.
    shift = expected_shift(ctx.shifts, ctx.holidays, ctx.timezone, analysis.capture_time_ms)
    if shift is not None and (shift.max_persons is None or len(lasting) <= shift.max_persons):
        return []
    if not _raise_once(state, f"{AFTER_HOURS}:{period}", analysis.capture_time_ms):
        return []
    person = min(lasting, key=lambda p: p.first_seen_ms)
    explanation = (f"{len(lasting)} person(s) on camera {ctx.camera_id} at {_clock(analysis.capture_time_ms, ctx.timezone)} store time "
                   f"while the store is closed ({period}); seen since {_clock(person.first_seen_ms, ctx.timezone)}")
    facts: dict[str, object] = {"persons": len(lasting), "closed_period": period, "track": person.track_id, "timezone": ctx.timezone}
    if shift is not None:
        explanation += f"; more than the {shift.max_persons} expected for staff shift {shift.name}"
        facts |= {"shift": shift.name, "shift_max_persons": shift.max_persons}
    alert = _alert(AFTER_HOURS, Severity.SEVERITY_CRITICAL, min(1.0, 0.7 + 0.1 * len(lasting)), explanation, ctx.store_id,
                   analysis.capture_time_ms, 0, facts, ctx.camera_id, period, camera_id=ctx.camera_id)
    _camera_evidence(alert, analysis, analysis.frame_sequence, person.first_seen_ms)
    return [alert]


def _occupants(analysis: FrameAnalysis) -> Counter[str]:
    """People per zone in this frame: the tracked persons in it, or the zone's own count if higher."""
    counts = Counter(z.zone_id for p in analysis.persons for z in p.zones)
    for zone in analysis.zones:
        counts[zone.zone_id] = max(counts[zone.zone_id], zone.person_count)
    return counts


def _update_visits(state: CameraState, ctx: CameraContext, analysis: FrameAnalysis) -> tuple[dict[str, tuple[bool, bool]], bool]:
    """Keep each person's visits of high_value and exit zones (where loitering or concealment is on):
    when the visit began, since when the person is alone in the zone, whether they reached out; and
    each person's first concealment cue on this camera (reached out, then a hand at waist, pocket or
    in a bag). Returns the hand cues (reaching, concealing) of this frame per high_value visit, and
    whether the state changed. Heartbeats repeat an old frame and change nothing."""
    cues: dict[str, tuple[bool, bool]] = {}
    changed = False
    now = analysis.capture_time_ms
    current: set[str] = set()
    if not analysis.heartbeat:
        occupants = _occupants(analysis)
        bags = [o for o in analysis.objects if o.label in BAG_LABELS]
        for person in analysis.persons:
            for zone_visit in person.zones:
                kind = ctx.zone_kinds.get(zone_visit.zone_id)
                rules = ctx.zone_rules.get(zone_visit.zone_id)
                if kind not in LOITERING_KINDS or rules is None:
                    continue
                if not (rules.loitering.enabled or (kind == "high_value" and rules.concealment.enabled)):
                    continue
                key = f"{person.track_id}:{zone_visit.zone_id}"
                current.add(key)
                visit = state.visits.get(key)
                if visit is None or visit.entered_ms != zone_visit.entered_ms:
                    visit = state.visits[key] = Visit(entered_ms=zone_visit.entered_ms, last_ms=now)
                if occupants[zone_visit.zone_id] > 1:
                    visit.alone_since_ms = 0
                elif not visit.alone_since_ms:
                    visit.alone_since_ms = now
                visit.last_ms = now
                changed = True
                if kind != "high_value":
                    continue
                settings = rules.concealment
                reaching, concealing = hand_cues(person, bags, settings.hand_reach, settings.min_keypoint_score)
                visit.reached = visit.reached or reaching
                cues[key] = (reaching, concealing)
                if visit.reached and concealing and not reaching:
                    visit.cue_frames += 1
                    if visit.cue_frames >= LOITERING_CUE_FRAMES:
                        state.cues.setdefault(str(person.track_id), now)
    # Visits not seen for a minute are over (the track left or was lost).
    for key in [k for k, v in state.visits.items() if k not in current and now - v.last_ms > 60_000]:
        del state.visits[key]
        changed = True
    for track in [k for k, at in state.cues.items() if now - at > CUE_KEPT_MS]:
        del state.cues[track]
        changed = True
    return cues, changed


def _loitering_limit(ctx: CameraContext, state: CameraState, kind: str, person: PersonObservation, zone_visit: ZoneVisit,
                     rules: RulesConfig, now: int) -> tuple[str, float, int] | None:
    """The limit this visit has passed, as (which: cue, alone or plain; limit in seconds; the time it
    counts from), the most specific first; None while within all three."""
    settings, scale = rules.loitering, factor(ctx.feedback, LOITERING)
    plain, alone, cue = ((settings.high_value_s, settings.high_value_alone_s, settings.high_value_cue_s) if kind == "high_value"
                         else (settings.exit_s, settings.exit_alone_s, settings.exit_cue_s))
    visit = state.visits.get(f"{person.track_id}:{zone_visit.zone_id}")
    cue_ms = state.cues.get(str(person.track_id), 0)
    candidates = []
    if cue_ms:
        candidates.append(("cue", cue * scale, max(zone_visit.entered_ms, cue_ms)))
    if visit is not None and visit.entered_ms == zone_visit.entered_ms and visit.alone_since_ms:
        candidates.append(("alone", alone * scale, visit.alone_since_ms))
    candidates.append(("plain", plain * scale, zone_visit.entered_ms))
    return next(((name, limit_s, since) for name, limit_s, since in candidates if now - since >= limit_s * 1000), None)


def _loitering(state: CameraState, ctx: CameraContext, analysis: FrameAnalysis) -> list[Alert]:
    alerts = []
    now = analysis.capture_time_ms
    for person in analysis.persons:
        for visit in person.zones:
            kind = ctx.zone_kinds.get(visit.zone_id)
            rules = ctx.zone_rules.get(visit.zone_id)
            if kind not in LOITERING_KINDS or rules is None or not rules.loitering.enabled:
                continue
            passed = _loitering_limit(ctx, state, kind, person, visit, rules, now)
            episode = f"{person.track_id}:{visit.zone_id}:{visit.entered_ms}"
            if passed is None or not _raise_once(state, f"{LOITERING}:{episode}", now):
                continue
            which, limit_s, since = passed
            dwell_s, counted_s = (now - visit.entered_ms) / 1000, (now - since) / 1000
            if which == "cue":
                why = (f"{counted_s:.0f} s here since reaching out and then a hand at waist, pocket or bag "
                       f"({_clock(state.cues[str(person.track_id)], ctx.timezone)}), limit {limit_s:.0f} s after such a cue")
            elif which == "alone":
                why = f"alone in the zone for the last {counted_s:.0f} s, limit {limit_s:.0f} s alone"
            else:
                why = f"limit {limit_s:.0f} s"
            explanation = (f"person {person.track_id} has stayed {dwell_s:.0f} s in {kind.replace('_', '-')} zone {visit.zone_id} on camera "
                           f"{ctx.camera_id} since {_clock(visit.entered_ms, ctx.timezone)} store time ({why})")
            severity = Severity.SEVERITY_LOW if kind == "exit" and which != "cue" else Severity.SEVERITY_MEDIUM
            alert = _alert(LOITERING, severity, min(1.0, 0.5 * counted_s / limit_s), explanation, ctx.store_id, now, 0,
                           {"track": person.track_id, "zone": visit.zone_id, "zone_kind": kind, "dwell_s": f"{dwell_s:.1f}",
                            "limit": which, "limit_s": f"{limit_s:.0f}", "counted_s": f"{counted_s:.1f}"},
                           ctx.camera_id, episode, camera_id=ctx.camera_id)
            _camera_evidence(alert, analysis, analysis.frame_sequence, visit.entered_ms)
            alerts.append(alert)
    return alerts


def _keypoints(person: PersonObservation, min_score: float) -> dict[str, tuple[float, float]]:
    return {k.name: (k.x, k.y) for k in person.keypoints if k.score >= min_score}


def _mid(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2


def _dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def hand_cues(person: PersonObservation, bags: list, hand_reach: float, min_score: float) -> tuple[bool, bool]:
    """(reaching out, hand at waist, pocket or bag) from a person's keypoints.

    Distances are in torso lengths (shoulder centre to hip centre), so the cue does not depend on
    how far the person stands from the camera. Reaching: a wrist farther than one torso length from
    the torso centre (an arm stretched to a shelf). Concealing: a wrist within `hand_reach` of a
    hip, or inside a bag's box.
    """
    points = _keypoints(person, min_score)
    shoulders = [points[n] for n in ("left_shoulder", "right_shoulder") if n in points]
    hips = [points[n] for n in ("left_hip", "right_hip") if n in points]
    wrists = [points[n] for n in ("left_wrist", "right_wrist") if n in points]
    if not shoulders or not hips or not wrists:
        return False, False
    shoulder = shoulders[0] if len(shoulders) == 1 else _mid(shoulders[0], shoulders[1])
    hip = hips[0] if len(hips) == 1 else _mid(hips[0], hips[1])
    torso = _dist(shoulder, hip)
    if torso <= 1e-4:
        return False, False
    centre = _mid(shoulder, hip)
    reaching = any(_dist(w, centre) > 1.0 * torso for w in wrists)
    at_hip = any(_dist(w, h) <= hand_reach * torso for w in wrists for h in hips)
    in_bag = any(b.box.xmin <= w[0] <= b.box.xmax and b.box.ymin <= w[1] <= b.box.ymax for w in wrists for b in bags)
    return reaching, at_hip or in_bag


def _bits(history: int, hit: bool, n: int) -> int:
    return ((history << 1) | int(hit)) & ((1 << n) - 1)


def _concealment(state: CameraState, ctx: CameraContext, analysis: FrameAnalysis, cues: dict[str, tuple[bool, bool]]) -> list[Alert]:
    """Per person and high_value zone visit: the pose cue after reaching, or the zone's anomaly, in
    k of the last n frames. `cues` holds this frame's hand cues per visit (_update_visits); a
    heartbeat has none and counts for nothing."""
    alerts: list[Alert] = []
    now = analysis.capture_time_ms
    zone_anomaly = {z.zone_id: z.anomaly_score for z in analysis.zones}
    for person in analysis.persons:
        for zone_visit in person.zones:
            rules = ctx.zone_rules.get(zone_visit.zone_id)
            key = f"{person.track_id}:{zone_visit.zone_id}"
            if ctx.zone_kinds.get(zone_visit.zone_id) != "high_value" or rules is None or not rules.concealment.enabled or key not in cues:
                continue
            settings = rules.concealment
            visit = state.visits[key]
            reaching, concealing = cues[key]
            pose_hit = visit.reached and concealing and not reaching
            anomaly_hit = zone_anomaly.get(zone_visit.zone_id, 0.0) >= settings.anomaly_level
            visit.pose_bits = _bits(visit.pose_bits, pose_hit, settings.pose_n)
            visit.anomaly_bits = _bits(visit.anomaly_bits, anomaly_hit, settings.anomaly_n)
            if (pose_hit or anomaly_hit) and not visit.first_cue_seq:
                visit.first_cue_seq = analysis.frame_sequence
            scale = factor(ctx.feedback, CONCEALMENT)
            pose_k, anomaly_k = min(settings.pose_n, math.ceil(settings.pose_k * scale)), min(settings.anomaly_n, math.ceil(settings.anomaly_k * scale))
            pose_count, anomaly_count = bin(visit.pose_bits).count("1"), bin(visit.anomaly_bits).count("1")
            cue = "pose" if pose_count >= pose_k else "anomaly" if anomaly_count >= anomaly_k else ""
            episode = f"{person.track_id}:{zone_visit.zone_id}:{zone_visit.entered_ms}"
            if not cue or not _raise_once(state, f"{CONCEALMENT}:{episode}", now):
                continue
            if cue == "pose":
                what = f"reached to the shelf, then hands at waist, pocket or bag in {pose_count} of the last {settings.pose_n} frames"
                score = pose_count / settings.pose_n
            else:
                what = f"anomaly above {settings.anomaly_level:g}x the camera's normal level in {anomaly_count} of the last {settings.anomaly_n} frames"
                score = anomaly_count / settings.anomaly_n
            explanation = (f"possible concealment by person {person.track_id} in high-value zone {zone_visit.zone_id} on camera {ctx.camera_id} "
                           f"at {_clock(now, ctx.timezone)} store time: {what}")
            alert = _alert(CONCEALMENT, Severity.SEVERITY_HIGH, score, explanation, ctx.store_id, now, 0,
                           {"track": person.track_id, "zone": zone_visit.zone_id, "cue": cue, "pose_frames": pose_count,
                            "anomaly_frames": anomaly_count, "pose_k": pose_k, "anomaly_k": anomaly_k,
                            "anomaly_score": f"{zone_anomaly.get(zone_visit.zone_id, 0.0):.2f}"},
                           ctx.camera_id, episode, camera_id=ctx.camera_id)
            _camera_evidence(alert, analysis, visit.first_cue_seq or analysis.frame_sequence, zone_visit.entered_ms)
            alerts.append(alert)
    return alerts


# --- store: a person's way through the store (checkout bypass, repeat visits) ---------------------------

# Zone kinds whose visits make up a journey; handover zones are followed too, whatever their kind.
JOURNEY_KINDS = ("high_value", "counter_customer", "exit", "staff_only")
# A camera sends its store a clock step at least this often (event time), so exits are decided when
# a camera falls quiet.
CLOCK_EVERY_MS = 2_000
# A camera whose steps stopped coming for this long (wall clock: down, or its partition stalled) no
# longer holds the store's decisions back; one that is merely behind (its steps still come) does.
SILENT_CAMERA_MS = 30_000
EVIDENCE_VISITS = 6


def followed_zones(zones: dict[str, str], handovers: Iterable[Handover], camera_id: str, rules: RulesConfig) -> dict[str, str]:
    """The zones of a camera whose visits its store's journeys follow (zone id -> kind)."""
    if not (rules.checkout_bypass.enabled or rules.repeat_visits.enabled):
        return {}
    handover_zones = {end.zone for h in handovers for end in (h.from_, h.to) if end.camera == camera_id}
    return {zone: kind for zone, kind in zones.items() if kind in JOURNEY_KINDS or zone in handover_zones}


def track_steps(state: CameraState, ctx: CameraContext, analysis: FrameAnalysis) -> tuple[list[TrackStep], bool]:
    """What one analysed frame tells the store: followed zones entered and left (left as the track
    ended, `gone`, when it is no longer tracked at all) and door lines crossed. Returns the steps and
    whether the camera's state changed. A heartbeat repeats an old frame and tells nothing."""
    if analysis.heartbeat or not (ctx.followed or ctx.door_lines):
        return [], False
    now, seq = analysis.capture_time_ms, analysis.frame_sequence
    steps: list[TrackStep] = []
    present: set[str] = set()
    bags = [o for o in analysis.objects if o.label in BAG_LABELS]

    def step(kind: str, track: int, **fields: Any) -> TrackStep:
        return TrackStep(kind, ctx.store_id, ctx.camera_id, fields.pop("time_ms", now), track, **fields)

    def leave(key: str, stay: ZoneStay, gone: bool) -> TrackStep:
        track, _, zone = key.partition(":")
        return step("leave", int(track), zone_id=zone, zone_kind=ctx.followed.get(zone, ""), time_ms=stay.last_ms, entered_ms=stay.entered_ms,
                    first_seq=stay.first_seq, last_seq=stay.last_seq, posed=stay.posed, reached=stay.reached, gone=gone)

    for person in analysis.persons:
        for zone_visit in person.zones:
            kind = ctx.followed.get(zone_visit.zone_id)
            if kind is None:
                continue
            key = f"{person.track_id}:{zone_visit.zone_id}"
            present.add(key)
            stay = state.stays.get(key)
            if stay is None or stay.entered_ms != zone_visit.entered_ms:
                if stay is not None:
                    steps.append(leave(key, stay, gone=False))
                stay = state.stays[key] = ZoneStay(zone_visit.entered_ms, now, seq, seq)
                steps.append(step("enter", person.track_id, zone_id=zone_visit.zone_id, zone_kind=kind, entered_ms=zone_visit.entered_ms,
                                  first_seen_ms=person.first_seen_ms, first_seq=seq, last_seq=seq))
            stay.last_ms, stay.last_seq = now, seq
            if kind == "high_value" and person.keypoints:
                settings = ctx.zone_rules[zone_visit.zone_id].concealment if zone_visit.zone_id in ctx.zone_rules else ctx.store_rules.concealment
                reaching, _ = hand_cues(person, bags, settings.hand_reach, settings.min_keypoint_score)
                stay.posed, stay.reached = True, stay.reached or reaching
    tracked = {p.track_id for p in analysis.persons}
    for key in [k for k in state.stays if k not in present]:
        steps.append(leave(key, state.stays.pop(key), gone=int(key.partition(":")[0]) not in tracked))
    for crossing in analysis.line_crossings if ctx.door_lines else ():
        if crossing.line_kind == "door":
            steps.append(step("cross", crossing.track_id, line_id=crossing.line_id, direction=crossing.direction, first_seq=seq, last_seq=seq))
    return steps, bool(present) or bool(steps)


@dataclass(frozen=True)
class HandoverEdge:
    """One direction of a handover: a track gone from `from_zone` on `from_camera` continues as a new
    track first seen in `to_zone` on `to_camera` within `within_ms`."""

    from_camera: str
    from_zone: str
    to_camera: str
    to_zone: str
    within_ms: int


def handover_edges(handovers: Iterable[Handover]) -> tuple[HandoverEdge, ...]:
    edges = []
    for h in handovers:
        within = int(h.within_s * 1000)
        edges.append(HandoverEdge(h.from_.camera, h.from_.zone, h.to.camera, h.to.zone, within))
        if h.both_ways:
            edges.append(HandoverEdge(h.to.camera, h.to.zone, h.from_.camera, h.from_.zone, within))
    return tuple(edges)


@dataclass(frozen=True)
class StoreContext:
    store_id: str
    timezone: str
    rules: RulesConfig
    edges: tuple[HandoverEdge, ...] = ()
    # Cameras with a counter_customer (till) zone.
    till_cameras: frozenset[str] = frozenset()
    # Cameras that send the store steps (followed zones or door lines): decisions wait for each.
    reporting: frozenset[str] = frozenset()
    feedback: FeedbackState | None = None

    def in_view_from(self, camera_id: str) -> set[str]:
        """The cameras a person can be followed into from this one, through the handovers."""
        seen, todo = {camera_id}, [camera_id]
        while todo:
            here = todo.pop()
            for edge in self.edges:
                if edge.from_camera == here and edge.to_camera not in seen:
                    seen.add(edge.to_camera)
                    todo.append(edge.to_camera)
        return seen


def _person_of(state: StoreJourneys, ctx: StoreContext, step: TrackStep) -> str:
    """The person a track belongs to: known already, or new (a handover may join them to the person
    who walked out of a neighbouring view, once both cameras have reported past the handover)."""
    key = f"{step.camera_id}:{step.track_id}"
    if key in state.tracks:
        return state.tracks[key]
    state.tracks[key] = key
    fresh = step.kind == "enter" and step.entered_ms - step.first_seen_ms <= max((e.within_ms for e in ctx.edges), default=0)
    state.people[key] = Journey(tracks=[key], first_zone=f"{step.camera_id}:{step.zone_id}" if fresh else "", first_ms=step.entered_ms if fresh else 0)
    return key


def _successors(state: StoreJourneys, ctx: StoreContext, departure: Departure) -> list[str]:
    """The new tracks' journeys that may be the departed person: first seen in a handover's zone in time."""
    person = state.tracks.get(departure.track)
    return [p for p, j in state.people.items() if p != person and len(j.tracks) == 1 and j.first_zone and not j.ambiguous
            and any(j.first_zone == f"{e.to_camera}:{e.to_zone}" and 0 <= j.first_ms - departure.time_ms <= e.within_ms
                    for e in ctx.edges if e.from_camera == departure.camera_id and e.from_zone == departure.zone_id)]


def _departure_due(state: StoreJourneys, ctx: StoreContext, departure: Departure, wall_ms: int) -> bool:
    """Every camera the person may have walked on into has reported past the handover's time (or is
    silent, or was never heard from in SILENT_CAMERA_MS): its new tracks are all known."""
    for edge in ctx.edges:
        if edge.from_camera != departure.camera_id or edge.from_zone != departure.zone_id:
            continue
        clock = state.clocks.get(edge.to_camera)
        if clock is None:
            if wall_ms - departure.noted_ms <= SILENT_CAMERA_MS:
                return False
        elif clock < departure.time_ms + edge.within_ms and not _silent(state, edge.to_camera, wall_ms):
            return False
    return True


def _departures_known(state: StoreJourneys, ctx: StoreContext, journey: Journey, wall_ms: int) -> bool:
    """Every camera a handover leads from into where this new track appeared has reported up to the
    moment it appeared (or is silent): each person who may be them is known to have left."""
    for edge in ctx.edges:
        if journey.first_zone == f"{edge.to_camera}:{edge.to_zone}":
            clock = state.clocks.get(edge.from_camera)
            if (clock is None or clock < journey.first_ms) and not _silent(state, edge.from_camera, wall_ms):
                return False
    return True


def _link_departures(state: StoreJourneys, ctx: StoreContext, wall_ms: int) -> list[str]:
    """Join each departure whose handover every neighbouring camera has passed to the one new track
    that can be them, when that track can be nobody else; two people who left together and a new
    track that could be either link to nobody, and that track is never linked later. Returns the
    persons who gained tracks."""
    due = [d for d in state.departures if _departure_due(state, ctx, d, wall_ms)]
    if not due:
        return []
    claims = {id(d): _successors(state, ctx, d) for d in state.departures}
    grown: list[str] = []
    waiting: list[Departure] = []
    for departure in due:
        successors = claims[id(departure)]
        if not all(_departures_known(state, ctx, state.people[s], wall_ms) for s in successors):
            waiting.append(departure)  # someone else may yet be reported leaving towards them
            continue
        rivals = [d for d in state.departures if d is not departure and set(successors) & set(claims[id(d)])]
        person = state.tracks.get(departure.track)
        if len(successors) != 1 or rivals or person is None:
            for successor in successors:
                if rivals and successor in state.people:
                    state.people[successor].ambiguous = True
            continue
        later = state.people.pop(successors[0])
        journey = state.people[person]
        journey.tracks += later.tracks
        journey.last_ms = max(journey.last_ms, later.last_ms)
        journey.visits += later.visits
        journey.checkouts += later.checkouts
        journey.exits += later.exits
        journey.staff = journey.staff or later.staff
        for track in later.tracks:
            state.tracks[track] = person
        grown.append(person)
    state.departures = [d for d in state.departures if all(d is not due_one for due_one in due) or any(d is w for w in waiting)]
    return grown


def _visit_end(visit: HighValueVisit, at_ms: int) -> int:
    return visit.left_ms or at_ms


def storewide_rules(state: StoreJourneys, ctx: StoreContext, step: TrackStep, raised_ms: int) -> list[Alert]:
    """Apply one camera step to the store's journeys; returns checkout bypass and repeat visit alerts.
    `raised_ms` is the wall clock, used only to tell a silent camera from one that is behind."""
    state.clocks[step.camera_id] = max(state.clocks.get(step.camera_id, 0), step.time_ms)
    state.heard[step.camera_id] = raised_ms
    state.started_ms = state.started_ms or raised_ms
    alerts: list[Alert] = []
    if step.kind != "clock":
        person = _person_of(state, ctx, step)
        journey = state.people[person]
        journey.last_ms = max(journey.last_ms, step.time_ms)
        _record(state, ctx, journey, step, raised_ms)
        alerts += _repeat_visits(ctx, person, journey, step.time_ms)
    settled = _settled_until(state, ctx, raised_ms)
    for person in _link_departures(state, ctx, raised_ms):
        alerts += _repeat_visits(ctx, person, state.people[person], settled)
    alerts += _decide_exits(state, ctx, settled)
    _forget_old(state, ctx)
    for alert in alerts:
        alert.raised_time_ms = raised_ms
    return alerts


def _record(state: StoreJourneys, ctx: StoreContext, journey: Journey, step: TrackStep, wall_ms: int) -> None:
    if step.kind == "enter":
        if step.zone_kind == "high_value":
            if not any((v.camera_id, v.track_id, v.zone_id, v.entered_ms) == (step.camera_id, step.track_id, step.zone_id, step.entered_ms)
                       for v in journey.visits):
                journey.visits.append(HighValueVisit(step.camera_id, step.track_id, step.zone_id, step.entered_ms, first_seq=step.first_seq))
        elif step.zone_kind == "counter_customer":
            if step.entered_ms not in journey.checkouts:
                journey.checkouts.append(step.entered_ms)
        elif step.zone_kind == "staff_only":
            journey.staff = True
        elif step.zone_kind == "exit":
            _add_exit(journey, StoreExit(step.camera_id, step.track_id, step.entered_ms, f"exit zone {step.zone_id}", step.first_seq))
    elif step.kind == "leave":
        for visit in journey.visits:
            if (visit.camera_id, visit.track_id, visit.zone_id, visit.entered_ms) == (step.camera_id, step.track_id, step.zone_id, step.entered_ms):
                visit.left_ms, visit.last_seq, visit.posed, visit.reached = step.time_ms, step.last_seq, step.posed, step.reached
        track = f"{step.camera_id}:{step.track_id}"
        if step.gone and any(e.from_camera == step.camera_id and e.from_zone == step.zone_id for e in ctx.edges) \
                and not any(d.track == track for d in state.departures):
            state.departures.append(Departure(track, step.camera_id, step.zone_id, step.time_ms, wall_ms))
    elif step.kind == "cross" and step.direction == "out":
        _add_exit(journey, StoreExit(step.camera_id, step.track_id, step.time_ms, f"door line {step.line_id}", step.first_seq))


def _add_exit(journey: Journey, exit_: StoreExit) -> None:
    key = f"{exit_.camera_id}:{exit_.track_id}:{exit_.time_ms}:{exit_.how}"
    if key not in journey.decided_exits and not any((e.camera_id, e.track_id, e.time_ms, e.how) == (exit_.camera_id, exit_.track_id, exit_.time_ms, exit_.how)
                                                    for e in journey.exits):
        journey.exits.append(exit_)


def _silent(state: StoreJourneys, camera_id: str, wall_ms: int) -> bool:
    return camera_id in state.heard and wall_ms - state.heard[camera_id] > SILENT_CAMERA_MS


def _settled_until(state: StoreJourneys, ctx: StoreContext, wall_ms: int) -> int:
    """Event time every camera of the store still reporting has reached: a camera that is behind
    holds decisions back (its steps may change them), a silent one does not, nor one never heard
    from for SILENT_CAMERA_MS."""
    if any(camera not in state.clocks for camera in ctx.reporting) and wall_ms - state.started_ms <= SILENT_CAMERA_MS:
        return 0
    live = [t for camera, t in state.clocks.items() if not _silent(state, camera, wall_ms)]
    return min(live) if live else max(state.clocks.values(), default=0)


def _decide_exits(state: StoreJourneys, ctx: StoreContext, settled: int) -> list[Alert]:
    settings = ctx.rules.checkout_bypass
    alerts = []
    longest_handover = max((e.within_ms for e in ctx.edges), default=0)
    for person, journey in state.people.items():
        # A new track that a handover may still join to someone who left a neighbouring view waits for that.
        linkable = journey.first_ms + longest_handover if len(journey.tracks) == 1 and journey.first_zone and not journey.ambiguous else 0
        due = [e for e in journey.exits if max(e.time_ms + settings.settle_s * 1000, linkable) <= settled]
        if not due:
            continue
        journey.exits = [e for e in journey.exits if e not in due]
        for exit_ in sorted(due, key=lambda e: e.time_ms):
            journey.decided_exits = [*journey.decided_exits, f"{exit_.camera_id}:{exit_.track_id}:{exit_.time_ms}:{exit_.how}"][-DECIDED_KEPT:]
            if settings.enabled and not journey.staff:
                alerts += _checkout_bypass(ctx, person, journey, exit_)
    return alerts


def _checkout_bypass(ctx: StoreContext, person: str, journey: Journey, exit_: StoreExit) -> list[Alert]:
    """The latest high-value visit before this exit that could have taken something (long enough, not
    seen by a pose stage to never reach out), with no till visit between it and the exit.

    Only where the person could be followed from the shelf to a till and to this exit (the same
    camera, or cameras chained by handovers): a shopper who paid at a till no chain of views leads
    to would otherwise look like one who never paid."""
    settings = ctx.rules.checkout_bypass
    min_visit_ms = settings.min_visit_s * 1000 * factor(ctx.feedback, CHECKOUT_BYPASS)
    before = [v for v in journey.visits if not v.judged and v.entered_ms <= exit_.time_ms]
    for visit in before:
        visit.judged = True
    followed = {camera: ctx.in_view_from(camera) for camera in {v.camera_id for v in before}}
    candidates = [v for v in before
                  if exit_.camera_id in followed[v.camera_id] and ctx.till_cameras & followed[v.camera_id]
                  and _visit_end(v, exit_.time_ms) - v.entered_ms >= min_visit_ms
                  and exit_.time_ms - _visit_end(v, exit_.time_ms) <= settings.within_s * 1000
                  and (v.reached if settings.needs_reach else not (v.posed and not v.reached))]
    unpaid = [v for v in candidates if not any(v.entered_ms <= c <= exit_.time_ms for c in journey.checkouts)]
    if not unpaid:
        return []
    visit = max(unpaid, key=lambda v: v.entered_ms)
    stayed_s = (_visit_end(visit, exit_.time_ms) - visit.entered_ms) / 1000
    after_s = (exit_.time_ms - _visit_end(visit, exit_.time_ms)) / 1000
    reached = " (reached to the shelf)" if visit.reached else ""
    across = f", followed across cameras {', '.join(sorted({t.partition(':')[0] for t in journey.tracks}))}" if len(journey.tracks) > 1 else ""
    explanation = (f"person {exit_.track_id} left the store by {exit_.how} on camera {exit_.camera_id} at {_clock(exit_.time_ms, ctx.timezone)} store time, "
                   f"{after_s:.0f} s after {stayed_s:.0f} s in high-value zone {visit.zone_id} on camera {visit.camera_id}{reached}, "
                   f"without passing a till{across}")
    severity = Severity.SEVERITY_HIGH if visit.reached else Severity.SEVERITY_MEDIUM
    alert = _alert(CHECKOUT_BYPASS, severity, 0.8 if visit.reached else 0.6, explanation, ctx.store_id, exit_.time_ms, 0,
                   {"track": exit_.track_id, "person": person, "tracks": ",".join(journey.tracks), "zone": visit.zone_id,
                    "zone_camera": visit.camera_id, "visit_s": f"{stayed_s:.1f}", "exit": exit_.how, "seconds_after_visit": f"{after_s:.1f}",
                    "reached": visit.reached, "within_s": f"{settings.within_s:g}"},
                   person, str(exit_.time_ms), camera_id=exit_.camera_id)
    alert.evidence.append(EvidenceRef(kind="frames", ref=f"{visit.first_seq}-{visit.last_seq or visit.first_seq}", camera_id=visit.camera_id,
                                      time_ms=visit.entered_ms))
    alert.evidence.append(EvidenceRef(kind="frame", ref=str(exit_.seq), camera_id=exit_.camera_id, time_ms=exit_.time_ms))
    return [alert]


def _episodes(visits: list[HighValueVisit], rejoin_ms: int, now: int) -> list[list[HighValueVisit]]:
    """High-value visits in time order, a visit begun within `rejoin_ms` of the last one's end joined to it."""
    episodes: list[list[HighValueVisit]] = []
    for visit in sorted(visits, key=lambda v: v.entered_ms):
        if episodes and visit.entered_ms - max(_visit_end(v, now) for v in episodes[-1]) <= rejoin_ms:
            episodes[-1].append(visit)
        else:
            episodes.append([visit])
    return episodes


def _repeat_visits(ctx: StoreContext, person: str, journey: Journey, now: int) -> list[Alert]:
    settings = ctx.rules.repeat_visits
    if not settings.enabled or journey.staff or not journey.visits:
        return []
    min_visits = max(2, math.ceil(settings.min_visits * factor(ctx.feedback, REPEAT_VISITS)))
    within_ms = int(settings.within_s * 1000)
    counted = [e for e in _episodes(journey.visits, int(settings.rejoin_s * 1000), now)
               if max(_visit_end(v, now) for v in e) - e[0].entered_ms >= settings.min_visit_s * 1000
               and e[0].entered_ms >= journey.repeat_quiet_until_ms]
    window = _crowded_window(counted, counted[-1][0].entered_ms, within_ms, min_visits - 1, lambda e: e[0].entered_ms) if counted else None
    if window is None:
        return []
    journey.repeat_quiet_until_ms = window[0][0].entered_ms + within_ms
    latest = window[-1][-1]
    zones = sorted({v.zone_id for e in window for v in e})
    span_s = (window[-1][0].entered_ms - window[0][0].entered_ms) / 1000
    across = f" across cameras {', '.join(sorted({v.camera_id for e in window for v in e}))}" if len({v.camera_id for e in window for v in e}) > 1 else ""
    explanation = (f"person {latest.track_id} came back to high-value zone(s) {', '.join(zones)} {len(window)} times in {span_s / 60:.1f} min{across} "
                   f"(limit {min_visits} visits in {settings.within_s / 60:g} min), latest at {_clock(latest.entered_ms, ctx.timezone)} store time "
                   f"on camera {latest.camera_id}")
    alert = _alert(REPEAT_VISITS, Severity.SEVERITY_MEDIUM, min(1.0, 0.5 * len(window) / min_visits), explanation, ctx.store_id, latest.entered_ms, 0,
                   {"track": latest.track_id, "person": person, "tracks": ",".join(journey.tracks), "visits": len(window), "zones": ",".join(zones),
                    "min_visits": min_visits, "within_s": f"{settings.within_s:g}"},
                   person, str(window[0][0].entered_ms), camera_id=latest.camera_id)
    for episode in window[-EVIDENCE_VISITS:]:
        first = episode[0]
        alert.evidence.append(EvidenceRef(kind="frames", ref=f"{first.first_seq}-{max(v.last_seq or v.first_seq for v in episode)}",
                                          camera_id=first.camera_id, time_ms=first.entered_ms))
    return [alert]


def _forget_old(state: StoreJourneys, ctx: StoreContext) -> None:
    """Journeys over (nothing for longer than either rule looks back), departures no new track took up."""
    newest = max(state.clocks.values(), default=0)
    keep_ms = int(max(ctx.rules.checkout_bypass.within_s, ctx.rules.repeat_visits.within_s) * 1000) + SILENT_CAMERA_MS
    state.departures = [d for d in state.departures if newest - d.time_ms <= keep_ms]
    over = [p for p, j in state.people.items() if newest - j.last_ms > keep_ms and not j.exits
            and (all(v.left_ms for v in j.visits) or newest - j.last_ms > DAY_MS)]
    for person in over:
        for track in state.people.pop(person).tracks:
            state.tracks.pop(track, None)
    for journey in state.people.values():
        journey.visits = [v for v in journey.visits if not v.left_ms or newest - v.left_ms <= keep_ms]
        journey.checkouts = [c for c in journey.checkouts if newest - c <= keep_ms]
