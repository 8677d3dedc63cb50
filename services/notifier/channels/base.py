"""What every notification channel provides."""

from __future__ import annotations

from typing import Protocol

from services.shared.contracts.alert_pb2 import Alert


class DeliveryError(RuntimeError):
    """Delivery failed in a way that may succeed later (timeout, 5xx, connection refused)."""


class PermanentDeliveryError(DeliveryError):
    """The receiver rejected the alert (4xx): retrying the same request will not help."""


class Channel(Protocol):
    name: str

    def deliver(self, alert: Alert) -> str:
        """Deliver once; return a short receipt (status, target) for the log."""
        ...
