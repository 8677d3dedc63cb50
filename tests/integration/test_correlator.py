"""The correlator (a real Faust worker) over Apache Kafka: the refund rule, event time, and DLQ."""

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devplatform.demo import metric_total
from devplatform.kafkatools import consumed_to_end
from devplatform.launcher import http_ready
from services.correlator.app import seek_to_committed_or_beginning
from services.shared import topics
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.frame_analysis_pb2 import FrameAnalysis
from services.shared.contracts.pos_event_pb2 import PosEvent, PosEventType
from services.shared.kafka import make_producer
from tests.conftest import consume_all, wait_for

pytestmark = pytest.mark.integration


def _refund(event_id: str, at_ms: int) -> bytes:
    return PosEvent(event_id=event_id, type=PosEventType.POS_EVENT_TYPE_REFUND, store_id="store-001", register_id="reg-1",
                    event_time_ms=at_ms, total_minor=5000, currency="GBP").SerializeToString()


def _frames(producer, t0: int, seconds: int, present) -> None:
    for i in range(seconds * 10):
        analysis = FrameAnalysis(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=t0 + i * 100, frame_sequence=i)
        analysis.zones.add(zone_id="counter-1-customer", kind="counter_customer", person_present=present(i / 10), presence_score=0.2)
        producer.produce(topics.DETECTIONS, key="cam-counter-1", value=analysis.SerializeToString())


def test_poison_pos_message_goes_to_dlq_and_later_refunds_are_still_judged(broker, start_service):
    start_service("correlator", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker})
    producer = make_producer(broker)
    t0 = int(time.time() * 1000) - 120_000
    key = "store-001:reg-1"
    producer.produce(topics.POS, key=key, value=b"\x08\x96\x01garbage\xff")  # not a PosEvent
    producer.produce(topics.POS, key=key, value=PosEvent(event_id="no-store").SerializeToString())  # incomplete
    # POS first, video afterwards: the refunds must wait for the camera to cover their windows.
    producer.produce(topics.POS, key=key, value=_refund("with-customer", t0 + 8_000))
    producer.produce(topics.POS, key=key, value=_refund("nobody-there", t0 + 24_000))
    producer.flush(10)
    _frames(producer, t0, 32, present=lambda s: 4 <= s < 13)
    producer.flush(10)

    [alert_msg] = consume_all(broker, topics.ALERTS, expect=1, timeout=40)
    alert = Alert.FromString(alert_msg.value())
    assert alert.rule == "refund_without_customer" and alert.register_id == "reg-1"
    assert alert.evidence[0].ref == "nobody-there" and alert_msg.key() == b"store-001"
    # Only one: the refund with the customer present raised nothing.
    assert len(consume_all(broker, topics.ALERTS, timeout=5, idle=2)) == 1

    dead = consume_all(broker, topics.dlq(topics.POS), expect=2, timeout=10)
    errors = sorted(dict(m.headers())["sw-error"].decode() for m in dead)
    assert "missing required field(s)" in errors[0] or "not a valid protobuf" in errors[0]
    assert all(dict(m.headers())["sw-source-topic"] == topics.POS.encode() for m in dead)
    assert len(dead) == 2


