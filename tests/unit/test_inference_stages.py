"""Inference stage plugins without a model server: tiling and merging, tracks in zones with dwell, detection rate, pose crops."""

import math

import numpy as np
import pytest

from services.inference.stages import BatchContext, CameraState, FrameWork, new_analysis, plugins_for
from services.inference.stages.detector import DetectorPlugin, nms, tile_windows, to_frame
from services.inference.stages.pose import square_crop
from services.shared.contracts.frame_pb2 import Frame
from services.shared.storeconfig import Camera, DetectorStage, TileGrid

WIDTH, HEIGHT = 320, 240
ZONES = [
    {"id": "counter", "kind": "counter_customer", "polygon": [[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0]]},
    {"id": "shelf", "kind": "high_value", "polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]},
]


def _camera(**stage) -> Camera:
    return Camera(id="cam", source="device:0", zones=ZONES, stages=[{"kind": "detector", "model": "det", **stage}])


class FakeDetector:
    """Answers Predict like an Object Detection API model: `people(crop_shape)` -> [(box in frame pixels, score, class)]."""

    def __init__(self, people) -> None:
        self.people = people
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, model, inputs, expect):
        crops = inputs["input_tensor"]
        self.calls.append(crops.shape)
        boxes, scores, classes, counts = [], [], [], []
        for crop in crops:
            found = self.people(crop)
            rows = [[y0 / crop.shape[0], x0 / crop.shape[1], y1 / crop.shape[0], x1 / crop.shape[1]] for (x0, y0, x1, y1), _, _ in found]
            boxes.append((rows + [[0, 0, 0, 0]] * 5)[:5])
            scores.append(([s for _, s, _ in found] + [0.0] * 5)[:5])
            classes.append(([c for _, _, c in found] + [1] * 5)[:5])
            counts.append(len(found))
        return {"detection_boxes": np.array(boxes, np.float32), "detection_scores": np.array(scores, np.float32),
                "detection_classes": np.array(classes, np.float32), "num_detections": np.array(counts, np.float32)}, 3


def _frames(camera: Camera, count: int, step_ms: int = 100) -> list[FrameWork]:
    items = []
    for i in range(count):
        frame = Frame(store_id="s", camera_id=camera.id, capture_time_ms=1_000_000 + i * step_ms, sequence=i)
        items.append(FrameWork(None, frame, camera, np.zeros((HEIGHT, WIDTH, 3), np.uint8), new_analysis(frame, camera)))  # type: ignore[arg-type]
    return items


def _context(predict, committed=None) -> BatchContext:
    return BatchContext(predict, input_shapes=None, masks_for=None, committed={} if committed is None else committed)  # type: ignore[arg-type]


def test_tiles_cover_the_frame_with_overlap_and_equal_size():
    windows = tile_windows(320, 240, TileGrid(rows=2, cols=2, overlap=0.2))
    assert len({(x1 - x0, y1 - y0) for x0, y0, x1, y1 in windows}) == 1  # one shape: one request
    assert min(w[0] for w in windows) == 0 and max(w[2] for w in windows) == 320 and max(w[3] for w in windows) == 240
    (ax0, _, ax1, _), (bx0, _, _, _) = windows[0], windows[1]
    assert bx0 < ax1 and (ax1 - bx0) / (ax1 - ax0) == pytest.approx(0.2, abs=0.02)


def test_nms_merges_the_same_person_seen_in_two_tiles_per_class():
    boxes = np.array([[0.10, 0.10, 0.20, 0.40], [0.11, 0.10, 0.21, 0.41], [0.10, 0.10, 0.20, 0.40], [0.6, 0.1, 0.7, 0.4]])
    keep = nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 31, 1]))
    assert keep == [0, 2, 3]  # the second person box is the same person; the handbag (31) is its own class


