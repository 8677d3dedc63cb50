"""Create the system's topics on a broker, and check existing ones against their definition.

`python -m services.shared.topicadmin ensure --bootstrap-servers HOST:PORT` is what the local
launcher and compose's `kafka-init` run (Kubernetes' KafkaTopics are generated from the same
definitions by devplatform/deploycheck.py): it creates what is missing with
the settings of services/shared/topics.py and reports every topic that exists with other settings
(a topic made by hand with one partition, say) instead of silently living with it. Services call
`check_topics` at start for the topics they read, so a wrong topic is named in their log too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from services.shared.topics import TopicSpec, all_topics, replication_factor_for, topic_spec

# The settings a wrong value of which changes behaviour (lost data, refused writes, broken joins).
CHECKED_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas", "max.message.bytes")


class TopicSettingsError(RuntimeError):
    """Topics exist with settings other than their definition; the message names each one."""


def admin_client(bootstrap_servers: str, quiet: bool = False) -> AdminClient:
    """`quiet`: no librdkafka log lines, for probes that expect a broker that is not up yet."""
    config: dict[str, str | int | float | bool] = {"bootstrap.servers": bootstrap_servers, "socket.connection.setup.timeout.ms": 5000}
    if quiet:
        config["log_level"] = 0
    else:
        from services.shared.kafka import client_logger

        config["logger"] = client_logger()  # type: ignore[assignment]
    return AdminClient(config)


def broker_count(admin: AdminClient, timeout: float = 10.0) -> int:
    return len(admin.list_topics(timeout=timeout).brokers)


def differences(admin: AdminClient, specs: Iterable[TopicSpec], replication_factor: int, timeout: float = 15.0) -> list[str]:
    """One line per topic that is missing or whose partitions, replicas or configs differ."""
    specs = list(specs)
    metadata = admin.list_topics(timeout=timeout)
    problems: list[str] = []
    present = []
    for spec in specs:
        topic = metadata.topics.get(spec.name)
        if topic is None or topic.error is not None:
            problems.append(f"{spec.name}: missing")
            continue
        present.append(spec)
        if len(topic.partitions) != spec.partitions:
            problems.append(f"{spec.name}: {len(topic.partitions)} partitions, expected {spec.partitions}")
        replicas = {len(p.replicas) for p in topic.partitions.values()}
        if replicas and min(replicas) < replication_factor:
            problems.append(f"{spec.name}: replication factor {min(replicas)}, expected {replication_factor}")
    if not present:
        return problems
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in present], request_timeout=timeout)
    for resource, future in futures.items():
        spec = next(s for s in present if s.name == resource.name)
        actual = {name: entry.value for name, entry in future.result(timeout=timeout).items()}
        for name, expected in spec.configs(replication_factor).items():
            if actual.get(name) != expected:
                problems.append(f"{spec.name}: {name}={actual.get(name)}, expected {expected}")
    return problems


def ensure_topics(bootstrap_servers: str, replication_factor: int | None = None, specs: Iterable[TopicSpec] | None = None,
                  echo: Callable[[str], object] = lambda _line: None, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; returns the differences of those that already existed (empty: all good).

    `replication_factor` None: three copies, or as many as the cluster has brokers.
    """
    specs = list(specs if specs is not None else all_topics())
    admin = admin_client(bootstrap_servers)
    factor = replication_factor or replication_factor_for(broker_count(admin, timeout))
    existing = admin.list_topics(timeout=timeout).topics
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        futures = admin.create_topics([NewTopic(s.name, s.partitions, factor, config=s.configs(factor)) for s in missing], request_timeout=timeout)
        for future in futures.values():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # made meanwhile by another ensure
                    raise
        echo(f"created {len(missing)} topics (replication factor {factor})")
    return differences(admin, specs, factor, timeout) if len(missing) < len(specs) else []


def check_topics(bootstrap_servers: str, names: Iterable[str], timeout: float = 15.0) -> list[str]:
    """What differs in the named topics from their definition, for a service's start (names this
    system does not define, e.g. a test's own topic, are passed over)."""
    specs = [spec for spec in (topic_spec(name) for name in names) if spec is not None]
    if not specs:
        return []
    admin = admin_client(bootstrap_servers)
    return differences(admin, specs, replication_factor_for(broker_count(admin, timeout)), timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create ShrinkWatch's Kafka topics, or check them, against services/shared/topics.py.")
    parser.add_argument("command", choices=["ensure", "check"], help="ensure: create what is missing, then check; check: only report")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--replication-factor", type=int, default=None, help="default: 3, or the number of brokers if fewer")
    args = parser.parse_args(argv)
    try:
        if args.command == "ensure":
            problems = ensure_topics(args.bootstrap_servers, args.replication_factor, echo=print)
        else:
            admin = admin_client(args.bootstrap_servers)
            problems = differences(admin, all_topics(), args.replication_factor or replication_factor_for(broker_count(admin)))
    except KafkaException as exc:
        print(f"topics: the broker at {args.bootstrap_servers} did not answer: {exc}", file=sys.stderr)
        return 1
    for line in problems:
        print(f"topic with the wrong settings: {line}", file=sys.stderr)
    if not problems:
        print(f"{len(all_topics())} topics as defined")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
