"""Apache Kafka (the launcher's real broker) speaks to both client libraries the services use, and our helpers keep
at-least-once and DLQ promises over it."""

import logging
import threading
import time

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from prometheus_client import REGISTRY

from devplatform.launcher import Platform, free_port, http_ready
from services.shared import topics
from services.shared.kafka import ConsumeLoop, Outcome, Output, Poison, RetryableError, make_producer, produce_and_wait, wait_for_broker
from services.shared.serde import PoisonMessage
from services.shared.topicadmin import check_topics, ensure_topics
from tests.conftest import consume_all, platform_part, wait_for

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


def test_consume_loop_commits_after_work_and_dead_letters_poison_once(broker):
    """The handler only judges; the loop keeps poison from the topics whose DLQ it owns, passes over the
    rest, and counts each once, although the batch is handled again after a dependency failed."""
    producer = make_producer(broker)
    for i in range(5):
        producer.produce(topics.FEEDBACK, key=f"k{i}", value=b"bad" if i == 2 else f"ok-{i}".encode())
    producer.produce(topics.POS, key="store:till", value=b"bad")
    producer.flush(10)
    seen: set[bytes] = set()
    judged: set[str | None] = set()
    calls, stop = [0], threading.Event()
    counted = {name: REGISTRY.get_sample_value(f"sw_messages_{name}_total", {"service": "test-poison", "topic": topic}) or 0.0
               for name, topic in (("dead_lettered", topics.FEEDBACK), ("skipped", topics.POS))}

    def handle(messages):
        calls[0] += 1
        outcome = Outcome()
        for msg in messages:
            try:
                if msg.value() == b"bad":
                    raise PoisonMessage(f"not a message of {msg.topic()}")
                seen.add(msg.value())
                outcome.outputs.append(Output(topics.ALERTS, msg.key(), msg.value().upper()))
            except PoisonMessage as exc:
                outcome.poison.append(Poison(msg, str(exc)))
        if calls[0] == 1:
            raise RetryableError("the first try meets a dependency that is down")
        judged.update(poison.message.topic() for poison in outcome.poison)
        if len(seen) >= 4 and len(judged) == 2:
            stop.set()
        return outcome

    loop = ConsumeLoop("test-poison", broker, "test-loop", [topics.FEEDBACK, topics.POS], handle, dead_letters=[topics.FEEDBACK],
                       batch_size=100, stop_event=stop)
    thread = threading.Thread(target=loop.run)
    thread.start()
    thread.join(60)
    assert sorted(seen) == [b"ok-0", b"ok-1", b"ok-3", b"ok-4"] and calls[0] >= 2
    [dead] = consume_all(broker, topics.dlq(topics.FEEDBACK), expect=1)
    headers = dict(dead.headers())
    assert dead.value() == b"bad" and headers["sw-error"] == f"not a message of {topics.FEEDBACK}".encode()
    assert headers["sw-source-topic"] == topics.FEEDBACK.encode()
    assert consume_all(broker, topics.dlq(topics.POS), timeout=5) == [], "sw.pos.v1's DLQ belongs to another reader"
    assert len(consume_all(broker, topics.ALERTS, expect=4)) == 4
    for name, topic in (("dead_lettered", topics.FEEDBACK), ("skipped", topics.POS)):
        now = REGISTRY.get_sample_value(f"sw_messages_{name}_total", {"service": "test-poison", "topic": topic})
        assert now == counted[name] + 1, f"{name} counted {now} times"
    # Offsets were committed: the same group starts after the processed messages.
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "test-loop", "enable.auto.commit": False})
    consumer.subscribe([topics.FEEDBACK])
    assert wait_for(lambda: consumer.assignment() or (consumer.poll(0.2) and False) or consumer.assignment(), 15, "assignment")
    committed = consumer.committed(consumer.assignment(), timeout=10)
    assert sum(tp.offset for tp in committed if tp.offset >= 0) == 5
    consumer.close()