def test_a_small_person_found_in_a_tile_lands_in_frame_coordinates():
    person = (250, 20, 262, 50)  # 30 px tall, far away, top right

    def people(crop):
        # Only a tile (smaller than the frame) shows the person large enough to be found.
        if crop.shape[1] == WIDTH:
            return []
        x0 = 320 - crop.shape[1]  # the right-hand column of tiles
        return [((person[0] - x0, person[1], person[2] - x0, person[3]), 0.8, 1)] if crop[0, 0, 0] == 1 else []

    grid = TileGrid(rows=2, cols=2, overlap=0.2)
    camera = _camera(tiles=grid.model_dump())
    items = _frames(camera, 2)
    fake = FakeDetector(people)
    for item in items:
        windows = tile_windows(WIDTH, HEIGHT, grid)
        x0, y0, _, _ = windows[1]  # mark the top-right tile's corner so the fake knows which tile it was given
        item.image[y0, x0] = (1, 1, 1)
    DetectorPlugin(camera.stages[0]).run(items, _context(fake))  # type: ignore[arg-type]
    assert {shape[1:] for shape in fake.calls} == {(HEIGHT, WIDTH, 3), (math.ceil(HEIGHT / 1.8), math.ceil(WIDTH / 1.8), 3)}
    [seen] = items[1].analysis.persons
    assert (seen.box.xmin * WIDTH, seen.box.ymin * HEIGHT, seen.box.xmax * WIDTH, seen.box.ymax * HEIGHT) == pytest.approx(person, abs=1)


def test_tracks_enter_zones_by_their_feet_with_dwell_and_leave_them():
    # A person walks from the counter (feet at y 0.9, x 0.2) to the shelf (x 0.8) over 2 s; a handbag lies on the counter.
    def people(crop):
        return [(walker_box, 0.9, 1), ((40, 200, 60, 230), 0.7, 31)]

    camera = _camera(min_score=0.5)
    plugin = DetectorPlugin(camera.stages[0])  # type: ignore[arg-type]
    committed: dict[str, CameraState] = {}
    counter_dwell, places = [], []
    for i, item in enumerate(_frames(camera, 21)):
        x = 0.2 + 0.03 * i
        walker_box = (int((x - 0.05) * WIDTH), int(0.5 * HEIGHT), int((x + 0.05) * WIDTH), int(0.9 * HEIGHT))
        ctx = _context(FakeDetector(people), committed)
        plugin.run([item], ctx)
        committed.update(ctx.working)
        zones = {z.zone_id: z for z in item.analysis.zones}
        counter_dwell.append(zones["counter"].max_dwell_ms)
        places.append(tuple(sorted(v.zone_id for p in item.analysis.persons for v in p.zones)))
        assert zones["counter"].object_count == (1 if i else 0)  # the handbag, from its second sighting
        assert zones["shelf"].person_present == ("shelf" in places[-1])
    assert places[0] == () and places[1] == ("counter",) and places[-1] == ("shelf",)
    assert counter_dwell[1] == 100  # first reported on its second sighting; the visit began at the first
    assert counter_dwell[9] == 900 and counter_dwell[-1] == 0
    [person] = item.analysis.persons
    [bag] = item.analysis.objects
    assert person.track_id != bag.track_id and bag.label == "handbag" and bag.class_id == 31
    # In the shelf zone since the frame its feet crossed x = 0.5: frame 10 (x = 0.2 + 0.03 * 10).
    assert [(v.zone_id, v.entered_ms) for v in person.zones] == [("shelf", 1_000_000 + 10 * 100)]


def test_an_object_new_on_the_counter_is_told_apart_from_one_that_lies_there():
    # A card reader lies on the counter all along; 3 s in, a bottle is put down beside it. Objects are new for 2 s.
    zones = [{**ZONES[0], "new_object_s": 2.0}, ZONES[1]]
    camera = Camera(id="cam", source="device:0", zones=zones, stages=[{"kind": "detector", "model": "det", "min_score": 0.5, "objects": ["cell_phone", "bottle"]}])
    plugin = DetectorPlugin(camera.stages[0])  # type: ignore[arg-type]
    committed: dict[str, CameraState] = {}
    seen = []
    for i, item in enumerate(_frames(camera, 60)):  # 6 s at 10 frames/s
        found = [((40, 200, 60, 230), 0.8, 77)] + ([((80, 200, 95, 235), 0.8, 44)] if i >= 30 else [])

        ctx = _context(FakeDetector(lambda crop, found=found: found), committed)
        plugin.run([item], ctx)
        committed.update(ctx.working)
        counter = next(z for z in item.analysis.zones if z.zone_id == "counter")
        seen.append((counter.object_count, counter.new_object_count, counter.newest_object_entered_ms))
    start = 1_000_000
    assert seen[10] == (1, 1, start) and seen[25] == (1, 0, start)  # the reader is new for 2 s, then part of the scene
    assert seen[31] == (2, 1, start + 3000)  # the bottle, from its second sighting, entered when first seen
    assert seen[59] == (2, 0, start + 3000)  # and is no longer new 2 s later; the newest arrival is still told


