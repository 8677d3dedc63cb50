"""The demo's load with the Kafka broker killed (SIGKILL, as a crash) and restarted in the middle:
every service recovers on its own, no POS event, frame or alert is lost, and each alert is still
delivered once. The store config is written open for the moment the test runs, so only the refund
with nobody at the counter raises an alert at any hour."""

import json
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from devplatform.demo import SAMPLE_DIR, run_demo
from devplatform.expected import store_config_for_the_moment
from devplatform.launcher import ROOT, Platform, free_port, http_ready
from services.shared import topics
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.frame_pb2 import Frame
from services.shared.contracts.pos_event_pb2 import PosEvent
from tests.conftest import consume_all

pytestmark = pytest.mark.e2e

OUTAGE_S = 5.0


def test_broker_killed_and_restarted_under_the_demos_load_loses_nothing(tmp_path):
    config = store_config_for_the_moment(ROOT / "config" / "sample-store.yaml", tmp_path / "store-open.yaml", store_open=True, now=datetime.now(UTC))
    platform = Platform(run_dir=tmp_path / "run", api_port=free_port(), store_config=config)
    outage: dict[str, float] = {}
    errors: list[BaseException] = []

    def bounce() -> None:
        try:
            platform.kill_component("broker")
            outage["killed"] = time.monotonic()
            time.sleep(OUTAGE_S)
            platform.restart_broker("broker")
            outage["answering"] = time.monotonic()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    bouncer = threading.Thread(target=bounce)

    def echo(line: str) -> None:
        # Right after the till's first sale reached Kafka: frames, detections and POS all in flight.
        if line.lstrip().startswith("POS ") and not bouncer.is_alive() and "killed" not in outage:
            bouncer.start()

    result = run_demo(platform, echo=echo, keep_running=True)
    try:
        script = json.loads((SAMPLE_DIR / "pos-script.json").read_text())
        bouncer.join(120)
        assert not errors, errors
        assert "killed" in outage and "answering" in outage, "the broker was never bounced"
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        # Every service came back by itself: ready, and still the process the launcher started.
        for name in ("correlator", "inference", "notifier", "recorder", "api", "ingest"):
            assert http_ready(platform.components[name]["http"] + "/readyz"), f"{name} not ready after the restart"
        status = platform.status()
        assert all(comp["alive"] for comp in status.values()), {n: c["alive"] for n, c in status.items()}

        # POS: every event the till posted is on sw.pos.v1. A till's retry after a 503 whose first
        # attempt the broker did store late may put it there twice: at least once, and the
        # correlator's deterministic alert ids make the copy harmless.
        posted = {event["event_id"] for event in result.posted}
        assert posted == {event["event_id"] for event in script["events"]}
        on_topic = [PosEvent.FromString(m.value()).event_id for m in consume_all(bootstrap, topics.POS, timeout=60, idle=5)]
        assert set(on_topic) == posted

        # Frames: ingest dropped none, every published frame is on sw.frames.v1, and inference
        # analysed every one of them (nothing skipped over the outage).
        cameras = httpx.get(platform.components["ingest"]["http"] + "/cameras", timeout=5).json()["cameras"]
        for camera_id, camera in cameras.items():
            assert not any(camera["dropped"].values()), (camera_id, camera["dropped"])
        published = sum(camera["frames_published"] for camera in cameras.values())
        frames = {(f.camera_id, f.sequence) for f in (Frame.FromString(m.value()) for m in consume_all(bootstrap, topics.FRAMES, expect=published, timeout=60))}
        assert len(frames) == published
        analysed = {(a.camera_id, a.frame_sequence) for a in (FrameAnalysis.FromString(m.value()) for m in consume_all(bootstrap, topics.DETECTIONS, timeout=60))}
        assert frames <= analysed, f"{len(frames - analysed)} frames never analysed"

        # Alerts: the one expected, delivered once to each contact, with its evidence.
        assert result.problems(script) == []
        assert [a["rule"] for a in result.alerts] == ["refund_without_customer"]
        assert len(result.deliveries) == 1 and len(result.pushes) == 1
    finally:
        platform.down(echo=lambda *_: None)