def test_topics_carry_their_production_settings_read_back_from_the_broker(broker):
    """The broker's own view of each topic: partitions, and the configs topics.py defines."""
    admin = AdminClient({"bootstrap.servers": broker})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in topics.all_topics()]
    described = {res.name: {k: v.value for k, v in fut.result(10).items()} for res, fut in admin.describe_configs(resources).items()}
    assert described[topics.FRAMES]["retention.ms"] == str(topics.HOUR_MS)
    assert described[topics.POS]["retention.ms"] == str(180 * topics.DAY_MS)
    assert described[topics.ALERTS]["retention.ms"] == "-1" and described[topics.ALERTS]["cleanup.policy"] == "delete"
    assert described["sw-correlator-till-state-changelog"]["cleanup.policy"] == "compact"
    assert described[topics.dlq(topics.POS)]["retention.ms"] == str(topics.DLQ_RETENTION_MS)
    # One broker: one copy, so one in-sync replica is enough; production's three need two.
    assert {d["min.insync.replicas"] for d in described.values()} == {"1"}
    assert {d["max.message.bytes"] for d in described.values()} == {str(topics.MAX_MESSAGE_BYTES)}
    assert check_topics(broker, [spec.name for spec in topics.all_topics()]) == []


def test_a_topic_made_by_hand_with_other_settings_is_named_at_start(broker, caplog):
    """Somebody created sw.feedback.v1 by hand with one partition and default retention: `ensure`
    (the launcher's and the deployments' topic job) and a service starting on it both say so."""
    admin = AdminClient({"bootstrap.servers": broker})
    admin.delete_topics([topics.FEEDBACK])[topics.FEEDBACK].result(10)
    wait_for(lambda: topics.FEEDBACK not in admin.list_topics(timeout=5).topics, 15, "topic deleted")

    def recreate() -> bool:
        try:
            admin.create_topics([NewTopic(topics.FEEDBACK, 1, 1)])[topics.FEEDBACK].result(10)
            return True
        except KafkaException:
            return False  # still being deleted

    wait_for(recreate, 15, "topic created by hand")
    # The controller answers create_topics before every broker's metadata has the topic.
    wait_for(lambda: len(admin.list_topics(topics.FEEDBACK, timeout=5).topics[topics.FEEDBACK].partitions) == 1, 15, "topic visible")
    problems = ensure_topics(broker)
    assert f"{topics.FEEDBACK}: 1 partitions, expected 6" in problems
    assert f"{topics.FEEDBACK}: retention.ms=604800000, expected -1" in problems
    assert all(p.startswith(topics.FEEDBACK) for p in problems), problems
    with caplog.at_level(logging.ERROR, logger="services.shared.kafka"):
        assert wait_for_broker(broker, "notifier", threading.Event(), [topics.FEEDBACK, topics.ALERTS])
    named = [str(getattr(r, "problem", "")) for r in caplog.records if r.getMessage() == "topic with the wrong settings"]
    assert sorted(named) == sorted(problems)


def test_a_consumer_started_before_the_broker_says_so_once_and_is_ready_when_it_comes(tmp_path, caplog):
    port = free_port()
    stop = threading.Event()
    loop = ConsumeLoop("test", f"127.0.0.1:{port}", "test-early", [topics.FEEDBACK], lambda messages: Outcome(), stop_event=stop)
    with caplog.at_level(logging.INFO, logger="services.shared.kafka"):
        thread = threading.Thread(target=loop.run)
        thread.start()
        try:
            time.sleep(6)
            assert not loop.ready.is_set()
            with platform_part(tmp_path / "late-broker", Platform.start_broker, kafka_port=port):
                assert loop.ready.wait(60), "never assigned after the broker came"
        finally:
            stop.set()
            thread.join(30)
    said = [r.getMessage() for r in caplog.records]
    assert said.count("Kafka broker not reachable; waiting for it") == 1
    assert said.count("Kafka broker reachable") == 1
    assert loop.failure is None


# A group member that handles each batch slowly, until killed: the child process of the test below.
SLOW_MEMBER = """
import sys, time
from services.shared import topics
from services.shared.kafka import ConsumeLoop, Outcome
from services.shared.logs import configure_logging

configure_logging("test-member", "INFO")

def handle(messages):
    time.sleep(0.3)
    return Outcome()

loop = ConsumeLoop("test-member", sys.argv[1], sys.argv[2], [topics.FEEDBACK], handle, batch_size=5)
loop.run()
"""


