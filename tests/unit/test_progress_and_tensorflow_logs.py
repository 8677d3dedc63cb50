"""Long work says how far along it is; TensorFlow's start-up noise is dropped but its real errors are not."""

import io
import os
import subprocess
import sys
from pathlib import Path

from devplatform.progress import Progress
from services.shared.tensorflow_runtime import is_startup_noise

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_a_line_every_interval_with_an_eta():
    out, clock = io.StringIO(), FakeClock()
    with Progress("training anomaly model", total=100, unit="steps", stream=out, every_s=10, clock=clock) as progress:
        for _ in range(100):
            clock.now += 0.5
            progress.advance(note="loss 0.01")
    lines = out.getvalue().splitlines()
    assert lines[0] == "training anomaly model: started (100 steps)"
    # 50 s of work at one line per 10 s: four lines in between, each with how far and how long is left.
    assert lines[1] == "training anomaly model: 20/100 steps (20%), 10s elapsed, about 40s left, loss 0.01"
    assert len(lines) == 6 and all("left" in line for line in lines[1:5])
    assert lines[-1] == "training anomaly model: done in 50s, loss 0.01"


def test_plain_progress_says_where_it_stopped():
    out = io.StringIO()
    with Progress("scoring", total=10, unit="frames", stream=out, clock=FakeClock()) as progress:
        progress.advance(3)
    assert out.getvalue().splitlines()[-1] == "scoring: stopped at 3/10 frames in 0s"


def test_terminal_progress_is_a_bar():
    out = io.StringIO()
    with Progress("building", total=4, unit="models", stream=out, bar=True) as progress:
        progress.advance(4, note="done")
    assert "building" in out.getvalue() and "4/4" in out.getvalue()


def test_tensorflow_startup_noise_is_recognised_and_errors_are_not():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796098485.221065    4879 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.",
        "I0000 00:00:1796098485.223364    4879 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
        "E0000 00:00:1796098494.690898    4879 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    ]
    assert all(is_startup_noise(line) for line in noise)
    kept = [
        "E0000 00:00:1796098494.690898    4879 saved_model_loader.cc:12] could not load the SavedModel: file is corrupt",
        "Traceback (most recent call last):",
        "ImportError: libcudnn.so.9: cannot open shared object file",
    ]
    assert not any(is_startup_noise(line) for line in kept)


def test_load_tensorflow_prints_nothing_on_a_healthy_start_but_keeps_later_stderr():
    code = ("import sys; from services.shared.tensorflow_runtime import load_tensorflow; tf = load_tensorflow(); "
            "assert load_tensorflow() is tf; print(int(tf.constant(2) + 1)); print('a real problem', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    assert done.stderr.strip() == "a real problem"


def test_lines_written_while_tensorflow_loads_pass_through_unless_they_are_noise(tmp_path):
    """A stand-in `tensorflow` package writes noise and a real error to fd 2 while it is imported."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os, types\n"
        "os.write(2, b'I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "os.write(2, b'E0000 00:00:1.0  1 loader.cc:12] libcudnn.so.9: cannot open shared object file\\n')\n"
        "if os.environ.get('FAIL'):\n"
        "    raise ImportError('broken install')\n"
        "config = types.SimpleNamespace(list_physical_devices=lambda: [])\n"
    )
    code = "from services.shared.tensorflow_runtime import load_tensorflow; load_tensorflow(); print('loaded')"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "loaded"
    assert "libcudnn.so.9: cannot open" in done.stderr and "oneDNN" not in done.stderr
    failed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env={**env, "FAIL": "1"})
    assert failed.returncode != 0 and "libcudnn.so.9" in failed.stderr and "ImportError: broken install" in failed.stderr


def test_stages_and_evaluations_import_without_tensorflow():
    """TensorFlow is loaded through load_tensorflow() (which quiets its start-up), never as a side effect of an import."""
    code = ("import sys, services.inference.stages, modeling.evaluate_detector, modeling.evaluate_tracking, modeling.build, devplatform.cli; "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and done.stderr == ""
