"""The sample store, generated in code so the demo needs no downloaded media.

A fixed-camera view of a checkout counter: a cashier behind it all the time, a customer who comes
to the counter and leaves, a passer-by in the aisle. Beside the clip: an "after hours" clip of the
empty store (what the presence model learns the background from) and a POS script with one sale,
one refund made with the customer present and one refund made with nobody at the counter.
Everything is seeded, so every run produces the same pixels and the same script.

The people are real: photographs of three pedestrians cut out of OpenCV's sample video vtest.avi
(Debian package opencv-doc, which `make setup` installs) against the video's own median background,
and composited into the drawn store, so a COCO person detector sees people, as it would on a real
camera. The cashier stands behind the counter (only head and torso show); the others in front.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 320, 240, 10
PEOPLE_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
# (frame of vtest.avi, person box x0, y0, x1, y1): hand-labelled in modeling/labels/real_frames.json.
SPRITES = {"cashier": (600, (455, 302, 506, 417)), "customer": (600, (283, 431, 330, 576)), "passer_by": (220, (583, 295, 623, 410))}
COUNTER_TOP, COUNTER_BOTTOM = 100, 128
# Bumped whenever the pictures change: older generated files are then made again (and the models trained on them).
SAMPLE_VERSION = 2
CLIP_SECONDS = 32
EMPTY_SECONDS = 6
STORE_ID, REGISTER_ID, CAMERA_ID = "store-001", "reg-1", "cam-counter-1"


@dataclass(frozen=True)
class Walker:
    """A person (one of SPRITES) whose feet follow straight segments between timed waypoints (seconds, x, y in 0..1)."""

    waypoints: tuple[tuple[float, float, float], ...]
    sprite: str
    height_px: int
    behind_counter: bool = False

    def position(self, t: float) -> tuple[float, float] | None:
        first, last = self.waypoints[0], self.waypoints[-1]
        if t < first[0] or t > last[0]:
            return None
        for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(self.waypoints):
            if t0 <= t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        return None


CASHIER = Walker(((0.0, 0.46, 0.62), (CLIP_SECONDS, 0.46, 0.62)), "cashier", 125, behind_counter=True)
CUSTOMER = Walker(((3.0, 0.05, 1.45), (5.0, 0.45, 0.97), (12.0, 0.47, 0.97), (14.0, 0.30, 1.50)), "customer", 120)
PASSER_BY = Walker(((14.0, 0.92, 0.10), (19.0, 0.92, 1.45)), "passer_by", 95)

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
    _draw_counter(img)
    cv2.line(img, (int(0.83 * WIDTH), 0), (int(0.83 * WIDTH), HEIGHT), (120, 120, 120), 2)  # aisle edge
    return img


@dataclass(frozen=True)
class Sprite:
    image: np.ndarray  # BGR, the person's box
    alpha: np.ndarray  # float32 0..1, the person's silhouette


def _cut_out(frame: np.ndarray, background: np.ndarray, box: tuple[int, int, int, int]) -> Sprite:
    """The person in `box`: pixels that differ from the median background, largest blob, soft edge."""
    x0, y0, x1, y1 = box
    crop, empty = frame[y0:y1, x0:x1], background[y0:y1, x0:x1]
    changed = (np.abs(crop.astype(np.int16) - empty.astype(np.int16)).max(axis=2) > 28).astype(np.uint8)
    changed = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(changed)
    if count < 2:
        raise RuntimeError(f"no person found in {PEOPLE_VIDEO.name} at {box}")
    person = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.float32)
    return Sprite(crop.copy(), cv2.GaussianBlur(person, (3, 3), 0))


@lru_cache(maxsize=1)
def load_sprites() -> dict[str, Sprite]:
    """The three people, cut out of vtest.avi (read once per process)."""
    if not PEOPLE_VIDEO.exists():
        raise FileNotFoundError(f"{PEOPLE_VIDEO} is missing: the sample store's people come from it (Debian: apt-get install opencv-doc; `make setup` does)")
    capture = cv2.VideoCapture(str(PEOPLE_VIDEO))
    wanted = {frame for frame, _ in SPRITES.values()}
    frames, every, index = {}, [], 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if index % 16 == 0:
            every.append(image)
        if index in wanted:
            frames[index] = image
        index += 1
    capture.release()
    if len(frames) != len(wanted):
        raise RuntimeError(f"{PEOPLE_VIDEO}: only {index} frames readable; the sample store needs frames {sorted(wanted)}")
    background = np.median(np.stack(every), axis=0).astype(np.uint8)
    return {name: _cut_out(frames[frame], background, box) for name, (frame, box) in SPRITES.items()}


def _paste(img: np.ndarray, sprite: Sprite, feet_x: float, feet_y: float, height_px: int, clip_below: int | None = None) -> None:
    """Draw `sprite` scaled to `height_px` with its feet at (feet_x, feet_y) in pixels; rows from `clip_below` down are hidden."""
    scale = height_px / sprite.image.shape[0]
    width = max(1, round(sprite.image.shape[1] * scale))
    image = cv2.resize(sprite.image, (width, height_px), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.resize(sprite.alpha, (width, height_px), interpolation=cv2.INTER_LINEAR)[..., None]
    x0, y0 = round(feet_x - width / 2), round(feet_y - height_px)
    bottom = HEIGHT if clip_below is None else min(HEIGHT, clip_below)
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(WIDTH, x0 + width), min(bottom, y0 + height_px)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    region = img[iy0:iy1, ix0:ix1].astype(np.float32)
    a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    img[iy0:iy1, ix0:ix1] = (a * image[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] + (1 - a) * region).astype(np.uint8)


def _draw_person(img: np.ndarray, walker: Walker, t: float) -> None:
    pos = walker.position(t)
    if pos is None:
        return
    sway = 1.5 * np.sin(t * 3.0)  # a little life in a standing person
    _paste(img, load_sprites()[walker.sprite], pos[0] * WIDTH + sway, pos[1] * HEIGHT, walker.height_px,
           clip_below=COUNTER_BOTTOM if walker.behind_counter else None)


def visible_box(walker: Walker, t: float) -> tuple[float, float, float, float] | None:
    """Where `walker` shows at `t`: (x0, y0, x1, y1) in 0..1 of the frame, or None when out of view.
    The ground truth of the tracking evaluation (the counter hides the cashier below its top)."""
    pos = walker.position(t)
    if pos is None:
        return None
    _, (bx0, by0, bx1, by1) = SPRITES[walker.sprite]
    width = walker.height_px * (bx1 - bx0) / (by1 - by0)
    x0, x1 = pos[0] * WIDTH - width / 2, pos[0] * WIDTH + width / 2
    y1 = min(pos[1] * HEIGHT, COUNTER_TOP if walker.behind_counter else HEIGHT)
    y0 = pos[1] * HEIGHT - walker.height_px
    box = (max(0.0, x0) / WIDTH, max(0.0, y0) / HEIGHT, min(WIDTH, x1) / WIDTH, min(HEIGHT, y1) / HEIGHT)
    return box if box[2] - box[0] > 0.02 and box[3] - box[1] > 0.05 else None


WALKERS = {"cashier": CASHIER, "customer": CUSTOMER, "passer_by": PASSER_BY}


def _draw_counter(img: np.ndarray) -> None:
    cv2.rectangle(img, (int(0.12 * WIDTH), COUNTER_TOP), (int(0.80 * WIDTH), COUNTER_BOTTOM), (40, 70, 110), -1)
    cv2.rectangle(img, (int(0.55 * WIDTH), 88), (int(0.65 * WIDTH), COUNTER_TOP), (50, 50, 50), -1)  # register


def render_frame(t: float, walkers: tuple[Walker, ...], rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    img = background.copy()
    # Behind the counter first, then the counter hides their legs, then the people in front of it.
    for walker in walkers:
        if walker.behind_counter:
            _draw_person(img, walker, t)
    _draw_counter(img)
    for walker in walkers:
        if not walker.behind_counter:
            _draw_person(img, walker, t)
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
    """Write the clip, the empty-store clip and the POS script; keep files of this SAMPLE_VERSION that exist."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"clip": out_dir / "counter.mp4", "empty": out_dir / "counter-empty.mp4", "pos_script": out_dir / "pos-script.json"}
    marker = out_dir / "VERSION"
    current = marker.exists() and marker.read_text().strip() == str(SAMPLE_VERSION)
    if not current or not paths["clip"].exists():
        _write_video(paths["clip"], CLIP_SECONDS * FPS, (CASHIER, CUSTOMER, PASSER_BY), seed=7)
    if not current or not paths["empty"].exists():
        _write_video(paths["empty"], EMPTY_SECONDS * FPS, (), seed=11)
    marker.write_text(f"{SAMPLE_VERSION}\n")
    script = {"store_id": STORE_ID, "register_id": REGISTER_ID, "camera_id": CAMERA_ID, "events": POS_SCRIPT}
    paths["pos_script"].write_text(json.dumps(script, indent=2))
    return paths
