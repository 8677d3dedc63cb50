"""Fixtures that start real infrastructure (Apache Kafka, redis-server, model server, services) as
processes on loopback, and stop them by PID. Infrastructure is started by the launcher's own steps
(`Platform.start_*`). Each test gets its own broker and Redis, so its topics, consumer groups and
keys are its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import yaml

from devplatform.launcher import Platform, child_env, free_port, http_ready, pid_alive, spawn_logged, stop_pid

ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = child_env()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    http: str = ""
    health: str = ""
    killed: bool = False

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, as a crash or an OOM kill."""
        self.killed = True
        self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        stop_pid(self.popen.pid)
        try:
            self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _spawn(name: str, argv: list[str], tmp_path: Path, env: dict | None = None) -> Proc:
    log = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.log"
    return Proc(name, spawn_logged(argv, log, env), log)


def wait_for(check, timeout: float, what: str, proc: Proc | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.log_text()[-3000:]}")
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f":\n{proc.log_text()[-3000:]}" if proc else ""))


def at_store_time(timezone: str, weekday: int = 2, hour: int = 15) -> int:
    """Epoch ms of the latest moment, at or before now, when the store's clock showed `hour`:00 on
    `weekday` (Monday 0; default a Wednesday afternoon).

    The return-risk model scores a return by the store's local hour and weekday (one at 03:00 scores
    higher than one at 15:00; the quick test model warns on an ordinary return before 10:00), so a
    test that expects an outcome dates its returns at a fixed store time, never at whenever the
    suite happens to run."""
    now = datetime.now(ZoneInfo(timezone))
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0) - timedelta(days=(now.weekday() - weekday) % 7)
    if at > now:
        at -= timedelta(days=7)
    return int(at.timestamp() * 1000)


@contextmanager
def platform_part(run_dir: Path, start: Callable[[Platform], None], **platform_args) -> Iterator[Platform]:
    """Start one piece of the local platform with the launcher's own step, and stop it afterwards."""
    platform = Platform(run_dir=run_dir, **platform_args)
    try:
        start(platform)
        yield platform
    finally:
        platform.down(echo=lambda *_: None)


