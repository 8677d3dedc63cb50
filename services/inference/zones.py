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
    """Rasterise each zone polygon onto the model's grid: a cell belongs to a zone when at least
    half of it lies inside; a zone smaller than that still gets the cells it touches most."""
    masks = []
    for zone in camera.zones:
        canvas = np.zeros((rows * 8, cols * 8), np.float32)
        pts = np.array([[x * cols * 8, y * rows * 8] for x, y in zone.polygon], np.int32)
        cv2.fillPoly(canvas, [pts], 1.0)
        inside = canvas.reshape(rows, 8, cols, 8).mean(axis=(1, 3))
        mask = inside >= 0.5
        if not mask.any():
            mask = inside >= inside.max() if inside.max() > 0 else _cell_at(zone, rows, cols)
        masks.append(ZoneMask(zone, mask))
    return masks


def _cell_at(zone: Zone, rows: int, cols: int) -> np.ndarray:
    """The cell under the polygon's centroid, for a zone too thin to cover any pixel of the grid."""
    mask = np.zeros((rows, cols), bool)
    x, y = np.mean(zone.polygon, axis=0)
    mask[min(int(y * rows), rows - 1), min(int(x * cols), cols - 1)] = True
    return mask


def zone_occupancy(foreground: np.ndarray, masks: list[ZoneMask]) -> list[tuple[Zone, float, bool]]:
    """(zone, occupied fraction, person present) for one frame's foreground grid."""
    covered = foreground >= CELL_COVERED
    result = []
    for zm in masks:
        cells = int(zm.mask.sum())
        fraction = float(covered[zm.mask].sum()) / cells if cells else 0.0
        result.append((zm.zone, fraction, fraction >= zm.zone.min_occupancy))
    return result


def zone_maxima(score_map: np.ndarray, masks: list[ZoneMask]) -> list[tuple[Zone, float]]:
    """(zone, worst cell) for one frame's anomaly map: a zone is as anomalous as its worst patch."""
    return [(zm.zone, float(score_map[zm.mask].max()) if zm.mask.any() else 0.0) for zm in masks]


def anchor_point(box: tuple[float, float, float, float], anchor: str) -> tuple[float, float]:
    """The point of a box (x0, y0, x1, y1, 0..1) that says where a person stands: the feet by default,
    the centre for cameras that look straight down."""
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2, y1 if anchor == "foot" else (y0 + y1) / 2)


def zones_at(point: tuple[float, float], zones: list[Zone]) -> list[Zone]:
    """The zones whose polygon holds `point` (normalised coordinates; the edge counts as inside)."""
    inside = []
    for zone in zones:
        contour = np.array(zone.polygon, np.float32).reshape(-1, 1, 2)
        if cv2.pointPolygonTest(contour, (float(point[0]), float(point[1])), False) >= 0:
            inside.append(zone)
    return inside
