"""Builds the Faust app, and nothing else: agents, tables and topics live in their own modules."""

from __future__ import annotations

import time
from typing import Any

import faust
from faust.assignor import PartitionAssignor
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.correlator.settings import CorrelatorSettings
from services.shared.topics import PARTITIONS

_FAUST_CREATE_CONSUMER = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def limit_fetch_wait(wait_ms: int) -> None:
    """Make Faust's consumer ask for at most `wait_ms` of waiting per fetch.

    Faust hard-codes 1500 ms (faust/transport/drivers/aiokafka.py) and has no setting for it. A real
    broker answers a fetch as soon as data arrives, but the dev broker waits the full time, so each
    hop (detections, then register presence) could add 1.5 s to a decision. Applies to the process.
    """

    def create(thread: Any, transport: Any) -> Any:
        consumer = _FAUST_CREATE_CONSUMER(thread, transport)
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign,assignment]


# How long the group leader holds its SyncGroup when the group has other members.
LEADER_SYNC_DELAY_S = 0.5


class FollowersFirstAssignor(PartitionAssignor):
    """Faust's assignor, but the leader answers only after its followers have sent their SyncGroup.

    The dev broker (librdkafka's mock cluster) completes a sync as soon as the leader's SyncGroup
    carries an assignment for every member, and then answers a follower's SyncGroup that arrives
    after it with INVALID_REQUEST (42); aiokafka treats that as fatal and the follower never joins.
    A real broker hands a late follower its assignment, so there the wait only adds half a second
    to a rebalance of several workers.
    """

    def assign(self, cluster: Any, member_metadata: Any) -> Any:
        assignment = super().assign(cluster, member_metadata)
        if len(member_metadata) > 1:
            time.sleep(LEADER_SYNC_DELAY_S)  # aiokafka's own thread; followers sync meanwhile
        return assignment


def create_app(settings: CorrelatorSettings) -> faust.App:
    limit_fetch_wait(settings.consumer_fetch_wait_ms)
    return faust.App(
        settings.correlator_app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=f"{settings.table_store}://",
        datadir=str(settings.correlator_data_dir),
        # Topics are created by the platform (the dev broker has no CreateTopics; production uses IaC).
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=PARTITIONS,
        # Short sessions so a restarted worker rejoins in seconds rather than a minute.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        producer_linger=0.01,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
        PartitionAssignor=FollowersFirstAssignor,
    )
