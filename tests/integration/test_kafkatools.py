"""devplatform/kafkatools.py on Apache Kafka: a group's commits against the topics' ends, topics read
back, and worker processes started through the launcher."""

from __future__ import annotations

import sys
import time

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from devplatform.kafkatools import Offsets, TopicReader, Worker, WorkerExited, consumed_to_end
from devplatform.launcher import Platform
from services.shared import topics
from services.shared.kafka import make_producer
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, values: list[bytes]) -> None:
    producer = make_producer(bootstrap)
    for i, value in enumerate(values):
        producer.produce(topics.FEEDBACK, key=f"key-{i}", value=value)
    assert producer.flush(10) == 0


def _value(msg: Message) -> bytes:
    return msg.value() or b""


def test_a_group_is_behind_until_it_has_committed_every_partition_to_its_end(broker):
    _produce(broker, [b"v"] * 12)
    offsets = Offsets(broker)
    committer = Consumer({"bootstrap.servers": broker, "group.id": "watched", "enable.auto.commit": False})
    try:
        ends = offsets.ends([topics.FEEDBACK])
        assert sum(ends.values()) == 12
        assert offsets.behind("watched", [topics.FEEDBACK]) == {part: (0, end) for part, end in ends.items() if end}
        assert not consumed_to_end(broker, "watched", [topics.FEEDBACK])
        first, *rest = [part for part, end in ends.items() if end]
        committer.commit(offsets=[TopicPartition(first[0], first[1], ends[first])], asynchronous=False)
        assert set(offsets.behind("watched", [topics.FEEDBACK])) == set(rest)
        committer.commit(offsets=[TopicPartition(t, p, ends[(t, p)]) for t, p in rest], asynchronous=False)
        assert offsets.consumed_to_end("watched", [topics.FEEDBACK]) and consumed_to_end(broker, "watched", [topics.FEEDBACK])
        assert offsets.committed("watched", [topics.FEEDBACK]) == ends
        assert consumed_to_end(broker, "never-consumed", [topics.ALERTS])  # nothing there: nothing to consume
    finally:
        committer.close()
        offsets.close()


def test_topics_are_read_to_their_end_from_the_start_or_from_given_offsets_and_in_the_background(broker):
    _produce(broker, [f"m{i}".encode() for i in range(8)])
    assert sorted(TopicReader(broker, [topics.FEEDBACK, topics.ALERTS], _value).read_to_end()) == [f"m{i}".encode() for i in range(8)]
    offsets = Offsets(broker)
    ends = offsets.ends([topics.FEEDBACK])
    offsets.close()
    began = time.monotonic()
    assert TopicReader(broker, [topics.FEEDBACK], _value, since=ends).read_to_end(timeout_s=20) == []
    assert time.monotonic() - began < 10  # at every partition's end, not at the timeout
    reader = TopicReader(broker, [topics.FEEDBACK], _value, since=ends)
    reader.start()
    try:
        _produce(broker, [b"late-1", b"late-2"])
        wait_for(lambda: len(reader.received()) == 2, 20, "the two later messages")
        assert sorted(reader.received()) == [b"late-1", b"late-2"] and not reader.error
    finally:
        reader.stop()


def test_a_message_the_parser_refuses_stops_the_background_reader_with_the_error(broker):
    _produce(broker, [b"x"])

    def refuse(_msg):
        raise ValueError("not ours")

    reader = TopicReader(broker, [topics.FEEDBACK], refuse)
    reader.start()
    try:
        wait_for(lambda: reader.error, 20, "the reader to fail")
        assert reader.error == "ValueError: not ours"
    finally:
        reader.stop()


def test_a_worker_logs_into_the_platform_s_folder_and_tells_how_it_ended(tmp_path):
    platform = Platform(run_dir=tmp_path)
    stays = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)); print('up', flush=True); time.sleep(60)"
    worker = Worker.start(platform, "sleeper", [sys.executable, "-c", stays], {"SW_EXAMPLE": "1"})
    quits = Worker.start(platform, "quitter", [sys.executable, "-c", "import sys; print('giving up', flush=True); sys.exit(5)"], {})
    try:
        wait_for(lambda: "up" in worker.tail(), 20, "the worker's first line")
        worker.check("testing")  # still running: no exception
        assert (tmp_path / "logs" / "sleeper.log").read_text().strip() == "up"
        assert worker.stop() == 3  # SIGTERM, and the code it chose to exit with
        with pytest.raises(WorkerExited, match="sleeper exited with code 3 while testing"):
            worker.check("testing")
        wait_for(lambda: quits.popen.poll() is not None, 20, "the quitter to exit")
        with pytest.raises(WorkerExited, match=r"quitter exited with code 5 while waiting; last log lines:\n\s+giving up"):
            quits.check("waiting")
    finally:
        platform.down(echo=lambda *_: None)
