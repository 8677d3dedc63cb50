"""The one exponential backoff: Kafka retries, camera reconnects and notification retries all wait by it.

The delay starts at `first_s` and doubles per failure up to `max_s`. With jitter each wait is drawn
from half to all of that, so peers that failed together (cameras behind one switch) do not retry in
step and hammer what just came back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    first_s: float
    max_s: float
    jitter: bool = False
    failures: int = 0

    def next_delay(self) -> float:
        """The wait before the next try; counts one more failure."""
        delay = min(self.first_s * 2 ** min(self.failures, 62), self.max_s)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def reset(self) -> None:
        """After a success: the next failure waits `first_s` again."""
        self.failures = 0
