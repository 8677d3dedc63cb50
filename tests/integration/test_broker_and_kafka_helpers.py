"""The dev broker speaks Kafka to both client libraries the services use, and our helpers keep
at-least-once and DLQ promises over it."""

import threading

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer

from services.shared import topics
from services.shared.kafka import ConsumeLoop, Output, make_producer, produce_and_wait
from services.shared.serde import PoisonMessage
from tests.conftest import consume_all, wait_for

pytestmark = pytest.mark.integration


def test_every_topic_exists_with_its_partitions(broker):
    producer = make_producer(broker)
    metadata = producer.list_topics(timeout=10)
    for spec in topics.all_topics():
        assert len(metadata.topics[spec.name].partitions) == spec.partitions, spec.name


def test_confluent_keys_land_where_faust_expects_them(broker):
    """POS (confluent-kafka) and register presence (Faust/aiokafka) must co-partition by key."""
    producer = make_producer(broker)
    partitioner = DefaultPartitioner()
    partitions = list(range(topics.PARTITIONS))
    for i in range(30):
        key = f"store-{i:03d}:reg-{i % 7}"
        delivered = produce_and_wait(producer, topics.POS, key, b"x")
        assert delivered.partition() == partitioner(key.encode(), partitions, partitions), key


def test_consume_loop_commits_after_work_and_dead_letters_poison(broker):
    producer = make_producer(broker)
    for i in range(5):
        producer.produce(topics.FEEDBACK, key=f"k{i}", value=b"bad" if i == 2 else f"ok-{i}".encode())
    producer.flush(10)
    seen, stop = [], threading.Event()

    def handle(messages):
        outputs = []
        for msg in messages:
            try:
                if msg.value() == b"bad":
                    raise PoisonMessage("not a feedback message")
                seen.append(msg.value())
                outputs.append(Output(topics.ALERTS, msg.key(), msg.value().upper()))
            except PoisonMessage as exc:
                outputs.append(loop.dead_letter(msg, str(exc)))
        if len(seen) >= 4:
            stop.set()
        return outputs

    loop = ConsumeLoop("test", broker, "test-loop", [topics.FEEDBACK], handle, stop_event=stop)
    thread = threading.Thread(target=loop.run)
    thread.start()
    thread.join(30)
    assert sorted(seen) == [b"ok-0", b"ok-1", b"ok-3", b"ok-4"]
    [dead] = consume_all(broker, topics.dlq(topics.FEEDBACK), expect=1)
    headers = dict(dead.headers())
    assert dead.value() == b"bad" and headers["sw-error"] == b"not a feedback message"
    assert headers["sw-source-topic"] == topics.FEEDBACK.encode()
    assert len(consume_all(broker, topics.ALERTS, expect=4)) == 4
    # Offsets were committed: the same group starts after the processed messages.
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "test-loop", "enable.auto.commit": False})
    consumer.subscribe([topics.FEEDBACK])
    assert wait_for(lambda: consumer.assignment() or (consumer.poll(0.2) and False) or consumer.assignment(), 15, "assignment")
    committed = consumer.committed(consumer.assignment(), timeout=10)
    assert sum(tp.offset for tp in committed if tp.offset >= 0) == 5
    consumer.close()
