"""Import TensorFlow without its C++ start-up noise reaching the terminal or the JSON logs.

TensorFlow 2.21 writes its start-up lines (oneDNN, "Could not find cuda drivers", CPU feature
hints, "failed call to cuInit" on a machine without a GPU) straight to file descriptor 2 through
absl, before TF_CPP_MIN_LOG_LEVEL is read, so neither the environment variable nor Python's logging
can hold them back. `load_tensorflow()` points descriptor 2 at a pipe while TensorFlow loads and
probes its devices, and a thread passes on every line that is not known start-up noise as it comes,
so a real error (a missing library, a broken install, a Python warning) still reaches stderr.

Every process that uses TensorFlow calls this before its first TensorFlow import (the TF Serving
stubs import TensorFlow too); after the first call it only returns the module.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

# Lines TensorFlow prints at every start on a machine like ours, none of which needs action.
_STARTUP_NOISE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:. ]+\s+\d+ \S+:\d+\] .*"  # absl INFO lines
    r"|To enable the following instructions: .*in other operations, rebuild TensorFlow with the appropriate compiler flags\."
    r"|E\d{4} [\d:. ]+\s+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit: .*"  # no NVIDIA driver: TensorFlow runs on the CPU
    r")$"
)
_lock = threading.Lock()
_ready = False


def is_startup_noise(line: str) -> bool:
    return bool(_STARTUP_NOISE.match(line.rstrip("\r\n")))


def load_tensorflow() -> Any:
    """TensorFlow, imported and its devices probed with stderr filtered; idempotent (Any: TensorFlow ships no types).

    Also right when something imported TensorFlow earlier: its devices are probed here all the same.
    Lines are forwarded as they come (a pipe and a thread), so a fatal error during the import is
    still shown before the process dies."""
    global _ready
    with _lock:
        if _ready:
            return sys.modules["tensorflow"]
        # Later C++ INFO and WARNING lines obey this once absl is initialised; errors still show.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)

        def forward() -> None:
            with os.fdopen(read_end, "rb") as pipe:
                for line in pipe:
                    if not is_startup_noise(line.decode(errors="replace")):
                        os.write(saved, line)

        pump = threading.Thread(target=forward, name="tensorflow-stderr", daemon=True)
        pump.start()
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing is where cuInit complains
            _ready = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)  # the pipe's last write end closes: the pump sees its end
            pump.join(timeout=10)
            os.close(saved)
        return tf
