"""Local Kafka-protocol dev broker: librdkafka's mock cluster, driven through ctypes.

TEST AND DEMO BROKER ONLY, never for production: in-memory, about 5 MiB kept per partition (a
lagging consumer silently loses older data), random loopback ports, no CreateTopics. Production
runs Apache Kafka (see docker-compose.yml and k8s/). librdkafka ships inside the confluent-kafka
wheel, so this needs nothing beyond the project's Python dependencies.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import signal
import sys
import threading
from pathlib import Path

import confluent_kafka

from services.shared.topics import TopicSpec, all_topics

RD_KAFKA_PRODUCER = 0


def _load_librdkafka() -> ctypes.CDLL:
    libs_dir = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    candidates = sorted(glob.glob(str(libs_dir / "librdkafka*.so*")))
    if not candidates:
        raise RuntimeError(f"librdkafka not found in {libs_dir}: is confluent-kafka installed from its wheel?")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.rd_kafka_mock_set_controller_id.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    return lib


class MockCluster:
    """A running mock cluster; lives as long as this object (and its process)."""

    def __init__(self, brokers: int = 1) -> None:
        self._lib = _load_librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # The owning handle never talks to the cluster; it only hosts the mock's threads.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))
        self._rk = self._lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._cluster:
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self._lib.rd_kafka_mock_set_controller_id(self._cluster, 1)
        # Consumers join at once instead of waiting the default 3 s for more members.
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster, 0)
        self.bootstrap_servers: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, spec: TopicSpec) -> None:
        err = self._lib.rd_kafka_mock_topic_create(self._cluster, spec.name.encode(), spec.partitions, 1)
        if err != 0:
            raise RuntimeError(f"could not create topic {spec.name}: librdkafka error {err}")

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the local dev Kafka broker (librdkafka mock cluster).")
    parser.add_argument("--ready-file", type=Path, help="write {bootstrap_servers, topics} here once topics exist")
    parser.add_argument("--extra-topic", action="append", default=[], help="NAME:PARTITIONS, for tests")
    args = parser.parse_args(argv)

    cluster = MockCluster()
    specs = all_topics() + [TopicSpec(n, int(p)) for n, p in (t.rsplit(":", 1) for t in args.extra_topic)]
    for spec in specs:
        cluster.create_topic(spec)
    info = {"bootstrap_servers": cluster.bootstrap_servers, "topics": {s.name: s.partitions for s in specs}, "pid": os.getpid()}
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(args.ready_file)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