class BrokerPool:
    """Fresh one-node Kafka clusters for the tests, each used by one test only.

    Formatting and starting a node takes seconds of a JVM's start-up, which a suite of many broker
    tests would pay one after the other. So while a test uses its broker, the next test's is started
    in the background, and a used one is stopped (SIGTERM, by PID) in the background too."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sw-test-brokers-"))
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="broker-start")
        self._stopper = ThreadPoolExecutor(1, thread_name_prefix="broker-stop")
        self._spare: Future[Platform] | None = None
        self._count = 0

    def _start(self) -> Platform:
        self._count += 1
        platform = Platform(run_dir=self.root / f"broker-{self._count}")
        try:
            platform.start_broker()
        except BaseException:
            platform.down(echo=lambda *_: None)
            raise
        return platform

    def take(self) -> Platform:
        started = self._spare or self._starter.submit(self._start)
        self._spare = self._starter.submit(self._start)
        return started.result()

    def give_back(self, platform: Platform) -> None:
        self._stopper.submit(platform.down, echo=lambda *_: None)

    def close(self) -> None:
        if self._spare is not None:
            try:
                self._spare.result().down(echo=lambda *_: None)
            except Exception:  # a spare that failed to start has stopped what it started
                pass
        self._starter.shutdown(wait=True)
        self._stopper.shutdown(wait=True)
        shutil.rmtree(self.root, ignore_errors=True)


_BROKER_POOL = pytest.StashKey[BrokerPool]()


@pytest.fixture
def broker(pytestconfig):
    """A fresh Apache Kafka node (KRaft) with every topic created as production defines it; yields bootstrap."""
    if _BROKER_POOL not in pytestconfig.stash:
        pytestconfig.stash[_BROKER_POOL] = BrokerPool()
    pool = pytestconfig.stash[_BROKER_POOL]
    platform = pool.take()
    try:
        yield platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
    finally:
        pool.give_back(platform)


@pytest.fixture
def redis_url(tmp_path):
    with platform_part(tmp_path / "redis", Platform.start_redis) as platform:
        yield platform.env["SW_REDIS_URL"]


class SessionModels:
    """The sample store's media and models that the collected tests need, made once per test session.

    `pytest_collection_finish` makes them before the first test runs, so no test's timeout includes
    training (a slow machine trains several times slower than a fast one); the fixtures below only
    hand them out. Tests that need a model only to have one get quickly trained ones in a session
    folder; the end-to-end demo gets the real sample models in models/, as `make demo` builds them."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sw-test-session-"))
        self.sample: dict[str, Path] | None = None
        self.quick_models: Path | None = None
        self.quick_risk: Path | None = None

    def sample_assets(self) -> dict[str, Path]:
        """The sample store's media, and a store config pointing at its clip."""
        if self.sample is None:
            from devplatform import samplestore

            out = self.root / "sample"
            paths = samplestore.generate(out)
            raw = yaml.safe_load((ROOT / "config" / "sample-store.yaml").read_text())
            raw["stores"][0]["cameras"][0]["source"] = f"file:{paths['clip']}"
            config = out / "store.yaml"
            config.write_text(yaml.safe_dump(raw))
            self.sample = {**paths, "store_config": config}
        return self.sample

    def models_dir(self, echo: Callable[[str], object]) -> Path:
        """A models/ folder with every model of models.config, built from the sample store (anomaly: briefly)."""
        if self.quick_models is None:
            from modeling.build import build_sample_models

            out = self.root / "models"
            out.mkdir()
            shutil.copy(ROOT / "models" / "models.config", out / "models.config")
            build_sample_models(out, self.sample_assets(), quick=True, echo=echo)
            self.quick_models = out
        return self.quick_models

    def risk_models(self, echo: Callable[[str], object]) -> Path:
        """A models/ folder with small return-risk and triage models (modeling/risk/train.py QUICK), trained on a
        small synthetic chain plus a synthetic HQ export (so the verdicts' path is trained through too)."""
        if self.quick_risk is None:
            import io
            from dataclasses import replace

            from modeling.risk.synthetic import generate_alerts, generate_returns, write_hq_export
            from modeling.risk.train import QUICK, train_all

            out = self.root / "risk-models"
            began = time.monotonic()
            # HQ's verdicts come from another seed than the bootstrap: other customers, other alerts.
            export = self.root / "hq-export.jsonl"
            hq = replace(QUICK.synthetic, seed=QUICK.synthetic.seed + 100)
            write_hq_export(export, generate_alerts(replace(QUICK.alerts, seed=hq.seed)), generate_returns(hq)[1])
            train_all(replace(QUICK, models_dir=out, alerts_from=str(export), verdicts_from=str(export)), echo=lambda *_: None, stream=io.StringIO())
            echo(f"  risk models (return, triage) trained in {time.monotonic() - began:.1f}s -> {out}")
            self.quick_risk = out
        return self.quick_risk

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_SESSION_MODELS = pytest.StashKey[SessionModels]()


def _session_models(config: pytest.Config) -> SessionModels:
    if _SESSION_MODELS not in config.stash:
        config.stash[_SESSION_MODELS] = SessionModels()
    return config.stash[_SESSION_MODELS]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build what the collected tests need before any of them runs (outside every per-test timeout)."""
    needs = set().union(*(getattr(item, "fixturenames", ()) for item in session.items)) if session.items else set()
    e2e = any(item.get_closest_marker("e2e") for item in session.items)
    if not ({"sample_assets", "models_dir", "model_server", "risk_models"} & needs or e2e) or session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    capture = session.config.pluginmanager.get_plugin("capturemanager")

    def echo(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        echo("")
        models = _session_models(session.config)
        if "risk_models" in needs:
            models.risk_models(echo)
        if not ({"sample_assets", "models_dir", "model_server"} & needs or e2e):
            return
        models.sample_assets()
        if {"models_dir", "model_server"} & needs:
            models.models_dir(echo)
        if e2e:
            from devplatform.demo import ensure_sample_assets

            ensure_sample_assets(echo=echo)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("needs_two_cores")
    if marker is not None and len(os.sched_getaffinity(0)) < 2:
        pytest.skip(f"needs two cores: {marker.kwargs.get('reason') or (marker.args[0] if marker.args else 'real-time property')}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _BROKER_POOL in session.config.stash:
        session.config.stash[_BROKER_POOL].close()
    if _SESSION_MODELS in session.config.stash:
        session.config.stash[_SESSION_MODELS].close()


@pytest.fixture(scope="session")
def sample_assets(pytestconfig):
    """The sample store's media, generated once per session, and a store config pointing at it."""
    return _session_models(pytestconfig).sample_assets()


@pytest.fixture(scope="session")
def models_dir(pytestconfig):
    """A models/ folder with every model of models.config, built once per session before the tests (anomaly: briefly)."""
    return _session_models(pytestconfig).models_dir(echo=lambda *_: None)


