"""Presence stage: background difference against the empty scene, per zone (a cheap cue, no identities)."""

from __future__ import annotations

import numpy as np

from services.inference.stages.base import BatchContext, FrameWork, StagePlugin
from services.inference.zones import zone_occupancy
from services.shared.storeconfig import PresenceStage


class PresencePlugin(StagePlugin):
    KIND = "presence"
    ORDER = 0

    def __init__(self, stage: PresenceStage) -> None:
        self.stage = stage

    def run(self, items: list[FrameWork], ctx: BatchContext) -> None:
        result, version = ctx.predict(self.stage.model, {"images": np.stack([it.image for it in items])}, {"foreground": len(items)})
        for item, grid in zip(items, result["foreground"], strict=True):
            zones = {z.zone_id: z for z in item.analysis.zones}
            for zone, fraction, present in zone_occupancy(grid, ctx.masks_for(item.camera, *grid.shape)):
                zones[zone.id].person_present = present
                zones[zone.id].presence_score = fraction
            item.analysis.models.add(name=self.stage.model, version=version)
