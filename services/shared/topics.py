"""Every Kafka topic the system uses, with its partition count.

One list, because the local dev broker cannot create topics on demand (no CreateTopics) and Faust
needs changelog topics with as many partitions as the topics they are keyed like.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTITIONS = 6


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = PARTITIONS


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

CORRELATOR_APP_ID = "sw-correlator"
CORRELATOR_TABLES = ("register-state", "till-state", "camera-state", "token-returns", "transactions", "store-feedback")


def dlq(topic: str) -> str:
    """Name of the dead-letter topic that keeps the poison messages of `topic`."""
    return f"{topic}.dlq"


def faust_internal_topics(app_id: str, tables: tuple[str, ...]) -> list[TopicSpec]:
    """Changelog topics a Faust app would declare itself on a real broker (the leader topic is disabled)."""
    return [TopicSpec(f"{app_id}-{table}-changelog") for table in tables]


def all_topics() -> list[TopicSpec]:
    """Every topic to pre-create, data topics and their DLQs first."""
    data = [FRAMES, DETECTIONS, POS, ALERTS, FEEDBACK, RETURN_DECISIONS, CAMERA_EVENTS, RETURNS_BY_TOKEN, TRANSACTIONS]
    specs = [TopicSpec(name) for name in data] + [TopicSpec(dlq(name)) for name in data]
    return specs + faust_internal_topics(CORRELATOR_APP_ID, CORRELATOR_TABLES)