@pytest.fixture(scope="session")
def risk_models(pytestconfig) -> Path:
    """A models/ folder with small risk models (models/risk/return/1, models/risk/triage/1), trained once before the tests."""
    return _session_models(pytestconfig).risk_models(echo=lambda *_: None)


@pytest.fixture(scope="session")
def model_server(tmp_path_factory, models_dir):
    with platform_part(tmp_path_factory.mktemp("ms"), Platform.start_model_server, models_dir=models_dir) as platform:
        yield platform.env["SW_MODEL_SERVER"]


@pytest.fixture
def start_service(tmp_path, sample_assets):
    """Start `python -m services.<name>` with SW_ settings; waits for /readyz; stops it afterwards."""
    started: list[Proc] = []

    def start(name: str, env: dict[str, str], wait_ready: bool = True) -> Proc:
        # The api and pos answer on a public port and serve /metrics and /openapi.json on a health port.
        port = free_port()
        health_port = free_port() if name in ("api", "pos") else port
        full_env = {"SW_STORE_CONFIG": str(sample_assets["store_config"]), "SW_HTTP_PORT": str(health_port), "SW_API_PORT": str(port),
                    "SW_POS_PORT": str(port), "SW_CORRELATOR_DATA_DIR": str(tmp_path / f"{name}-data"), **env}
        proc = _spawn(name, [sys.executable, "-m", f"services.{name}"], tmp_path, full_env)
        proc.http = f"http://127.0.0.1:{port}"
        proc.health = f"http://127.0.0.1:{health_port}"
        started.append(proc)
        if wait_ready:
            wait_for(lambda: http_ready(proc.http + "/readyz"), 120, f"{name} /readyz", proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
        assert not pid_alive(proc.popen.pid)
        # SIGTERM is a graceful stop: flush, commit, exit 0 (a test may have stopped it already).
        assert proc.killed or proc.popen.returncode == 0, f"{proc.name} exited {proc.popen.returncode} on SIGTERM:\n{proc.log_text()[-2000:]}"


SYSTEM_PYTHON = "/usr/bin/python3"


def _rtsp_server_available() -> bool:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return Path(SYSTEM_PYTHON).exists() and subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


@pytest.fixture
def camera_servers(tmp_path):
    """Real camera sources on loopback: `rtsp(port)` (GStreamer's RTSP server, H.264) and `mjpeg(port)`
    (HTTP multipart JPEG). Each returns the running Proc; stopping and starting again on the same
    port is how tests kill and restart a camera. All are stopped by PID afterwards."""
    started: list[Proc] = []

    def _start(name: str, argv: list[str], port: int) -> Proc:
        proc = _spawn(name, argv, tmp_path)
        started.append(proc)
        wait_for(lambda: "ready " in proc.log_text(), 30, f"{name} on port {port}", proc)
        return proc

    def rtsp(port: int, **options: object) -> Proc:
        if not _rtsp_server_available():
            raise AssertionError("GStreamer's RTSP server is missing: `make setup` installs gir1.2-gst-rtsp-server-1.0, python3-gi and the GStreamer plugins")
        extra = [f"--{key}={value}" for key, value in options.items()]
        return _start("rtsp-camera", [SYSTEM_PYTHON, "devplatform/rtsp_server.py", f"--port={port}", *extra], port)

    def mjpeg(port: int, **options: object) -> Proc:
        extra = [f"--{key}={value}" for key, value in options.items()]
        return _start("mjpeg-camera", [sys.executable, "-m", "devplatform.mjpeg_server", f"--port={port}", *extra], port)

    yield SimpleNamespace(rtsp=rtsp, mjpeg=mjpeg)
    for proc in started:
        proc.stop()
        assert not pid_alive(proc.popen.pid)


def consume_all(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 15.0, idle: float = 2.0) -> list:
    """Read a topic from the beginning until `expect` messages, or (no `expect`) `idle` seconds of quiet
    after the last one (`idle` + 3 while none came): a message still on its way is waited for."""
    from devplatform.kafkatools import TopicReader

    reader = TopicReader(bootstrap, [topic], lambda msg: msg)
    reader.start()
    began, deadline = time.monotonic(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages = reader.received()
            if expect is not None and len(messages) >= expect:
                return messages[:expect]
            if expect is None and time.monotonic() - (reader.last_received if messages else began) > (idle if messages else idle + 3):
                break
            time.sleep(0.05)
    finally:
        reader.stop()
    return reader.received()
