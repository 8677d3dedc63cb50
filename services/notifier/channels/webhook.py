"""Webhook channel: POST the notification's JSON, signed over a timestamp and the body.

How a receiver checks it is in `services.shared.webhooks` and docs/notifications.md.
"""

from __future__ import annotations

import json
import time
from typing import Literal

import httpx
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.notifier.channels.base import DeliveryError, Notification, PermanentDeliveryError
from services.shared.correlation import outgoing_headers
from services.shared.webhooks import ALERT_HEADER, DELIVERY_HEADER, signed_headers


class WebhookChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["webhook"]
    name: str = "webhook"
    url: AnyHttpUrl
    secret: SecretStr | None = None
    timeout_s: float = Field(5.0, gt=0, le=60)

    @field_validator("secret", mode="before")
    @classmethod
    def _empty_means_unsigned(cls, value: object) -> object:
        return None if value in ("", None) else value


class WebhookChannel:
    attaches_snapshot = False  # the payload carries the alert page's link; the snapshot stays behind sign-in

    def __init__(self, config: WebhookChannelConfig) -> None:
        self.name = config.name
        self.config = config
        self.timeout_s = config.timeout_s
        self._client = httpx.Client(timeout=config.timeout_s)

    def deliver(self, notification: Notification) -> str:
        body = json.dumps(notification.payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: notification.delivery_id}
        if notification.kind == "alert":
            headers[ALERT_HEADER] = notification.alert_ids[0]
        headers.update(outgoing_headers(notification.correlation_ids))
        if self.config.secret is not None:
            headers.update(signed_headers(self.config.secret.get_secret_value(), int(time.time()), body))
        try:
            response = self._client.post(str(self.config.url), content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {self.name}: {type(exc).__name__} {exc}") from None
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise DeliveryError(f"webhook {self.name}: HTTP {response.status_code}")
        if 300 <= response.status_code < 400:
            # Not followed: the receiver never got the alert; the URL in the routing file is out of date.
            raise PermanentDeliveryError(f"webhook {self.name}: HTTP {response.status_code} redirect to {response.headers.get('location', '?')[:200]}; "
                                         "update the URL in the routing file")
        if response.status_code >= 400:
            raise PermanentDeliveryError(f"webhook {self.name}: HTTP {response.status_code} {response.text[:200]}")
        return f"HTTP {response.status_code}"
