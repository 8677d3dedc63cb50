"""What happens to a captured image before it leaves the store: resize, privacy, motion gate, JPEG.

Order matters: privacy masks are applied first, so masked areas neither leave the store nor count
as motion; faces are blurred only on frames that will be sent (the cascade is the costly step).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.shared.storeconfig import Camera, Polygon

# Motion is measured on a copy this wide: enough for a person, cheap enough for dozens of cameras.
MOTION_WIDTH = 160
# Faces are searched on a copy at most this wide (the cascade costs ~30 ms at 320 px on one core).
FACE_SEARCH_WIDTH = 320


class FrameTooLarge(ValueError):
    """Even at the lowest allowed quality the JPEG is over the camera's size bound."""


@dataclass(frozen=True)
class EncodedFrame:
    jpeg: bytes
    width: int
    height: int
    motion_score: float
    # True when sent only because the keyframe interval ran out (no motion).
    keyframe: bool
    faces_blurred: int = 0


@dataclass(frozen=True)
class Heartbeat:
    """No image: the gate held the frame back, but nothing was sent for `motion.heartbeat_s`, so the
    camera says it is live and its scene unchanged, and event time moves on downstream."""

    motion_score: float


def polygon_keep_mask(polygons: list[Polygon], width: int, height: int) -> np.ndarray | None:
    """255 where the image may be kept, 0 inside any privacy polygon; None when there are none."""
    if not polygons:
        return None
    keep = np.full((height, width), 255, np.uint8)
    for polygon in polygons:
        points = np.array([[round(x * (width - 1)), round(y * (height - 1))] for x, y in polygon], np.int32)
        cv2.fillPoly(keep, [points], 0)
    return keep


class MotionDetector:
    """Fraction of the frame that differs from a learned background (OpenCV's MOG2).

    A background model, unlike a difference of consecutive frames, ignores slow light changes and
    keeps reporting a person who moves slowly; shadows are marked apart and not counted.
    """

    def __init__(self, fps: float) -> None:
        # About 30 s of history: a parked trolley becomes background within a minute.
        self._model = cv2.createBackgroundSubtractorMOG2(history=max(50, int(fps * 30)), varThreshold=16, detectShadows=True)
        self._kernel = np.ones((3, 3), np.uint8)
        self._seen = False

    def score(self, image: np.ndarray) -> float:
        small = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        # Halving with INTER_LINEAR averages 2x2 blocks: the noise reduction of INTER_AREA at a
        # third of its cost on a 720p frame (this runs on every sampled frame of every camera).
        while small.shape[1] >= 2 * MOTION_WIDTH:
            small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
        if small.shape[1] != MOTION_WIDTH:
            height = max(1, round(small.shape[0] * MOTION_WIDTH / small.shape[1]))
            small = cv2.resize(small, (MOTION_WIDTH, height), interpolation=cv2.INTER_AREA)
        foreground = self._model.apply(small)
        if not self._seen:
            self._seen = True
            return 1.0  # nothing learned yet: treat the first frame as all new
        # 255 is foreground, 127 shadow; an opening removes single-pixel sensor noise.
        moving = cv2.morphologyEx(cv2.threshold(foreground, 200, 255, cv2.THRESH_BINARY)[1], cv2.MORPH_OPEN, self._kernel)
        return cv2.countNonZero(moving) / moving.size


class FaceBlurrer:
    """Pixelates frontal faces found by the Haar cascade that ships inside the opencv-python wheel."""

    def __init__(self) -> None:
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]  # the stubs omit cv2.data
        if self._cascade.empty():
            raise RuntimeError("OpenCV's frontal face cascade is missing: install opencv-python-headless 4.x (5.x wheels do not bundle it)")

    def faces(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        scale = min(1.0, FACE_SEARCH_WIDTH / image.shape[1])
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.15, minNeighbors=4, minSize=(16, 16))
        return [(int(x / scale), int(y / scale), int(w / scale), int(h / scale)) for x, y, w, h in found]

    def blur(self, image: np.ndarray) -> int:
        """Pixelate every face in place (with a margin for hair and chin); returns how many."""
        faces = self.faces(image)
        height, width = image.shape[:2]
        for x, y, w, h in faces:
            mx, my = w // 5, h // 5
            x0, y0, x1, y1 = max(0, x - mx), max(0, y - my), min(width, x + w + mx), min(height, y + h + my)
            region = image[y0:y1, x0:x1]
            tiny = cv2.resize(region, (6, 6), interpolation=cv2.INTER_AREA)
            image[y0:y1, x0:x1] = cv2.resize(tiny, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        return len(faces)


def encode_jpeg(image: np.ndarray, quality: int, min_quality: int, max_bytes: int) -> tuple[bytes, int]:
    """JPEG at `quality`, stepping down towards `min_quality` while it is over `max_bytes`."""
    while True:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"JPEG encoding failed for a {image.shape[1]}x{image.shape[0]} image")
        if buffer.size <= max_bytes:
            return buffer.tobytes(), quality
        if quality <= min_quality:
            raise FrameTooLarge(f"{buffer.size} bytes at JPEG quality {quality} is over max_jpeg_bytes {max_bytes}; lower the resolution or raise the bound")
        quality = max(min_quality, quality - 15)


class FrameProcessor:
    """One camera's frames from capture to JPEG, with the motion gate's memory."""

    def __init__(self, camera: Camera) -> None:
        self.camera = camera
        self._keep = polygon_keep_mask(camera.privacy_masks, camera.width, camera.height)
        self._motion = MotionDetector(camera.fps)
        self._faces = FaceBlurrer() if camera.blur_faces else None
        self._last_sent_ms: int | None = None
        self._last_motion_ms: int | None = None
        # Last frame or heartbeat sent; keyframes count from the last image only (`_last_sent_ms`).
        self._last_message_ms: int | None = None

    def process(self, image: np.ndarray, clock_ms: int) -> EncodedFrame | Heartbeat | None:
        """The frame to send, a heartbeat in its place, or None when the motion gate holds it back.

        `clock_ms` times the gate (keyframes, hold, heartbeats): the file's clock, or a monotonic one for live.
        """
        cam = self.camera
        if image.shape[1] != cam.width or image.shape[0] != cam.height:
            image = cv2.resize(image, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        if self._keep is not None:
            image = cv2.bitwise_and(image, image, mask=self._keep)
        score = self._motion.score(image)
        keyframe = False
        gate = cam.motion
        if self._last_message_ms is not None and clock_ms < self._last_message_ms:
            self._last_sent_ms = self._last_motion_ms = self._last_message_ms = None  # the clock went back (a file looped): start afresh
        if gate.enabled:
            if score >= gate.threshold and self._last_sent_ms is not None:  # the first frame is a keyframe
                self._last_motion_ms = clock_ms
            moving = self._last_motion_ms is not None and clock_ms - self._last_motion_ms <= gate.hold_s * 1000
            due = self._last_sent_ms is None or clock_ms - self._last_sent_ms >= gate.keyframe_interval_s * 1000
            if not moving and not due:
                if self._last_message_ms is not None and clock_ms - self._last_message_ms < gate.heartbeat_s * 1000:
                    return None
                self._last_message_ms = clock_ms
                return Heartbeat(score)
            keyframe = not moving
        faces = self._faces.blur(image) if self._faces is not None else 0
        jpeg, _ = encode_jpeg(image, cam.jpeg_quality, cam.min_jpeg_quality, cam.max_jpeg_bytes)
        self._last_sent_ms = self._last_message_ms = clock_ms
        return EncodedFrame(jpeg, image.shape[1], image.shape[0], score, keyframe, faces)