def test_between_detections_the_tracker_carries_people_on():
    camera = _camera(detect_fps=2)  # every 500 ms; frames come every 100 ms
    fake = FakeDetector(lambda crop: [((100, 120, 130, 220), 0.9, 1)])
    items = _frames(camera, 12)
    DetectorPlugin(camera.stages[0]).run(items, _context(fake))  # type: ignore[arg-type]
    assert len(fake.calls) == 1 and fake.calls[0][0] == 3  # frames 0, 5 and 10, in one request
    detected = [[p.detected for p in item.analysis.persons] for item in items]
    assert detected[5] == [True] and detected[6] == [False] and detected[10] == [True]
    assert [m.name for m in items[5].analysis.models] == ["det"] and not items[6].analysis.models


def test_stages_are_validated_and_ordered():
    camera = Camera(id="c", source="device:0", stages=[{"kind": "anomaly", "model": "a"}, {"kind": "pose"}, {"kind": "detector"}])
    assert [p.KIND for p in plugins_for(camera)] == ["detector", "pose", "anomaly"]
    with pytest.raises(ValueError, match="pose stage needs a detector stage"):
        Camera(id="c", source="device:0", stages=[{"kind": "pose"}])
    with pytest.raises(ValueError, match="more than one detector stage"):
        Camera(id="c", source="device:0", stages=[{"kind": "detector"}, {"kind": "detector", "model": "other"}])
    with pytest.raises(ValueError, match=r"unknown COCO class\(es\) \['purse'\]"):
        DetectorStage(kind="detector", objects=["handbag", "purse"])
    with pytest.raises(ValueError, match="were replaced by `stages`"):
        Camera(id="c", source="device:0", detector_model="detector")  # type: ignore[call-arg]
    assert Camera.inference_fields() == {"stages", "zones", "lines"}


def test_pose_crops_are_square_around_the_person():
    x0, y0, side = square_crop((0.4, 0.2, 0.5, 0.8), WIDTH, HEIGHT)  # 32 x 144 px
    assert side == round(144 * 1.3) and x0 + side / 2 == pytest.approx(0.45 * WIDTH, abs=1) and y0 + side / 2 == pytest.approx(0.5 * HEIGHT, abs=1)


def test_a_person_cut_by_a_tile_edge_is_left_to_the_neighbour_or_the_whole_frame():
    window = (100, 0, 278, 133)  # a tile in the middle of the top row: its left, right and bottom edges are shared
    boxes = np.array([[0.2, 0.0, 0.6, 0.2],   # touches the left edge: cut in two
                      [0.2, 0.3, 0.6, 0.5],   # inside
                      [0.0, 0.3, 0.5, 0.5],   # touches the top edge, which is the frame's own: kept
                      [0.5, 0.6, 1.0, 0.8]])  # touches the bottom edge, shared with the tile below: cut
    frame, keep = to_frame(window, 320, 240, boxes)
    assert keep.tolist() == [False, True, True, False]
    assert frame[1] == pytest.approx([(100 + 0.3 * 178) / 320, 0.2 * 133 / 240, (100 + 0.5 * 178) / 320, 0.6 * 133 / 240])
    _, keep_whole = to_frame((0, 0, 320, 240), 320, 240, boxes)
    assert keep_whole.all()  # the whole frame has no neighbours


def test_a_person_the_detector_misses_once_stays_present():
    camera = _camera()
    seen = [True, True, True, False, True]  # the detector misses the person on the fourth frame
    committed: dict[str, CameraState] = {}
    reported = []
    for item, found in zip(_frames(camera, 5), seen, strict=True):
        ctx = _context(FakeDetector(lambda crop, found=found: [((20, 150, 60, 230), 0.9, 1)] if found else []), committed)
        DetectorPlugin(camera.stages[0]).run([item], ctx)  # type: ignore[arg-type]
        committed.update(ctx.working)
        reported.append([(p.track_id, p.detected) for p in item.analysis.persons])
        assert next(z for z in item.analysis.zones if z.zone_id == "counter").person_present == bool(reported[-1])
    track = reported[1][0][0]
    assert reported[1:] == [[(track, True)], [(track, True)], [(track, False)], [(track, True)]]


