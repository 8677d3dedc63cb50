"""Folding alerts into incidents: one situation, one incident, whatever the replay."""

from services.shared.contracts.alert_pb2 import Alert, EvidenceRef, Severity
from services.shared.incidents import fold, fold_all, incident_id, subjects

T0 = 1_780_000_000_000


def _alert(alert_id: str, rule: str, severity: int, t: int, store: str = "store-1", camera: str = "", register: str = "",
           track: int | None = None, since: int | None = None, pos: str = "", token: str = "") -> Alert:
    alert = Alert(alert_id=alert_id, rule=rule, severity=severity, store_id=store, camera_id=camera, register_id=register,  # type: ignore[arg-type]
                  event_time_ms=t, explanation=f"{rule} at {t}")
    if track is not None:
        alert.facts["track"] = str(track)
    if token:
        alert.facts["token"] = token
    if since is not None:
        alert.evidence.append(EvidenceRef(kind="frames", ref="1-2", camera_id=camera, time_ms=since))
    if pos:
        alert.evidence.append(EvidenceRef(kind="pos_event", ref=pos, time_ms=t))
    return alert


def test_one_person_in_the_closed_store_is_one_incident_with_two_reasons():
    after_hours = _alert("al-1", "after_hours", Severity.SEVERITY_CRITICAL, T0 + 3_000, camera="cam-floor", track=7, since=T0)
    loitering = _alert("al-2", "loitering", Severity.SEVERITY_MEDIUM, T0 + 150_000, camera="cam-floor", track=7, since=T0 + 20_000)
    incidents = fold_all([after_hours, loitering])
    assert len(incidents) == 1
    incident = incidents[0]
    assert incident.rules == ["after_hours", "loitering"] and incident.opening_alert_id == "al-1"
    assert incident.incident_id == incident_id("store-1", "al-1") and incident.severity == Severity.SEVERITY_CRITICAL
    assert (incident.start_ms, incident.end_ms) == (T0, T0 + 150_000)


def test_one_intruder_on_two_cameras_of_the_closed_store_is_one_incident():
    entrance = _alert("al-1", "after_hours", Severity.SEVERITY_CRITICAL, T0 + 3_000, camera="cam-door", track=2, since=T0)
    floor = _alert("al-2", "after_hours", Severity.SEVERITY_CRITICAL, T0 + 40_000, camera="cam-floor", track=9, since=T0 + 37_000)
    other_night = _alert("al-3", "after_hours", Severity.SEVERITY_CRITICAL, T0 + 86_400_000, camera="cam-floor", track=1, since=T0 + 86_397_000)
    for alert, period in ((entrance, "2026-12-05"), (floor, "2026-12-05"), (other_night, "2026-12-06")):
        alert.facts["closed_period"] = period
    assert [i.rules for i in fold_all([entrance, floor, other_night])] == [["after_hours"], ["after_hours"]]
    assert [len(i.reasons) for i in fold_all([entrance, floor, other_night])] == [2, 1]


def test_a_later_reason_escalates_instead_of_opening_another():
    book: list = []
    first = fold(book, _alert("al-1", "refund_without_customer", Severity.SEVERITY_HIGH, T0, camera="cam-c", register="reg-1", pos="ev-9"))
    book.append(first.incident)
    second = fold(book, _alert("al-2", "refund_without_merchandise", Severity.SEVERITY_MEDIUM, T0 + 100, camera="cam-c", register="reg-1", pos="ev-9"))
    assert first.opening and first.added and not second.opening and second.added and second.escalated
    assert second.incident is first.incident and second.incident.severity == Severity.SEVERITY_CRITICAL
    again = fold(book, _alert("al-2", "refund_without_merchandise", Severity.SEVERITY_MEDIUM, T0 + 100, camera="cam-c", register="reg-1", pos="ev-9"))
    assert not again.added and not again.escalated and len(again.incident.reasons) == 2


def test_unrelated_alerts_stay_apart():
    alerts = [
        _alert("al-1", "loitering", Severity.SEVERITY_MEDIUM, T0, camera="cam-a", track=1, since=T0 - 60_000),
        _alert("al-2", "loitering", Severity.SEVERITY_MEDIUM, T0, store="store-2", camera="cam-a", track=1, since=T0 - 60_000),  # another store
        _alert("al-3", "loitering", Severity.SEVERITY_MEDIUM, T0 + 3_600_000, camera="cam-a", track=1, since=T0 + 3_500_000),  # an hour later
        _alert("al-4", "post_void", Severity.SEVERITY_MEDIUM, T0, register="reg-2", pos="ev-1"),  # nothing in common
    ]
    assert len(fold_all(alerts)) == 4


def test_the_same_alerts_give_the_same_incidents_on_a_replay():
    alerts = [_alert(f"al-{i}", "loitering" if i % 2 else "concealment", Severity.SEVERITY_MEDIUM, T0 + i * 240_000, camera="cam-a",
                     track=i // 3, since=T0 + i * 240_000 - 30_000) for i in range(20)]
    first = [(i.incident_id, [r.alert_id for r in i.reasons]) for i in fold_all(alerts)]
    again = [(i.incident_id, [r.alert_id for r in i.reasons]) for i in fold_all(alerts + alerts)]
    assert first == again and len(first) == 2  # the hour's limit splits one busy camera's 80 minutes


def test_subjects_name_person_camera_register_token_and_pos_event():
    alert = _alert("al-1", "return_abuse", Severity.SEVERITY_HIGH, T0, camera="cam-c", register="reg-1", track=3, pos="ev-1", token="tok")
    assert subjects(alert) == ["track:cam-c:3", "camera:cam-c", "register:reg-1", "token:tok", "pos:ev-1"]
