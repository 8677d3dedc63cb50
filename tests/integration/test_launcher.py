"""The launcher fails with a message naming what broke, and leaves no process behind."""

import shutil
import socket

import pytest

from devplatform.launcher import LaunchError, Platform, free_port, pid_alive

pytestmark = pytest.mark.integration


def _started_pids(platform: Platform) -> list[int]:
    return [c["pid"] for c in platform.components.values()]


@pytest.fixture
def stop_afterwards():
    """Platforms a test expects `up` to refuse: stopped at teardown should `up` succeed after all,
    so a test failing that way leaves no platform running."""
    platforms: list[Platform] = []
    yield platforms.append
    for platform in platforms:
        platform.down(echo=lambda *_: None)


def test_taken_api_port_is_named(tmp_path, sample_assets, models_dir, stop_afterwards):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        platform = Platform(run_dir=tmp_path, store_config=sample_assets["store_config"], models_dir=models_dir, api_port=port)
        stop_afterwards(platform)
        with pytest.raises(LaunchError, match=f"api: port {port} is already taken"):
            platform.up(echo=lambda *_: None)
    assert not any(pid_alive(p) for p in _started_pids(platform))


def test_missing_redis_binary_is_named_and_broker_is_stopped(tmp_path, sample_assets, models_dir, monkeypatch, stop_afterwards):
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "redis-server" else which(name, *args, **kwargs))
    platform = Platform(run_dir=tmp_path, store_config=sample_assets["store_config"], models_dir=models_dir, api_port=free_port())
    stop_afterwards(platform)
    with pytest.raises(LaunchError, match="redis-server binary is not installed"):
        platform.up(echo=lambda *_: None)
    assert "broker" in platform.components
    assert not any(pid_alive(p) for p in _started_pids(platform))
    assert not (tmp_path / "runtime.json").exists()


def test_service_that_never_gets_ready_is_named_with_its_log(tmp_path, models_dir, stop_afterwards):
    bad_config = tmp_path / "store.yaml"
    bad_config.write_text("chain: x\nstores: []\n")
    platform = Platform(run_dir=tmp_path, store_config=bad_config, models_dir=models_dir, api_port=free_port())
    stop_afterwards(platform)
    with pytest.raises(LaunchError) as err:
        platform.up(echo=lambda *_: None)
    # The services start together: the first to fail names the store config's error (pos, which
    # makes the dev POS keys from it, before it runs; or a service that exited on it).
    assert "stores" in str(err.value) and ("correlator exited" in str(err.value) or "pos could not be started" in str(err.value))
    assert {"broker", "redis", "modelserver", "correlator"} <= set(platform.components)
    assert not any(pid_alive(p) for p in _started_pids(platform))



def test_down_never_signals_a_reused_pid(tmp_path):
    import json
    import subprocess

    stranger = subprocess.Popen(["sleep", "30"])
    try:
        # A stale runtime file whose PID now belongs to another process (started at another time).
        (tmp_path / "runtime.json").write_text(json.dumps({"components": {"broker": {"pid": stranger.pid, "start_ticks": 1}}}))
        platform = Platform(run_dir=tmp_path)
        assert platform.status()["broker"]["alive"] is False
        platform.down(echo=lambda *_: None)
        assert stranger.poll() is None
    finally:
        stranger.kill()


def test_component_slower_than_its_deadline_is_named_and_stopped(tmp_path, sample_assets, models_dir, stop_afterwards):
    class ImpatientPlatform(Platform):
        def launch_model_server(self):
            proc = super().launch_model_server()
            # TensorFlow alone takes seconds to import: the model server cannot be ready in half a second.
            self.ready_timeout_s = 0.5
            self.await_model_server(proc)
            return proc

    platform = ImpatientPlatform(run_dir=tmp_path, store_config=sample_assets["store_config"], models_dir=models_dir, api_port=free_port())
    stop_afterwards(platform)
    with pytest.raises(LaunchError, match=r"modelserver did not become ready \(models loaded\) within 0s"):
        platform.up(echo=lambda *_: None)
    assert "modelserver" in platform.components
    assert not any(pid_alive(p) for p in _started_pids(platform))


def test_model_without_a_servable_version_is_named(tmp_path, sample_assets, models_dir, stop_afterwards):
    """A configured model whose only version is corrupt stops `up` with the model server's reason."""
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    (models / "detector" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    platform = Platform(run_dir=tmp_path / "run", store_config=sample_assets["store_config"], models_dir=models, api_port=free_port())
    stop_afterwards(platform)
    with pytest.raises(LaunchError, match=r"no servable version of detector: model detector version 1: cannot load .*make models"):
        platform.up(echo=lambda *_: None)
    assert "modelserver" in platform.components
    assert not any(pid_alive(p) for p in _started_pids(platform))
