"""Builds the Faust app, and nothing else: agents, tables and topics live in their own modules.

The app runs on Faust's aiokafka transport with two of its parts replaced, each for a way the chaos
runs (docs/chaos.md) lost a refund: a producer buffer whose flush really drains before a commit, and
a consumer whose "seek back to the committed offsets" also rewinds partitions that have none.
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TransportT

from services.correlator.settings import CorrelatorSettings
from services.shared.topics import PARTITIONS


class DrainingProducerBuffer(ProducerBuffer):
    """Faust's buffer of messages sent with `send_soon` (every table write's changelog record),
    whose `flush` waits until each buffered message is in the Kafka client.

    Faust flushes the producer before it commits offsets, so that a table's changelog is durable
    before the offsets of the events that changed it. Its own buffer's flush returns as soon as
    0.1 s pass without a message sent, with messages still buffered: under load, or while a
    partition's leader moves, the offsets can be committed first.
    """

    async def _send_pending(self, fut: Any) -> None:
        try:
            await super()._send_pending(fut)
        finally:
            self.pending.task_done()

    async def flush(self) -> None:
        # Every put is matched by a task_done once the client holds the message (or refused it,
        # which crashes the producer); the producer's flush then waits for the broker's acks.
        if self.should_stop:
            # Stopping: the sending task ends after the message in hand, so the rest goes from here.
            while not self.pending.empty():
                await self._send_pending(self.pending.get_nowait())
        await self.pending.join()


class _Producer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.app.conf.producer_threaded:  # that buffer hands messages to a thread's queue instead
            raise ValueError("the correlator's producer must not be threaded (producer_threaded)")
        buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        self.buffer = buffer


async def seek_to_committed_or_beginning(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int | None]:
    """Each assigned partition back to its committed offset, or to its beginning where the group
    has committed none (the correlator's reset policy is "earliest"); returns the committed offsets.

    Faust drops the records it fetched while its flow is stopped (a rebalance, a table's recovery)
    and relies on this seek to read them again. aiokafka's own `seek_to_committed` leaves a partition
    without a committed offset where it is, after the dropped records: the first refund ever routed
    to a camera's partition, during a rebalance, was never read."""
    committed = await consumer.seek_to_committed()
    never_committed = [tp for tp, offset in committed.items() if not offset]
    if never_committed:
        await consumer.seek_to_beginning(*never_committed)
    return committed


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Any:
        return await self.call_thread(seek_to_committed_or_beginning, self._ensure_consumer())


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class CorrelatorTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the draining producer buffer and the rewinding seek."""

    Consumer = _Consumer
    Producer = _Producer


class CorrelatorApp(faust.App):
    """A Faust app on CorrelatorTransport (`kafka://` URLs only)."""

    def _new_transport(self) -> TransportT:
        return CorrelatorTransport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> TransportT:
        return CorrelatorTransport(self.conf.broker_producer, self)


def create_app(settings: CorrelatorSettings) -> faust.App:
    return CorrelatorApp(
        settings.correlator_app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=f"{settings.table_store}://",
        datadir=str(settings.correlator_data_dir),
        # Topics are created from services/shared/topics.py (launcher, compose, k8s), never by a worker.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=PARTITIONS,
        # Short sessions so a restarted worker rejoins in seconds rather than a minute.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        producer_linger=0.01,
        # Every in-sync copy before a write counts (Faust's default, stated: the alerts are the record).
        producer_acks=-1,
        # What seek_to_committed_or_beginning assumes of a partition the group never committed.
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )
