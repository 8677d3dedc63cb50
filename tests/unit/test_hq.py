"""The HQ API's pure parts: users file, roles' store scopes, cursors, filters, camera status, evidence view."""

from __future__ import annotations

import json
import stat
from typing import cast

import pytest
import redis
import yaml
from argon2 import PasswordHasher
from starlette.requests import Request

from devplatform.devusers import dev_credentials, write_dev_users
from services.api.alerts import AlertFilter, BadCursor, decode_cursor, encode_cursor, feedback_id, severity_name
from services.api.audit import _valid_entry_id
from services.api.auth import COOKIE, Principal, UserRecord, hash_password, load_users_file
from services.api.hq.alerts import _package_view
from services.api.hq.base import session_token
from services.api.hq.stores import _camera_view
from services.api.index import scan_newest
from services.shared.contracts.feedback_pb2 import Feedback, Verdict

HASH = hash_password("a password long enough")


def write_users(tmp_path, users: list[dict]):
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": users}))
    return path


def test_users_file_is_validated_with_the_position_of_the_bad_entry(tmp_path):
    good = {"username": "hq", "role": "hq_analyst", "password_hash": HASH}
    assert set(load_users_file(write_users(tmp_path, [good]), {"store-001"})) == {"hq"}
    cases: list[tuple[list[dict], str]] = [
        ([{**good, "role": "superuser"}], "users.0.role"),
        ([{**good, "password_hash": "plain-text-password"}], "not an argon2 hash"),
        ([good, good], "appears twice"),
        ([{**good, "role": "store_manager", "stores": ["store-404"]}], "store-404"),
        ([{**good, "role": "store_manager"}], "has no stores"),
        ([{**good, "password": "hunter2"}], "users.0.password"),
    ]
    for users, expected in cases:
        with pytest.raises(SystemExit) as failed:
            load_users_file(write_users(tmp_path, users), {"store-001"})
        assert expected in str(failed.value), (users, failed.value)
    assert load_users_file(None, set()) == {}


def test_roles_store_scope():
    record = UserRecord.model_validate({"username": "officer", "role": "officer", "stores": [], "password_hash": HASH})
    assert record.sees_every_store()  # an officer without stores covers the chain
    manager = UserRecord.model_validate({"username": "mgr", "role": "store_manager", "stores": ["s1"], "password_hash": HASH})
    assert not manager.sees_every_store()
    who = Principal("mgr", "store_manager", frozenset({"s1"}), "Manager", False)
    assert who.may_see("s1") and not who.may_see("s2")
    assert Principal("hq", "hq_analyst", frozenset(), "HQ", True).may_see("anything")


def test_stored_user_keeps_the_hash_that_pydantic_would_mask():
    record = UserRecord.model_validate({"username": "mgr", "role": "store_manager", "stores": ["s1"], "password_hash": HASH})
    assert "**" in record.model_dump_json()
    assert UserRecord.model_validate_json(record.stored_json()).password_hash.get_secret_value() == HASH
    assert HASH not in repr(record)


def test_cursor_round_trip_and_foreign_cursors_refused():
    assert decode_cursor(encode_cursor(1796129866897, "al-1:x")) == (1796129866897.0, "al-1:x")
    for bad in ("garbage!", "", "bm8tY29sb24", encode_cursor(0, "x")[:-3] + "%%%"):
        with pytest.raises(BadCursor):
            decode_cursor(bad)


def test_filter_matches_every_condition():
    view = {"store_id": "s1", "rule": "post_void", "severity": "high", "status": "new", "event_time_ms": 1000}
    assert AlertFilter().matches(view)
    assert AlertFilter(stores=frozenset({"s1"}), rule="post_void", severity="high", status="new", since_ms=1000, until_ms=1000).matches(view)
    for wrong in (AlertFilter(stores=frozenset({"s2"})), AlertFilter(rule="loitering"), AlertFilter(severity="low"),
                  AlertFilter(status="confirmed"), AlertFilter(since_ms=1001), AlertFilter(until_ms=999)):
        assert not wrong.matches(view), wrong


def test_severity_names_and_feedback_ids():
    assert severity_name("SEVERITY_CRITICAL") == "critical" and severity_name("SEVERITY_UNSPECIFIED") == "unspecified"
    one = Feedback(alert_id="a", verdict=Verdict.VERDICT_CONFIRMED, user="hq", time_ms=5)
    assert feedback_id(one) == feedback_id(Feedback.FromString(one.SerializeToString()))
    assert feedback_id(one) != feedback_id(Feedback(alert_id="a", verdict=Verdict.VERDICT_FALSE_ALARM, user="hq", time_ms=5))


def test_camera_status_live_idle_down_unknown():
    now = 1_000_000.0
    assert _camera_view("c", None, now)["status"] == "unknown"
    seen = {"last_seen_ms": now - 1000, "last_frame_ms": now - 1000, "fps": 9.5, "heartbeat": False}
    assert _camera_view("c", seen, now)["status"] == "live"
    assert _camera_view("c", {**seen, "heartbeat": True}, now)["status"] == "idle"
    assert _camera_view("c", {**seen, "last_seen_ms": now - 10_000}, now)["status"] == "idle"
    assert _camera_view("c", {**seen, "last_seen_ms": now - 60_000}, now)["status"] == "down"


