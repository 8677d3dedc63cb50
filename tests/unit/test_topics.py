"""The one definition of the topics, and the producer settings every service writes with."""

import logging

from services.correlator.app import create_app
from services.correlator.settings import CorrelatorSettings
from services.shared import topics
from services.shared.kafka import client_logger, producer_config


def test_every_topic_is_defined_once_with_production_replication():
    names = [spec.name for spec in topics.all_topics()]
    assert len(names) == len(set(names))
    assert topics.replication_factor_for(5) == 3 and topics.min_insync_replicas(3) == 2
    # A development cluster smaller than three: as many copies as brokers, and writes still accepted.
    assert (topics.replication_factor_for(1), topics.min_insync_replicas(1)) == (1, 1)
    for spec in topics.all_topics():
        configs = spec.configs(3)
        assert configs["min.insync.replicas"] == "2"
        assert spec.partitions == topics.PARTITIONS  # co-partitioned joins and changelogs need one count
        if spec.name.endswith("-changelog"):
            assert configs["cleanup.policy"] == "compact" and "retention.ms" not in configs
        else:
            assert configs["cleanup.policy"] == "delete" and int(configs["retention.ms"]) != 0
    assert topics.topic_spec(topics.ALERTS).configs(3)["retention.ms"] == "-1"  # type: ignore[union-attr]
    assert topics.topic_spec("not.ours") is None


def test_producers_are_idempotent_and_wait_for_every_in_sync_copy(monkeypatch, tmp_path):
    config = producer_config("127.0.0.1:9092")
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    monkeypatch.setenv("SW_STORE_CONFIG", "config/sample-store.yaml")
    app = create_app(CorrelatorSettings(correlator_data_dir=tmp_path))
    # Faust's producer: acks=all (it turns idempotence on only with exactly-once transactions; the
    # correlator's outputs are made harmless to repeat by deterministic alert ids and keyed tables).
    assert app.conf.producer_acks == -1


def test_librdkafka_says_the_same_complaint_once_a_minute(caplog):
    logger = client_logger()
    refused = "unit-test-host:9/bootstrap: Connect to ipv4#unit-test-host:9 failed: Connection refused (after {}ms in state CONNECT)"
    with caplog.at_level(logging.ERROR, logger="librdkafka"):
        for client in ("producer-1", "consumer-2", "producer-1"):
            logger.error("%s [%s] %s", "FAIL", f"rdkafka#{client}", refused.format(0))
        logger.error("%s [%s] %s", "FAIL", "rdkafka#producer-1", refused.format(3))
        logger.error("%s [%s] %s", "REQTMOUT", "rdkafka#producer-1", "timed out")
    assert [r.getMessage().split()[0] for r in caplog.records] == ["FAIL", "REQTMOUT"]


def test_kafka_cluster_ids_never_look_like_an_option():
    """The storage tool takes the id as an argument: one starting with '-' failed a start in 64."""
    from devplatform.broker import new_cluster_id

    ids = [new_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
