
import numpy as np
import pytest

from services.inference.zones import zone_masks, zone_maxima, zone_occupancy
from services.shared.settings import ServiceSettings, SettingsError, load_settings
from services.shared.storeconfig import load_store_config
from tests.unit.test_storeconfig import SAMPLE


def test_zone_occupancy_counts_covered_cells_inside_the_polygon():
    _, camera = load_store_config(SAMPLE).camera("cam-counter-1")
    masks = zone_masks(camera, rows=30, cols=40)
    grid = np.zeros((30, 40), np.float32)
    grid[20:28, 15:20] = 1.0  # a person standing in the customer zone
    result = {zone.id: (fraction, present) for zone, fraction, present in zone_occupancy(grid, masks)}
    assert result["counter-1-customer"][1] is True
    assert result["counter-1-staff"] == (0.0, False)
    assert result["aisle-east"] == (0.0, False)


def test_invalid_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("SW_HTTP_PORT", "99999")
    with pytest.raises(SettingsError, match="SW_HTTP_PORT"):
        load_settings(ServiceSettings)


def test_runtime_file_fills_addresses_below_real_env_vars(monkeypatch, tmp_path):
    from services.inference.__main__ import InferenceSettings

    runtime = tmp_path / "runtime.json"
    runtime.write_text('{"env": {"SW_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:40001", "SW_MODEL_SERVER": "127.0.0.1:40002", "SW_REDIS_URL": "redis://x"}}')
    monkeypatch.setenv("SW_RUNTIME_FILE", str(runtime))
    monkeypatch.setenv("SW_MODEL_SERVER", "127.0.0.1:9999")
    settings = load_settings(InferenceSettings)
    assert settings.kafka_bootstrap_servers == "127.0.0.1:40001"
    assert settings.model_server == "127.0.0.1:9999"  # an explicit variable wins


def test_unreadable_runtime_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SW_RUNTIME_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="SW_RUNTIME_FILE"):
        load_settings(ServiceSettings)


def test_every_zone_gets_cells_even_when_tiny():
    from services.shared.storeconfig import Camera

    camera = Camera(id="c", source="device:0", zones=[
        {"id": "tiny", "kind": "high_value", "polygon": [[0.50, 0.50], [0.51, 0.50], [0.51, 0.51]]},
        {"id": "line", "kind": "exit", "polygon": [[0.2, 0.2], [0.2, 0.2], [0.2, 0.2]]},
    ])
    for mask in zone_masks(camera, rows=30, cols=40):
        assert mask.mask.sum() >= 1, mask.zone.id


def test_zone_anomaly_is_the_worst_cell_inside_the_polygon(tmp_path):
    camera = load_store_config(SAMPLE).stores[0].cameras[0]
    score_map = np.full((16, 24), 0.5, np.float32)
    score_map[12, 10] = 3.0  # customer side of the counter
    worst = {zone.id: value for zone, value in zone_maxima(score_map, zone_masks(camera, 16, 24))}
    assert worst["counter-1-customer"] == 3.0
    assert worst["counter-1-staff"] == 0.5 and worst["aisle-east"] == 0.5


def test_anomaly_input_is_causal_and_restarts_after_a_gap():
    from services.inference.stages import BatchContext, CameraState, FrameWork
    from services.inference.stages.anomaly import AnomalyPlugin, history_length
    from services.shared.contracts.frame_pb2 import Frame
    from services.shared.storeconfig import AnomalyStage

    camera = load_store_config(SAMPLE).stores[0].cameras[0]
    plugin = AnomalyPlugin(AnomalyStage(kind="anomaly", model="anomaly"))
    history = history_length({"frames": [-1, 5, -1, -1, -1]}, "anomaly")  # from the served model's signature
    assert history == 4
    with pytest.raises(ValueError, match=r"input `frames` should be"):
        history_length({"images": [-1, -1, -1, 3]}, "anomaly")
    committed: dict[str, CameraState] = {}
    images = [np.full((8, 8, 3), v, np.uint8) for v in range(10, 80, 10)]

    def context() -> BatchContext:  # a new batch: working copies of the committed state
        return BatchContext(predict=None, input_shapes=None, masks_for=None, committed=committed)  # type: ignore[arg-type]

    def stack(i: int, ctx: BatchContext, time_ms: int | None = None) -> list[int]:
        frame = Frame(camera_id="cam", capture_time_ms=1000 + 100 * i if time_ms is None else time_ms)
        item = FrameWork(None, frame, camera, images[i], None)  # type: ignore[arg-type]
        return [int(f[0, 0, 0]) for f in plugin.stack(item, ctx, history)]

    ctx = context()
    assert stack(0, ctx) == [10] * 5
    assert [stack(i, ctx) for i in range(1, 5)][-1] == [10, 20, 30, 40, 50]
    committed.update(ctx.working)  # what handle() does once a batch succeeded
    # A batch that failed (model server down) and is retried sees the same past both times.
    assert stack(5, context()) == stack(5, context()) == [20, 30, 40, 50, 60]
    assert stack(6, context(), time_ms=60_000) == [70] * 5  # after a 59 s gap: no stale past
    assert stack(6, context(), time_ms=500) == [70] * 5  # older than the history (a replay): start afresh


def test_a_broken_yaml_file_is_reported_by_line_and_column_without_its_text(tmp_path, monkeypatch):
    """Users, POS keys and secrets files hold secrets: a YAML error says where, never what the line says."""
    from pydantic import BaseModel

    from services.pos.__main__ import PosSettings
    from services.shared.settings import SettingsError, load_yaml_file

    broken = tmp_path / "secrets.yaml"
    broken.write_text('shopify_secrets:\n  shop.myshopify.com: "shpss_TOPSECRET\nsquare_signature_key: [\n')
    with pytest.raises(SystemExit) as exc:
        load_yaml_file(broken, BaseModel, "users file")
    assert "line " in str(exc.value) and "TOPSECRET" not in str(exc.value)
    monkeypatch.setenv("SW_POS_SECRETS_FILE", str(broken))
    with pytest.raises(SettingsError) as exc:
        PosSettings()
    assert "line " in str(exc.value) and "TOPSECRET" not in str(exc.value)
