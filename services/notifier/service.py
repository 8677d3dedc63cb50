"""Notifier: alerts in, each recipient told once on each of their contacts, escalated until acknowledged.

Three parts share the Redis outbox (`outbox.py`):

- the consume loop (`Notifier.handle`) reads sw.alerts.v1 and sw.feedback.v1. Each alert is folded
  into its incident (services/shared/incidents.py): the people told are paged once per incident,
  under the id of the alert that opened it. The incident is routed (routing file: store, region,
  rule, severity) and its first level's recipients are enqueued, its later levels scheduled as
  escalations, all before the offset is committed. A later reason of the incident routes it again
  at its new severity: whoever was told already is not paged again (the outbox's dedupe), a route
  that only a higher severity matches is. A verdict of any kind on sw.feedback.v1, on any reason,
  acknowledges the incident and drops its pending escalations. A malformed alert goes to the DLQ.
- the escalator (`Notifier.escalate_due`, on a timer) enqueues a due level's recipients unless the
  alert was acknowledged meanwhile; schedules are resolved when the level fires, so an escalation
  after a handover reaches whoever is on call then.
- the dispatcher (`dispatcher.py`) sends what is due, each contact on its own, with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from confluent_kafka import Message
from prometheus_client import Counter

from services.notifier.outbox import Outbox
from services.notifier.routing import RoutingConfig, matching_routes, quiet_until, resolve_targets, severity_name, severity_rank
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.incidents import Folded, Incident, IncidentLedger
from services.shared.kafka import Outcome, Poison, RetryableError
from services.shared.serde import PoisonMessage, decode

log = logging.getLogger("notifier")

Clock = Callable[[], float]

ENQUEUED = Counter("sw_notifier_enqueued_total", "Alerts enqueued per recipient, by outcome (now, held for a digest, duplicate)", ["outcome"])
ESCALATIONS = Counter("sw_notifier_escalations_total", "Escalation levels, by outcome (fired, acknowledged before it was due)", ["outcome"])
ACKNOWLEDGED = Counter("sw_notifier_acknowledgements_total", "Verdicts that acknowledged an alert")
UNROUTED = Counter("sw_notifier_unrouted_alerts_total", "Alerts no route matched (nobody told; check the routing file)")
INCIDENT_REASONS = Counter("sw_notifier_incident_reasons_total",
                           "Alerts folded into incidents: opened one, joined one (no new page) or joined and raised its severity", ["outcome"])


def ms(seconds: float) -> int:
    return int(seconds * 1000)


class Notifier:
    def __init__(self, outbox: Outbox, routing: RoutingConfig, regions: dict[str, str], clock: Clock,
                 on_enqueued: Callable[[], None] = lambda: None, incidents: IncidentLedger | None = None) -> None:
        self.outbox = outbox
        self.incidents = incidents or IncidentLedger(outbox.redis, f"{outbox.prefix}incidents:", outbox.keep_ms)
        self.routing = routing
        self.regions = regions
        self.clock = clock
        self.on_enqueued = on_enqueued
        self._channels: dict[str, list[tuple[str, str]]] = {name: [(f"{name}/{c.name}", str(c.type)) for c in r.contacts]
                                                            for name, r in routing.recipients.items()}

    # ---- the consume loop ----------------------------------------------------------------------

    def handle(self, messages: list[Message]) -> Outcome:
        """Alerts routed, verdicts applied; an unreadable one is poison (the loop keeps alerts' in the
        DLQ; the correlator owns sw.feedback.v1's)."""
        outcome = Outcome()
        try:
            for msg in messages:
                try:
                    if msg.topic() == topics.FEEDBACK:
                        self._feedback(decode(Feedback, msg.value(), required=("alert_id", "verdict")))
                    else:
                        self.take_alert(decode(Alert, msg.value(), required=("alert_id", "rule", "store_id")))
                except PoisonMessage as exc:
                    outcome.poison.append(Poison(msg, str(exc)))
        except redis.RedisError as exc:
            raise RetryableError(f"redis: {exc}") from None
        return outcome

    def _feedback(self, feedback: Feedback) -> None:
        # A verdict this build does not know (a newer api) still says someone looked at the alert.
        verdict = Verdict.Name(feedback.verdict) if feedback.verdict in Verdict.values() else f"VERDICT_{feedback.verdict}"
        # The page went out under the incident's opening alert: a verdict on any reason acknowledges it.
        incident = self.incidents.incident_of(feedback.alert_id)
        paged = incident.opening_alert_id if incident is not None else feedback.alert_id
        dropped = self.outbox.acknowledge(feedback.alert_id, verdict)
        if paged != feedback.alert_id:
            dropped += self.outbox.acknowledge(paged, verdict)
        ACKNOWLEDGED.inc()
        if dropped:
            ESCALATIONS.labels("acknowledged").inc(dropped)
        log.info("alert acknowledged", extra={"alert_id": feedback.alert_id, "paged_as": paged, "verdict": verdict, "user": feedback.user,
                                              "escalations_dropped": dropped})

    def take_alert(self, alert: Alert) -> None:
        """Fold the alert into its incident and route the incident (idempotent: a replay, or a
        reason that changes nobody's routes, pages nobody again)."""
        folded = self.incidents.fold(alert)
        if folded.added:
            INCIDENT_REASONS.labels("opened" if folded.opening else "escalated" if folded.escalated else "joined").inc()
        page = alert if folded.opening and len(folded.incident.reasons) == 1 else self._page_of(folded)
        if page is None:
            return
        if not folded.opening:
            log.info("alert joined an incident", extra={"alert_id": alert.alert_id, "correlation_id": alert.correlation_id, "incident_id": folded.incident.incident_id,
                                                        "paged_as": page.alert_id, "rules": folded.incident.rules, "escalated": folded.escalated})
        self.route(page, page.SerializeToString(), folded.incident)

    def _page_of(self, folded: Folded) -> Alert | None:
        """The incident as one alert (the opening alert's id, evidence and place; the incident's
        severity; every reason's explanation), or None when the opening alert is no longer kept."""
        incident = folded.incident
        data = self.outbox.alerts([incident.opening_alert_id]).get(incident.opening_alert_id)
        if data is None:
            log.warning("incident's opening alert no longer kept; the new reason is not routed", extra={"incident_id": incident.incident_id})
            return None
        page = decode(Alert, data)
        page.severity = max(page.severity, incident.severity)  # type: ignore[assignment]
        first = incident.reasons[0]
        others = [f"{r.rule.replace('_', ' ')}: {r.explanation}" for r in incident.reasons[1:]]
        page.explanation = "; also ".join([first.explanation, *others])
        return page

    def route(self, alert: Alert, data: bytes, incident: Incident | None = None) -> None:
        """Enqueue the first level of every matching route and schedule the later ones (idempotent)."""
        if incident is not None:
            alert.facts["incident_id"] = incident.incident_id
            alert.facts["reasons"] = ",".join(incident.rules)
            data = alert.SerializeToString()
        now = self.clock()
        first_seen_ms = self.outbox.remember_alert(alert.alert_id, data, ms(now))
        routes = matching_routes(self.routing, alert, self.regions.get(alert.store_id, ""))
        if not routes:
            UNROUTED.inc()
            log.warning("no route matches the alert; nobody is told", extra={"alert_id": alert.alert_id, "correlation_id": alert.correlation_id,
                                                                              "store": alert.store_id, "rule": alert.rule})
            return
        for route in routes:
            for index, level in enumerate(route.levels):
                due_ms = first_seen_ms + ms(level.after_min * 60)
                if index and self.outbox.acknowledged(alert.alert_id):
                    continue  # a replay of an alert already acknowledged: no escalation
                if due_ms <= ms(now):
                    self._notify_level(alert, route.name, index, now)
                else:
                    self.outbox.schedule_escalation(alert.alert_id, route.name, index, due_ms)

    def _notify_level(self, alert: Alert, route_name: str, index: int, now: float) -> None:
        route = next(r for r in self.routing.routes if r.name == route_name)
        at = datetime.fromtimestamp(now, UTC)
        reason = f"route {route_name}, level {index + 1}" + (f" (after {route.levels[index].after_min:g} min unacknowledged)" if index else "")
        recipients = resolve_targets(self.routing, route.levels[index], at)
        if not recipients:
            log.error("a level resolves to nobody (empty schedule and no fallback)", extra={"alert_id": alert.alert_id, "route": route_name, "level": index + 1})
        limits = self.routing.limits
        # Alerts at or above this severity are never held for a burst's digest.
        rate_max = 2**31 if severity_rank(severity_name(alert.severity)) >= severity_rank(limits.except_severity) else limits.max_per_window
        for name in recipients:
            until = quiet_until(self.routing.recipients[name], alert.severity, at)
            outcome = self.outbox.enqueue(alert.alert_id, name, self._channels[name], ms(now), ms(until.timestamp()) if until else 0,
                                          rate_max, ms(limits.window_s), ms(limits.digest_after_s), reason)
            ENQUEUED.labels(outcome).inc()
            if outcome != "duplicate":
                log.info("alert enqueued", extra={"alert_id": alert.alert_id, "correlation_id": alert.correlation_id, "recipient": name,
                                                  "mode": outcome, "reason": reason})
        self.on_enqueued()

    # ---- escalations ---------------------------------------------------------------------------

    def escalate_due(self) -> int:
        """Fire every escalation level now due; returns how many fired."""
        now = self.clock()
        fired = 0
        for alert_id, route_name, index in self.outbox.due_escalations(ms(now)):
            if self.outbox.acknowledged(alert_id):
                ESCALATIONS.labels("acknowledged").inc()
            elif not any(r.name == route_name and index < len(r.levels) for r in self.routing.routes):
                log.warning("escalation of a route no longer in the routing file dropped", extra={"alert_id": alert_id, "route": route_name})
            else:
                data = self.outbox.alerts([alert_id]).get(alert_id)
                if data is None:
                    log.warning("escalation of an alert no longer kept dropped", extra={"alert_id": alert_id})
                else:
                    self._notify_level(decode(Alert, data), route_name, index, now)
                    ESCALATIONS.labels("fired").inc()
                    fired += 1
                    log.info("alert escalated", extra={"alert_id": alert_id, "route": route_name, "level": index + 1})
            self.outbox.escalation_done(alert_id, route_name, index)
        return fired


def run_escalator(notifier: Notifier, stop: threading.Event, every_s: float = 1.0) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(every_s):
            try:
                notifier.escalate_due()
            except redis.RedisError as exc:
                log.warning("escalation check failed; retrying", extra={"error": str(exc)})
            except Exception:
                log.exception("escalation check failed; retrying")

    thread = threading.Thread(target=loop, name="escalator", daemon=True)
    thread.start()
    return thread
