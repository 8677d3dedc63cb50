"""Topics and tables of the correlator."""

from __future__ import annotations

from services.correlator.app import app
from services.shared import topics

detections_topic = app.topic(topics.DETECTIONS, key_serializer="raw", value_serializer="raw")
# POS events and register presence share keys ("store:register") and partitions, so one agent
# sees both for a register, in one partition, with that register's state.
register_events_topic = app.topic(topics.POS, topics.REGISTER_PRESENCE, key_serializer="raw", value_serializer="raw")
register_presence_topic = app.topic(topics.REGISTER_PRESENCE, key_serializer="raw", value_serializer="raw")
alerts_topic = app.topic(topics.ALERTS, key_serializer="raw", value_serializer="raw")

register_state = app.Table("register-state", default=None, partitions=topics.PARTITIONS, key_type=str)


def dlq_topic(source: str):
    return app.topic(topics.dlq(source), key_serializer="raw", value_serializer="raw")
