"""Webhook channel: POST the alert as JSON, signed with HMAC-SHA256 when a secret is set."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Literal

import httpx
from pydantic import AnyHttpUrl, BaseModel, Field, SecretStr, field_validator

from services.notifier.channels.base import DeliveryError, PermanentDeliveryError
from services.shared.contracts.alert_pb2 import Alert
from services.shared.serde import to_json_dict


class WebhookChannelConfig(BaseModel):
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
    def __init__(self, config: WebhookChannelConfig) -> None:
        self.name = config.name
        self.config = config
        self._client = httpx.Client(timeout=config.timeout_s)

    def deliver(self, alert: Alert) -> str:
        body = json.dumps(to_json_dict(alert), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "X-ShrinkWatch-Alert-Id": alert.alert_id}
        if self.config.secret is not None:
            digest = hmac.new(self.config.secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
            headers["X-ShrinkWatch-Signature"] = f"sha256={digest}"
        try:
            response = self._client.post(str(self.config.url), content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {self.name}: {type(exc).__name__} {exc}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise DeliveryError(f"webhook {self.name}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PermanentDeliveryError(f"webhook {self.name}: HTTP {response.status_code} {response.text[:200]}")
        return f"HTTP {response.status_code} {self.config.url}"
