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
from datetime import datetime, timezone

from services.shared.contracts.alert_pb2 import Alert, EvidenceRef, Severity
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType

RULE_REFUND_WITHOUT_CUSTOMER = "refund_without_customer"
REFUND_TYPES = {PosEventType.POS_EVENT_TYPE_REFUND, PosEventType.POS_EVENT_TYPE_RETURN}


@dataclass(frozen=True)
class RuleSettings:
    before_ms: int = 5000
    after_ms: int = 5000
    # Presence history kept per register, older samples are dropped.
    retention_ms: int = 15 * 60 * 1000


def alert_id(rule: str, store_id: str, register_id: str, source_event_id: str) -> str:
    """Same rule and same triggering input give the same id, so replays never page twice."""
    digest = hashlib.sha256(f"{rule}|{store_id}|{register_id}|{source_event_id}".encode()).hexdigest()
    return f"al-{digest[:24]}"


def new_state() -> dict:
    # JSON-friendly, because it lives in a Faust table whose changelog is JSON.
    return {"samples": [], "watermark": 0, "camera_id": "", "pending": []}


def add_presence(state: dict, time_ms: int, present: bool, camera_id: str, settings: RuleSettings) -> None:
    samples = state["samples"]
    if samples and time_ms < samples[-1][0]:
        # Late sample: insert in order (rare; detections of one camera arrive in order).
        samples.append([time_ms, int(present)])
        samples.sort(key=lambda s: s[0])
    else:
        samples.append([time_ms, int(present)])
    state["watermark"] = max(state["watermark"], time_ms)
    state["camera_id"] = camera_id
    cutoff = state["watermark"] - settings.retention_ms
    # Keep the last sample before the cutoff: it is the state in force at the cutoff.
    first_kept = next((i for i, s in enumerate(samples) if s[0] >= cutoff), len(samples))
    if first_kept > 1:
        del samples[: first_kept - 1]


def presence_in_window(samples: list, start_ms: int, end_ms: int) -> bool | None:
    """True if anyone was present at any time in the window, False if nobody, None if no coverage."""
    in_force = None
    seen_any = False
    for t, present in samples:
        if t <= start_ms:
            in_force = present
        elif t <= end_ms:
            seen_any = True
            if present:
                return True
        else:
            break
    if in_force:
        return True
    if in_force is None and not seen_any:
        return None
    return False


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
    customer_present: bool | None  # None: the camera did not cover the window
    window: tuple[int, int]
    camera_id: str


def decide_ready(state: dict, settings: RuleSettings, now_ms: int, max_wait_ms: int) -> list[Decision]:
    """Decide every pending refund whose window the camera has covered (or that waited too long)."""
    decisions, still_pending = [], []
    for pending in state["pending"]:
        start, end = pending["event_time_ms"] - settings.before_ms, pending["event_time_ms"] + settings.after_ms
        if state["watermark"] >= end or now_ms - pending["received_ms"] > max_wait_ms:
            event = PosEvent.FromString(base64.b64decode(pending["event"]))
            present = presence_in_window(state["samples"], start, end)
            decisions.append(Decision(event, present, (start, end), state["camera_id"]))
        else:
            still_pending.append(pending)
    state["pending"] = still_pending
    return decisions


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M:%S")


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
