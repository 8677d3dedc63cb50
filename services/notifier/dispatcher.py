"""Dispatcher: sends what the outbox says is due, each contact on its own.

A scheduler thread looks at the contacts with work due and hands each to a worker pool; a contact
is worked by one worker at a time here, so a contact that times out ties up one worker, never the
others. A failure backs the contact off exponentially (all its queued notifications wait, in Redis,
so every replica sees it); a success resets it. A notification that still fails after
`give_up_after_s`, or that the receiver refuses (4xx), goes to the alerts DLQ with the reason and
is counted; its record says so on the alert's page.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter, Gauge, Histogram

from services.notifier.channels import Channel, DeliveryError, Notification, PermanentDeliveryError
from services.notifier.messages import alert_notification, digest_notification
from services.notifier.outbox import Job, Outbox
from services.notifier.routing import RoutingConfig
from services.notifier.service import Clock, ms
from services.shared import topics
from services.shared.backoff import Backoff
from services.shared.contracts.alert_pb2 import Alert
from services.shared.evidence import STORE_ERRORS, EvidenceStore
from services.shared.kafka import MESSAGES_DEAD_LETTERED, dlq_headers, make_producer, produce_and_wait
from services.shared.serde import PoisonMessage, decode

log = logging.getLogger("notifier.dispatch")

DELIVERIES = Counter("sw_notifier_deliveries_total", "Notification attempts by channel type and outcome", ["channel_type", "outcome"])
LATENCY = Histogram("sw_notifier_delivery_seconds", "From the alert reaching the notifier to the receiver taking it", ["channel_type"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900))
QUEUED = Gauge("sw_notifier_queued", "Notifications not yet delivered (due, retrying, held for a digest)")
UNDELIVERABLE = Counter("sw_notifier_undeliverable_total", "Notifications given up on and sent to the DLQ", ["channel_type"])

# Beyond the channel's own timeout, before a claimed notification counts as abandoned (worker killed).
LEASE_MARGIN_S = 10.0
SNAPSHOT_RECHECK_S = 1.0


@dataclass
class Contact:
    channel_id: str
    recipient: str
    channel: Channel
    channel_type: str
    timezone: str


@dataclass
class _Holdoff:
    """A contact that failed waits before its next try; delivery succeeding forgets it."""

    backoff: Backoff
    until_ms: int = 0


class Dispatcher:
    def __init__(self, outbox: Outbox, routing: RoutingConfig, contacts: dict[str, Contact], bootstrap_servers: str, clock: Clock,
                 evidence: EvidenceStore | None = None, snapshot_wait_s: float = 10.0, workers: int = 8, poll_s: float = 0.05,
                 stop_event: threading.Event | None = None) -> None:
        self.outbox = outbox
        self.routing = routing
        self.contacts = contacts
        self.bootstrap_servers = bootstrap_servers
        self._producer: Producer | None = None
        self.clock = clock
        self.evidence = evidence
        self.snapshot_wait_ms = ms(snapshot_wait_s)
        self.poll_s = poll_s
        self.stop = stop_event or threading.Event()
        self.wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver")
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._backoff: dict[str, _Holdoff] = {}
        self._unknown_logged: set[str] = set()
        self.thread: threading.Thread | None = None

    def producer(self) -> Producer:
        """Made at the first dead letter: most runs never need one."""
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.bootstrap_servers)
            return self._producer

    def start(self) -> Dispatcher:
        self.thread = threading.Thread(target=self._schedule, name="dispatcher", daemon=True)
        self.thread.start()
        return self

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop taking work and let sends in flight finish (their outcome is recorded)."""
        self.stop.set()
        self.wake.set()
        if self.thread:
            self.thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._producer is not None:
            self._producer.flush(10)

    # ---- scheduling ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        gauge_at = 0.0
        while not self.stop.is_set():
            try:
                now_ms = ms(self.clock())
                for channel_id in self.outbox.ready_channels(now_ms):
                    self._submit(channel_id, now_ms)
                if time.monotonic() - gauge_at > 5:
                    gauge_at = time.monotonic()
                    QUEUED.set(self.outbox.pending_jobs())
            except redis.RedisError as exc:
                log.warning("redis unavailable; dispatch waits", extra={"error": str(exc)})
                self.stop.wait(1.0)
            except Exception:
                # The scheduler must outlive any one bad moment: without it nothing is sent.
                log.exception("dispatch scheduling failed; retrying")
                self.stop.wait(1.0)
            self.wake.wait(self.poll_s)
            self.wake.clear()

    def _submit(self, channel_id: str, now_ms: int) -> None:
        if channel_id not in self.contacts:
            if channel_id not in self._unknown_logged:
                self._unknown_logged.add(channel_id)
                log.error("notifications queued for a contact no longer in the routing file; they wait until it is back",
                          extra={"channel": channel_id})
            return
        with self._lock:
            backoff = self._backoff.get(channel_id)
            if channel_id in self._busy or (backoff and backoff.until_ms > now_ms):
                return
            self._busy.add(channel_id)
        try:
            self._pool.submit(self._drain, channel_id)
        except RuntimeError:  # pool shut down: stopping
            with self._lock:
                self._busy.discard(channel_id)

    def _drain(self, channel_id: str, max_jobs: int = 64) -> None:
        contact = self.contacts[channel_id]
        lease_ms = ms(contact.channel.timeout_s + LEASE_MARGIN_S)
        try:
            for _ in range(max_jobs):
                if self.stop.is_set():
                    return
                claimed = self.outbox.claim(channel_id, ms(self.clock()), lease_ms)
                if claimed is None:
                    return
                if isinstance(claimed, str):
                    continue  # its record expired: nothing left to send
                if not self._send(contact, claimed):
                    return  # backing off
        except redis.RedisError as exc:
            # A claimed notification's lease runs out and it is sent again (possibly a second time).
            log.warning("redis failed during dispatch", extra={"channel": channel_id, "error": str(exc)})
        except Exception:
            log.exception("dispatch failed unexpectedly", extra={"channel": channel_id})
        finally:
            with self._lock:
                self._busy.discard(channel_id)
            self.wake.set()

    # ---- one notification ----------------------------------------------------------------------

    def _send(self, contact: Contact, job: Job) -> bool:
        """Deliver one claimed job and record its outcome; False when the contact now backs off."""
        try:
            notification = self._render(contact, job)
        except (redis.RedisError, *STORE_ERRORS):  # type: ignore[misc]
            raise
        except Exception as exc:
            # An alert that cannot be rendered never will be: keep it in the DLQ rather than retry forever.
            log.exception("notification cannot be rendered", extra={"delivery_id": job.job_id})
            return self._failed(contact, job, {"n": job.attempts, "at_ms": ms(self.clock())}, time.monotonic(),
                                PermanentDeliveryError(f"cannot render the notification: {type(exc).__name__}: {exc}"))
        if notification is None:
            return True
        started = time.monotonic()
        attempt: dict = {"n": job.attempts, "at_ms": ms(self.clock())}
        try:
            receipt = contact.channel.deliver(notification)
        except DeliveryError as exc:
            return self._failed(contact, job, attempt, started, exc)
        except Exception as exc:  # a channel bug fails the attempt, not the worker
            log.exception("channel raised unexpectedly", extra={"channel": contact.channel_id})
            return self._failed(contact, job, attempt, started, DeliveryError(f"{type(exc).__name__}: {exc}"))
        now_ms = ms(self.clock())
        self.outbox.complete(job, now_ms, {**attempt, "outcome": "delivered", "ms": _elapsed_ms(started), "receipt": receipt[:200]}, receipt)
        with self._lock:
            self._backoff.pop(contact.channel_id, None)
        DELIVERIES.labels(contact.channel_type, "delivered").inc()
        if job.kind == "alert":  # a digest's latency is mostly its hold
            LATENCY.labels(contact.channel_type).observe(max(0, now_ms - job.created_ms) / 1000)
        log.info("notification delivered", extra={"delivery_id": job.job_id, "correlation_ids": notification.correlation_ids,
                                                  "recipient": job.recipient, "channel": contact.channel_id,
                                                  "alerts": len(job.alert_ids), "attempts": job.attempts, "latency_ms": now_ms - job.created_ms})
        return True

    def _failed(self, contact: Contact, job: Job, attempt: dict, started: float, exc: DeliveryError) -> bool:
        now_ms = ms(self.clock())
        error = str(exc)
        attempt = {**attempt, "outcome": "failed", "ms": _elapsed_ms(started), "error": error[:300]}
        delivery = self.routing.delivery
        permanent = isinstance(exc, PermanentDeliveryError)
        if permanent or now_ms - job.first_try_ms >= ms(delivery.give_up_after_s):
            why = "refused by the receiver" if permanent else f"still failing after {delivery.give_up_after_s:g}s"
            self._give_up(contact, job, now_ms, attempt, f"delivery to {contact.channel_id} {why}: {error}")
            return True
        with self._lock:
            backoff = self._backoff.setdefault(contact.channel_id, _Holdoff(Backoff(delivery.first_backoff_s, delivery.max_backoff_s)))
            delay_s = backoff.backoff.next_delay()
            backoff.until_ms = now_ms + ms(delay_s)
        self.outbox.retry(job, backoff.until_ms, attempt, error)
        DELIVERIES.labels(contact.channel_type, "retry").inc()
        log.warning("delivery failed; contact backs off", extra={"delivery_id": job.job_id, "channel": contact.channel_id,
                                                                 "attempt": job.attempts, "retry_in_s": delay_s, "error": error})
        return False

    def _give_up(self, contact: Contact, job: Job, now_ms: int, attempt: dict, error: str) -> None:
        """Keep the alerts in the DLQ, then mark the job failed (a DLQ write that fails leaves it to retry)."""
        try:
            for alert_id, data in self.outbox.alerts(job.alert_ids).items():
                headers = dlq_headers(topics.ALERTS, -1, -1, "notifier", error)
                headers += [("sw-recipient", job.recipient.encode()), ("sw-channel", contact.channel_id.encode()), ("sw-delivery-id", job.job_id.encode())]
                produce_and_wait(self.producer(), topics.dlq(topics.ALERTS), alert_id, data, headers)
                MESSAGES_DEAD_LETTERED.labels("notifier", topics.ALERTS).inc()
        except KafkaException as exc:
            log.error("could not write the DLQ; the notification stays queued", extra={"delivery_id": job.job_id, "error": str(exc)})
            self.outbox.retry(job, now_ms + ms(self.routing.delivery.max_backoff_s), attempt, error)
            return
        self.outbox.fail(job, now_ms, attempt, error)
        DELIVERIES.labels(contact.channel_type, "undeliverable").inc()
        UNDELIVERABLE.labels(contact.channel_type).inc()
        log.error("notification undeliverable; alert kept in the DLQ", extra={"delivery_id": job.job_id, "channel": contact.channel_id, "error": error})

    def _render(self, contact: Contact, job: Job) -> Notification | None:
        """The job's notification, or None when it was deferred or failed without being sent."""
        now_ms = ms(self.clock())
        stored = self.outbox.alerts(job.alert_ids)
        alerts = []
        for alert_id in job.alert_ids:
            try:
                alerts.append(decode(Alert, stored.get(alert_id)))
            except PoisonMessage:
                log.warning("an alert's record expired before its notification was sent", extra={"alert_id": alert_id, "delivery_id": job.job_id})
        if not alerts:
            self.outbox.complete(job, now_ms, {"n": job.attempts, "at_ms": now_ms, "outcome": "nothing to send"}, "nothing to send")
            return None
        if job.kind == "digest":
            return digest_notification(job.job_id, job.recipient, alerts, self.routing.dashboard_url, contact.timezone, job.reason)
        snapshot = None
        if contact.channel.attaches_snapshot and self.evidence is not None:
            snapshot, waiting = self._snapshot(alerts[0])
            if waiting and now_ms - job.created_ms < self.snapshot_wait_ms:
                self.outbox.defer(job, now_ms + ms(SNAPSHOT_RECHECK_S), now_ms, "evidence snapshot")
                return None
        return alert_notification(job.job_id, job.recipient, alerts[0], self.routing.dashboard_url, contact.timezone, job.reason, snapshot)

    def _snapshot(self, alert: Alert) -> tuple[bytes | None, bool]:
        """The evidence snapshot if written, and whether it is still to come (no manifest yet, or pending)."""
        assert self.evidence is not None
        try:
            manifest = self.evidence.manifest(alert.store_id, alert.alert_id)
            if manifest is None:
                return None, True
            if manifest.get("snapshot"):
                return self.evidence.read(alert.store_id, alert.alert_id, manifest["snapshot"]["name"]), False
            return None, manifest.get("status") == "pending"
        except (ValueError, LookupError, *STORE_ERRORS) as exc:  # type: ignore[misc]
            log.warning("evidence snapshot unavailable; sending the link only", extra={"alert_id": alert.alert_id, "error": str(exc)})
            return None, False


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
