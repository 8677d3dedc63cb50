"""`python -m devplatform.scenarios` (`make scenarios`): see runner.py."""

import contextlib
import sys

from devplatform.scenarios.runner import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
