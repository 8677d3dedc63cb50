"""Log channel: every notification as one structured log line (the always-on trail)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.notifier.channels.base import Notification

log = logging.getLogger("notifier.alerts")


class LogChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["log"] = "log"
    name: str = "log"


class LogChannel:
    attaches_snapshot = False
    timeout_s = 1.0

    def __init__(self, config: LogChannelConfig) -> None:
        self.name = config.name

    def deliver(self, notification: Notification) -> str:
        log.warning("ALERT %s", notification.body if notification.kind == "alert" else notification.title,
                    extra={"delivery_id": notification.delivery_id, "recipient": notification.recipient, "kind": notification.kind,
                           "alert_ids": notification.alert_ids, "severity": notification.severity, "url": notification.url})
        return "logged"
