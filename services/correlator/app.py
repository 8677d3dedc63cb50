"""Builds the Faust app, and nothing else: agents, tables and topics live in their own modules."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.producer import ProducerBuffer
from faust.types import ProducerT

from services.correlator.settings import CorrelatorSettings
from services.shared.topics import PARTITIONS


class DrainingProducerBuffer(ProducerBuffer):
    """Faust's buffer of messages sent with `send_soon` (every table write's changelog record),
    whose `flush` waits until each buffered message is in the Kafka client.

    Faust flushes the producer before it commits offsets, so that a table's changelog is durable
    before the offsets of the events that changed it. Its own buffer's flush returns as soon as
    0.1 s pass without a message sent, with messages still buffered: under load, or while a
    partition's leader moves, the offsets were committed first, and a worker taking the partitions
    over restored a table without those writes (a refund pending at its register, forgotten).
    """

    async def _send_pending(self, fut: Any) -> None:
        try:
            await super()._send_pending(fut)
        finally:
            self.pending.task_done()

    async def flush(self) -> None:
        # Every put is matched by a task_done once the client holds the message (or refused it,
        # which crashes the producer); the producer's flush then waits for the broker's acks.
        await self.pending.join()


class CorrelatorApp(faust.App):
    """A Faust app whose producer flushes all of its buffer before a commit (DrainingProducerBuffer)."""

    def _new_producer(self) -> ProducerT:
        producer: Any = super()._new_producer()
        if self.conf.producer_threaded:  # that buffer hands messages to a thread's queue: not replaced here
            raise ValueError("the correlator's producer must not be threaded (producer_threaded)")
        buffer = DrainingProducerBuffer(loop=producer.loop, beacon=producer.beacon)
        buffer.app = self
        producer.buffer = buffer
        return producer


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
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )
