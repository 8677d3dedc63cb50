"""Which zones each tracked person and object is in, since when, and what that makes of each zone.

Inference's detector stage fills a FrameAnalysis from its tracks with this. The scenario runner and
the correlator benchmark, which script what a camera saw, fill theirs with it too, so what they send
the correlator is what inference would publish: the same visits, dwell and per-zone counts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis, ZoneVisit
from services.shared.storeconfig import Zone

# (track id, zone id) -> capture time the track entered the zone: what carries from frame to frame.
VisitStarts = dict[tuple[int, str], int]


@dataclass(frozen=True)
class Sighting:
    """One track in one frame: what it is, how sure, and the zones its anchor point is in."""

    track_id: int
    is_person: bool
    score: float
    # In the order its visits are listed.
    zones: Sequence[str]
    # Given on a track's first report only: when it was first seen. A tracker reports a track from
    # its second sighting on, so the visits of its first report began then, not now (unless the
    # track already has a visit under way).
    new_track_first_seen_ms: int | None = None
    # Visit starts known from elsewhere (a script, a simulation): they replace what was remembered.
    entered_ms: Mapping[str, int] = field(default_factory=dict)


class ZoneVisits:
    """A camera's visits per (track, zone), kept between frames, and the zone fields they make.

    `starts` may be a dict the caller keeps (inference keeps it in its per-camera state, which a
    retried batch works on a copy of); the helper changes it in place."""

    def __init__(self, zones: Sequence[Zone], starts: VisitStarts | None = None) -> None:
        self.new_within_ms = {zone.id: zone.new_object_s * 1000 for zone in zones}
        self.starts: VisitStarts = {} if starts is None else starts

    def fill(self, analysis: FrameAnalysis, sightings: Sequence[Sighting], now_ms: int) -> list[list[ZoneVisit]]:
        """Each sighting's visits (for its PersonObservation or DetectedObject), and the analysis's zone
        fields: persons (count, track ids, longest dwell, presence) and objects (count, newest arrival,
        how many are new). A zone nobody is in is empty, whatever an earlier stage said."""
        zones = {zone.zone_id: zone for zone in analysis.zones}
        placed = []
        for sighting in sightings:
            visits = self._visits(sighting, now_ms)
            placed.append([ZoneVisit(zone_id=zone_id, entered_ms=since) for zone_id, since in visits])
            for zone_id, since in visits:
                zone = zones[zone_id]
                if sighting.is_person:
                    zone.person_count += 1
                    zone.track_ids.append(sighting.track_id)
                    zone.max_dwell_ms = max(zone.max_dwell_ms, now_ms - since)
                    zone.person_present = True
                    zone.presence_score = max(zone.presence_score, sighting.score)
                else:
                    zone.object_count += 1
                    zone.newest_object_entered_ms = max(zone.newest_object_entered_ms, since)
                    if now_ms - since <= self.new_within_ms[zone_id]:
                        zone.new_object_count += 1
        for zone in zones.values():
            if zone.person_count == 0:
                zone.person_present, zone.presence_score = False, 0.0
        return placed

    def _visits(self, sighting: Sighting, now_ms: int) -> list[tuple[str, int]]:
        """(zone, entered) for each zone the track is in; being seen outside a zone ends its visit."""
        track = sighting.track_id
        for key in [k for k in self.starts if k[0] == track and k[1] not in sighting.zones]:
            del self.starts[key]
        start = now_ms
        if sighting.new_track_first_seen_ms is not None and not any(k[0] == track for k in self.starts):
            start = sighting.new_track_first_seen_ms
        visits = []
        for zone_id in sighting.zones:
            if zone_id in sighting.entered_ms:
                self.starts[(track, zone_id)] = sighting.entered_ms[zone_id]
            visits.append((zone_id, self.starts.setdefault((track, zone_id), start)))
        return visits

    def keep_only(self, tracked: Collection[int]) -> None:
        """A track no longer followed (the tracker gave up on it) leaves every zone."""
        for key in [k for k in self.starts if k[0] not in tracked]:
            del self.starts[key]
