"""Every Kafka topic the system uses, with the settings it must have on any broker.

One definition: the local launcher, compose's and Kubernetes' topic jobs (`python -m
services.shared.topicadmin ensure`) create topics from it, and every service checks the topics it
reads against it at start (services/shared/topicadmin.py). Faust needs changelog topics with as many
partitions as the topics they are keyed like, so those are listed here too.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTITIONS = 6
# What production runs with: three copies of every partition, and a write is acknowledged (acks=all)
# only once two of them have it, so losing one broker loses nothing and stops no producer.
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
# Producers may send up to this much in one message (services/shared/kafka.py); the broker's own
# default (1 MiB) would refuse a large frame or a big POSLog batch that the producer accepted.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 + 1024


@dataclass(frozen=True)
class TopicSpec:
    """A topic and the settings it is created with (and checked against at each service's start)."""

    name: str
    partitions: int = PARTITIONS
    # None: kept forever (cleanup.policy=compact keeps the newest value of each key instead).
    retention_ms: int | None = 7 * DAY_MS
    compact: bool = False

    def configs(self, replication_factor: int) -> dict[str, str]:
        """The topic-level configs for a cluster that replicates `replication_factor` times."""
        configs = {
            "cleanup.policy": "compact" if self.compact else "delete",
            "min.insync.replicas": str(min_insync_replicas(replication_factor)),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
        }
        if not self.compact:
            configs["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        return configs


def replication_factor_for(brokers: int) -> int:
    """Three copies, or as many as a smaller (development) cluster has brokers."""
    return max(1, min(REPLICATION_FACTOR, brokers))


def min_insync_replicas(replication_factor: int) -> int:
    """Two of three copies; a single copy on a one-broker development cluster."""
    return max(1, min(MIN_INSYNC_REPLICAS, replication_factor - 1))


FRAMES = "sw.frames.v1"
DETECTIONS = "sw.detections.v1"
POS = "sw.pos.v1"
ALERTS = "sw.alerts.v1"
FEEDBACK = "sw.feedback.v1"
# Returns assessed at the till (accept / warn / deny, with reasons), for HQ and as training rows.
RETURN_DECISIONS = "sw.returns.v1"
# Refunds (and timer ticks) re-keyed by their register's camera, so they share partitions with
# sw.detections.v1 in the correlator and meet the frames that decide them without a hop per frame.
CAMERA_EVENTS = "sw.correlator.camera-events.v1"
# Returns and refunds re-keyed by hashed card or customer token: one chain-wide table per token.
RETURNS_BY_TOKEN = "sw.correlator.returns-by-token.v1"
# Sales and the refunds naming them, re-keyed by "store:transaction": who rang the original sale.
TRANSACTIONS = "sw.correlator.transactions.v1"
# What each camera saw of people's way through the store (zones entered and left, door lines
# crossed), re-keyed by store: one table of journeys per store, across its cameras.
STORE_STEPS = "sw.correlator.store-steps.v1"

CORRELATOR_APP_ID = "sw-correlator"
CORRELATOR_TABLES = ("register-state", "till-state", "camera-state", "token-returns", "transactions", "store-feedback", "store-journeys")

# How long each data topic keeps what it holds. Frames are only worth seconds to the pipeline (the
# recorder keeps its own evidence); POS events are history the api's return checks and the risk
# models read back (120 days of a card's returns); alerts, verdicts and return decisions are the
# system of record and the models' training labels.
RETENTION_MS: dict[str, int | None] = {
    FRAMES: 1 * HOUR_MS,
    DETECTIONS: 1 * DAY_MS,
    POS: 180 * DAY_MS,
    ALERTS: None,
    FEEDBACK: None,
    RETURN_DECISIONS: None,
    CAMERA_EVENTS: 1 * DAY_MS,
    RETURNS_BY_TOKEN: 1 * DAY_MS,
    TRANSACTIONS: 1 * DAY_MS,
    STORE_STEPS: 1 * DAY_MS,
}
# Poison messages are kept long enough for someone to look at them after a long weekend.
DLQ_RETENTION_MS = 30 * DAY_MS


def dlq(topic: str) -> str:
    """Name of the dead-letter topic that keeps the poison messages of `topic`."""
    return f"{topic}.dlq"


def faust_internal_topics(app_id: str, tables: tuple[str, ...]) -> list[TopicSpec]:
    """Changelog topics a Faust app would declare itself (the leader topic is disabled): compacted,
    because they are the tables' state, not a history."""
    return [TopicSpec(f"{app_id}-{table}-changelog", compact=True, retention_ms=None) for table in tables]


def all_topics() -> list[TopicSpec]:
    """Every topic to create, data topics and their DLQs first."""
    specs = [TopicSpec(name, retention_ms=retention) for name, retention in RETENTION_MS.items()]
    specs += [TopicSpec(dlq(name), retention_ms=DLQ_RETENTION_MS) for name in RETENTION_MS]
    return specs + faust_internal_topics(CORRELATOR_APP_ID, CORRELATOR_TABLES)


def topic_spec(name: str) -> TopicSpec | None:
    """The definition of a topic by name, None for a topic this system does not define."""
    return next((spec for spec in all_topics() if spec.name == name), None)
