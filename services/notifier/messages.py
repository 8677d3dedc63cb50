"""What a person (or a machine) reads: one alert, or a digest of a burst, as a Notification."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from services.notifier.channels import Notification
from services.notifier.routing import severity_name
from services.shared.contracts.alert_pb2 import Alert
from services.shared.serde import to_json_dict

MAX_DIGEST_LINES = 20


def _local(ms: int, zone: str) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(ZoneInfo(zone)).strftime("%H:%M:%S %Z")


def alert_url(dashboard_url: str, alert_id: str) -> str:
    return f"{dashboard_url.rstrip('/')}/alerts/{alert_id}"


def page_url(dashboard_url: str, alert: Alert) -> str:
    """The incident's page when the alert is one (the notifier pages incidents), else the alert's."""
    incident = alert.facts.get("incident_id", "")
    return f"{dashboard_url.rstrip('/')}/incidents/{incident}" if incident else alert_url(dashboard_url, alert.alert_id)


def _what(alert: Alert) -> str:
    """The incident's reasons ("after hours + loitering"), or the alert's rule."""
    rules = [r for r in alert.facts.get("reasons", "").split(",") if r] or [alert.rule]
    return " + ".join(r.replace("_", " ") for r in rules)


def alert_notification(delivery_id: str, recipient: str, alert: Alert, dashboard_url: str, zone: str, reason: str,
                       snapshot: bytes | None) -> Notification:
    severity = severity_name(alert.severity)
    where = " ".join(part for part in (alert.store_id, alert.register_id or alert.camera_id) if part)
    title = f"[{severity.upper()}] {_what(alert)} at {where}"
    url = page_url(dashboard_url, alert)
    body = f"{alert.explanation} ({_local(alert.event_time_ms, zone)})" if alert.event_time_ms else alert.explanation
    payload = {"kind": "alert", "delivery_id": delivery_id, "recipient": recipient, "reason": reason, "url": url, "alert": to_json_dict(alert)}
    return Notification(delivery_id, recipient, "alert", title, body, severity, url, [alert.alert_id], payload, snapshot,
                        correlation_ids=[alert.correlation_id] if alert.correlation_id else [])


def digest_notification(delivery_id: str, recipient: str, alerts: list[Alert], dashboard_url: str, zone: str, reason: str) -> Notification:
    alerts = sorted(alerts, key=lambda a: (a.event_time_ms, a.alert_id))
    worst = max((a.severity for a in alerts), default=0)
    stores = sorted({a.store_id for a in alerts})
    # Each entry is one incident (paged under its opening alert): the count a person cares about.
    title = f"{len(alerts)} incident{'s' if len(alerts) != 1 else ''} ({reason}) at {', '.join(stores[:3])}{'...' if len(stores) > 3 else ''}"
    lines = [f"- [{severity_name(a.severity)}] {_what(a)} {a.store_id} {a.register_id or a.camera_id} {_local(a.event_time_ms, zone)}: "
             f"{page_url(dashboard_url, a)}" for a in alerts[:MAX_DIGEST_LINES]]
    if len(alerts) > MAX_DIGEST_LINES:
        lines.append(f"... and {len(alerts) - MAX_DIGEST_LINES} more")
    url = f"{dashboard_url.rstrip('/')}/"
    payload = {"kind": "digest", "delivery_id": delivery_id, "recipient": recipient, "reason": reason, "url": url,
               "alerts": [to_json_dict(a) for a in alerts]}
    return Notification(delivery_id, recipient, "digest", title, "\n".join(lines), severity_name(worst), url, [a.alert_id for a in alerts], payload,
                        correlation_ids=[a.correlation_id for a in alerts if a.correlation_id])
