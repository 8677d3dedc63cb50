"""What the sample store's demo must raise, decided from the store config and the clip's capture times.

The correlator judges "after hours" on each frame's capture time in the store's time zone
(services/correlator/rules.py closed_period), and the sample clip's cashier is on camera from its
first frame to its last. So a demo run while the store is closed rightly raises a critical
after-hours alert beside the refund alert: it is expected then, said so before the clip plays, and
missing it is a failure; while the store is open, one that comes is a failure. When opening or
closing time falls inside the 32 s the clip plays, whether the alert comes depends on a few seconds
of tracking, so it is allowed but not required, and one that comes must name a closed period the
clip was in. The refund alert is expected at any hour.

`store_config_for_the_moment` writes the sample config with opening hours that keep the store open
(or closed) for hours around a given moment, for tests whose expectations must not depend on the
wall clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from services.correlator.rules import AFTER_HOURS, REFUND_WITHOUT_CUSTOMER, closed_period
from services.shared.storeconfig import StoreConfig

# How a POS script event says that it must raise the refund alert (devplatform/samplestore.py).
REFUND_EXPECTED_NOTE = "refund_without_customer expected"


@dataclass(frozen=True)
class DemoExpectation:
    store_id: str
    camera_id: str
    # POS event ids, each raising one refund_without_customer alert
    refunds: tuple[str, ...]
    # "08:00-21:00 Europe/London", or why the store never closes
    hours: str
    # the clip's first and last capture time as store time, "HH:MM:SS"
    clip_from: str
    clip_to: str
    # closed periods (closed_period's names) the whole clip lies in: one after-hours alert each
    after_hours_required: tuple[str, ...]
    # closed periods any part of the clip lies in: at most one after-hours alert each
    after_hours_allowed: tuple[str, ...]

    @property
    def store_open(self) -> bool:
        return not self.after_hours_allowed

    def describe(self) -> str:
        refunds = f"the refund with nobody at the counter ({', '.join(self.refunds)})" if self.refunds else "no refund"
        where = f"{self.clip_from}-{self.clip_to} store time; opening hours {self.hours}"
        if self.store_open:
            return (f"Store {self.store_id} is open while the clip plays ({where}): one alert expected, for {refunds}; "
                    "people on camera in opening hours raise nothing.")
        if self.after_hours_required:
            return (f"Store {self.store_id} is closed while the clip plays ({where}): expected, an alert for {refunds}, and a critical "
                    f"after-hours alert for the cashier on camera {self.camera_id} (closed period {', '.join(self.after_hours_required)}; "
                    "the correlator judges opening hours on each frame's capture time).")
        return (f"Store {self.store_id} opens or closes while the clip plays ({where}): expected, an alert for {refunds}; an after-hours "
                f"alert for the part of the clip in closed period {', '.join(self.after_hours_allowed)} may come or not.")

    def missing(self, alerts: Sequence[Mapping[str, Any]]) -> list[str]:
        """The expected alerts not among `alerts` yet (what to wait for)."""
        refunds = {_refund_ref(a) for a in alerts if a.get("rule") == REFUND_WITHOUT_CUSTOMER}
        periods = {_period(a) for a in alerts if a.get("rule") == AFTER_HOURS}
        return ([f"{REFUND_WITHOUT_CUSTOMER} for {ref}" for ref in self.refunds if ref not in refunds]
                + [f"{AFTER_HOURS} for {p}" for p in self.after_hours_required if p not in periods])

    def problems(self, alerts: Sequence[Mapping[str, Any]]) -> list[str]:
        """What differs from the expectation: a missing, an unexpected or a duplicate alert."""
        found = []
        refunds = sorted(_refund_ref(a) for a in alerts if a.get("rule") == REFUND_WITHOUT_CUSTOMER)
        if refunds != sorted(self.refunds):
            found.append(f"{REFUND_WITHOUT_CUSTOMER} alerts for POS events {refunds}, expected {sorted(self.refunds)}")
        periods = [_period(a) for a in alerts if a.get("rule") == AFTER_HOURS]
        for alert in (a for a in alerts if a.get("rule") == AFTER_HOURS):
            period = _period(alert)
            if period not in self.after_hours_allowed or alert.get("camera_id") != self.camera_id:
                store = "open" if self.store_open else f"closed only in {', '.join(self.after_hours_allowed)}"
                found.append(f"an {AFTER_HOURS} alert for closed period {period!r} on camera {alert.get('camera_id')!r}, while the store was {store} "
                             f"for the whole clip ({self.clip_from}-{self.clip_to} store time, opening hours {self.hours})")
            elif periods.count(period) > 1:
                found.append(f"{periods.count(period)} {AFTER_HOURS} alerts for closed period {period}, expected one")
        for period in self.after_hours_required:
            if period not in periods:
                found.append(f"no {AFTER_HOURS} alert for the cashier on camera {self.camera_id} while the store was closed for the whole clip "
                             f"({self.clip_from}-{self.clip_to} store time, closed period {period}, opening hours {self.hours})")
        others = sorted({str(a.get("rule")) for a in alerts} - {REFUND_WITHOUT_CUSTOMER, AFTER_HOURS})
        if others:
            found.append(f"unexpected alerts of rule(s) {others}")
        return list(dict.fromkeys(found))

    def summary(self, alerts: Sequence[Mapping[str, Any]]) -> str:
        """What was raised, in words, for the demo's result line (when it is as expected)."""
        parts = [f"the refund with nobody at the counter ({ref})" for ref in sorted(_refund_ref(a) for a in alerts if a.get("rule") == REFUND_WITHOUT_CUSTOMER)]
        parts += [f"the cashier on camera after hours (closed period {_period(a)})" for a in alerts if a.get("rule") == AFTER_HOURS]
        return f"{'one alert' if len(alerts) == 1 else f'{len(alerts)} alerts'}: {' and '.join(parts) or 'none'}"


