"""The routing file and its pure logic: matching, on-call schedules with handovers, quiet hours, messages, signatures."""

import re
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pytest

from services.notifier.messages import alert_notification, digest_notification
from services.notifier.routing import RoutingError, Schedule, load_routing, matching_routes, on_call, parse_routing, quiet_until, resolve_targets
from services.shared.contracts.alert_pb2 import Alert, Severity
from services.shared.webhooks import SignatureError, sign, signed_headers, verify

NY = "America/New_York"


def _config(**extra):
    raw = {
        "recipients": {
            "alice": {"contacts": [{"type": "log"}], "timezone": NY, "quiet_hours": {"start": "22:00", "end": "06:30"}},
            "bob": {"contacts": [{"type": "webhook", "url": "https://soc.example/hook", "secret": "k"}]},
            "carol": {"contacts": [{"type": "apprise", "url": "ntfy://ntfy.example.com/carol"}, {"type": "log", "name": "trail"}]},
        },
        "schedules": {"store-1": {"timezone": NY, "shifts": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "19:00", "on_call": ["alice"]},
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "19:00", "end": "07:00", "on_call": ["bob"]},
        ], "fallback": ["carol"]}},
        "routes": [
            {"name": "critical-to-hq", "match": {"min_severity": "critical"}, "levels": [{"notify": ["carol"]}]},
            {"name": "store-1", "match": {"stores": ["store-001"], "rules": ["refund_without_customer"]},
             "levels": [{"notify": ["schedule:store-1"]}, {"after_min": 10, "notify": ["carol"]}], "final": True},
            {"name": "north", "match": {"regions": ["north"]}, "levels": [{"notify": ["bob"]}]},
        ],
    }
    raw.update(extra)
    return parse_routing(raw)


def _alert(**fields) -> Alert:
    base = {"alert_id": "al-1", "rule": "refund_without_customer", "severity": Severity.SEVERITY_HIGH, "store_id": "store-001",
            "register_id": "reg-1", "explanation": "refund with nobody at the counter", "event_time_ms": 1_764_600_000_000}
    return Alert(**{**base, **fields})


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_routes_match_by_store_rule_region_and_severity_and_final_stops():
    config = _config()
    assert [r.name for r in matching_routes(config, _alert(), region="north")] == ["store-1"]  # final stops before "north"
    assert [r.name for r in matching_routes(config, _alert(rule="sweethearting"), region="north")] == ["north"]
    assert [r.name for r in matching_routes(config, _alert(severity=Severity.SEVERITY_CRITICAL), region="")] == ["critical-to-hq", "store-1"]
    assert matching_routes(config, _alert(store_id="store-009", rule="x"), region="south") == []


def test_on_call_follows_shifts_in_the_schedule_time_zone_with_handover_and_fallback():
    schedule = _config().schedules["store-1"]
    day = on_call(schedule, _at("2026-12-01T18:55:00-05:00"))  # Tuesday, New York
    assert day.people == ["alice"] and day.next_handover == _at("2026-12-01T19:00:00-05:00")
    night = on_call(schedule, _at("2026-12-02T03:00:00+00:00"))  # 22:00 Tuesday in New York
    assert night.people == ["bob"] and night.next_handover == _at("2026-12-02T07:00:00-05:00")
    # Friday's night shift runs into Saturday morning; then nobody is on shift until Monday: the fallback.
    assert on_call(schedule, _at("2026-12-05T06:59:00-05:00")).people == ["bob"]
    weekend = on_call(schedule, _at("2026-12-05T12:00:00-05:00"))
    assert weekend.people == ["carol"] and weekend.shift == "fallback" and weekend.next_handover == _at("2026-12-07T07:00:00-05:00")


def test_on_call_keeps_local_shift_times_across_a_daylight_saving_change():
    schedule = Schedule(timezone=NY, shifts=[{"start": "07:00", "end": "19:00", "on_call": ["a"]}])
    # 07:00 New York is 12:00 UTC in winter and 11:00 UTC in summer (DST began 2026-03-08).
    assert on_call(schedule, _at("2026-03-07T11:30:00+00:00")).people == []
    assert on_call(schedule, _at("2026-03-09T11:30:00+00:00")).people == ["a"]