def test_after_a_silence_tracks_start_afresh_with_new_ids():
    camera = _camera()
    plugin = DetectorPlugin(camera.stages[0])  # type: ignore[arg-type]
    committed: dict[str, CameraState] = {}
    fake = FakeDetector(lambda crop: [((20, 150, 60, 230), 0.9, 1)])
    ids = []
    for t_ms in (0, 100, 200, 60_000, 60_100, 30_000, 30_100):  # a minute's outage, then a replay of older frames
        frame = Frame(store_id="s", camera_id="cam", capture_time_ms=1_000_000 + t_ms)
        item = _frames(camera, 1)[0]
        item.frame = frame
        ctx = _context(fake, committed)
        plugin.run([item], ctx)
        committed.update(ctx.working)
        ids.append([p.track_id for p in item.analysis.persons])
        dwell = next(z for z in item.analysis.zones if z.zone_id == "counter").max_dwell_ms
        assert dwell <= 200  # never counts the outage as time spent at the counter
    first, second, third = ids[1][0], ids[4][0], ids[6][0]
    assert ids[0] == [] and ids[2] == [first] and ids[3] == [] and ids[5] == []
    assert first < second < third  # ids never repeat on a camera


def test_pose_keypoints_land_in_frame_coordinates_and_small_people_are_skipped():
    from services.inference.stages.pose import PosePlugin
    from services.shared.storeconfig import PoseStage

    camera = _camera()
    item = _frames(camera, 1)[0]
    tall, small = (0.40, 0.20, 0.50, 0.80), (0.80, 0.10, 0.82, 0.15)  # 144 px and 12 px tall
    for track_id, box in ((7, tall), (8, small)):
        item.analysis.persons.add(track_id=track_id, box={"xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3]})
        item.persons.append((track_id, box, True))
    calls = []

    def predict(model, inputs, expect):
        calls.append(inputs["images"].shape)
        points = np.zeros((len(inputs["images"]), 17, 3), np.float32)
        points[:, 0] = (0.5, 0.5, 0.9)  # nose at the crop's centre
        points[:, 1] = (0.0, 0.0, 0.8)  # left eye at its top-left corner
        return {"keypoints": points}, 2

    ctx = BatchContext(predict, lambda model: {"images": [-1, 192, 192, 3]}, None, {})  # type: ignore[arg-type]
    PosePlugin(PoseStage(kind="pose")).run([item], ctx)
    assert calls == [(1, 192, 192, 3)]  # the 12 px person is too small for keypoints
    tall_person, small_person = item.analysis.persons
    nose, eye = tall_person.keypoints[0], tall_person.keypoints[1]
    assert (nose.name, nose.x, nose.y) == ("nose", pytest.approx(0.45, abs=0.01), pytest.approx(0.5, abs=0.01))
    x0, y0, _ = square_crop(tall, WIDTH, HEIGHT)
    assert (eye.x, eye.y) == (pytest.approx(x0 / WIDTH), pytest.approx(y0 / HEIGHT)) and not small_person.keypoints


def test_a_pose_detector_fills_keypoints_and_the_pose_stage_leaves_those_persons_alone():
    """The opt-in YOLO11n-pose profile answers keypoints with each person: they land in frame
    coordinates, and the pose stage does not crop and ask for them again."""
    from services.inference.stages.pose import PosePlugin
    from services.shared.storeconfig import PoseStage

    def with_keypoints(model, inputs, expect):
        result, version = FakeDetector(lambda crop: [((128, 72, 192, 216), 0.9, 1)])(model, inputs, expect)
        n = len(inputs["input_tensor"])
        points = np.zeros((n, 5, 17, 2), np.float32)
        points[:, 0, 0] = (0.2, 0.5)  # nose: y 0.2, x 0.5 of the detector's input
        result["detection_keypoints"], result["detection_keypoint_scores"] = points, np.full((n, 5, 17), 0.7, np.float32)
        return result, version

    camera = Camera(id="cam", source="device:0", zones=ZONES, stages=[{"kind": "detector", "model": "det", "min_score": 0.5}, {"kind": "pose"}])
    plugin = DetectorPlugin(camera.stages[0])  # type: ignore[arg-type]
    committed: dict[str, CameraState] = {}
    pose_calls = []
    for item in _frames(camera, 2):
        ctx = BatchContext(with_keypoints, lambda model: {"images": [-1, 192, 192, 3]}, None, committed)  # type: ignore[arg-type]
        plugin.run([item], ctx)
        committed.update(ctx.working)

        def pose_predict(model, inputs, expect):
            pose_calls.append(len(inputs["images"]))
            return {"keypoints": np.zeros((len(inputs["images"]), 17, 3), np.float32)}, 1

        PosePlugin(PoseStage(kind="pose")).run([item], BatchContext(pose_predict, ctx.input_shapes, None, {}))  # type: ignore[arg-type]
    [person] = item.analysis.persons  # reported from its second sighting
    nose = person.keypoints[0]
    assert len(person.keypoints) == 17 and (nose.name, nose.x, nose.y, nose.score) == ("nose", 0.5, pytest.approx(0.2), pytest.approx(0.7))
    assert pose_calls == []


def test_a_register_needs_a_camera_that_can_see_people():
    from services.shared.storeconfig import Store

    store = {"id": "s", "timezone": "UTC", "registers": [{"id": "r", "camera": "cam", "customer_zones": ["counter"]}]}
    with pytest.raises(ValueError, match="has no detector or presence stage"):
        Store(**store, cameras=[{"id": "cam", "source": "device:0", "zones": ZONES, "stages": [{"kind": "anomaly", "model": "a"}]}])
    Store(**store, cameras=[{"id": "cam", "source": "device:0", "zones": ZONES, "stages": [{"kind": "detector"}]}])


def test_a_failing_pose_model_leaves_persons_without_keypoints_instead_of_losing_the_frame():
    from services.inference.client import ModelServerError
    from services.inference.stages.pose import PosePlugin
    from services.shared.storeconfig import PoseStage

    item = _frames(_camera(), 1)[0]
    item.analysis.persons.add(track_id=7, box={"xmin": 0.4, "ymin": 0.2, "xmax": 0.5, "ymax": 0.8})
    item.persons.append((7, (0.4, 0.2, 0.5, 0.8), True))

    def refuse(model, inputs, expect):
        raise ModelServerError("model server: NOT_FOUND pose")

    PosePlugin(PoseStage(kind="pose")).run([item], BatchContext(refuse, lambda model: {"images": [-1, 192, 192, 3]}, None, {}))  # type: ignore[arg-type]
    assert [p.track_id for p in item.analysis.persons] == [7] and not item.analysis.persons[0].keypoints


class FakeMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


class FlakyClient:
    """A model server that is down for the first `outages` calls, then answers like FakeDetector."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.detector = FakeDetector(lambda crop: [((20, 150, 60, 230), 0.9, 1)])

    def predict(self, model, inputs, signature="serving_default", version=None):
        from services.shared.kafka import RetryableError

        if self.outages:
            self.outages -= 1
            raise RetryableError("model server down")
        return self.detector(model, inputs, {})

    def input_shapes(self, model, signature="serving_default"):
        return {}, 3


def test_a_batch_retried_after_an_outage_leaves_the_same_state_as_one_that_never_failed():
    import cv2

    from services.inference.service import FrameAnalyzer
    from services.shared.kafka import RetryableError
    from services.shared.storeconfig import StoreConfig

    config = StoreConfig(chain="c", stores=[{"id": "s", "timezone": "UTC", "cameras": [_camera().model_dump()]}])
    jpeg = cv2.imencode(".jpg", np.zeros((HEIGHT, WIDTH, 3), np.uint8))[1].tobytes()

    def batch(start: int) -> list:
        return [FakeMessage(Frame(store_id="s", camera_id="cam", capture_time_ms=1_000_000 + 100 * i, sequence=i, jpeg=jpeg).SerializeToString())
                for i in range(start, start + 3)]

    def run(outages: int) -> tuple[list[bytes], dict]:
        analyzer = FrameAnalyzer(config, client=FlakyClient(outages))  # type: ignore[arg-type]
        outputs = []
        for start in (0, 3):
            while True:
                try:
                    outcome = analyzer.handle(batch(start))
                    assert not outcome.poison
                    outputs += [o.value for o in outcome.outputs]
                    break
                except RetryableError:
                    continue  # what ConsumeLoop does: the same batch again, nothing committed
        state = analyzer.states["cam"]
        return outputs, {"tracks": [(t.track_id, t.hits, t.last_seen_ms) for t in state.tracker.tracks], "visits": dict(state.visits)}  # type: ignore[union-attr]

    clean, flaky = run(outages=0), run(outages=2)
    assert clean == flaky  # same FrameAnalysis bytes, same track ids, hits and zone visits
    assert clean[1]["tracks"] and clean[1]["visits"]


class CountingClient(FlakyClient):
    """A model server that never fails, counting Predict calls; `refuse` makes it reject requests as the server would a bad one."""

    def __init__(self) -> None:
        super().__init__(outages=0)
        self.calls = 0
        self.refuse = False

    def predict(self, model, inputs, signature="serving_default", version=None):
        from services.inference.client import ModelServerError

        self.calls += 1
        if self.refuse:
            raise ModelServerError("model server: INVALID_ARGUMENT det")
        return super().predict(model, inputs, signature, version)


class JudgingAnalyzer:
    """A FrameAnalyzer whose poison verdicts are kept, as ConsumeLoop would before the DLQ."""

    def __init__(self, analyzer) -> None:
        self.analyzer = analyzer
        self.states = analyzer.states
        self.errors: list[str] = []

    def handle(self, messages):
        outcome = self.analyzer.handle(messages)
        self.errors += [poison.reason for poison in outcome.poison]
        return outcome.outputs


def _analyzer():
    from services.inference.service import FrameAnalyzer
    from services.shared.storeconfig import StoreConfig

    config = StoreConfig(chain="c", stores=[{"id": "s", "timezone": "UTC", "cameras": [_camera().model_dump()]}])
    client = CountingClient()
    analyzer = JudgingAnalyzer(FrameAnalyzer(config, client=client))  # type: ignore[arg-type]
    return analyzer, client, analyzer


def _message(sequence: int, t_ms: int, heartbeat: bool = False, jpeg: bytes | None = None) -> FakeMessage:
    import cv2

    if jpeg is None and not heartbeat:
        jpeg = cv2.imencode(".jpg", np.zeros((HEIGHT, WIDTH, 3), np.uint8))[1].tobytes()
    return FakeMessage(Frame(store_id="s", camera_id="cam", capture_time_ms=t_ms, sequence=sequence, jpeg=jpeg or b"", heartbeat=heartbeat).SerializeToString())


def _analyses(outputs) -> list:
    from services.shared import topics
    from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis

    return [FrameAnalysis.FromString(o.value) for o in outputs if o.topic == topics.DETECTIONS]


def test_a_heartbeat_repeats_the_last_analysis_at_its_own_time_without_a_model():
    analyzer, client, _ = _analyzer()
    t0 = 1_000_000
    first = _analyses(analyzer.handle([_message(i, t0 + 100 * i) for i in range(3)] + [_message(3, t0 + 700, heartbeat=True)]))
    assert [a.frame_sequence for a in first] == [0, 1, 2, 3] and [a.heartbeat for a in first] == [False, False, False, True]
    last, answer = first[2], first[3]
    counter = next(z for z in last.zones if z.zone_id == "counter")
    assert counter.person_count == 1 and last.persons and last.models  # something worth repeating
    calls, tracks = client.calls, [(t.track_id, t.hits, t.last_seen_ms) for t in analyzer.states["cam"].tracker.tracks]
    later = _analyses(analyzer.handle([_message(4, t0 + 1400, heartbeat=True)]))[0]
    assert client.calls == calls  # no model ran
    assert [(t.track_id, t.hits, t.last_seen_ms) for t in analyzer.states["cam"].tracker.tracks] == tracks
    for heartbeat, t_ms, sequence in ((answer, t0 + 700, 3), (later, t0 + 1400, 4)):
        assert heartbeat.heartbeat and heartbeat.capture_time_ms == t_ms and heartbeat.frame_sequence == sequence
        assert list(heartbeat.persons) == list(last.persons) and list(heartbeat.models) == list(last.models)
        assert list(heartbeat.objects) == list(last.objects) and heartbeat.anomaly_score == last.anomaly_score
        # The same zones, with whoever stands in them there for longer.
        for zone, before in zip(heartbeat.zones, last.zones, strict=True):
            grown = t_ms - last.capture_time_ms if before.person_count else 0
            assert (zone.zone_id, zone.person_count, list(zone.track_ids)) == (before.zone_id, before.person_count, list(before.track_ids))
            assert zone.max_dwell_ms == before.max_dwell_ms + grown
    # The next image is analysed as usual, and heartbeats repeat it from then on.
    image = _analyses(analyzer.handle([_message(5, t0 + 1500), _message(6, t0 + 2000, heartbeat=True)]))
    assert client.calls > calls and not image[0].heartbeat and image[1].heartbeat and list(image[1].persons) == list(image[0].persons)


def test_a_heartbeat_with_no_analysis_to_repeat_has_no_zones():
    analyzer, client, loop = _analyzer()
    [answer] = _analyses(analyzer.handle([_message(7, 2_000_000, heartbeat=True)]))  # e.g. inference restarted
    assert (answer.store_id, answer.camera_id, answer.capture_time_ms, answer.frame_sequence, answer.heartbeat) == ("s", "cam", 2_000_000, 7, True)
    assert not answer.zones and not answer.persons and not answer.models  # coverage unknown, not "nobody"
    assert client.calls == 0 and loop.errors == []


def test_a_dead_lettered_frame_is_never_the_analysis_a_heartbeat_repeats():
    analyzer, client, loop = _analyzer()
    t0 = 3_000_000
    good = _analyses(analyzer.handle([_message(0, t0), _message(1, t0 + 100), _message(2, t0 + 600, heartbeat=True)]))
    assert good[2].zones and good[2].heartbeat
    # A corrupt JPEG goes to the DLQ; the heartbeat after it cannot vouch for a scene nobody analysed.
    answers = _analyses(analyzer.handle([_message(3, t0 + 700, jpeg=b"\xff\xd8 not really a jpeg"), _message(4, t0 + 1200, heartbeat=True)]))
    assert [a.frame_sequence for a in answers] == [4] and not answers[0].zones
    # So does a frame the model server refuses.
    analyzer.handle([_message(5, t0 + 1300)])
    client.refuse = True
    outputs = analyzer.handle([_message(6, t0 + 1400), _message(7, t0 + 1900, heartbeat=True)])
    assert len(outputs) == 1 and not _analyses(outputs)[0].zones
    assert analyzer.states["cam"].last_analysis.frame_sequence == 5
    # A frame without an image that is no heartbeat is still bad input.
    analyzer.handle([FakeMessage(Frame(store_id="s", camera_id="cam", capture_time_ms=t0 + 2000, sequence=8).SerializeToString())])
    errors = loop.errors
    assert len(errors) == 3 and "cannot be decoded" in errors[0] and "INVALID_ARGUMENT" in errors[1] and "missing required field(s) jpeg" in errors[2]


def test_a_person_walking_through_a_door_line_is_one_crossing_in_the_frame_they_cross_it():
    door = {"id": "door", "kind": "door", "points": [(0.0, 0.6), (1.0, 0.6)], "inside": (0.5, 0.3)}
    camera = Camera(id="cam", source="device:0", zones=ZONES, stages=[{"kind": "detector", "model": "det"}], lines=[door])
    items = _frames(camera, 12)
    feet = [int(HEIGHT * (0.9 - 0.05 * i)) for i in range(12)]  # walking up the picture, into the store

    def predict(model, inputs, expect):
        frame = len(calls)
        calls.append(frame)
        y1 = feet[frame]
        return FakeDetector(lambda crop: [((140, y1 - 80, 180, y1), 0.9, 1)])(model, inputs, expect)

    calls: list[int] = []
    plugin = DetectorPlugin(camera.stage("detector"))  # type: ignore[arg-type]
    ctx = _context(predict)
    for item in items:
        plugin.run([item], ctx)
    crossed = [(i, c.line_id, c.direction, c.line_kind) for i, item in enumerate(items) for c in item.analysis.line_crossings]
    # Feet at 0.6 +- the margin change no side; the second frame in a row clearly above it counts, once.
    first_inside = next(i for i, y in enumerate(feet) if y / HEIGHT < 0.59)
    assert crossed == [(first_inside + 1, "door", "in", "door")]
    track = items[-1].analysis.persons[0].track_id
    assert items[first_inside + 1].analysis.line_crossings[0].track_id == track


def test_a_heartbeat_never_repeats_the_line_crossings_of_the_frame_it_repeats():
    from services.inference.service import heartbeat_analysis

    camera = _camera()
    state = CameraState()
    last = new_analysis(Frame(store_id="s", camera_id="cam", capture_time_ms=1000, sequence=1), camera)
    last.line_crossings.add(line_id="door", track_id=7, direction="in", line_kind="door")
    state.last_analysis, state.last_sequence = last, 1
    answer = heartbeat_analysis(Frame(store_id="s", camera_id="cam", capture_time_ms=1500, sequence=2, heartbeat=True), camera, state)
    assert answer.heartbeat and not answer.line_crossings
