"""The correlation id: what the POS gateway takes from a request, and what goes on with a page."""

import re

from services.correlator import rules
from services.correlator.state import TillState
from services.notifier.messages import alert_notification, digest_notification
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.correlation import correlation_id_of, outgoing_headers
from services.shared.rulesconfig import RulesConfig

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_traceparent_gives_its_trace_id_and_beats_the_senders_own_id():
    headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "X-Correlation-Id": "till-7"}
    assert correlation_id_of(headers) == TRACE
    assert correlation_id_of({"traceparent": f"00-{TRACE.upper()}-00F067AA0BA902B7-01"}) == TRACE


def test_an_invalid_traceparent_falls_back_to_the_senders_id_then_to_a_new_one():
    assert correlation_id_of({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01", "X-Request-Id": "req-19"}) == "req-19"
    assert correlation_id_of({"traceparent": f"00-{TRACE}-{'0' * 16}-01", "X-Correlation-Id": "till-7:19"}) == "till-7:19"
    for bad in ("", "a b", "x" * 65, 'quote"', "new\nline"):
        made = correlation_id_of({"X-Correlation-Id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", made), bad
    assert correlation_id_of({}) != correlation_id_of({})


def test_outgoing_headers_continue_a_trace_only_for_one_trace_shaped_id():
    one = outgoing_headers([TRACE])
    assert one["X-Correlation-Id"] == TRACE
    assert re.fullmatch(rf"00-{TRACE}-[0-9a-f]{{16}}-01", one["traceparent"])
    assert outgoing_headers(["till-7", "till-7", "", "req-2"]) == {"X-Correlation-Id": "till-7, req-2"}
    assert outgoing_headers([]) == {} and outgoing_headers([""]) == {}


def _post_void(correlation_id: str) -> PosEvent:
    return PosEvent(event_id="pv-1", type=PosEventType.POS_EVENT_TYPE_VOID, store_id="s1", register_id="r1", transaction_id="t1",
                    employee_id="e1", event_time_ms=1_800_000_000_000, currency="GBP", total_minor=50_000, after_tender=True,
                    correlation_id=correlation_id)


def test_an_alert_a_pos_event_triggers_carries_its_correlation_id_to_the_notification():
    ctx = rules.RegisterContext("s1", "r1", "UTC", (), (), RulesConfig())
    [alert] = rules.post_void(TillState(), ctx, _post_void(TRACE), 1_800_000_000_000)
    assert alert.correlation_id == TRACE
    single = alert_notification("d1", "officer", alert, "https://hq.example", "UTC", "route", None)
    assert single.correlation_ids == [TRACE] and single.payload["alert"]["correlation_id"] == TRACE
    camera_only = Alert(alert_id="al-2", rule="loitering", store_id="s1", event_time_ms=1_800_000_000_000)
    digest = digest_notification("d2", "officer", [alert, camera_only], "https://hq.example", "UTC", "burst")
    assert digest.correlation_ids == [TRACE]