def test_a_level_resolves_schedules_when_it_fires():
    config = _config()
    level = config.routes[1].levels[0]
    assert resolve_targets(config, level, _at("2026-12-01T18:59:00-05:00")) == ["alice"]
    assert resolve_targets(config, level, _at("2026-12-01T19:00:00-05:00")) == ["bob"]


def test_quiet_hours_span_midnight_and_let_severe_alerts_through():
    alice = _config().recipients["alice"]
    until = quiet_until(alice, Severity.SEVERITY_HIGH, _at("2026-12-01T23:30:00-05:00"))
    assert until == _at("2026-12-02T06:30:00-05:00")
    assert quiet_until(alice, Severity.SEVERITY_HIGH, _at("2026-12-02T05:00:00-05:00")) == _at("2026-12-02T06:30:00-05:00")
    assert quiet_until(alice, Severity.SEVERITY_HIGH, _at("2026-12-02T06:30:00-05:00")) is None
    assert quiet_until(alice, Severity.SEVERITY_CRITICAL, _at("2026-12-01T23:30:00-05:00")) is None


@pytest.mark.parametrize(("change", "message"), [
    ({"routes": [{"name": "r", "levels": [{"notify": ["nobody"]}]}]}, "'nobody' is not in recipients"),
    ({"routes": [{"name": "r", "levels": [{"notify": ["schedule:none"]}]}]}, "names no schedule"),
    ({"routes": [{"name": "r", "levels": [{"after_min": 5, "notify": ["bob"]}, {"after_min": 5, "notify": ["carol"]}]}]}, "increasing after_min"),
    ({"schedules": {"s": {"timezone": "Mars/Olympus", "shifts": [{"on_call": ["bob"]}]}}}, "not an IANA time zone"),
    ({"schedules": {"s": {"timezone": NY, "shifts": [{"start": "25:00", "on_call": ["bob"]}]}}}, "not a time of day"),
    ({"recipients": {"x": {"contacts": [{"type": "apprise", "url": "nonsense-scheme://x"}]}}}, "Apprise does not understand"),
    ({"recipients": {"x": {"contacts": [{"type": "log"}, {"type": "log"}]}}}, "distinct names"),
    ({"routes": [{"name": "night|east", "levels": [{"notify": ["bob"]}]}]}, "routes.0.name"),
    ({"recipients": {"x": {"contacts": [{"type": "webhook", "url": "https://h.example/${SW_ROUTING_TEST_UNSET_SECRET}"}]}}}, "SW_ROUTING_TEST_UNSET_SECRET is not set"),
])
def test_a_bad_routing_file_names_the_field(change, message):
    base = {"recipients": {"bob": {"contacts": [{"type": "log"}]}, "carol": {"contacts": [{"type": "log"}]}},
            "routes": [{"name": "r", "levels": [{"notify": ["bob"]}]}]}
    with pytest.raises(RoutingError, match=message):
        parse_routing({**base, **change})


def test_routes_naming_unknown_stores_or_regions_are_refused():
    config = _config()
    with pytest.raises(RoutingError, match="store-001' is not a store"):
        config.check_stores(["store-002"], ["north"])
    with pytest.raises(RoutingError, match="'north' is no store's region"):
        config.check_stores(["store-001"], ["south"])


def test_secrets_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SW_ROUTING_TEST_HOOK_SECRET", "from-env")
    config = parse_routing({"recipients": {"x": {"contacts": [{"type": "webhook", "url": "https://h.example/", "secret": "${SW_ROUTING_TEST_HOOK_SECRET}"}]}},
                            "routes": [{"name": "r", "levels": [{"notify": ["x"]}]}]})
    assert config.recipients["x"].contacts[0].secret.get_secret_value() == "from-env"  # type: ignore[union-attr]


