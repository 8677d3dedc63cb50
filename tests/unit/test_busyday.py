"""The busy day generator without a broker: deterministic for a seed, frauds with ground truth, the
arrival and dwell distributions of the intended shape, nobody left in the store after closing but
staff, cleaners and the night's intruder, and the store-day scoring. Fixed dates: nothing here
depends on the wall clock or the machine's time zone."""

from __future__ import annotations

import itertools
import json
import random
import statistics
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from devplatform.scenarios import busyday
from services.shared.contracts.alert_pb2 import Alert, EvidenceRef

DAY = date(2026, 11, 18)


@pytest.fixture(scope="module")
def day() -> busyday.BusyDay:
    return busyday.generate(seed=5, stores=3, day=DAY, customers=200)


def test_the_same_seed_gives_the_same_day_and_another_seed_another(day: busyday.BusyDay) -> None:
    again = busyday.generate(seed=5, stores=3, day=DAY, customers=200)
    assert json.dumps(again.raw, sort_keys=True) == json.dumps(day.raw, sort_keys=True)
    assert again.frauds == day.frauds
    other = busyday.generate(seed=6, stores=3, day=DAY, customers=200)
    assert json.dumps(other.raw, sort_keys=True) != json.dumps(day.raw, sort_keys=True)


def test_stores_lie_in_different_time_zones_and_the_day_is_theirs(day: busyday.BusyDay) -> None:
    assert len({s.plan.timezone for s in day.stores}) == 3
    for sd in day.stores:
        assert sd.base_ms == datetime(2026, 11, 18, tzinfo=ZoneInfo(sd.plan.timezone)).timestamp() * 1000
    assert busyday.default_day(datetime(2026, 12, 7, 0, 30, tzinfo=ZoneInfo("UTC"))) == date(2026, 12, 5)


def test_every_store_day_has_its_frauds_with_ground_truth(day: busyday.BusyDay) -> None:
    sc = day.scenario()
    events = {e.id: e for e in sc.spec.pos}
    for sd in day.stores:
        assert sorted(f.kind for f in sd.frauds) == ["after_hours", "concealment", "employee_own_card", "post_void", "refund_without_customer"]
        for fraud in sd.frauds:
            assert fraud.store == sd.plan.id and fraud.rules and fraud.what
            assert all(events[e].store == sd.plan.id for e in fraud.pos_events)
            if fraud.track is not None:
                assert any(p.track == fraud.track for p in sd.presences)
        refund = next(f for f in sd.frauds if f.kind == "refund_without_customer")
        event = events[refund.pos_events[0]]
        # Nobody at that till's customer zone for 30 s either side of the refund.
        zone = busyday.TILL_ZONES[event.register_id][0]
        t = (sc.start_ms + event.t * 1000 - sd.base_ms) / 1000
        assert not [p for p in sd.presences if p.camera == busyday.COUNTER and p.start < t + 30 and p.end > t - 30
                    and any(z == zone for _at, z in p.zones)]
        own = next(f for f in sd.frauds if f.kind == "employee_own_card")
        refund_event = events[own.pos_events[0]]
        tokens = {t for e in sc.spec.employees if e["id"] == refund_event.employee for t in e["tokens"]}
        assert refund_event.card_token in tokens
    serial = day.chain_frauds[0]
    returns = [events[e] for e in serial.pos_events]
    assert serial.kind == "serial_returner" and len({e.store for e in returns}) == 3 and len({e.card_token for e in returns}) == 1
    times = [sc.start_ms + e.t * 1000 for e in returns]
    assert max(times) - min(times) < 48 * 3600 * 1000


def test_shoppers_are_gone_by_closing_and_staff_come_and_go_within_their_shifts(day: busyday.BusyDay) -> None:
    for sd in day.stores:
        close = sd.local_s(sd.plan.close.hour)
        opening = sd.local_s(sd.plan.open.hour - 0.75)
        shoppers = [p for p in sd.presences if p.track >= 1000 and not p.label]
        assert shoppers and max(p.end for p in shoppers) <= close
        staff = [p for p in sd.presences if p.track < 900]
        assert min(p.start for p in staff) >= opening
        assert max(p.end for p in staff) <= sd.local_s(sd.plan.close.hour + 3)
        night = [p for p in sd.presences if p.track == 900]
        assert night and min(p.start for p in night) > sd.local_s(24)


def test_the_scenario_is_valid_and_the_counter_camera_covers_the_day(day: busyday.BusyDay) -> None:
    one = busyday.generate(seed=5, stores=1, day=DAY, customers=100)
    sc = one.scenario()
    assert sc.name == busyday.NAME and sc.stores[0]["id"] == "busyday.london" and sc.stores[0]["staff_shifts"]
    counter = sorted(sc.spec.video["london.cam-counter"], key=lambda s: s.t)
    assert all(a.until == b.t for a, b in itertools.pairwise(counter))  # no gap: refunds need coverage
    assert all(float(s.t).is_integer() and float(s.until).is_integer() and s.fps == busyday.FPS for segs in sc.spec.video.values() for s in segs)
    floor = sc.spec.video["london.cam-floor"]
    assert all(s.persons for s in floor)  # motion-gated: only while somebody is in view


