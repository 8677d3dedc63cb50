"""Notification channels, one module each, chosen by `type` in SW_NOTIFIER_CHANNELS."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.notifier.channels.base import Channel, DeliveryError, PermanentDeliveryError
from services.notifier.channels.log import LogChannel, LogChannelConfig
from services.notifier.channels.webhook import WebhookChannel, WebhookChannelConfig

ChannelConfig = Annotated[LogChannelConfig | WebhookChannelConfig, Field(discriminator="type")]


def build_channel(config: LogChannelConfig | WebhookChannelConfig) -> Channel:
    if isinstance(config, WebhookChannelConfig):
        return WebhookChannel(config)
    return LogChannel(config)


__all__ = ["Channel", "ChannelConfig", "DeliveryError", "PermanentDeliveryError", "build_channel"]
