"""Builds the Faust app, and nothing else: agents, tables and topics live in their own modules."""

from __future__ import annotations

import faust

from services.correlator.settings import CorrelatorSettings
from services.shared.topics import PARTITIONS


def create_app(settings: CorrelatorSettings) -> faust.App:
    return faust.App(
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
