"""Log channel: every alert as one structured log line (the always-on audit trail)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel

from services.shared.contracts.alert_pb2 import Alert, Severity

log = logging.getLogger("notifier.alerts")


class LogChannelConfig(BaseModel):
    type: Literal["log"] = "log"
    name: str = "log"


class LogChannel:
    def __init__(self, config: LogChannelConfig) -> None:
        self.name = config.name

    def deliver(self, alert: Alert) -> str:
        log.warning(
            "ALERT %s", alert.explanation,
            extra={"alert_id": alert.alert_id, "rule": alert.rule, "severity": Severity.Name(alert.severity),
                   "store": alert.store_id, "register": alert.register_id, "camera": alert.camera_id},
        )
        return "logged"
