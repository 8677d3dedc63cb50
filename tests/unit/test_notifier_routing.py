"""The routing file and its pure logic: matching, on-call schedules with handovers, quiet hours, messages, signatures."""

import re
from datetime import datetime
from pathlib import Path

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
    ({"recipients": {"x": {"contacts": [{"type": "webhook", "url": "https://h.example/${SW_TEST_UNSET_SECRET}"}]}}}, "SW_TEST_UNSET_SECRET is not set"),
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
    monkeypatch.setenv("SW_TEST_HOOK_SECRET", "from-env")
    config = parse_routing({"recipients": {"x": {"contacts": [{"type": "webhook", "url": "https://h.example/", "secret": "${SW_TEST_HOOK_SECRET}"}]}},
                            "routes": [{"name": "r", "levels": [{"notify": ["x"]}]}]})
    assert config.recipients["x"].contacts[0].secret.get_secret_value() == "from-env"  # type: ignore[union-attr]


def test_alert_and_digest_messages_name_the_facts_and_link_the_alert_page():
    alert = _alert()
    single = alert_notification("al-1|alice/log", "alice", alert, "https://lp.example/", NY, "route store-1, level 1", None)
    assert single.title == "[HIGH] refund without customer at store-001 reg-1"
    assert single.url == "https://lp.example/alerts/al-1" and "refund with nobody at the counter" in single.body
    assert single.payload["alert"]["alert_id"] == "al-1" and single.payload["delivery_id"] == "al-1|alice/log"
    others = [_alert(alert_id=f"al-{i}", event_time_ms=1_764_600_000_000 + i, severity=Severity.SEVERITY_MEDIUM) for i in range(2, 30)]
    digest = digest_notification("digest|alice/log|1", "alice", [alert, *others], "https://lp.example", NY, "burst over the rate limit")
    assert digest.title.startswith("29 alerts (burst over the rate limit)") and digest.severity == "high"
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


def test_the_example_routing_file_is_valid(monkeypatch):
    text = (Path(__file__).resolve().parents[2] / "config" / "notifier-routing.example.yaml").read_text()
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)):
        monkeypatch.setenv(name, "placeholder")
    monkeypatch.setenv("SW_PUSHOVER_USER", "u" * 30)
    monkeypatch.setenv("SW_PUSHOVER_TOKEN", "a" * 30)
    monkeypatch.setenv("SW_SLACK_TOKEN_A", "T1JJ3T3L2")
    monkeypatch.setenv("SW_SLACK_TOKEN_B", "A1BRTD4JD")
    monkeypatch.setenv("SW_SLACK_TOKEN_C", "TIiajkdnlazkcOXrIdevi7FQ")
    config = load_routing(Path(__file__).resolve().parents[2] / "config" / "notifier-routing.example.yaml")
    config.check_stores(["store-001"], ["uk-south"])
    assert on_call(config.schedules["store-001-officers"], _at("2026-12-05T12:00:00+00:00")).people == ["bob"]
