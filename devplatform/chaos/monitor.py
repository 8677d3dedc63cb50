"""What a chaos run watches while it runs: each process's memory, and every consumer group's lag.

Memory is sampled from /proc every few seconds per component (its current PID: a restarted process
starts a new series). Growth is measured on each component's longest series, from the median of its
first minute after a warm-up to the median of its last minute, so a process that grows without bound
shows it and one that only warmed up does not.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions

from devplatform.kafkatools import Offsets
from devplatform.launcher import Platform, is_ours
from services.shared.topicadmin import admin_client

WARM_UP_S = 60.0
WINDOW_S = 60.0


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Series:
    name: str
    pid: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, MB)

    @property
    def span_s(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0


def growth(series: Series, warm_up_s: float = WARM_UP_S, window_s: float = WINDOW_S) -> dict[str, float] | None:
    """Start (after the warm-up), end and growth in MB of one series; None if it is too short to say."""
    if not series.samples:
        return None
    first = series.samples[0][0]
    settled = [(t, mb) for t, mb in series.samples if t - first >= warm_up_s]
    if len(settled) < 4 or settled[-1][0] - settled[0][0] < window_s:
        return None
    start = statistics.median(mb for t, mb in settled if t - settled[0][0] <= window_s)
    end = statistics.median(mb for t, mb in settled if settled[-1][0] - t <= window_s)
    return {"start_mb": round(start, 1), "end_mb": round(end, 1), "growth_mb": round(end - start, 1), "span_s": round(series.span_s)}


class Sampler:
    """Samples every component's RSS every `every_s` in a thread."""

    def __init__(self, platform: Platform, every_s: float = 5.0) -> None:
        self.platform, self.every_s = platform, every_s
        self.series: dict[tuple[str, int], Series] = {}
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            now = time.monotonic()
            for name, comp in list(self.platform.components.items()):
                if not is_ours(comp):
                    continue
                mb = rss_mb(comp["pid"])
                if mb is not None:
                    self.series.setdefault((name, comp["pid"]), Series(name, comp["pid"])).samples.append((now, mb))

    def report(self) -> dict[str, dict[str, float]]:
        """Per component, the growth of its longest-lived process (restarts begin new series)."""
        longest: dict[str, Series] = {}
        for (name, _), series in self.series.items():
            if name not in longest or series.span_s > longest[name].span_s:
                longest[name] = series
        return {name: figures for name, series in sorted(longest.items()) if (figures := growth(series)) is not None}


def committed_offsets(bootstrap: str, prefix: str = "sw-") -> dict[str, dict[tuple[str, int], int]]:
    """Per consumer group of ours, its committed offset in each partition it has committed."""
    admin = admin_client(bootstrap, quiet=True)
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=15).result(timeout=30).valid if g.group_id.startswith(prefix)]
    committed: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
    for group in groups:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)
        for tp in result[group].result(timeout=30).topic_partitions:
            if tp.offset >= 0:
                committed[group][(tp.topic, tp.partition)] = tp.offset
    return dict(committed)


def group_lags(bootstrap: str) -> dict[str, int]:
    """Messages not yet consumed, per consumer group of ours (summed over its partitions)."""
    committed = committed_offsets(bootstrap)
    offsets = Offsets(bootstrap)
    try:
        ends = offsets.ends(sorted({topic for found in committed.values() for topic, _ in found}))
    finally:
        offsets.close()
    return {group: sum(max(0, ends.get(key, 0) - offset) for key, offset in found.items()) for group, found in sorted(committed.items())}
