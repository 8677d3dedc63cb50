"""Notification channels, one module each, chosen by `type` in a recipient's contacts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.notifier.channels.apprise import AppriseChannel, AppriseChannelConfig
from services.notifier.channels.base import Channel, DeliveryError, Notification, PermanentDeliveryError
from services.notifier.channels.log import LogChannel, LogChannelConfig
from services.notifier.channels.webhook import WebhookChannel, WebhookChannelConfig

ContactConfig = Annotated[LogChannelConfig | WebhookChannelConfig | AppriseChannelConfig, Field(discriminator="type")]


def build_channel(config: LogChannelConfig | WebhookChannelConfig | AppriseChannelConfig) -> Channel:
    if isinstance(config, WebhookChannelConfig):
        return WebhookChannel(config)
    if isinstance(config, AppriseChannelConfig):
        return AppriseChannel(config)
    return LogChannel(config)


__all__ = ["Channel", "ContactConfig", "DeliveryError", "Notification", "PermanentDeliveryError", "build_channel"]