def test_evidence_package_view_links_only_listed_files():
    manifest: dict[str, object] = {"status": "partial", "missing": ["camera silent"], "window_ms": [1, 2],
                "frames": [{"name": "frames/0000000007.jpg", "sequence": 7, "capture_time_ms": 1}],
                "snapshot": {"name": "snapshot.jpg", "detections": {"persons": [], "objects": [], "zones": []}}, "clip": None}
    view = _package_view("al-1", manifest)
    assert view is not None
    assert view["snapshot_url"] == "/v1/alerts/al-1/evidence/snapshot.jpg" and view["clip_url"] is None
    assert view["frames"] == [{"sequence": 7, "capture_time_ms": 1, "url": "/v1/alerts/al-1/evidence/frames/0000000007.jpg"}]
    assert view["status"] == "partial" and view["missing"] == ["camera silent"] and view["other_cameras"] == []
    assert _package_view("al-1", None) is None
    # A person followed across cameras: the other camera's clip and frames, by the names the manifest lists.
    manifest["other_cameras"] = [{"camera_id": "cam-shelf", "window_ms": [0, 5], "clip": {"name": "cameras/cam-shelf/clip.avi"},
                                  "frames": [{"name": "cameras/cam-shelf/frames/0000000003.jpg", "sequence": 3, "capture_time_ms": 2}]}]
    [other] = _package_view("al-1", manifest)["other_cameras"]  # type: ignore[index]
    assert other["clip_url"] == "/v1/alerts/al-1/evidence/cameras/cam-shelf/clip.avi"
    assert other["frames"][0]["url"] == "/v1/alerts/al-1/evidence/cameras/cam-shelf/frames/0000000003.jpg"


def test_session_token_from_the_bearer_header_before_the_cookie():
    def token(**headers: str) -> str:
        raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
        return session_token(Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""}))

    assert token(authorization="Bearer from-script", cookie=f"{COOKIE}=from-page") == "from-script"
    assert token(cookie=f"{COOKIE}=from-page") == token(authorization="Basic eDp5", cookie=f"{COOKIE}=from-page") == "from-page"
    assert token(authorization="Bearer ", cookie=f"{COOKIE}=from-page") == ""  # an empty bearer is no session, whatever the cookie
    assert token() == ""


def test_audit_cursor_must_be_a_stream_id():
    assert _valid_entry_id("1796129866897-0")
    for bad in ("x-0", "1-", "-1", str(2**64) + "-0", "1-2-3"):
        assert not _valid_entry_id(bad), bad


def test_dev_users_one_per_role_with_private_passwords(tmp_path):
    path = write_dev_users(tmp_path, ["store-001", "store-002"])
    users = load_users_file(path, {"store-001", "store-002"})
    assert {u.role for u in users.values()} == {"admin", "hq_analyst", "store_manager", "officer"}
    assert users["manager"].stores == ["store-001"]
    credentials = dev_credentials(tmp_path)
    assert stat.S_IMODE((tmp_path / "dev-credentials.json").stat().st_mode) == 0o600
    assert PasswordHasher().verify(users["hq"].password_hash.get_secret_value(), credentials["hq"]["password"])
    assert credentials["hq"]["password"] not in path.read_text()
    again = write_dev_users(tmp_path, ["store-001"])  # a new `dev up`: new passwords
    assert json.loads((tmp_path / "dev-credentials.json").read_text())["hq"]["password"] != credentials["hq"]["password"]
    assert again == path


class SortedSet:
    """Just enough of Redis's ZREVRANGEBYSCORE for the alert store's index scan."""

    def __init__(self, members: dict[str, float]) -> None:
        self.members = members

    def zrevrangebyscore(self, _key, top, bottom, start=0, num=None, withscores=False):
        high = float(top) if top != "+inf" else float("inf")
        low = float(bottom) if bottom != "-inf" else float("-inf")
        rows = sorted(((m.encode(), s) for m, s in self.members.items() if low <= s <= high), key=lambda r: (r[1], r[0]), reverse=True)
        return rows[start:start + num]


def test_index_scan_survives_ties_and_late_alerts_below_the_page():
    members = {f"al-{i:03d}": float(1000 + i // 4) for i in range(40)}  # ties of four at each time
    index = cast(redis.Redis, SortedSet(members))  # zrevrangebyscore is all a scan asks of Redis
    expected = [m for m, _ in sorted(members.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
    assert [m for _, m in scan_newest(index, "k", float("inf"), float("-inf"), None, chunk=3)] == expected
    # Alerts that arrive late (older event times) while a scan is under way do not repeat any alert.
    scan = scan_newest(index, "k", float("inf"), float("-inf"), None, chunk=3)
    seen = [next(scan)[1] for _ in range(10)]
    for i in range(5):
        members[f"late-{i}"] = 1000.0 + i
    seen += [m for _, m in scan]
    assert len(seen) == len(set(seen)) and set(expected) <= set(seen)
    # From a cursor in the middle of a tie: strictly after it.
    after = [m for _, m in scan_newest(index, "k", 1005.0, float("-inf"), (1005.0, "al-021"), chunk=2)]
    assert after[:3] == ["al-020", "late-4", "al-019"] and "al-021" not in after