def _refund_ref(alert: Mapping[str, Any]) -> str:
    evidence = alert.get("evidence") or [{}]
    return str(evidence[0].get("ref", ""))


def _period(alert: Mapping[str, Any]) -> str:
    return str((alert.get("facts") or {}).get("closed_period", ""))


def expect(config: StoreConfig, script: Mapping[str, Any], first_frame_ms: int, clip_s: float) -> DemoExpectation:
    """The demo's expectation for a clip whose first frame was captured at `first_frame_ms`.

    Every second the clip spans is judged with the correlator's own closed_period, on the store's
    hours, holidays and time zone, as the correlator judges each frame."""
    store, camera = config.camera(script["camera_id"])
    tz = ZoneInfo(store.timezone)
    last_ms = first_frame_ms + round(clip_s * 1000)
    rule_on = config.rules_for(store.id).after_hours.enabled
    periods: list[str | None] = []
    if rule_on:
        for second in range(first_frame_ms // 1000, last_ms // 1000 + 1):
            periods.append(closed_period(store.opening_hours, tuple(store.holidays), store.timezone, second * 1000))
    allowed = tuple(dict.fromkeys(p for p in periods if p is not None))
    required = allowed if len(allowed) == 1 and None not in periods else ()
    hours = (f"{store.opening_hours.open:%H:%M}-{store.opening_hours.close:%H:%M} {store.timezone}" if store.opening_hours
             else f"none, never closed ({store.timezone})")
    if not rule_on:
        hours += ", after-hours rule off"
    return DemoExpectation(
        store_id=store.id, camera_id=camera.id,
        refunds=tuple(e["event_id"] for e in script["events"] if REFUND_EXPECTED_NOTE in e.get("note", "")),
        hours=hours,
        clip_from=f"{datetime.fromtimestamp(first_frame_ms / 1000, tz):%H:%M:%S}", clip_to=f"{datetime.fromtimestamp(last_ms / 1000, tz):%H:%M:%S}",
        after_hours_required=required, after_hours_allowed=allowed,
    )


def store_config_for_the_moment(source: Path, dest: Path, *, store_open: bool, now: datetime, margin_h: float = 3.0) -> Path:
    """`source` (a store config) written to `dest` with every store open, or closed, from `margin_h`
    hours before `now` to `margin_h` hours after it, in each store's own time zone; holidays are
    dropped (one would close the store all day). Camera files stay where they were."""
    if now.tzinfo is None:
        raise ValueError("now needs a time zone")
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    margin = timedelta(hours=margin_h)
    for store in raw["stores"]:
        tz = ZoneInfo(store["timezone"])
        if store_open:  # open from before the margin to after it (past midnight if need be)
            opens, closes = now - margin, now + margin
        else:  # opens after the margin and closes two hours later (never the same clock time, even across a DST change)
            opens, closes = now + margin, now + margin + timedelta(hours=2)
        store["opening_hours"] = {"open": f"{opens.astimezone(tz):%H:%M}", "close": f"{closes.astimezone(tz):%H:%M}"}
        store.pop("holidays", None)
        for camera in store["cameras"]:
            if camera["source"].startswith("file:"):
                path = Path(camera["source"][len("file:"):])
                camera["source"] = f"file:{path if path.is_absolute() else (source.resolve().parent / path).resolve()}"
    dest.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return dest