def test_a_member_stopped_past_its_session_rejoins_and_its_partitions_are_consumed_to_the_end(broker, tmp_path):
    """`make chaos` stopped an inference replica for 10 s (SIGSTOP, as a starved or swapped process):
    its session timed out, the group handed it the same partitions back, and librdkafka never fetched
    them again, their lag stuck for good. A member whose assignment was lost now starts a fresh
    consumer; every message is consumed and committed."""
    import signal
    import subprocess
    import sys
    import uuid

    from devplatform.kafkatools import Offsets
    from devplatform.launcher import ROOT, child_env

    group = f"test-lost-{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / f"member-{n}.log" for n in (1, 2)]
    members = [subprocess.Popen([sys.executable, "-c", SLOW_MEMBER, broker, group], cwd=ROOT, env=child_env(), stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for log in logs]
    producer = make_producer(broker)
    offsets = Offsets(broker)
    try:
        def produce(count: int) -> None:
            for i in range(count):
                producer.produce(topics.FEEDBACK, key=f"k{i % 12}", value=b"x")
                producer.poll(0)
                time.sleep(0.05)
            producer.flush(10)

        admin = AdminClient({"bootstrap.servers": broker})

        def both_assigned() -> bool:
            produce(5)
            try:
                found = admin.describe_consumer_groups([group])[group].result(timeout=10)
            except KafkaException:  # the group's coordinator still loading on a fresh broker
                return False
            return len(found.members) == 2 and all(m.assignment.topic_partitions for m in found.members)

        wait_for(both_assigned, 120, "both members in the group, each with partitions")
        produce(40)
        members[1].send_signal(signal.SIGSTOP)
        produce(200)  # 10 s stopped: past session.timeout.ms (6 s)
        members[1].send_signal(signal.SIGCONT)
        produce(200)
        wait_for(lambda: offsets.consumed_to_end(group, [topics.FEEDBACK]), 120, f"group {group} consumed to the end: {offsets.behind(group, [topics.FEEDBACK])}")
        assert all(member.poll() is None for member in members)
        assert "partitions lost" in logs[1].read_text()
    finally:
        offsets.close()
        for member in members:
            member.send_signal(signal.SIGCONT)
            member.kill()
            member.wait(10)


def test_the_correlator_started_before_the_broker_waits_and_becomes_ready(tmp_path, start_service):
    """Faust alone would give up at start; the worker waits for the broker (one log line), unready."""
    port = free_port()
    worker = start_service("correlator", {"SW_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}, wait_ready=False)
    wait_for(lambda: "Kafka broker not reachable" in worker.log_text(), 60, "the waiting line", worker)
    assert not http_ready(worker.http + "/readyz")
    time.sleep(3)
    with platform_part(tmp_path / "late-broker", Platform.start_broker, kafka_port=port):
        wait_for(lambda: http_ready(worker.http + "/readyz"), 120, "correlator ready once the broker answers", worker)
        assert worker.log_text().count("Kafka broker not reachable") == 1
        worker.stop()
    assert worker.popen.returncode == 0


def test_three_node_cluster_replicates_and_keeps_taking_writes_with_one_node_down(tmp_path):
    """`shrinkwatch dev up --brokers 3`: replication factor 3 and min.insync.replicas 2 as in
    production, so acks=all writes go on with a node killed and nothing acknowledged is lost."""
    with platform_part(tmp_path / "cluster", Platform.start_broker, brokers=3) as platform:
        bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert len(metadata.brokers) == 3
        assert {len(p.replicas) for p in metadata.topics[topics.POS].partitions.values()} == {3}
        assert check_topics(bootstrap, [topics.POS, topics.ALERTS]) == []
        producer = make_producer(bootstrap)
        acknowledged = [produce_and_wait(producer, topics.POS, f"k{i}", f"before-{i}".encode()).value() or b"" for i in range(20)]
        platform.kill_component("broker-2")
        acknowledged += [produce_and_wait(producer, topics.POS, f"k{i}", f"during-{i}".encode(), timeout=60).value() or b"" for i in range(20)]
        platform.restart_broker("broker-2")
        acknowledged += [produce_and_wait(producer, topics.POS, f"k{i}", f"after-{i}".encode()).value() or b"" for i in range(20)]
        read = [m.value() or b"" for m in consume_all(bootstrap, topics.POS, expect=60, timeout=60)]
        assert sorted(read) == sorted(acknowledged)
