"""Reduce a model's per-cell map over each zone polygon of a camera."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.shared.storeconfig import Camera, Zone

# A cell counts as covered by a person when at least this fraction of its pixels changed.
CELL_COVERED = 0.5


@dataclass(frozen=True)
class ZoneMask:
    zone: Zone
    mask: np.ndarray  # bool [rows, cols]


def zone_masks(camera: Camera, rows: int, cols: int) -> list[ZoneMask]:
    """Rasterise each zone polygon onto the model's grid (a cell belongs to a zone if its centre does)."""
    masks = []
    for zone in camera.zones:
        canvas = np.zeros((rows * 4, cols * 4), np.uint8)
        pts = np.array([[x * cols * 4, y * rows * 4] for x, y in zone.polygon], np.int32)
        cv2.fillPoly(canvas, [pts], 1)
        centres = canvas[2::4, 2::4].astype(bool)
        masks.append(ZoneMask(zone, centres))
    return masks


def zone_occupancy(foreground: np.ndarray, masks: list[ZoneMask]) -> list[tuple[Zone, float, bool]]:
    """(zone, occupied fraction, person present) for one frame's foreground grid."""
    covered = foreground >= CELL_COVERED
    result = []
    for zm in masks:
        cells = int(zm.mask.sum())
        fraction = float(covered[zm.mask].sum()) / cells if cells else 0.0
        result.append((zm.zone, fraction, fraction >= zm.zone.min_occupancy))
    return result
