"""The scenario format without a broker: every shipped scenario loads and generates its messages,
named poses read as intended by the concealment rule, and alerts are matched to expectations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devplatform import scenarios
from services.correlator.rules import hand_cues
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert, EvidenceRef
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent


def _scenario(tmp_path: Path, name: str = "sc", **overrides) -> scenarios.Scenario:
    raw = {
        "start": "2026-11-27T14:00:00Z",
        "stores": [{"id": "store-1", "timezone": "Europe/London",
                    "cameras": [{"id": "cam-1", "zones": [{"id": "customer", "kind": "counter_customer"}, {"id": "shelf", "kind": "high_value"}]}],
                    "registers": [{"id": "reg-1", "camera": "cam-1", "customer_zones": ["customer"]}]}],
        **overrides,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return scenarios.load_scenario(path)


def test_every_shipped_scenario_loads_and_generates_its_messages():
    loaded = scenarios.load_dir(scenarios.DEFAULT_DIR)
    assert len(loaded) >= 24
    config = scenarios.scenario_config(*loaded)
    for sc in loaded:
        sent = scenarios.messages(sc, config)
        assert sent or sc.spec.pos, sc.name
        for m in sent:
            assert m.key.startswith(sc.name + ".")
            assert m.time_ms <= sc.start_ms + 200_000, f"{sc.name}: over about 3 minutes of event time"


def test_ids_and_tokens_are_prefixed_and_frames_carry_zones_persons_and_sequence(tmp_path):
    sc = _scenario(tmp_path, employees=[{"id": "emp-1", "tokens": ["card-1"]}],
                   pos=[{"t": 3, "type": "refund", "register": "reg-1", "id": "r-1", "total": 12.5, "employee": "emp-1", "card_token": "card-1", "repeat": 2}],
                   video={"cam-1": [{"t": 0, "until": 2, "persons": [{"track": 4, "zones": ["customer"]}]}, {"t": 4, "until": 5}]})
    assert sc.employees == [{"id": "sc.emp-1", "tokens": ["sc.card-1"]}]
    config = scenarios.scenario_config(sc)
    sent = scenarios.messages(sc, config)
    frames = [FrameAnalysis.FromString(m.value) for m in sent if m.topic == topics.DETECTIONS]
    pos = [(m.key, PosEvent.FromString(m.value)) for m in sent if m.topic == topics.POS]
    assert len(frames) == 15 and [f.frame_sequence for f in frames] == list(range(1, 16))
    assert all(f.camera_id == "sc.cam-1" and f.store_id == "sc.store-1" for f in frames)
    first, last = frames[0], frames[-1]
    assert {z.zone_id: z.kind for z in first.zones} == {"customer": "counter_customer", "shelf": "high_value"}
    zone = next(z for z in frames[9].zones if z.zone_id == "customer")
    assert zone.person_present and zone.person_count == 1 and list(zone.track_ids) == [4] and zone.max_dwell_ms == 1800
    person = frames[9].persons[0]
    assert person.detected and person.first_seen_ms == sc.start_ms and person.zones[0].entered_ms == sc.start_ms
    assert not last.persons and not any(z.person_present for z in last.zones)
    assert [key for key, _ in pos] == ["sc.store-1:reg-1"] * 2
    event = pos[0][1]
    assert (event.total_minor, event.employee_id, event.card_token, event.event_time_ms) == (1250, "sc.emp-1", "sc.card-1", sc.start_ms + 3000)


@pytest.mark.parametrize("pose", scenarios.POSES)
def test_named_poses_read_as_intended_by_the_concealment_rule(pose):
    analysis = FrameAnalysis()
    bag = analysis.objects.add(label="handbag", box={"xmin": 0.47, "ymin": 0.39, "xmax": 0.53, "ymax": 0.45})
    person = analysis.persons.add(track_id=1)
    box = (0.40, 0.20, 0.52, 0.70)
    for name, x, y in scenarios.pose_keypoints(box, pose, [(0.47, 0.39, 0.53, 0.45)]):
        person.keypoints.add(name=name, x=x, y=y, score=0.9)
    assert hand_cues(person, [bag], 0.35, 0.3) == scenarios.POSE_CUES[pose]
    assert len(person.keypoints) == 17


def test_a_pose_that_does_not_read_as_named_is_a_scenario_error(tmp_path):
    # A bag hanging where the arm hangs: "standing" would read as a hand in the bag.
    sc = _scenario(tmp_path, video={"cam-1": [{"t": 0, "until": 1, "objects": [{"label": "handbag", "box": [0.5, 0.48, 0.56, 0.54]}],
                                               "persons": [{"track": 1, "box": [0.40, 0.20, 0.52, 0.70], "zones": ["shelf"], "pose": "standing"}]}]})
    with pytest.raises(scenarios.ScenarioError, match="pose standing reads as"):
        scenarios.messages(sc, scenarios.scenario_config(sc))


@pytest.mark.parametrize("change, message", [
    ({"start": "2099-01-01T00:00:00Z"}, "must lie in the past"),
    ({"video": {"cam-9": [{"t": 0, "until": 1}]}}, "no store of the scenario has"),
    ({"video": {"cam-1": [{"t": 0, "until": 1, "zones": {"nowhere": {"person_count": 1}}}]}}, "not zones of the camera"),
    ({"expect": [{"rule": "shoplifting"}]}, "unknown rule"),
    ({"expect": [{"rule": "post_void", "pos_event": "missing"}]}, "is not the id of any POS event"),
])
def test_bad_scenarios_fail_with_the_file_and_field(tmp_path, change, message):
    with pytest.raises(scenarios.ScenarioError, match=message) as info:
        _scenario(tmp_path, **change)
    assert "sc.json" in str(info.value)


def _alert(alert_id: str, rule: str, store: str, register: str = "", pos_event: str = "") -> Alert:
    alert = Alert(alert_id=alert_id, rule=rule, store_id=store, register_id=register)
    if pos_event:
        alert.evidence.append(EvidenceRef(kind="pos_event", ref=pos_event))
    return alert


def test_matching_counts_missed_extra_and_duplicates(tmp_path):
    sc = _scenario(tmp_path, pos=[{"t": 1, "type": "refund", "register": "reg-1", "id": "r-1"}, {"t": 2, "type": "void", "register": "reg-1", "id": "v-1"}],
                   expect=[{"rule": "refund_without_customer", "register": "reg-1", "pos_event": "r-1"}, {"rule": "post_void", "register": "reg-1"}])
    hit = _alert("a1", "refund_without_customer", "sc.store-1", "reg-1", "r-1")
    wrong_event = _alert("a2", "refund_without_customer", "sc.store-1", "reg-1", "r-2")
    outcome = scenarios.match(sc, [hit, wrong_event], duplicates=[hit])
    assert [a.alert_id for _, a in outcome.matched] == ["a1"]
    assert [e.rule for e in outcome.missed] == ["post_void"] and outcome.extra == [wrong_event] and not outcome.ok
    result = scenarios.summary([outcome])
    assert (result["expected"], result["raised"], result["true_positives"], result["precision"], result["recall"], result["duplicates"]) == (2, 2, 1, 0.5, 0.5, 1)


def _camera_alert(alert_id: str, rule: str, store: str, camera: str, track: int, t: int, since: int) -> Alert:
    alert = Alert(alert_id=alert_id, rule=rule, store_id=store, camera_id=camera, event_time_ms=t)
    alert.facts["track"] = str(track)
    alert.evidence.append(EvidenceRef(kind="frames", ref="1-2", camera_id=camera, time_ms=since))
    return alert


def test_incident_expectations_want_exactly_these_incidents_with_exactly_these_rules(tmp_path):
    sc = _scenario(tmp_path, pos=[{"t": 50, "type": "refund", "register": "reg-1", "id": "r-1"}],
                   expect=[{"rule": "after_hours"}, {"rule": "loitering"}], incidents=[{"rules": ["loitering", "after_hours"], "camera": "cam-1"}])
    assert sc.spec.incidents is not None and sc.spec.incidents[0].rules == ["after_hours", "loitering"]
    t0 = sc.start_ms
    night = _camera_alert("a1", "after_hours", "sc.store-1", "sc.cam-1", 7, t0 + 3_000, t0)
    lingered = _camera_alert("a2", "loitering", "sc.store-1", "sc.cam-1", 7, t0 + 130_000, t0 + 10_000)
    outcome = scenarios.match(sc, [night, lingered], [])
    assert len(outcome.incidents) == 1 and len(outcome.incidents_matched) == 1 and outcome.ok
    # One reason short: the incident has other rules than expected, so it is missed and extra.
    short = scenarios.match(sc, [night], [])
    assert [e.rules for e in short.incidents_missed] == [["after_hours", "loitering"]] and len(short.incidents_extra) == 1 and not short.ok
    # An unrelated alert (a refund at the register, hours later) is an incident of its own: extra.
    refund = _alert("a3", "refund_without_customer", "sc.store-1", "reg-1", "r-1")
    refund.event_time_ms = t0 + 3 * 3_600_000
    extra = scenarios.match(sc, [night, lingered, refund], [])
    assert len(extra.incidents) == 2 and len(extra.incidents_extra) == 1 and not extra.ok
    result = scenarios.summary([outcome, extra])
    assert (result["incidents"], result["incidents_expected"], result["incident_precision"], result["incident_recall"]) == (3, 2, 0.6667, 1.0)


def test_incidents_unstated_are_not_checked_and_an_empty_list_expects_none(tmp_path):
    night = _camera_alert("a1", "after_hours", "sc.store-1", "sc.cam-1", 7, 1_000, 0)
    assert scenarios.match(_scenario(tmp_path), [], []).ok
    unstated = scenarios.match(_scenario(tmp_path, expect=[{"rule": "after_hours"}]), [night], [])
    assert unstated.ok and len(unstated.incidents) == 1
    none = scenarios.match(_scenario(tmp_path, expect=[{"rule": "after_hours"}], incidents=[]), [night], [])
    assert not none.ok and len(none.incidents_extra) == 1


@pytest.mark.parametrize("incidents, message", [
    ([{"rules": ["shoplifting"]}], "unknown rule"),
    ([{"rules": []}], "at least 1"),
    ([{"rules": ["loitering"], "camera": "cam-9"}], "is not a camera of"),
    ([{"rules": ["post_void"], "pos_event": "missing"}], "is not the id of any POS event"),
])
def test_bad_incident_expectations_fail_with_the_file_and_field(tmp_path, incidents, message):
    with pytest.raises(scenarios.ScenarioError, match=message):
        _scenario(tmp_path, incidents=incidents)
