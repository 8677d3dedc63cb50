"""What every notification channel provides, and the message it is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class DeliveryError(RuntimeError):
    """Delivery failed in a way that may succeed later (timeout, 5xx, connection refused)."""


class PermanentDeliveryError(DeliveryError):
    """The receiver rejected the notification (4xx): retrying the same request will not help."""


@dataclass(frozen=True)
class Notification:
    """One message to one contact: a single alert, or a digest of several.

    `delivery_id` is the same on every attempt of this notification, so receivers can drop a retry
    they already processed; `payload` is the JSON document machine receivers (webhooks) get.
    """

    delivery_id: str
    recipient: str
    kind: str  # "alert" or "digest"
    title: str
    body: str
    severity: str
    url: str
    alert_ids: list[str]
    payload: dict
    snapshot: bytes | None = None
    snapshot_name: str = "snapshot.jpg"
    extra: dict = field(default_factory=dict)
    # The correlation ids of the POS requests behind its alerts (services/shared/correlation.py).
    correlation_ids: list[str] = field(default_factory=list)


class Channel(Protocol):
    name: str
    # Whether the channel carries the evidence snapshot itself (else it gets the link only).
    attaches_snapshot: bool
    timeout_s: float

    def deliver(self, notification: Notification) -> str:
        """Deliver once; return a short receipt (status, target) for the delivery record."""
        ...