def _one_contact(contact: dict, **extra) -> dict:
    return {"recipients": {"x": {"contacts": [contact]}}, "routes": [{"name": "r", "levels": [{"notify": ["x"]}]}], **extra}


@pytest.mark.parametrize(("raw", "field"), [
    (_one_contact({"type": "webhook", "name": "${SW_ROUTING_TEST_NAME}", "url": "https://h.example/"}), r"recipients\.x\.contacts\[0\]\.name"),
    (_one_contact({"type": "log"}, routes=[{"name": "${SW_ROUTING_TEST_NAME}", "levels": [{"notify": ["x"]}]}]), r"routes\[0\]\.name"),
    (_one_contact({"type": "log"}, dashboard_url="https://lp.example/?k=${SW_ROUTING_TEST_NAME}"), r"dashboard_url"),
    ({**_one_contact({"type": "log"}), "recipients": {"${SW_ROUTING_TEST_NAME}": {"contacts": [{"type": "log"}]}}}, r"recipients\.\$\{SW_ROUTING_TEST_NAME\}"),
])
def test_a_placeholder_outside_a_contacts_url_or_secret_is_refused(monkeypatch, raw, field):
    monkeypatch.setenv("SW_ROUTING_TEST_NAME", "expanded-value")
    with pytest.raises(RoutingError, match=field) as refused:
        parse_routing(raw, "routing.yaml")
    message = str(refused.value)
    assert message.startswith("routing.yaml: ") and "read only in a contact's url or secret" in message and "SW_ROUTING_" in message
    assert "expanded-value" not in message


@pytest.mark.parametrize("contact", [
    {"type": "webhook", "url": "https://evil.example/?x=${SW_REDIS_URL}"},
    {"type": "webhook", "url": "https://h.example/", "secret": "${SW_REDIS_URL}"},
    {"type": "apprise", "url": "ntfys://evil.example/${SW_REDIS_URL}"},
])
def test_a_placeholder_naming_a_variable_outside_the_prefix_is_refused_without_its_value(monkeypatch, contact):
    monkeypatch.setenv("SW_REDIS_URL", "redis://:hunter2@redis.internal:6379/0")
    with pytest.raises(RoutingError) as refused:
        parse_routing(_one_contact(contact), "routing.yaml")
    message = str(refused.value)
    assert message.startswith("routing.yaml: recipients.x.contacts[0].")
    assert "${SW_REDIS_URL} is not allowed" in message and "starting with SW_ROUTING_" in message
    assert "hunter2" not in message and "redis.internal" not in message
    # The prefix is the notifier's setting: another one moves the line, and SW_ROUTING_ is refused then.
    monkeypatch.setenv("LP_HOOK_SECRET", "from-env")
    config = parse_routing(_one_contact({"type": "webhook", "url": "https://h.example/", "secret": "${LP_HOOK_SECRET}"}), secret_env_prefix="LP_")
    assert config.recipients["x"].contacts[0].secret.get_secret_value() == "from-env"  # type: ignore[union-attr]
    with pytest.raises(RoutingError, match="starting with LP_"):
        parse_routing(_one_contact({"type": "webhook", "url": "https://h.example/", "secret": "${SW_ROUTING_X}"}), secret_env_prefix="LP_")


def test_the_prefix_setting_cannot_take_in_the_notifiers_own_settings():
    from pydantic import ValidationError

    from services.notifier.__main__ import NotifierSettings

    assert NotifierSettings().notifier_secret_env_prefix == "SW_ROUTING_"
    assert NotifierSettings(notifier_secret_env_prefix="LP_NOTIFY_").notifier_secret_env_prefix == "LP_NOTIFY_"
    for prefix in ("SW_", "sw_", "SW_EVIDENCE_", "SW_REDIS_"):
        with pytest.raises(ValidationError, match="the notifier's own settings"):
            NotifierSettings(notifier_secret_env_prefix=prefix)
    with pytest.raises(ValidationError, match="pattern"):
        NotifierSettings(notifier_secret_env_prefix="")


