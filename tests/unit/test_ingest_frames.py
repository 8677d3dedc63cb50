"""What ingest does to a frame before it leaves the store: motion gate, heartbeats, privacy masks, face blur, JPEG bounds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.ingest.camera import CameraStats, CameraWorker
from services.ingest.frames import EncodedFrame, FaceBlurrer, FrameProcessor, FrameTooLarge, Heartbeat, encode_jpeg
from services.shared.contracts.frame_pb2 import Frame
from services.shared.storeconfig import Camera


def _scene(t: int, square_x: int | None = None, width: int = 320, height: int = 240) -> np.ndarray:
    """A still shop shelf with a little sensor noise; optionally a 30x60 'person' at square_x."""
    rng = np.random.default_rng(t)
    image: np.ndarray = np.full((height, width, 3), 110, np.uint8)
    cv2.rectangle(image, (20, 20), (120, 200), (40, 160, 200), -1)
    cv2.rectangle(image, (200, 40), (300, 120), (180, 60, 60), -1)
    image = cv2.add(image, rng.integers(0, 4, image.shape, dtype=np.uint8))
    if square_x is not None:
        cv2.rectangle(image, (square_x, 150), (square_x + 30, 210), (20, 20, 20), -1)
    return image


def _camera(**fields) -> Camera:
    return Camera(id="cam-t", source="file:x.mp4", fps=10, width=320, height=240, **fields)


def _sent(out: EncodedFrame | Heartbeat | None) -> EncodedFrame:
    """The frame the processor sent; fails the test when it held the image back instead."""
    assert isinstance(out, EncodedFrame), f"the processor held back a frame it should have sent ({out})"
    return out


def _image(out: EncodedFrame | Heartbeat | None) -> EncodedFrame | None:
    """The frame when its image is sent; None when the gate held it back (a heartbeat or nothing in its place)."""
    return out if isinstance(out, EncodedFrame) else None


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the processor sent a JPEG that does not decode"
    return image


def test_static_scene_sends_only_keyframes_and_motion_is_sent_with_hold():
    processor = FrameProcessor(_camera(motion={"keyframe_interval_s": 2.0, "hold_s": 1.0}))
    sent = {}
    for t in range(100):  # 10 s of a still scene at 10 fps
        out = _image(processor.process(_scene(t), t * 100))
        if out is not None:
            sent[t] = out
    assert sorted(sent) == [0, 20, 40, 60, 80]  # the first frame, then one every 2 s
    assert all(out.keyframe for t, out in sent.items() if t) and max(out.motion_score for t, out in sent.items() if t) < 0.003
    outputs: dict[int, EncodedFrame | None] = {}
    for t in range(100, 150):  # someone walks through for 2 s, then the scene is still again
        outputs[t] = _image(processor.process(_scene(t, square_x=10 + (t - 100) * 10 if t < 120 else None), t * 100))
    moving = [outputs[t] for t in range(100, 120)]
    assert all(out is not None and not out.keyframe and out.motion_score > 0.003 for out in moving)
    # Sent on for the hold time (1 s) after the last motion, then gated again.
    assert all(outputs[t] is not None for t in range(120, 130))
    last = outputs[149]
    assert [t for t in range(130, 150) if outputs[t] is not None] == [149] and last is not None and last.keyframe  # 2 s after the last


def test_while_the_gate_holds_frames_back_a_heartbeat_goes_out_every_heartbeat_s():
    processor = FrameProcessor(_camera(motion={"keyframe_interval_s": 2.0, "hold_s": 1.0, "heartbeat_s": 0.5}))
    out = {t: processor.process(_scene(t), t * 100) for t in range(45)}  # 4.5 s of a still scene at 10 fps
    heartbeats = sorted(t for t, o in out.items() if isinstance(o, Heartbeat))
    images = sorted(t for t, o in out.items() if isinstance(o, EncodedFrame))
    # Keyframes every 2 s; a heartbeat 0.5 s after any message, image or heartbeat, so never more than 0.5 s of silence.
    assert images == [0, 20, 40] and heartbeats == [5, 10, 15, 25, 30, 35]
    assert all(isinstance(o, Heartbeat) and o.motion_score < 0.003 for t, o in out.items() if t in heartbeats)
    # Motion: images only, then heartbeats again 0.5 s after the last image of the hold time.
    for t in range(45, 80):
        out[t] = processor.process(_scene(t, square_x=10 + (t - 45) * 10 if t < 55 else None), t * 100)
    assert all(isinstance(out[t], EncodedFrame) for t in range(45, 65))
    assert [t for t in range(65, 80) if out[t] is not None] == [69, 74, 79]
    assert all(isinstance(out[t], Heartbeat) for t in (69, 74, 79))


def test_heartbeats_follow_the_gate_clock_however_frames_are_spaced():
    processor = FrameProcessor(_camera(motion={"keyframe_interval_s": 60, "heartbeat_s": 0.5}))
    clocks = [0, 130, 260, 390, 520, 640, 800, 1010, 1020, 1500, 1600, 1700, 1800]
    kinds = {clock: type(processor.process(_scene(i), clock)).__name__ for i, clock in enumerate(clocks)}
    assert [c for c, kind in kinds.items() if kind == "Heartbeat"] == [520, 1020, 1600]
    # The clock going back (a file looped) starts afresh: the next frame is an image again.
    assert isinstance(processor.process(_scene(20), 100), EncodedFrame)


def test_a_heartbeat_no_shorter_than_the_keyframe_interval_never_fires():
    processor = FrameProcessor(_camera(motion={"keyframe_interval_s": 1.0, "heartbeat_s": 1.0}))
    assert not any(isinstance(processor.process(_scene(t), t * 100), Heartbeat) for t in range(50))


class _Queue:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def put(self, item, wait_unless=None) -> None:
        self.frames.append(Frame.FromString(item.value))
        item.on_done(None)


def test_a_heartbeat_is_published_without_an_image_in_the_sequence_of_frames():
    camera = _camera(motion={"keyframe_interval_s": 2.0, "heartbeat_s": 0.5})
    queue, stats = _Queue(), CameraStats(store_id="s", source=camera.source)
    worker = CameraWorker("s", camera, camera.source, queue, stats)  # type: ignore[arg-type]
    processor = FrameProcessor(camera)
    for t in range(30):
        worker._publish(processor, _scene(t), 1_700_000_000_000 + t * 100, t * 100)
    frames = queue.frames
    assert [f.sequence for f in frames] == list(range(len(frames)))  # heartbeats take sequence numbers: gaps still mean drops
    assert [f.capture_time_ms % 10_000 for f in frames if f.heartbeat] == [500, 1000, 1500, 2500]
    heartbeat = next(f for f in frames if f.heartbeat)
    assert heartbeat.jpeg == b"" and (heartbeat.width, heartbeat.height) == (0, 0) and heartbeat.store_id == "s" and heartbeat.camera_id == "cam-t"
    snapshot = stats.snapshot(queue_depth=0)
    assert snapshot["heartbeats"] == 4 and snapshot["keyframes"] == 2 and snapshot["frames_published"] == len(frames) == 6
    # Every sampled frame is either gated or published (as its image or a heartbeat).
    assert snapshot["frames_gated"] + snapshot["frames_published"] == 30 and snapshot["bytes_published"] == sum(len(f.jpeg) for f in frames)


def test_a_disabled_gate_sends_every_frame_with_its_motion_score():
    processor = FrameProcessor(_camera(motion={"enabled": False}))
    outputs = [_sent(processor.process(_scene(t, square_x=t * 5 if t > 10 else None), t * 100)) for t in range(30)]
    assert outputs[0].motion_score == 1.0 and outputs[5].motion_score < 0.003 < outputs[20].motion_score


def test_privacy_masks_black_out_the_area_and_motion_there_is_ignored():
    # The left half of the frame is private (a pharmacy counter, say).
    processor = FrameProcessor(_camera(privacy_masks=[[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]], motion={"keyframe_interval_s": 60}))
    image = _decode(_sent(processor.process(_scene(0), 0)).jpeg)
    assert image[:, :150].max() < 12 and image[:, 170:].mean() > 60
    for t in range(1, 40):  # someone moves inside the masked half only: nothing is sent
        assert _image(processor.process(_scene(t, square_x=20 + t * 2), t * 100)) is None
    out = processor.process(_scene(40, square_x=250), 4000)  # and outside it, it is
    assert out is not None and out.motion_score > 0.003


@pytest.fixture(scope="module")
def face_photo() -> np.ndarray:
    """A real portrait (Grace Hopper) from matplotlib's sample data, a dev dependency."""
    cbook = pytest.importorskip("matplotlib.cbook")
    image = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    assert image is not None, "matplotlib's grace_hopper.jpg does not decode"
    return cv2.resize(image, (320, 375), interpolation=cv2.INTER_AREA)[67:307]  # 320x240 around the face