def test_arrivals_peak_at_lunch_and_late_afternoon() -> None:
    rng = random.Random(1)
    times = busyday.arrivals(rng, 8 * 3600, 21 * 3600, expected=40_000)
    assert abs(len(times) - 40_000) < 0.03 * 40_000
    per_hour = [sum(1 for t in times if h * 3600 <= t < (h + 1) * 3600) for h in range(8, 21)]
    hours = dict(zip(range(8, 21), per_hour, strict=True))
    assert max(hours, key=lambda h: hours[h]) == 12
    assert hours[12] > 2.5 * hours[9] and hours[17] > 2 * hours[9] and hours[15] < hours[17]
    # The counts follow the rate's shape (within a few percent).
    total = sum(busyday.arrival_shape(h + 0.5) for h in range(8, 21))
    for h, n in hours.items():
        assert n == pytest.approx(40_000 * busyday.arrival_shape(h + 0.5) / total, rel=0.08)


def test_cabinet_dwell_is_lognormal_most_one_to_six_minutes_with_a_tail() -> None:
    rng = random.Random(2)
    dwell = [busyday.cabinet_dwell(rng) for _ in range(20_000)]
    assert statistics.median(dwell) == pytest.approx(busyday.CABINET_MEDIAN_S, rel=0.03)
    share = sum(60 <= d <= 360 for d in dwell) / len(dwell)
    assert 0.85 < share < 0.95
    assert 0.003 < sum(d > 600 for d in dwell) / len(dwell) < 0.02  # a tail beyond ten minutes


def _alert(alert_id: str, rule: str, store: str, t: int, camera: str = "", register: str = "", track: int | None = None,
           pos: tuple[str, ...] = ()) -> Alert:
    alert = Alert(alert_id=alert_id, rule=rule, store_id=f"busyday.{store}", camera_id=f"busyday.{camera}" if camera else "",
                  register_id=register, event_time_ms=t)
    if track is not None:
        alert.facts["track"] = str(track)
    for ref in pos:
        alert.evidence.append(EvidenceRef(kind="pos_event", ref=ref, time_ms=t))
    return alert


def test_frauds_caught_and_false_incidents_counted_per_store_day(day: busyday.BusyDay) -> None:
    sc = day.scenario()
    alerts = []
    for i, fraud in enumerate(day.frauds):
        store = fraud.store or day.stores[-1].plan.id
        camera = fraud.camera.partition(".")[2] if fraud.camera else ""
        alerts.append(_alert(f"a{i}", fraud.rules[0], store, fraud.time_ms, camera=f"{store}.{camera}" if camera else "",
                             register=fraud.register, track=fraud.track, pos=fraud.pos_events))
    london = day.stores[0]
    t = london.base_ms + 14 * 3_600_000
    # A shopper who lingered (no fraud), twice the same alert (counted once), and one at another time.
    alerts += [_alert("x1", "loitering", "london", t, camera="london.cam-floor", track=1234)] * 2
    alerts.append(_alert("x2", "loitering", "london", t + 3 * 3_600_000, camera="london.cam-floor", track=1300))
    missing = next(f for f in day.frauds if f.kind == "post_void" and f.store == "tokyo")
    alerts = [a for a in alerts if not (a.rule == "post_void" and set(missing.pos_events) & {e.ref for e in a.evidence})]
    results, chain_caught, chain_missed = busyday.score_day(day, sc, alerts)
    by_store = {r.store: r for r in results}
    assert len(by_store["london"].false_incidents) == 2 and not by_store["london"].missed
    assert by_store["tokyo"].missed == [missing] and not by_store["tokyo"].false_incidents
    assert chain_caught == day.chain_frauds and not chain_missed
    summary, ok = busyday.summarize(day, results, chain_caught, chain_missed)
    assert not ok and summary["frauds"] == 16 and summary["caught"] == 15 and summary["false_incidents"] == 2
    assert summary["per_store"]["london"]["false_incidents"] == 2 and summary["per_store"]["london"]["alerts"] == 7
    assert summary["per_store"]["london"]["false_alerts"] == 2 and summary["per_store"]["tokyo"]["false_alerts"] == 0


def test_a_day_in_another_year_and_dst_change_keeps_opening_hours_in_store_time() -> None:
    # 2026-10-25: London leaves summer time at 02:00; opening at 08:00 is still 08:00 on the wall.
    dst = busyday.generate(seed=1, stores=1, day=date(2026, 10, 25), customers=50)
    sd = dst.stores[0]
    tz = ZoneInfo("Europe/London")
    opened = datetime.fromtimestamp((sd.base_ms + sd.local_s(8) * 1000) / 1000, tz)
    assert (opened.hour, opened.minute) == (8, 0) and opened.date() == date(2026, 10, 25)
    first_shopper = min(p.start for p in sd.presences if p.track >= 1000 and not p.label)
    assert datetime.fromtimestamp((sd.base_ms + first_shopper * 1000) / 1000, tz) >= datetime(2026, 10, 25, 8, tzinfo=tz)
    assert sd.local_s(24) - sd.local_s(0) == int(timedelta(hours=25).total_seconds())
