"""Faust agents: cameras and POS in, alerts out.

- cameras (key: camera id; sw.detections.v1 with the correlator's camera-events topic): the camera
  rules (after hours, loitering, concealment), and the refund rules of the registers the camera
  watches: each frame updates their presence and watermark in process (no hop per frame), and a
  refund routed here is decided once the camera's event time passes its windows.
- registers (key: store:register, sw.pos.v1): the rules decided on arrival (post-void, own card,
  no-sale rate); refunds go on to their register's camera, to each of their tokens and to their
  original sale.
- returns by token: chain-wide return abuse. transactions: refunds by the employee who rang the sale.
- store journeys (key: store, the store-steps topic): what every camera of a store saw of people's
  way through it (zones entered and left, door lines crossed, sent on by the cameras agent), linked
  across cameras by the store's handovers: checkout bypass and repeat visits.
- feedback (key: store): verdicts into per-store rule precision and threshold factors.

State is written after the alerts it led to are acknowledged by the broker, so a crash in between
decides again (same alert id), never forgets.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from services.correlator import rules
from services.correlator.app import create_app
from services.correlator.chain import ChainIndex, register_key
from services.correlator.settings import CorrelatorSettings
from services.correlator.state import (
    CameraState,
    FeedbackState,
    RegisterState,
    StateCodec,
    StoreJourneys,
    TillState,
    TokenState,
    TrackStep,
    TransactionState,
)
from services.correlator.streams import CachedTable, FlushOnCommit, Streams
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.kafka import MESSAGES_DEAD_LETTERED, dlq_headers
from services.shared.rulesconfig import RULE_NAMES
from services.shared.serde import PoisonMessage, decode, encode
from services.shared.storeconfig import StoreConfigWatcher, load_store_config

log = logging.getLogger("correlator")

ALERTS_RAISED = Counter("sw_correlator_alerts_total", "Alerts raised", ["rule", "store"])
REFUNDS_DECIDED = Counter("sw_correlator_refunds_decided_total", "Refunds and returns checked against the camera", ["outcome"])
RULE_OUTCOMES = Counter("sw_correlator_refund_rule_outcomes_total", "Each refund rule's outcome per refund", ["rule", "outcome"])
RULE_PRECISION = Gauge("sw_correlator_rule_precision", "Confirmed over judged alerts, per rule and store (from feedback)", ["rule", "store"])
RULE_FACTOR = Gauge("sw_correlator_rule_threshold_factor", "Feedback's multiplier on a rule's threshold, per store", ["rule", "store"])
DECISION_DELAY = Histogram("sw_correlator_decision_delay_seconds", "Wall time from a refund rule's window closing to its decision (live data)",
                           buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0))

FEEDBACK_REFRESH_S = 2.0
# Header telling the messages of the camera-events topic apart: "refund" (a PosEvent) or "tick".
CAMERA_EVENT_KIND = "sw-kind"
TICK_INTERVAL_S = 5.0
STEP_CODEC = StateCodec(TrackStep)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Correlator:
    """One correlator worker: its app, topics, tables, agents and the store config it follows."""

    def __init__(self, settings: CorrelatorSettings, app: faust.App | None = None) -> None:
        self.settings = settings
        self.app = app or create_app(settings)
        self.streams = Streams.create(self.app)
        config = load_store_config(settings.store_config)
        self.watcher = StoreConfigWatcher(settings.store_config, config, interval_s=settings.config_poll_s)
        self.index = ChainIndex.build(config)
        self.max_skew_ms = int(settings.max_clock_skew_s * 1000)
        self.feedback: dict[str, FeedbackState] = {}
        self.registers = CachedTable(self.streams.register_state, RegisterState)
        self.cameras = CachedTable(self.streams.camera_state, CameraState)
        self.journeys = CachedTable(self.streams.store_journeys, StoreJourneys)
        self.app.sensors.add(FlushOnCommit(self.registers, self.cameras, self.journeys))
        # camera -> event time of the last clock step sent to its store (a lost entry sends one more: harmless).
        self._clock_sent: dict[str, int] = {}
        self.app.on_partitions_revoked.connect(cast(Any, self._forget_cached))
        self._feedback_read_at = 0.0
        for name, channel, handler in (
            ("cameras", self.streams.camera_inputs, self.on_camera_input),
            ("registers", self.streams.pos, self.on_pos_event),
            ("tokens", self.streams.returns_by_token, self.on_token_return),
            ("transactions", self.streams.transactions, self.on_transaction),
            ("stores", self.streams.store_steps, self.on_store_step),
            ("feedback", self.streams.feedback, self.on_feedback),
        ):
            self.app.agent(channel, name=f"sw-correlator.{name}")(self._agent(handler))
        self.app.timer(interval=TICK_INTERVAL_S)(self.send_ticks)
        self.app.timer(interval=FEEDBACK_REFRESH_S)(self.publish_precision)

    # --- shared helpers ----------------------------------------------------------------------------

    def _forget_cached(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Partitions move: what this worker cached may be another worker's to change now. What
        changed since the last commit is dropped with it: its events were not committed either, so
        whoever holds the partitions next processes them again."""
        self.registers.forget()
        self.cameras.forget()
        self.journeys.forget()

    def refresh_config(self, force: bool = False) -> None:
        """Take an edited store config (a new register, changed rules) without a restart."""
        config = self.watcher.poll(force=force)
        if config is not None:
            self.index = ChainIndex.build(config)

    def feedback_for(self, store_id: str) -> FeedbackState | None:
        if time.monotonic() - self._feedback_read_at > FEEDBACK_REFRESH_S:
            self._feedback_read_at = time.monotonic()
            self.feedback = {key: value for key, value in self.streams.feedback_state.items() if value is not None}
        return self.feedback.get(store_id)

    async def publish_precision(self) -> None:
        """Precision and factors as metrics, from the feedback table every worker holds whole."""
        self._feedback_read_at = 0.0
        self.feedback_for("")
        for store_id, state in self.feedback.items():
            for rule, stats in state.rules.items():
                RULE_PRECISION.labels(rule, store_id).set(rules.precision(stats) or 0.0)
                RULE_FACTOR.labels(rule, store_id).set(stats.factor)

    def precision_report(self) -> dict[str, Any]:
        """Per store and rule: confirmed, false alarms, precision, threshold factor (the API's view)."""
        report: dict[str, Any] = {}
        for store_id, state in sorted(self.feedback.items()):
            report[store_id] = {
                rule: {"confirmed": s.confirmed, "false_alarm": s.false_alarm, "judged": s.confirmed + s.false_alarm,
                       "precision": rules.precision(s), "threshold_factor": s.factor}
                for rule, s in sorted(state.rules.items())
            }
        return {"stores": report}

    def _not_in_future(self, what: str, time_ms: int) -> None:
        ahead = time_ms - _now_ms()
        if ahead > self.max_skew_ms:
            raise PoisonMessage(f"{what} is {ahead / 1000:.0f}s in the future (clock skew over {self.max_skew_ms / 1000:.0f}s?)")

    async def dead_letter(self, event: Any, error: str) -> None:
        message = event.message
        headers = dlq_headers(message.topic, message.partition, message.offset, "correlator", error)
        fut = await self.streams.dlq(message.topic).send(key=event.key, value=event.value or b"", headers=headers)
        await fut
        # The one DLQ metric every service counts in, once the broker holds the message.
        MESSAGES_DEAD_LETTERED.labels("correlator", message.topic).inc()
        log.warning("poison message sent to DLQ", extra={"topic": message.topic, "partition": message.partition, "offset": message.offset, "error": error})

    async def raise_alerts(self, alerts: list[Alert]) -> None:
        """Send and wait for the broker's acknowledgement of each."""
        for alert in alerts:
            fut = await self.streams.alerts.send(key=alert.store_id.encode(), value=encode(alert))
            await fut
            ALERTS_RAISED.labels(alert.rule, alert.store_id).inc()
            log.info("alert raised", extra={"alert_id": alert.alert_id, "rule": alert.rule, "store": alert.store_id,
                                            "camera": alert.camera_id, "register": alert.register_id, "correlation_id": alert.correlation_id})

    def _agent(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """An agent that takes config edits, then hands each event to `handler`, guarded."""

        async def agent(stream: Any) -> None:
            async for event in stream.events():
                self.refresh_config()
                await self._guarded(event, handler)

        return agent

    async def _guarded(self, event: Any, work: Callable[[Any], Awaitable[None]]) -> None:
        """Run one event's work; bad input and bugs go to the DLQ rather than stopping the partition."""
        try:
            await work(event)
        except PoisonMessage as exc:
            await self.dead_letter(event, str(exc))
        except (TimeoutError, KafkaError, ConnectionError):
            # The broker failed, not the message: stop uncommitted (the at-least-once rule), so a
            # restarted worker processes it again rather than dead-lettering a good POS event.
            raise
        except Exception as exc:  # a bug must not stop every key behind this message
            log.exception("unexpected error on an event", extra={"topic": event.message.topic})
            await self.dead_letter(event, f"unexpected {type(exc).__name__}: {exc}")

    # --- cameras: frames, and the refunds of the registers they watch ------------------------------

    async def on_camera_input(self, event: Any) -> None:
        if event.message.topic == topics.DETECTIONS:
            await self.on_detections(event)
        else:
            await self.on_camera_event(event)

    async def on_detections(self, event: Any) -> None:
        analysis = decode(FrameAnalysis, event.value, required=("store_id", "camera_id", "capture_time_ms"))
        self._not_in_future(f"capture time of {analysis.camera_id}#{analysis.frame_sequence}", analysis.capture_time_ms)
        await self.observe_registers(analysis)
        camera = self.index.cameras.get(analysis.camera_id)
        if camera is None:
            return
        state: CameraState | None = None
        changed = False
        if camera.followed or camera.door_lines:
            state = self.cameras.get(analysis.camera_id)
            steps, changed = rules.track_steps(state, camera, analysis)
            await self.send_steps(camera, analysis, steps)
        if analysis.persons and (any(camera.zone_kinds.get(v.zone_id) in ("high_value", "exit") for p in analysis.persons for v in p.zones)
                                 or rules.closed_period(camera.opening_hours, camera.holidays, camera.timezone, analysis.capture_time_ms) is not None):
            state = state or self.cameras.get(analysis.camera_id)
            feedback = self.feedback_for(camera.store_id)
            if feedback is not None:
                camera = dataclasses.replace(camera, feedback=feedback)
            alerts, rules_changed = rules.camera_rules(state, camera, analysis, _now_ms())
            await self.raise_alerts(alerts)
            changed = changed or rules_changed
        # Nothing a camera rule looks at (the common case) costs no state at all.
        if changed and state is not None:
            self.cameras.put(analysis.camera_id, state)

    async def send_steps(self, camera: rules.CameraContext, analysis: FrameAnalysis, steps: list[TrackStep]) -> None:
        """A frame's steps on to its store's journeys, and every CLOCK_EVERY_MS of event time a clock
        step, so the store decides exits while this camera is quiet (heartbeats carry the time on)."""
        if analysis.capture_time_ms - self._clock_sent.get(camera.camera_id, 0) >= rules.CLOCK_EVERY_MS or analysis.capture_time_ms < self._clock_sent[camera.camera_id]:
            self._clock_sent[camera.camera_id] = analysis.capture_time_ms
            steps = [*steps, TrackStep("clock", camera.store_id, camera.camera_id, analysis.capture_time_ms)]
        for step in steps:
            await self.streams.store_steps.send(key=camera.store_id.encode(), value=STEP_CODEC.dumps(step))

    async def on_store_step(self, event: Any) -> None:
        """One camera's step into its store's journeys: checkout bypass and repeat visits."""
        try:
            step = STEP_CODEC.loads(event.value)
            if step.kind not in ("enter", "leave", "cross", "clock") or not isinstance(step.time_ms, int) or not step.store_id or not step.camera_id:
                raise ValueError("not a track step (enter, leave, cross or clock) with a store, a camera and a time")
        except (ValueError, TypeError, KeyError) as exc:
            raise PoisonMessage(f"store step: {exc}") from None
        ctx = self.index.stores.get(step.store_id)
        if ctx is None:
            return  # a store taken out of the config
        feedback = self.feedback_for(step.store_id)
        if feedback is not None:
            ctx = dataclasses.replace(ctx, feedback=feedback)
        state = self.journeys.get(step.store_id)
        alerts = rules.storewide_rules(state, ctx, step, _now_ms())
        await self.raise_alerts(alerts)
        self.journeys.put(step.store_id, state)

    async def observe_registers(self, analysis: FrameAnalysis) -> None:
        """Each register this camera watches: who and what was at its counter, then its refunds."""
        watching = self.index.registers_by_camera.get(analysis.camera_id)
        if not watching:
            return
        zones = {z.zone_id: z for z in analysis.zones}
        now_ms = _now_ms()
        for key, register in watching:
            observed = [zones[z] for z in register.customer_zones if z in zones]
            if not observed:
                # The analysis says nothing about this register's zones: coverage unknown, not "nobody".
                continue
            goods = [zones[z] for z in register.merchandise_zones if z in zones]
            sample = rules.Sample(
                analysis.capture_time_ms, analysis.frame_sequence, analysis.camera_id,
                customer=any(z.person_present or z.person_count > 0 for z in observed),
                merchandise=-1 if not goods else int(any(z.new_object_count > 0 for z in goods)),
            )
            state = self.registers.get(key)
            if not rules.add_sample(state, sample, self.settings.coverage_gap_ms, int(self.settings.register_retention_s * 1000)):
                continue  # a replayed frame
            state.sample_received_ms = now_ms
            if state.pending:
                await self.decide(key, state, now_ms)
            else:
                self.registers.put(key, state)

    async def on_camera_event(self, event: Any) -> None:
        """A refund routed here from its register's POS partition, or a tick for a silent camera."""
        kind = dict(event.headers or {}).get(CAMERA_EVENT_KIND, b"").decode()
        now_ms = _now_ms()
        if kind == "tick":
            key = event.value.decode(errors="replace")
            if key in self.registers.values or self.streams.register_state.get(key) is not None:
                await self.decide(key, self.registers.get(key), now_ms)
            return
        pos = decode(PosEvent, event.value, required=("event_id", "store_id", "register_id", "event_time_ms"))
        key = register_key(pos.store_id, pos.register_id)
        state = self.registers.get(key)
        added = rules.add_pending(state, self.register_context(key, pos.store_id, pos.register_id), pos, now_ms)
        log.info("refund at its camera", extra={"event_id": pos.event_id, "correlation_id": pos.correlation_id, "register": key, "pending": added,
                                                "watermark_ms": state.watermark_ms, "partition": event.message.partition, "offset": event.message.offset})
        await self.decide(key, state, now_ms)

    async def decide(self, key: str, state: RegisterState, now_ms: int) -> None:
        """Decide the register's refunds whose windows the camera has passed, raise, then save."""
        alerts: list[Alert] = []
        outcomes: list[rules.RefundOutcome] = []
        if state.pending:
            store_id, _, register_id = key.partition(":")
            alerts, outcomes, taken = rules.decide_refunds(state, self.register_context(key, store_id, register_id), now_ms, now_ms)
            try:
                await self.raise_alerts(alerts)
            except Exception:
                # Keep them pending: the register's next frame (or tick) decides again, and the
                # deterministic alert ids make a second attempt harmless.
                log.exception("could not send alerts; refunds kept pending", extra={"register": key})
                rules.restore_pending(state, taken)
                self.registers.put(key, state)
                return
        for outcome in outcomes:
            RULE_OUTCOMES.labels(outcome.rule, outcome.outcome).inc()
            # A refund that raised nothing says why here, so "why no alert for this refund?" has an answer.
            log.info("refund rule decided", extra={"event_id": outcome.event_id, "correlation_id": outcome.correlation_id, "rule": outcome.rule,
                                                   "outcome": outcome.outcome, "register": key})
            if outcome.rule == rules.REFUND_WITHOUT_CUSTOMER:
                REFUNDS_DECIDED.labels({"alert": "no_customer", "seen": "customer_present", "no_coverage": "no_camera_coverage"}.get(outcome.outcome, outcome.outcome)).inc()
            if 0 < outcome.delay_ms < 600_000:  # a replay of old data says nothing about live delay
                DECISION_DELAY.observe(outcome.delay_ms / 1000)
        # Saved (at the next commit) only after the alerts are acknowledged, so a crash in between
        # decides again, never forgets.
        self.registers.put(key, state)

    def register_context(self, key: str, store_id: str, register_id: str) -> rules.RegisterContext:
        ctx = self.index.registers.get(key)
        if ctx is None:  # a register the config does not know: POS-only rules still apply, with the store's rules
            ctx = rules.RegisterContext(store_id, register_id, "UTC", (), (), self.index.rules_at(store_id))
        feedback = self.feedback_for(store_id)
        return ctx if feedback is None else dataclasses.replace(ctx, feedback=feedback)

    # --- registers: POS events -------------------------------------------------------------------------

    def _decode_pos(self, event: Any) -> PosEvent:
        pos = decode(PosEvent, event.value, required=("event_id", "store_id", "register_id", "event_time_ms"))
        if pos.type == PosEventType.POS_EVENT_TYPE_UNSPECIFIED:
            raise PoisonMessage("shrinkwatch.v1.PosEvent: missing required field(s) type")
        expected_key = register_key(pos.store_id, pos.register_id).encode()
        if event.key != expected_key:
            # Another key would put this register's events on another partition than its state.
            raise PoisonMessage(f"key {event.key!r} is not {expected_key!r} (store:register); events of one register must share a partition")
        self._not_in_future(f"event_time of {pos.event_id}", pos.event_time_ms)
        return pos

    async def on_pos_event(self, event: Any) -> None:
        """Rules decided on arrival, then refunds on to their camera, their tokens and their sale."""
        pos = self._decode_pos(event)
        key = register_key(pos.store_id, pos.register_id)
        now_ms = _now_ms()
        ctx = self.register_context(key, pos.store_id, pos.register_id)
        state = self.streams.till_state.get(key) or TillState()
        alerts = rules.employee_own_card(state, ctx, pos, self.index.employee_tokens, now_ms)
        alerts += rules.no_sale_rate(state, ctx, pos, now_ms)
        alerts += rules.post_void(state, ctx, pos, now_ms)
        await self.raise_alerts(alerts)
        if pos.type in rules.REFUND_TYPES:
            await self.route_refund(pos, event.value)
        elif pos.type == PosEventType.POS_EVENT_TYPE_SALE and pos.transaction_id:
            await self.streams.transactions.send(key=f"{pos.store_id}:{pos.transaction_id}".encode(), value=event.value)
        if pos.type in rules.DRAWER_TYPES or alerts:
            self.streams.till_state[key] = state

    async def route_refund(self, pos: PosEvent, value: bytes) -> None:
        """A refund goes to its register's camera (the refund rules), to the chain-wide table of each
        of its tokens, and to its original sale's transaction."""
        camera_id = self.index.camera_of_register.get(register_key(pos.store_id, pos.register_id))
        if camera_id:
            await self.streams.camera_events.send(key=camera_id.encode(), value=value, headers={CAMERA_EVENT_KIND: b"refund"})
            log.info("refund routed to its camera", extra={"event_id": pos.event_id, "correlation_id": pos.correlation_id, "camera": camera_id})
        else:
            REFUNDS_DECIDED.labels("no_camera").inc()
        for token in dict.fromkeys(t for t in (pos.card_token, pos.customer_token) if t):
            await self.streams.returns_by_token.send(key=token.encode(), value=value)
        if pos.original_transaction_id:
            await self.streams.transactions.send(key=f"{pos.store_id}:{pos.original_transaction_id}".encode(), value=value)

    async def send_ticks(self) -> None:
        """Registers whose camera went silent get no frames; a tick lets their refunds time out.

        A timer may read a table but not write it, so it sends a tick through the camera's own
        partition and the agent does the deciding.
        """
        now = _now_ms()
        states = dict(self.streams.register_state.items())
        states.update(self.registers.values)  # newer than the table until the next commit
        for key, state in states.items():
            ctx = self.index.registers.get(key)
            max_wait_ms = int((ctx.rules if ctx else self.index.rules_at(key.partition(":")[0])).timing.max_wait_s * 1000)
            if state and state.camera_id and rules.timed_out(state, now, max_wait_ms):
                await self.streams.camera_events.send(key=state.camera_id.encode(), value=key.encode(), headers={CAMERA_EVENT_KIND: b"tick"})

    # --- chain-wide returns, transactions, feedback -----------------------------------------------------

    async def on_token_return(self, event: Any) -> None:
        token = event.key.decode(errors="replace") if event.key else ""
        pos = decode(PosEvent, event.value, required=("event_id", "store_id", "event_time_ms"))
        if not token:
            raise PoisonMessage("return without a token key")
        state = self.streams.token_state.get(token) or TokenState()
        alerts = rules.return_abuse(state, token, pos, self.index.rules_at(pos.store_id), self.feedback_for(pos.store_id), _now_ms())
        await self.raise_alerts(alerts)
        self.streams.token_state[token] = state

    async def on_transaction(self, event: Any) -> None:
        key = event.key.decode(errors="replace") if event.key else ""
        pos = decode(PosEvent, event.value, required=("event_id", "store_id", "event_time_ms"))
        table = self.streams.transaction_state
        state = table.get(key) or TransactionState()
        settings = self.index.rules_at(pos.store_id)
        refunds = rules.record_sale(state, pos) if pos.type == PosEventType.POS_EVENT_TYPE_SALE else [pos]
        alerts = [a for refund in refunds for a in rules.employee_own_sale(state, refund, settings, _now_ms())]
        await self.raise_alerts(alerts)
        table[key] = state

    async def on_feedback(self, event: Any) -> None:
        verdict = decode(Feedback, event.value, required=("alert_id", "store_id", "verdict"))
        if verdict.verdict in (Verdict.VERDICT_CONFIRMED, Verdict.VERDICT_FALSE_ALARM) and verdict.rule not in RULE_NAMES:
            raise PoisonMessage(f"feedback on alert {verdict.alert_id}: unknown rule {verdict.rule!r} (one of {', '.join(RULE_NAMES)})")
        table = self.streams.feedback_state
        state = table.get(verdict.store_id) or FeedbackState()
        if rules.apply_feedback(state, verdict, self.index.rules_at(verdict.store_id).tuning):
            table[verdict.store_id] = state
            self.feedback[verdict.store_id] = state
