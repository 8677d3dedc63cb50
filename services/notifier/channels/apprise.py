"""Apprise channel: ntfy, Pushover, Slack, Teams, Telegram, email and the rest Apprise supports.

One Apprise URL per contact (`ntfys://ntfy.example.com/lp-alice`, `pover://user@token`,
`mailtos://...`); Apprise does the service's protocol, this module the retries' bookkeeping. The
evidence snapshot goes as an attachment where the service takes one, the alert page's link always.
Apprise reports failure as False plus log lines; the lines logged by this thread during the call
become the error text.

Title and body are handed over as plain text: they carry ids and explanations a POS system or a
camera's config supplied, and Apprise escapes plain text for a service that renders HTML or
Markdown (email goes out as text/plain; an email URL with `format=html`, Telegram and the like get
it HTML-escaped), so no such value is ever read as markup.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import apprise
from apprise.attachment.memory import AttachMemory
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.notifier.channels.base import DeliveryError, Notification

_NOTIFY_TYPES = {"critical": apprise.NotifyType.FAILURE, "high": apprise.NotifyType.FAILURE, "medium": apprise.NotifyType.WARNING}


class AppriseChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["apprise"]
    name: str = "apprise"
    # A SecretStr: Apprise URLs carry tokens and passwords; logs show the scheme and host only.
    url: SecretStr
    attach_snapshot: bool = True
    timeout_s: float = Field(10.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _apprise_understands(cls, url: SecretStr) -> SecretStr:
        if apprise.Apprise.instantiate(url.get_secret_value()) is None:
            raise ValueError("Apprise does not understand this URL (see https://github.com/caronc/apprise/wiki for each service's form)")
        return url


class _ThreadErrors(logging.Handler):
    """Keeps the Apprise warnings and errors of the thread that is delivering, for the error text."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage()[:300])


_handler_lock = threading.Lock()
_handler: _ThreadErrors | None = None


def _errors_handler() -> _ThreadErrors:
    global _handler
    with _handler_lock:
        if _handler is None:
            _handler = _ThreadErrors()
            logging.getLogger("apprise").addHandler(_handler)
        return _handler


class AppriseChannel:
    def __init__(self, config: AppriseChannelConfig) -> None:
        self.name = config.name
        self.config = config
        self.timeout_s = config.timeout_s
        self.attaches_snapshot = config.attach_snapshot
        self._errors = _errors_handler()

    def _service(self) -> Any:
        # A fresh plugin per notification: Apprise's own per-instance throttle (seconds between
        # requests) would otherwise hold a burst back; the notifier's rate limits apply instead.
        plugin = apprise.Apprise.instantiate(self.config.url.get_secret_value())
        if plugin is None:
            raise DeliveryError(f"apprise {self.name}: URL no longer understood")
        plugin.socket_connect_timeout = min(plugin.socket_connect_timeout, self.timeout_s)
        plugin.socket_read_timeout = self.timeout_s
        # No theme icon: its URL points at a public site that every phone would then fetch.
        if hasattr(plugin, "include_image"):
            setattr(plugin, "include_image", False)  # noqa: B010 (not every plugin has the attribute)
        return plugin

    def deliver(self, notification: Notification) -> str:
        plugin = self._service()
        attachments = None
        if notification.snapshot is not None and self.attaches_snapshot and plugin.attachment_support:
            attachments = apprise.AppriseAttachment()
            attachments.add(AttachMemory(content=notification.snapshot, name=notification.snapshot_name, mimetype="image/jpeg"))
        body = f"{notification.body}\n{notification.url}"
        self._errors.local.lines = []
        try:
            ok = plugin.notify(body=body, title=notification.title, notify_type=_NOTIFY_TYPES.get(notification.severity, apprise.NotifyType.INFO),
                               attach=attachments, body_format=apprise.NotifyFormat.TEXT)
        except Exception as exc:  # a plugin bug must fail this delivery, not the worker
            raise DeliveryError(f"apprise {self.name} ({plugin.service_name}): {type(exc).__name__} {exc}") from None
        finally:
            lines, self._errors.local.lines = self._errors.local.lines, None
        if not ok:
            raise DeliveryError(f"apprise {self.name} ({plugin.service_name}): " + ("; ".join(lines[-3:]) or "not delivered"))
        return f"sent via {plugin.service_name}" + (" with snapshot" if attachments else "")
