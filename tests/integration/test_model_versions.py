"""Model versions on the local model server, managed as TF Serving manages them: swapped in under
load with no failed request, and a corrupt or incomplete version rejected while the last good one
keeps serving."""

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from devplatform.launcher import Platform
from modeling.presence import read_frames, train_and_export
from services.inference.client import ModelServerError, PredictionClient
from tests.conftest import platform_part, wait_for

pytestmark = pytest.mark.integration

CONFIG = """model_config_list {
  config { name: "presence" base_path: "/models/presence" model_platform: "tensorflow"
           model_version_policy { latest { num_versions: 1 } } }
}
"""


def model_status(address: str, name: str) -> dict[int, tuple[int, str]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}


@pytest.fixture
def versioned_server(tmp_path, sample_assets):
    models = tmp_path / "models"
    models.mkdir()
    (models / "models.config").write_text(CONFIG)
    train_and_export(sample_assets["empty"], models)
    with platform_part(tmp_path / "run", Platform.start_model_server, models_dir=models, model_poll_s=0.3) as platform:
        yield platform.env["SW_MODEL_SERVER"], models


def test_new_version_swaps_in_under_load_without_a_failed_request(versioned_server, sample_assets):
    address, models = versioned_server
    frames = {"images": read_frames(sample_assets["clip"], limit=4)}
    seen: list[int] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        client = PredictionClient(address, timeout_s=10)
        while not stop.is_set():
            try:
                seen.append(client.predict("presence", frames)[1])
            except Exception as exc:
                failures.append(exc)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(seen) > 20, 30, "requests served by version 1")
        train_and_export(sample_assets["empty"], models)  # version 2, published while requests flow
        wait_for(lambda: seen and seen[-1] == 2, 60, "version 2 serving")
        served_by_two = len(seen)
        wait_for(lambda: len(seen) > served_by_two + 20, 30, "more requests on version 2")
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    assert seen[0] == 1 and seen[-1] == 2
    first_two = seen.index(2)
    assert all(v == 2 for v in seen[first_two + 10 :]), "version 1 answered long after version 2 took over"
    status = model_status(address, "presence")
    assert status[2][0] == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status[1][0] == get_model_status_pb2.ModelVersionStatus.END


def test_corrupt_and_incomplete_versions_are_rejected_and_the_old_one_keeps_serving(versioned_server, sample_assets):
    address, models = versioned_server
    client = PredictionClient(address)
    frames = {"images": read_frames(sample_assets["clip"], limit=2)}
    good = client.predict("presence", frames)[0]["foreground"]

    corrupt = models / "presence" / "2"
    shutil.copytree(models / "presence" / "1", corrupt)
    (corrupt / "saved_model.pb").write_bytes(b"\x08\x96\x01 this is not a SavedModel")
    incomplete = models / "presence" / "3"
    shutil.copytree(models / "presence" / "1" / "variables", incomplete / "variables")

    def rejected() -> dict | None:
        status = model_status(address, "presence")
        return status if {2, 3} <= set(status) else None

    status = wait_for(rejected, 30, "versions 2 and 3 reported")
    end = get_model_status_pb2.ModelVersionStatus.END
    assert status[2][0] == end and "cannot load" in status[2][1] and "presence/2" in status[2][1]
    assert status[3][0] == end and "no saved_model.pb" in status[3][1]
    assert status[1][0] == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    outputs, version = client.predict("presence", frames)
    assert version == 1 and np.array_equal(outputs["foreground"], good)
    # Asking for the rejected version by number is a clear NOT_FOUND, with the reason it is not served.
    with pytest.raises(ModelServerError, match=r"NOT_FOUND Servable not found for request: Specific\(presence, 2\) \(model presence version 2: cannot load"):
        PredictionClient(address, model_missing_grace_s=0).predict("presence", frames, version=2)

    # Fixing the broken folder (here: replacing it with a good export) is picked up on the next poll.
    shutil.rmtree(incomplete)
    shutil.copytree(models / "presence" / "1", incomplete)
    time.sleep(0.1)
    wait_for(lambda: client.predict("presence", frames)[1] == 3, 30, "repaired version 3 serving")
