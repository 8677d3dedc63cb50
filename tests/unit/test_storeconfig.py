from pathlib import Path
from typing import cast

import pytest
import yaml

from services.shared.storeconfig import StoreConfigError, load_store_config

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "sample-store.yaml"


def _write(tmp_path, mutate):
    raw = yaml.safe_load(SAMPLE.read_text())
    mutate(raw)
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sample_store_config_loads():
    config = load_store_config(SAMPLE)
    store, camera = config.camera("cam-counter-1")
    assert store.id == "store-001"
    assert [r.id for _, r in config.registers_watched_by("cam-counter-1")] == ["reg-1"]
    assert config.resolve_source(camera).endswith("var/sample/counter.mp4")


@pytest.mark.parametrize(
    "mutate, field, reason",
    [
        (lambda r: r["stores"][0]["registers"][0].update(customer_zones=["nowhere"]), "stores.0", "zone 'nowhere' is not a zone of camera"),
        (lambda r: r["stores"][0]["cameras"][0]["zones"][0].update(polygon=[[0, 0], [2, 0], [0, 1]]), "stores.0.cameras.0.zones.0.polygon", "outside the frame"),
        (lambda r: r["stores"][0].update(timezone="Mars/Olympus"), "stores.0.timezone", "unknown IANA time zone"),
        (lambda r: r["stores"][0]["cameras"][0].update(fps=0), "stores.0.cameras.0.fps", "greater than 0"),
        (lambda r: r["stores"][0]["cameras"][0].update(source="ftp://cam"), "stores.0.cameras.0.source", "must start with"),
        (lambda r: r["stores"][0]["cameras"][0].update(colour="red"), "stores.0.cameras.0.colour", "Extra inputs"),
        (lambda r: r["stores"][0]["registers"].append(dict(r["stores"][0]["registers"][0])), "stores.0", "duplicate register id(s) ['reg-1']"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"name": "cleaners", "start": "21:00", "end": "21:00"}]), "stores.0.staff_shifts.0",
         "end: equals start 21:00:00"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"name": "cleaners", "start": "21:00", "end": "25:00"}]), "stores.0.staff_shifts.0.end",
         "valid time"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"name": "cleaners", "days": ["monday"], "start": "21:00", "end": "22:00"}]),
         "stores.0.staff_shifts.0.days.0", "'mon'"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"name": "x", "days": ["mon"], "dates": ["2026-12-27"], "start": "06:00", "end": "09:00"}]),
         "stores.0.staff_shifts.0", "days, dates: give the weekdays"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"name": "cash-up", "start": "21:00", "end": "21:30", "cameras": ["cam-nowhere"]}]),
         "stores.0", "staff_shifts.0.cameras: ['cam-nowhere'] not camera(s) of this store"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"name": "crew", "start": "21:00", "end": "21:30", "max_persons": 0}]),
         "stores.0.staff_shifts.0.max_persons", "greater than or equal to 1"),
        (lambda r: r["stores"][0].update(staff_shifts=[{"start": "21:00", "end": "21:30"}]), "stores.0.staff_shifts.0.name", "Field required"),
        (lambda r: r.update(rules={"loitering": {"high_value_alone_s": 0}}), "rules.loitering.high_value_alone_s", "greater than 0"),
        (lambda r: r.update(rules={"return_abuse": {"fast_period_h": -1}}), "rules.return_abuse.fast_period_h", "greater than or equal to 0"),
    ],
)
def test_bad_config_names_the_field(tmp_path, mutate, field, reason):
    with pytest.raises(StoreConfigError) as err:
        load_store_config(_write(tmp_path, mutate))
    assert field in str(err.value)
    assert reason in str(err.value)


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(StoreConfigError, match="cannot read"):
        load_store_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stores: [unclosed")
    with pytest.raises(StoreConfigError, match="not valid YAML"):
        load_store_config(bad)


def test_inference_takes_a_camera_added_to_the_config_without_a_restart(tmp_path):
    """Ingest may read the edit first; inference re-reads the file rather than dead-letter the new camera's frames."""
    import cv2
    import numpy as np

    from services.inference.client import PredictionClient
    from services.inference.service import FrameAnalyzer
    from services.shared.contracts.frame_pb2 import Frame
    from services.shared.storeconfig import StoreConfigWatcher

    raw = yaml.safe_load(SAMPLE.read_text())
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_store_config(path)
    # decode_frame never calls the model server: no client is needed.
    analyzer = FrameAnalyzer(config, client=cast(PredictionClient, None), watcher=StoreConfigWatcher(path, config))
    raw["stores"][0]["cameras"].append({"id": "cam-new", "source": "rtsp://10.0.0.9/stream"})
    path.write_text(yaml.safe_dump(raw))
    jpeg = cv2.imencode(".jpg", np.zeros((24, 32, 3), np.uint8))[1].tobytes()
    message = type("Msg", (), {"value": lambda self: Frame(store_id="store-001", camera_id="cam-new", jpeg=jpeg).SerializeToString()})()
    _, camera, image = analyzer.decode_frame(message)
    assert camera.id == "cam-new" and image is not None and image.shape == (24, 32, 3)


def test_staff_shifts_load(tmp_path):
    shifts = [{"name": "cleaners", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "21:00", "end": "22:30"},
              {"name": "stock-take", "dates": ["2026-12-27"], "start": "22:00", "end": "04:00", "max_persons": 6}]
    config = load_store_config(_write(tmp_path, lambda r: r["stores"][0].update(staff_shifts=shifts)))
    cleaners, stock_take = config.stores[0].staff_shifts
    assert cleaners.days == ("mon", "tue", "wed", "thu", "fri") and str(cleaners.end) == "22:30:00"
    assert stock_take.days is None and stock_take.max_persons == 6 and str(stock_take.dates[0]) == "2026-12-27"


def test_new_rule_settings_layer_through_chain_store_register_and_zone(tmp_path):
    def mutate(r):
        r["rules"] = {"loitering": {"high_value_alone_s": 200, "exit_cue_s": 30}, "return_abuse": {"fast_period_h": 36}}
        store = r["stores"][0]
        store["rules"] = {"return_abuse": {"fast_min_stores": 4}, "loitering": {"exit_alone_s": 90}}
        store["registers"][0]["rules"] = {"return_abuse": {"fast_period_h": 24}}
        store["cameras"][0]["zones"][0]["rules"] = {"loitering": {"high_value_cue_s": 15, "exit_cue_s": 10}}

    config = load_store_config(_write(tmp_path, mutate))
    store = config.stores[0]
    camera, zone = store.cameras[0], store.cameras[0].zones[0]
    at_store = config.rules_for(store.id)
    assert (at_store.loitering.high_value_alone_s, at_store.loitering.exit_alone_s, at_store.loitering.exit_cue_s) == (200, 90, 30)
    assert (at_store.return_abuse.fast_period_h, at_store.return_abuse.fast_min_stores) == (36, 4)
    assert config.rules_for(store.id, register_id=store.registers[0].id).return_abuse.fast_period_h == 24
    in_zone = config.rules_for(store.id, camera_id=camera.id, zone_id=zone.id).loitering
    assert (in_zone.high_value_cue_s, in_zone.exit_cue_s, in_zone.high_value_alone_s, in_zone.exit_alone_s, in_zone.high_value_s) == (15, 10, 200, 90, 900)
