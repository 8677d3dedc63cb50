"""Rule logic of the correlator, free of Faust so it can be tested on its own.

Rule `refund_without_customer`: a refund or return at a register while nobody was in that
register's customer zone at any moment of [event time - before, event time + after]. Decided only
once the register's camera has reported past the end of that window (event time, not arrival
time), so a POS event that arrives before the video that covers it waits for it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from services.shared.contracts.alert_pb2 import Alert, EvidenceRef, Severity
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType

RULE_REFUND_WITHOUT_CUSTOMER = "refund_without_customer"
REFUND_TYPES = {PosEventType.POS_EVENT_TYPE_REFUND, PosEventType.POS_EVENT_TYPE_RETURN}


@dataclass(frozen=True)
class RuleSettings:
    before_ms: int = 5000
    after_ms: int = 5000
    # A sample vouches for the state it reports for this long; a longer silence is a coverage gap.
    max_gap_ms: int = 3000
    # History kept per register; older changes and coverage are dropped.
    retention_ms: int = 10 * 60 * 1000


def alert_id(rule: str, store_id: str, register_id: str, source_event_id: str) -> str:
    """Same rule and same triggering input give the same id, so replays never page twice."""
    digest = hashlib.sha256(f"{rule}|{store_id}|{register_id}|{source_event_id}".encode()).hexdigest()
    return f"al-{digest[:24]}"


def new_state() -> dict:
    """A register's state: presence changes, camera coverage intervals, watermark, pending refunds.

    Only changes and merged coverage intervals are kept (not every heartbeat), so the state stays
    small although it is written to the table's changelog on every sample. JSON-friendly, because
    it lives in a Faust table.
    """
    return {"changes": [], "covered": [], "watermark": 0, "camera_id": "", "pending": []}


def add_presence(state: dict, time_ms: int, present: bool, camera_id: str, settings: RuleSettings) -> bool:
    """Record one presence sample; returns False for a sample at or before the watermark (a replay).

    Samples of one register come from one camera, in capture order (one partition), so anything not
    newer than the watermark has been seen already.
    """
    if time_ms <= state["watermark"]:
        return False
    covered, changes = state["covered"], state["changes"]
    after_gap = not covered or time_ms > covered[-1][1]
    if after_gap:
        covered.append([time_ms, time_ms + settings.max_gap_ms])
    else:
        covered[-1][1] = time_ms + settings.max_gap_ms
    # After a gap the state is unknown, so the first sample is always recorded as a change.
    if after_gap or changes[-1][1] != int(present):
        changes.append([time_ms, int(present)])
    state["watermark"] = time_ms
    state["camera_id"] = camera_id
    _prune(state, time_ms - settings.retention_ms)
    return True


def _prune(state: dict, cutoff: int) -> None:
    state["covered"] = [c for c in state["covered"] if c[1] >= cutoff]
    changes = state["changes"]
    # Keep the last change before the cutoff: it is the state in force at the cutoff.
    first_kept = next((i for i, c in enumerate(changes) if c[0] >= cutoff), len(changes))
    if first_kept > 1:
        del changes[: first_kept - 1]


def presence_in_window(state: dict, start_ms: int, end_ms: int) -> bool | None:
    """True if anyone was seen at any moment of the window, False if the camera covered all of it
    and saw nobody, None if it did not cover all of it (a gap, a late start, a silent camera)."""
    in_force = None
    for t, present in state["changes"]:
        if t <= start_ms:
            in_force = present
        elif t <= end_ms:
            if present:
                return True
        else:
            break
    covers_window = any(s <= start_ms and end_ms <= e for s, e in state["covered"])
    covers_start = any(s <= start_ms <= e for s, e in state["covered"])
    if in_force and covers_start:
        return True
    return False if covers_window else None


def add_pending(state: dict, event: PosEvent, received_ms: int) -> None:
    if any(p["event_id"] == event.event_id for p in state["pending"]):
        return
    state["pending"].append({
        "event_id": event.event_id,
        "event_time_ms": event.event_time_ms,
        "received_ms": received_ms,
        "event": base64.b64encode(event.SerializeToString()).decode(),
    })


@dataclass(frozen=True)
class Decision:
    event: PosEvent
    customer_present: bool | None  # None: the camera did not cover the whole window
    window: tuple[int, int]
    camera_id: str
    pending: dict  # the entry taken out of the state, to put back if acting on it fails


def decide_ready(state: dict, settings: RuleSettings, now_ms: int, max_wait_ms: int) -> list[Decision]:
    """Take out and decide every pending refund whose window the camera has passed, or that waited
    longer than max_wait_ms (then whatever was covered decides; usually that is None)."""
    decisions, still_pending = [], []
    for pending in state["pending"]:
        start, end = pending["event_time_ms"] - settings.before_ms, pending["event_time_ms"] + settings.after_ms
        if state["watermark"] >= end or now_ms - pending["received_ms"] > max_wait_ms:
            event = PosEvent.FromString(base64.b64decode(pending["event"]))
            decisions.append(Decision(event, presence_in_window(state, start, end), (start, end), state["camera_id"], pending))
        else:
            still_pending.append(pending)
    state["pending"] = still_pending
    return decisions


def restore_pending(state: dict, decision: Decision) -> None:
    """Put a decision back, to be decided again on the register's next event."""
    if all(p["event_id"] != decision.pending["event_id"] for p in state["pending"]):
        state["pending"].append(decision.pending)


def timed_out(state: dict, now_ms: int, max_wait_ms: int) -> bool:
    return any(now_ms - p["received_ms"] > max_wait_ms for p in state["pending"])


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def build_alert(decision: Decision, customer_zones: list[str], raised_ms: int) -> Alert:
    event = decision.event
    kind = PosEventType.Name(event.type).removeprefix("POS_EVENT_TYPE_").lower()
    amount = f"{event.total_minor / 100:.2f} {event.currency}".strip()
    start, end = decision.window
    explanation = (
        f"{kind} {event.transaction_id or event.event_id} of {amount} at register {event.register_id} "
        f"with nobody in {', '.join(customer_zones)} between {_clock(start)} and {_clock(end)} UTC "
        f"(camera {decision.camera_id}, employee {event.employee_id or 'unknown'})"
    )
    alert = Alert(
        alert_id=alert_id(RULE_REFUND_WITHOUT_CUSTOMER, event.store_id, event.register_id, event.event_id),
        rule=RULE_REFUND_WITHOUT_CUSTOMER,
        severity=Severity.SEVERITY_HIGH,
        score=1.0,
        explanation=explanation,
        store_id=event.store_id,
        camera_id=decision.camera_id,
        register_id=event.register_id,
        event_time_ms=event.event_time_ms,
        raised_time_ms=raised_ms,
    )
    alert.evidence.append(EvidenceRef(kind="pos_event", ref=event.event_id, time_ms=event.event_time_ms))
    alert.evidence.append(EvidenceRef(kind="camera_window", ref=f"{start}-{end}", camera_id=decision.camera_id, time_ms=event.event_time_ms))
    return alert
