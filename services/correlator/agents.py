"""Faust agents: detections -> register presence, and POS + presence -> alerts."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter

from services.correlator import rules
from services.correlator.app import app, settings
from services.correlator.streams import alerts_topic, detections_topic, dlq_topic, register_events_topic, register_presence_topic, register_state
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.contracts.register_presence_pb2 import RegisterPresence
from services.shared.kafka import dlq_headers
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import load_store_config

log = logging.getLogger("correlator")
store_config = load_store_config(settings.store_config)
rule_settings = rules.RuleSettings(
    before_ms=int(settings.refund_presence_before_s * 1000),
    after_ms=int(settings.refund_presence_after_s * 1000),
    max_gap_ms=3 * settings.presence_heartbeat_ms,
    retention_ms=int((settings.refund_max_wait_s + settings.refund_presence_before_s + settings.refund_presence_after_s + 300) * 1000),
)
MAX_WAIT_MS = int(settings.refund_max_wait_s * 1000)
MAX_SKEW_MS = int(settings.max_clock_skew_s * 1000)

ALERTS_RAISED = Counter("sw_correlator_alerts_total", "Alerts raised", ["rule", "store"])
REFUNDS_DECIDED = Counter("sw_correlator_refunds_decided_total", "Refunds and returns checked against the camera", ["outcome"])
DEAD_LETTERED = Counter("sw_correlator_dead_lettered_total", "Poison messages sent to a DLQ", ["topic"])

# Last presence forwarded per register: (present, capture time). In memory only; after a restart the
# first sample of each register is simply sent again.
_last_forwarded: dict[str, tuple[bool, int]] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_in_future(what: str, time_ms: int) -> None:
    ahead = time_ms - _now_ms()
    if ahead > MAX_SKEW_MS:
        raise PoisonMessage(f"{what} is {ahead / 1000:.0f}s in the future (clock skew over {MAX_SKEW_MS / 1000:.0f}s?)")


async def _dead_letter(event, error: str) -> None:
    message = event.message
    DEAD_LETTERED.labels(message.topic).inc()
    log.warning("poison message sent to DLQ", extra={"topic": message.topic, "partition": message.partition, "offset": message.offset, "error": error})
    headers = dlq_headers(message.topic, message.partition, message.offset, "correlator", error)
    fut = await dlq_topic(message.topic).send(key=event.key, value=event.value or b"", headers=headers)
    await fut


def register_key(store_id: str, register_id: str) -> str:
    return f"{store_id}:{register_id}"


@app.agent(detections_topic)
async def detections_to_registers(stream):
    """Reduce each camera frame to customer presence per register the camera watches."""
    async for event in stream.events():
        try:
            analysis = decode(FrameAnalysis, event.value, required=("store_id", "camera_id", "capture_time_ms"))
            _not_in_future(f"capture time of {analysis.camera_id}#{analysis.frame_sequence}", analysis.capture_time_ms)
        except PoisonMessage as exc:
            await _dead_letter(event, str(exc))
            continue
        zones = {z.zone_id: z for z in analysis.zones}
        for store, register in store_config.registers_watched_by(analysis.camera_id):
            observed = [zones[z] for z in register.customer_zones if z in zones]
            if not observed:
                # The analysis says nothing about this register's zones: coverage unknown, not "nobody".
                continue
            present = any(z.person_present for z in observed)
            key = register_key(store.id, register.id)
            last = _last_forwarded.get(key)
            if last and last[0] == present and analysis.capture_time_ms - last[1] < settings.presence_heartbeat_ms:
                continue
            _last_forwarded[key] = (present, analysis.capture_time_ms)
            sample = RegisterPresence(
                store_id=store.id, register_id=register.id, camera_id=analysis.camera_id,
                capture_time_ms=analysis.capture_time_ms, customer_present=present,
                presence_score=max(z.presence_score for z in observed), frame_sequence=analysis.frame_sequence,
            )
            await register_presence_topic.send(key=key.encode(), value=encode(sample))


@app.timer(interval=5.0)
async def tick_silent_registers():
    await send_ticks()


async def send_ticks() -> None:
    """Registers whose camera went silent get no events; a tick lets their refunds time out.

    A timer may read the table but not write it, so it sends a tick through the register's own
    topic partition and the agent does the deciding.
    """
    now = _now_ms()
    for key, state in list(register_state.items()):
        if state and rules.timed_out(state, now, MAX_WAIT_MS):
            store_id, _, register_id = key.partition(":")
            tick = RegisterPresence(store_id=store_id, register_id=register_id, capture_time_ms=now, tick=True)
            await register_presence_topic.send(key=key.encode(), value=encode(tick))


def _decode_pos(event) -> PosEvent:
    pos = decode(PosEvent, event.value, required=("event_id", "store_id", "register_id", "event_time_ms"))
    if pos.type == PosEventType.POS_EVENT_TYPE_UNSPECIFIED:
        raise PoisonMessage("shrinkwatch.v1.PosEvent: missing required field(s) type")
    expected_key = register_key(pos.store_id, pos.register_id).encode()
    if event.key != expected_key:
        # Another key would put this register's events on another partition than its state.
        raise PoisonMessage(f"key {event.key!r} is not {expected_key!r} (store:register); events of one register must share a partition")
    _not_in_future(f"event_time of {pos.event_id}", pos.event_time_ms)
    return pos


@app.agent(register_events_topic)
async def correlate_registers(stream):
    """Hold each register's presence history and pending refunds; raise alerts when decided."""
    async for event in stream.events():
        key = event.key.decode(errors="replace") if event.key else ""
        now_ms = _now_ms()
        try:
            if event.message.topic == topics.POS:
                pos = _decode_pos(event)
                if pos.type not in rules.REFUND_TYPES:
                    continue
                state = register_state.get(key) or rules.new_state()
                rules.add_pending(state, pos, now_ms)
            else:
                sample = decode(RegisterPresence, event.value, required=("store_id", "register_id", "capture_time_ms"))
                state = register_state.get(key) or rules.new_state()
                if not sample.tick:
                    rules.add_presence(state, sample.capture_time_ms, sample.customer_present, sample.camera_id, rule_settings)
        except PoisonMessage as exc:
            await _dead_letter(event, str(exc))
            continue
        except Exception as exc:  # a bug must not stop every register behind this message
            log.exception("unexpected error on a register event")
            await _dead_letter(event, f"unexpected {type(exc).__name__}: {exc}")
            continue
        for decision in rules.decide_ready(state, rule_settings, now_ms, MAX_WAIT_MS):
            try:
                await _act_on(decision, now_ms)
            except Exception:
                # Keep it pending: the register's next event (or tick) decides it again, and the
                # deterministic alert id makes a second attempt harmless.
                log.exception("could not act on a decided refund; kept pending", extra={"event_id": decision.event.event_id})
                rules.restore_pending(state, decision)
        # Written after the alerts are acknowledged, so a crash in between re-decides, never forgets.
        register_state[key] = state


async def _act_on(decision: rules.Decision, now_ms: int) -> None:
    pos = decision.event
    if decision.customer_present is None:
        REFUNDS_DECIDED.labels("no_camera_coverage").inc()
        log.warning("refund not verifiable: the camera did not cover its window", extra={"event_id": pos.event_id, "register": pos.register_id})
        return
    if decision.customer_present:
        REFUNDS_DECIDED.labels("customer_present").inc()
        log.info("refund with customer present", extra={"event_id": pos.event_id, "register": pos.register_id})
        return
    store = next((s for s in store_config.stores if s.id == pos.store_id), None)
    register = next((r for r in store.registers if r.id == pos.register_id), None) if store else None
    alert = rules.build_alert(decision, register.customer_zones if register else ["the customer zone"], now_ms)
    fut = await alerts_topic.send(key=alert.store_id.encode(), value=encode(alert))
    await fut
    REFUNDS_DECIDED.labels("no_customer").inc()
    ALERTS_RAISED.labels(alert.rule, alert.store_id).inc()
    log.info("alert raised", extra={"alert_id": alert.alert_id, "rule": alert.rule, "register": alert.register_id, "event_id": pos.event_id})