def test_faces_are_pixelated_before_the_frame_leaves(face_photo):
    blurrer = FaceBlurrer()
    faces = blurrer.faces(face_photo)
    assert len(faces) == 1
    processor = FrameProcessor(_camera(blur_faces=True, motion={"enabled": False}))
    out = _sent(processor.process(face_photo.copy(), 0))
    sent = _decode(out.jpeg)
    assert out.faces_blurred == 1 and blurrer.faces(sent) == []
    x, y, w, h = faces[0]
    face_before, face_after = face_photo[y:y + h, x:x + w].astype(int), sent[y:y + h, x:x + w].astype(int)
    assert np.abs(face_before - face_after).mean() > 10  # the face is gone
    # The rest of the picture is untouched (beyond JPEG's own loss).
    assert np.abs(face_photo[:, :40].astype(int) - sent[:, :40].astype(int)).mean() < 4


def test_jpeg_quality_steps_down_to_fit_the_size_bound_then_refuses():
    noise = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    full, quality = encode_jpeg(noise, 90, 10, 1_000_000)
    assert quality == 90
    bounded, quality = encode_jpeg(noise, 90, 10, len(full) // 2)
    assert len(bounded) <= len(full) // 2 and quality < 90
    with pytest.raises(FrameTooLarge, match="over max_jpeg_bytes 4096"):
        encode_jpeg(noise, 90, 80, 4096)


def test_a_frame_too_large_for_its_bound_is_refused_by_the_processor():
    noise = np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    processor = FrameProcessor(_camera(max_jpeg_bytes=4096, min_jpeg_quality=80, motion={"enabled": False}))
    with pytest.raises(FrameTooLarge):
        processor.process(noise, 0)


def test_frames_are_resized_to_the_camera_resolution():
    processor = FrameProcessor(_camera(motion={"enabled": False}))
    out = _sent(processor.process(_scene(0, width=1280, height=720), 0))
    assert (out.width, out.height) == (320, 240)
    assert _decode(out.jpeg).shape == (240, 320, 3)
