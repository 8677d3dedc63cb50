"""The sample store, generated in code so the demo needs no downloaded media.

A fixed-camera view of a checkout counter: a cashier behind it all the time, a customer who comes
to the counter and leaves, a passer-by in the aisle. Beside the clip: an "after hours" clip of the
empty store (what the presence model learns the background from) and a POS script with one sale,
one refund made with the customer present and one refund made with nobody at the counter.
Everything is seeded, so every run produces the same pixels and the same script.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 320, 240, 10
CLIP_SECONDS = 32
EMPTY_SECONDS = 6
STORE_ID, REGISTER_ID, CAMERA_ID = "store-001", "reg-1", "cam-counter-1"


@dataclass(frozen=True)
class Walker:
    """A person following straight segments between timed waypoints (seconds, x, y in 0..1)."""

    waypoints: tuple[tuple[float, float, float], ...]
    shirt: tuple[int, int, int]
    height_px: int

    def position(self, t: float) -> tuple[float, float] | None:
        first, last = self.waypoints[0], self.waypoints[-1]
        if t < first[0] or t > last[0]:
            return None
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(self.waypoints):
            if t0 <= t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        return None


CASHIER = Walker(((0.0, 0.46, 0.24), (CLIP_SECONDS, 0.46, 0.24)), (40, 90, 200), 80)
CUSTOMER = Walker(((3.0, 0.05, 1.05), (5.0, 0.45, 0.78), (12.0, 0.47, 0.78), (14.0, 0.30, 1.10)), (30, 160, 60), 95)
PASSER_BY = Walker(((14.0, 0.92, -0.15), (19.0, 0.92, 1.15)), (170, 50, 150), 90)

# Offsets in seconds from the clip's first frame. The demo anchors them to the first frame's capture time.
POS_SCRIPT = [
    {"offset_s": 8.0, "event_id": "pos-store-001-0001", "type": "sale", "transaction_id": "T-1001", "total_minor": 4599,
     "items": [{"sku": "SKU-HEADPHONES", "description": "Wireless headphones", "quantity": 1, "unit_price_minor": 4599}]},
    {"offset_s": 9.5, "event_id": "pos-store-001-0002", "type": "refund", "transaction_id": "T-1002", "total_minor": 2999,
     "original_transaction_id": "T-0950", "items": [{"sku": "SKU-JACKET", "description": "Rain jacket", "quantity": 1, "unit_price_minor": 2999}],
     "note": "customer at the counter: no alert expected"},
    {"offset_s": 24.0, "event_id": "pos-store-001-0003", "type": "refund", "transaction_id": "T-1003", "total_minor": 18999,
     "original_transaction_id": "T-0977", "items": [{"sku": "SKU-DRILL", "description": "Cordless drill", "quantity": 1, "unit_price_minor": 18999}],
     "note": "nobody at the counter: refund_without_customer expected"},
]


def _background() -> np.ndarray:
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = (200, 205, 210)  # back wall (BGR)
    cv2.rectangle(img, (0, 0), (WIDTH, 20), (150, 150, 150), -1)  # ceiling strip
    for x in range(20, WIDTH, 60):  # shelves behind the counter
        cv2.rectangle(img, (x, 30), (x + 40, 60), (60, 110, 160), -1)
    yy = np.linspace(0, 1, HEIGHT - 120)[:, None]
    img[120:] = (np.array([150, 160, 170]) * (0.85 + 0.15 * yy)[..., None]).astype(np.uint8)  # floor
    cv2.rectangle(img, (int(0.12 * WIDTH), 100), (int(0.80 * WIDTH), 128), (40, 70, 110), -1)  # counter
    cv2.rectangle(img, (int(0.55 * WIDTH), 88), (int(0.65 * WIDTH), 100), (50, 50, 50), -1)  # register
    cv2.line(img, (int(0.83 * WIDTH), 0), (int(0.83 * WIDTH), HEIGHT), (120, 120, 120), 2)  # aisle edge
    return img


def _draw_person(img: np.ndarray, walker: Walker, t: float) -> None:
    pos = walker.position(t)
    if pos is None:
        return
    cx, cy = int(pos[0] * WIDTH), int(pos[1] * HEIGHT)
    h = walker.height_px
    sway = int(2 * np.sin(t * 3.0))
    cv2.ellipse(img, (cx + sway, cy), (h // 5, h // 3), 0, 0, 360, walker.shirt, -1, cv2.LINE_AA)
    cv2.circle(img, (cx + sway, cy - h // 3 - h // 9), h // 8, (140, 170, 210), -1, cv2.LINE_AA)


def render_frame(t: float, walkers: tuple[Walker, ...], rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    img = background.copy()
    for walker in walkers:
        _draw_person(img, walker, t)
    # The counter occludes the cashier's legs: redraw it over people standing behind it.
    cv2.rectangle(img, (int(0.12 * WIDTH), 100), (int(0.80 * WIDTH), 128), (40, 70, 110), -1)
    cv2.rectangle(img, (int(0.55 * WIDTH), 88), (int(0.65 * WIDTH), 100), (50, 50, 50), -1)
    flicker = rng.normal(0, 1.0)
    noise = rng.normal(0, 2.0, img.shape) + flicker
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def clip_frame(t: float, seed: int = 0) -> np.ndarray:
    """The counter clip's picture at `t` seconds, rendered directly (for labelled frames and benchmarks)."""
    return render_frame(t, (CASHIER, CUSTOMER, PASSER_BY), np.random.default_rng(seed), _background())


def _write_video(path: Path, frames: int, walkers: tuple[Walker, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    background = _background()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with the mp4v codec")
    try:
        for i in range(frames):
            writer.write(render_frame(i / FPS, walkers, rng, background))
    finally:
        writer.release()


def generate(out_dir: Path) -> dict[str, Path]:
    """Write the clip, the empty-store clip and the POS script; skip files that already exist."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"clip": out_dir / "counter.mp4", "empty": out_dir / "counter-empty.mp4", "pos_script": out_dir / "pos-script.json"}
    if not paths["clip"].exists():
        _write_video(paths["clip"], CLIP_SECONDS * FPS, (CASHIER, CUSTOMER, PASSER_BY), seed=7)
    if not paths["empty"].exists():
        _write_video(paths["empty"], EMPTY_SECONDS * FPS, (), seed=11)
    script = {"store_id": STORE_ID, "register_id": REGISTER_ID, "camera_id": CAMERA_ID, "events": POS_SCRIPT}
    paths["pos_script"].write_text(json.dumps(script, indent=2))
    return paths
