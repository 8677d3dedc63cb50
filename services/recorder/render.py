"""Evidence images: the snapshot with zones and detections drawn, and the MJPEG clip of a window."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import cv2
import numpy as np

from services.recorder.buffer import BufferedFrame
from services.shared.contracts.frame_analysis_pb2 import BoundingBox, FrameAnalysis
from services.shared.storeconfig import Zone

# BGR. Zones by kind, so an analyst reads the counter's two sides at a glance.
ZONE_COLOURS = {
    "counter_customer": (255, 160, 0), "counter_merchandise": (255, 0, 200), "high_value": (0, 200, 255),
    "exit": (0, 0, 255), "staff_only": (160, 160, 160), "aisle": (200, 200, 0),
}
PERSON_COLOUR = (0, 220, 0)
OBJECT_COLOUR = (0, 140, 255)
# Camera frames are small (320x240 by default); the snapshot is drawn larger so labels stay legible.
MIN_SNAPSHOT_WIDTH = 640


class RenderError(ValueError):
    """A frame that cannot be decoded or a clip that cannot be encoded."""


def box_xyxy(box: BoundingBox) -> list[float]:
    """A FrameAnalysis box (ymin, xmin, ymax, xmax, 0..1) as [x1, y1, x2, y2], 0..1."""
    return [round(box.xmin, 4), round(box.ymin, 4), round(box.xmax, 4), round(box.ymax, 4)]


def detections(analysis: FrameAnalysis | None, zones: Sequence[Zone]) -> dict:
    """The snapshot's overlay as the manifest records it: boxes normalised 0..1 as [x1, y1, x2, y2]."""
    persons = [{"box": box_xyxy(p.box), "track_id": str(p.track_id), "score": round(p.score, 3)} for p in analysis.persons] if analysis else []
    objects = [{"label": o.label, "box": box_xyxy(o.box), "score": round(o.score, 3)} for o in analysis.objects] if analysis else []
    return {"persons": persons, "objects": objects,
            "zones": [{"id": z.id, "kind": z.kind, "polygon": [[round(x, 4), round(y, 4)] for x, y in z.polygon]} for z in zones]}


def decode(jpeg: bytes) -> np.ndarray:
    try:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise RenderError(f"JPEG rejected by the decoder ({exc.err})") from None
    if image is None:
        raise RenderError(f"JPEG cannot be decoded ({len(jpeg)} bytes)")
    return image


def _label(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    scale, thickness = 0.45, 1
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = max(0, min(x, image.shape[1] - w - 2))
    y = max(h + base, min(y, image.shape[0] - 1))
    cv2.rectangle(image, (x, y - h - base), (x + w + 2, y), colour, -1)
    cv2.putText(image, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def snapshot(frame: BufferedFrame, overlay: dict, quality: int = 90) -> bytes:
    """The frame with `overlay` (see `detections`) drawn: zones as thin polygons labelled with their
    kind, persons with their track id, objects with their label; JPEG."""
    image = decode(frame.jpeg)
    if image.shape[1] < MIN_SNAPSHOT_WIDTH:
        factor = MIN_SNAPSHOT_WIDTH / image.shape[1]
        image = cv2.resize(image, (MIN_SNAPSHOT_WIDTH, round(image.shape[0] * factor)), interpolation=cv2.INTER_LINEAR)
    height, width = image.shape[:2]

    def px(x: float, y: float) -> tuple[int, int]:
        return round(x * (width - 1)), round(y * (height - 1))

    for zone in overlay["zones"]:
        colour = ZONE_COLOURS.get(zone["kind"], (255, 255, 255))
        points = np.array([px(x, y) for x, y in zone["polygon"]], np.int32)
        cv2.polylines(image, [points], isClosed=True, color=colour, thickness=1, lineType=cv2.LINE_AA)
        # The label sits just inside the zone's topmost corner.
        x, y = px(*min(zone["polygon"], key=lambda p: (p[1], p[0])))
        _label(image, zone["kind"], x + 2, y + 14, colour)
    for kind, colour in (("objects", OBJECT_COLOUR), ("persons", PERSON_COLOUR)):
        for item in overlay[kind]:
            x1, y1, x2, y2 = item["box"]
            p1, p2 = px(x1, y1), px(x2, y2)
            cv2.rectangle(image, p1, p2, colour, 2)
            text = f"#{item['track_id']} {item['score']:.2f}" if kind == "persons" else f"{item['label']} {item['score']:.2f}"
            _label(image, text, p1[0], p1[1] - 2, colour)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RenderError("snapshot could not be encoded")
    return encoded.tobytes()


def measured_fps(frames: Sequence[BufferedFrame], default: float) -> float:
    """Frames per second of the window as sent (motion-gated cameras send fewer than their fps)."""
    if len(frames) < 2:
        return default
    span_s = (frames[-1].capture_time_ms - frames[0].capture_time_ms) / 1000
    if span_s <= 0:
        return default
    return round(min(60.0, max(1.0, (len(frames) - 1) / span_s)), 2)


def clip(frames: Sequence[BufferedFrame], fps: float) -> tuple[bytes, int]:
    """An MJPEG AVI of the frames at `fps` (frames that cannot be decoded are left out), and how
    many frames it holds. Frames are decoded one at a time as they are written, so a long 720p
    window never sits decoded in memory. OpenCV writes to a file only: a temporary one, read back and removed."""
    fd, path = tempfile.mkstemp(prefix="sw-clip-", suffix=".avi")
    os.close(fd)
    writer: cv2.VideoWriter | None = None
    written = 0
    try:
        size: tuple[int, int] = (0, 0)
        for frame in frames:
            try:
                image = decode(frame.jpeg)
            except RenderError:
                continue
            if writer is None:
                size = (image.shape[1], image.shape[0])
                writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
                if not writer.isOpened():
                    raise RenderError("OpenCV cannot open an MJPEG AVI writer")
            writer.write(image if (image.shape[1], image.shape[0]) == size else cv2.resize(image, size))
            written += 1
        if writer is None:
            raise RenderError("no frame of the window could be decoded")
        writer.release()
        writer = None
        with open(path, "rb") as fh:
            return fh.read(), written
    except cv2.error as exc:
        raise RenderError(f"clip could not be encoded ({exc.err})") from None
    finally:
        if writer is not None:
            writer.release()
        os.unlink(path)