def test_an_allowed_placeholder_in_a_url_is_expanded(monkeypatch):
    monkeypatch.setenv("SW_ROUTING_TEST_TOKEN", "tok123")
    monkeypatch.setenv("SW_ROUTING_TEST_HOST", "hooks.example")
    config = parse_routing(_one_contact({"type": "webhook", "url": "https://${SW_ROUTING_TEST_HOST}/in/${SW_ROUTING_TEST_TOKEN}"}))
    assert str(config.recipients["x"].contacts[0].url) == "https://hooks.example/in/tok123"  # type: ignore[union-attr]
    config = parse_routing(_one_contact({"type": "apprise", "url": "ntfys://ntfy.example.com/lp-${SW_ROUTING_TEST_TOKEN}"}))
    assert config.recipients["x"].contacts[0].url.get_secret_value() == "ntfys://ntfy.example.com/lp-tok123"  # type: ignore[union-attr]


def test_a_routing_file_that_is_not_yaml_is_refused_by_line_and_column_without_quoting_it(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text("recipients:\n  x:\n    contacts:\n      - {type: apprise, url: ntfys://ntfy.example.com/s3cr3t-topic: oops}\n")
    with pytest.raises(RoutingError) as refused:
        load_routing(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: not valid YAML: line 4, column ") and "s3cr3t" not in message and "ntfy.example.com" not in message


def test_alert_and_digest_messages_name_the_facts_and_link_the_alert_page():
    alert = _alert()
    single = alert_notification("al-1|alice/log", "alice", alert, "https://lp.example/", NY, "route store-1, level 1", None)
    assert single.title == "[HIGH] refund without customer at store-001 reg-1"
    assert single.url == "https://lp.example/alerts/al-1" and "refund with nobody at the counter" in single.body
    assert single.payload["alert"]["alert_id"] == "al-1" and single.payload["delivery_id"] == "al-1|alice/log"
    others = [_alert(alert_id=f"al-{i}", event_time_ms=1_764_600_000_000 + i, severity=Severity.SEVERITY_MEDIUM) for i in range(2, 30)]
    digest = digest_notification("digest|alice/log|1", "alice", [alert, *others], "https://lp.example", NY, "burst over the rate limit")
    assert digest.title.startswith("29 incidents (burst over the rate limit)") and digest.severity == "high"
    assert "https://lp.example/alerts/al-1" in digest.body and "and 9 more" in digest.body
    assert len(digest.payload["alerts"]) == 29 and digest.alert_ids[0] == "al-1"


def test_webhook_signatures_cover_timestamp_and_body_and_refuse_replays_and_forgeries():
    body = b'{"kind":"alert"}'
    headers = signed_headers("s3cret", 1_800_000_000, body)
    verify("s3cret", headers, body, now=1_800_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify("s3cret", headers, body + b" ", now=1_800_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify("other", headers, body, now=1_800_000_010)
    with pytest.raises(SignatureError, match="a replay or a skewed clock"):
        verify("s3cret", headers, body, now=1_800_000_000 + 301)
    with pytest.raises(SignatureError, match="missing"):
        verify("s3cret", {}, body, now=1_800_000_000)
    rotated = {**headers, "X-ShrinkWatch-Signature": f"{sign('old', 1_800_000_000, body)}, {headers['X-ShrinkWatch-Signature']}"}
    verify("s3cret", rotated, body, now=1_800_000_000)
    # Odd headers are refusals too, never another exception (a receiver answers 401, not 500).
    for odd in ({**headers, "X-ShrinkWatch-Signature": "v1=é"}, {**headers, "X-ShrinkWatch-Timestamp": "9" * 400},
                {**headers, "X-ShrinkWatch-Timestamp": "-5"}, {**headers, "X-ShrinkWatch-Timestamp": "١٢٣"}):
        with pytest.raises(SignatureError):
            verify("s3cret", odd, body, now=1_800_000_000)


def test_a_webhook_that_redirects_is_refused_not_counted_as_delivered():
    import httpx

    from services.notifier.channels import PermanentDeliveryError
    from services.notifier.channels.webhook import WebhookChannel, WebhookChannelConfig

    channel = WebhookChannel(WebhookChannelConfig(type="webhook", url="http://hooks.example/old"))
    channel._client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(301, headers={"location": "https://hooks.example/new"})))
    notification = alert_notification("al-1|x/hook", "x", _alert(), "https://lp.example", NY, "r", None)
    with pytest.raises(PermanentDeliveryError, match=r"redirect to https://hooks\.example/new"):
        channel.deliver(notification)


class _FakeSMTP:
    """Stands in for smtplib.SMTP under Apprise's email plugin: keeps each message it is given."""

    sent: ClassVar[list[str]] = []

    def __init__(self, *args, **kwargs) -> None:
        pass

    def starttls(self, **kwargs) -> None:
        pass

    def login(self, user: str, password: str) -> None:
        pass

    def sendmail(self, from_addr: str, to_addrs: list[str], message: str) -> dict:
        self.sent.append(message)
        return {}

    def quit(self) -> None:
        pass


@pytest.mark.parametrize("url", ["mailtos://lp:pw@smtp.example.com?to=alice@example.com",
                                 "mailtos://lp:pw@smtp.example.com?to=alice@example.com&format=html"])
def test_email_never_carries_a_pos_supplied_value_as_html(monkeypatch, url):
    import email
    import email.policy
    import smtplib

    from services.notifier.channels.apprise import AppriseChannel, AppriseChannelConfig

    monkeypatch.setattr(smtplib, "SMTP", _FakeSMTP)
    monkeypatch.setattr(_FakeSMTP, "sent", [])
    markup = "<img src=x onerror=alert(1)>"
    alert = _alert(register_id=markup, explanation=f"refund by employee {markup} of <b>txn-9</b> & more")
    channel = AppriseChannel(AppriseChannelConfig(type="apprise", url=url, attach_snapshot=False))
    for notification in (alert_notification("al-1|x/email", "x", alert, "https://lp.example", NY, "r", None),
                         digest_notification("digest|x/email|1", "x", [alert, _alert(alert_id="al-2")], "https://lp.example", NY, "burst")):
        assert channel.deliver(notification).startswith("sent via")
    assert len(_FakeSMTP.sent) == 2
    for raw in _FakeSMTP.sent:
        message = email.message_from_string(raw, policy=email.policy.default)
        parts = {part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()}
        for content_type, text in sorted(parts.items()):  # text/html first
            if content_type == "text/html":
                assert "<img" not in text and "<b>" not in text and "&lt;img" in text
            else:
                assert content_type == "text/plain" and markup in text  # plain text shows the id as it is
        if "format=html" not in url:
            assert list(parts) == ["text/plain"]


def test_the_example_routing_file_is_valid(monkeypatch):
    text = (Path(__file__).resolve().parents[2] / "config" / "notifier-routing.example.yaml").read_text()
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)):
        monkeypatch.setenv(name, "placeholder")
    monkeypatch.setenv("SW_ROUTING_PUSHOVER_USER", "u" * 30)
    monkeypatch.setenv("SW_ROUTING_PUSHOVER_TOKEN", "a" * 30)
    monkeypatch.setenv("SW_ROUTING_SLACK_TOKEN_A", "T1JJ3T3L2")
    monkeypatch.setenv("SW_ROUTING_SLACK_TOKEN_B", "A1BRTD4JD")
    monkeypatch.setenv("SW_ROUTING_SLACK_TOKEN_C", "TIiajkdnlazkcOXrIdevi7FQ")
    config = load_routing(Path(__file__).resolve().parents[2] / "config" / "notifier-routing.example.yaml")
    config.check_stores(["store-001"], ["uk-south"])
    assert on_call(config.schedules["store-001-officers"], _at("2026-12-05T12:00:00+00:00")).people == ["bob"]
