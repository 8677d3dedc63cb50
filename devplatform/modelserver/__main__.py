"""`python -m devplatform.modelserver`: TensorFlow is loaded quietly before the server module imports it."""

from __future__ import annotations

import sys

from services.shared.tensorflow_runtime import load_tensorflow


def run() -> int:
    load_tensorflow()
    from devplatform.modelserver.server import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