def test_worker_killed_mid_window_resumes_with_no_alert_lost_or_duplicated(broker, start_service):
    env = {"SW_KAFKA_BOOTSTRAP_SERVERS": broker}
    first = start_service("correlator", env)
    producer = make_producer(broker)
    t0 = int(time.time() * 1000) - 120_000
    key = "store-001:reg-1"
    # Windows are 5 s either side plus 2 s of POS clock skew: [1, 15] s and [19, 33] s.
    producer.produce(topics.POS, key=key, value=_refund("decided-before-kill", t0 + 8_000))
    producer.produce(topics.POS, key=key, value=_refund("window-spans-kill", t0 + 26_000))
    producer.flush(10)
    _frames(producer, t0, 22, present=lambda s: False)
    producer.flush(10)
    [before] = consume_all(broker, topics.ALERTS, expect=1, timeout=40)
    assert Alert.FromString(before.value()).evidence[0].ref == "decided-before-kill"
    # Everything so far is processed and committed; the second refund's window is still open.
    wait_for(lambda: consumed_to_end(broker, topics.CORRELATOR_APP_ID, [topics.POS, topics.DETECTIONS, topics.CAMERA_EVENTS]), 60,
             "the correlator to commit what it has read", first)
    first.kill()
    start_service("correlator", env)  # same data folder: RocksDB state, plus the changelog
    for i in range(220, 400):
        analysis = FrameAnalysis(store_id="store-001", camera_id="cam-counter-1", capture_time_ms=t0 + i * 100, frame_sequence=i)
        analysis.zones.add(zone_id="counter-1-customer", kind="counter_customer", person_present=False)
        producer.produce(topics.DETECTIONS, key="cam-counter-1", value=analysis.SerializeToString())
    producer.flush(10)
    alerts = consume_all(broker, topics.ALERTS, expect=2, timeout=60)
    alerts += consume_all(broker, topics.ALERTS, timeout=8, idle=5)[2:]  # anything more would be a duplicate
    refs = sorted(Alert.FromString(m.value()).evidence[0].ref for m in alerts)
    assert refs == ["decided-before-kill", "window-spans-kill"], refs


def test_two_workers_split_the_partitions_and_each_alert_is_raised_once(broker, start_service, tmp_path):
    # Each worker has its own RocksDB folder, as each pod has its own volume.
    workers = [start_service("correlator", {"SW_KAFKA_BOOTSTRAP_SERVERS": broker, "SW_CORRELATOR_DATA_DIR": str(tmp_path / f"worker-{n}")})
               for n in range(2)]
    wait_for(lambda: all(http_ready(w.http + "/readyz") for w in workers), 60, "both workers to hold partitions")
    producer = make_producer(broker)
    t0 = int(time.time() * 1000) - 60_000
    for n in range(12):  # post-voids are decided on arrival, on the register's own partition
        event = PosEvent(event_id=f"pv-{n}", type=PosEventType.POS_EVENT_TYPE_VOID, store_id="store-001", register_id=f"reg-{n}",
                         event_time_ms=t0 + n, total_minor=9900, currency="GBP", after_tender=True)
        producer.produce(topics.POS, key=f"store-001:reg-{n}", value=event.SerializeToString())
    producer.flush(10)
    alerts = consume_all(broker, topics.ALERTS, expect=12, timeout=60)
    alerts += consume_all(broker, topics.ALERTS, timeout=6, idle=4)[12:]
    assert sorted(Alert.FromString(m.value()).evidence[0].ref for m in alerts) == sorted(f"pv-{n}" for n in range(12))
    raised = [metric_total(w.http + "/metrics", "sw_correlator_alerts_total") for w in workers]
    assert sum(raised) == 12 and all(r > 0 for r in raised), raised


def test_a_partition_the_group_never_committed_is_read_again_from_its_beginning_after_records_are_dropped(broker):
    """What Faust does in a rebalance or a table's recovery: records fetched while its flow is stopped
    are dropped, then it seeks back to the committed offsets. A camera's partition that has never been
    committed (its first refund arrives during the rebalance) must be read again from the start."""
    partition = TopicPartition(topics.CAMERA_EVENTS, 1)
    producer = make_producer(broker)
    for n in range(3):
        producer.produce(partition.topic, partition=partition.partition, key="cam-1", value=f"refund-{n}".encode())
    producer.flush(10)

    async def positions() -> tuple[int, int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id="sw-never-committed", enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([partition])
            fetched: list = []
            while len(fetched) < 3:  # the records a stopped flow drops: fetched, never handled
                fetched += (await consumer.getmany(partition, timeout_ms=10_000)).get(partition, [])
            after_fetch = await consumer.position(partition)
            await consumer.seek_to_committed()  # aiokafka's own seek: nothing committed, nothing moves
            after_plain_seek = await consumer.position(partition)
            committed = await seek_to_committed_or_beginning(consumer)
            assert committed == {partition: None}
            return after_fetch, after_plain_seek, await consumer.position(partition)
        finally:
            await consumer.stop()

    after_fetch, after_plain_seek, after_ours = asyncio.run(asyncio.wait_for(positions(), timeout=60))
    assert (after_fetch, after_plain_seek) == (3, 3)
    assert after_ours == 0
