"""The local platform's Apache Kafka: the real broker, resolved with Maven and run as a KRaft node.

`make setup` runs `python -m devplatform.broker fetch`, which resolves the pinned release
(devplatform/kafka/pom.xml) and its dependencies from Maven Central into a cache of the project's
own (~/.cache/shrinkwatch/kafka-<version>, or $SW_KAFKA_HOME), once per machine. The launcher then
writes one server.properties per node, formats each node's log folder with Kafka's storage tool and
runs `java kafka.Kafka` per node, every node both broker and controller, on free loopback ports. What
is here only builds files and command lines; starting, waiting and stopping by PID is the launcher's.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG_CONFIG = KAFKA_DIR / "log4j2.yaml"
# Heap per node: a local node holds little; a benchmark's bursts fit with room to spare.
JVM_OPTIONS = ("-Xms128m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")


class KafkaSetupError(RuntimeError):
    """Java, Maven or the Kafka release is missing or broken; the message says what to run."""


def pom_property(pom: Path, name: str) -> str:
    """A property of a pom's <properties> (where a pinned version is written once)."""
    found = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", pom.read_text())
    if found is None:
        raise KafkaSetupError(f"{pom} names no <{name}>")
    return found.group(1)


def kafka_version() -> str:
    """The pinned release, read from the pom (the one place it is written)."""
    return pom_property(POM, "kafka.version")


def kafka_home() -> Path:
    override = os.environ.get("SW_KAFKA_HOME")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "shrinkwatch" / f"kafka-{kafka_version()}"


def java_binary() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaSetupError("kafka: no `java` on PATH; Kafka 4 needs Java 17 or newer (`make setup` installs openjdk-17-jre-headless)")
    return java


def _fetched_from() -> str:
    """What a complete fetch records: the pom's digest, so an edited pom (a new artifact) is fetched again."""
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def _fetched(libs: Path) -> bool:
    marker = libs / ".complete"
    return marker.exists() and _fetched_from() in marker.read_text()


def classpath() -> str:
    """The broker's classpath; raises KafkaSetupError with what to run when it was never fetched."""
    libs = kafka_home() / "libs"
    if not _fetched(libs):
        raise KafkaSetupError(f"kafka: Apache Kafka {kafka_version()} as devplatform/kafka/pom.xml lists it is not in {libs}; "
                              "run `make setup` (or `python -m devplatform.broker fetch`)")
    return str(libs / "*")


def fetch(echo: Callable[[str], object] = print) -> Path:
    """Resolve the pinned Kafka release and its dependencies into kafka_home()/libs (once)."""
    home = kafka_home()
    libs = home / "libs"
    if _fetched(libs):
        echo(f"Apache Kafka {kafka_version()}: already in {libs}")
        return libs
    java_binary()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError("kafka: no `mvn` on PATH; `make setup` installs Debian's maven package")
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    echo(f"Apache Kafka {kafka_version()}: resolving the broker and its dependencies from Maven Central into {libs} (about 45 MB, once)")
    argv = [mvn, "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}", f"-Dmaven.repo.local={home / 'm2'}"]
    # Maven prints a line per artifact it downloads: progress for a terminal and for CI alike.
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or not list(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaSetupError(f"kafka: Maven could not resolve Apache Kafka {kafka_version()} (exit {result.returncode}); see its output above")
    (staging / ".complete").write_text(f"{kafka_version()} {_fetched_from()}\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    echo(f"Apache Kafka {kafka_version()}: {len(list(libs.glob('*.jar')))} jars in {libs}")
    return libs


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what `random-uuid` prints).

    Never one that starts with "-": the storage tool would read it as an option (1 start in 64 failed).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker and controller of a local cluster."""

    node_id: int
    port: int
    controller_port: int
    folder: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.folder / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"


def server_properties(node: KafkaNode, nodes: list[KafkaNode], replication_factor: int, min_insync: int) -> str:
    """The node's settings: production's, but on loopback and with the cluster's size of replication."""
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": node.data_dir,
        # Topics come only from services/shared/topics.py: a typo must fail, not make a new topic.
        "auto.create.topics.enable": "false",
        "default.replication.factor": replication_factor,
        "min.insync.replicas": min_insync,
        "offsets.topic.replication.factor": replication_factor,
        "transaction.state.log.replication.factor": replication_factor,
        "transaction.state.log.min.isr": min_insync,
        "share.coordinator.state.topic.replication.factor": replication_factor,
        "share.coordinator.state.topic.min.isr": min_insync,
        # Fewer partitions for the consumer-offsets and transaction-state topics than production's 50:
        # the first group to join (the first idempotent producer) waits for all of them to be created,
        # which a test pays at every fresh broker.
        "offsets.topic.num.partitions": 6,
        "transaction.state.log.num.partitions": 6,
        # The first member's group starts at once instead of waiting 3 s for others to join.
        "group.initial.rebalance.delay.ms": 0,
        "num.partitions": 6,
        "message.max.bytes": 4 * 1024 * 1024 + 1024,
        "replica.fetch.max.bytes": 4 * 1024 * 1024 + 1024,
        # A stopped node's leadership moves at once (controlled shutdown) rather than after a timeout.
        "controlled.shutdown.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def storage_format_argv(node: KafkaNode, cluster_id: str) -> list[str]:
    # A short-lived tool: the quick compiler only (starts in about half the time).
    return [java_binary(), "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp", classpath(),
            "kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", cluster_id, "-c", str(node.config_file)]


def broker_argv(node: KafkaNode) -> list[str]:
    return [java_binary(), *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG_CONFIG}", f"-Dkafka.logs.dir={node.folder / 'logs'}",
            "-cp", classpath(), "kafka.Kafka", str(node.config_file)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The local platform's Apache Kafka (run by the launcher: `shrinkwatch dev up`).")
    parser.add_argument("command", choices=["fetch", "where"], help="fetch: resolve the pinned release with Maven (once); where: print its folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch()
        else:
            print(kafka_home())
    except KafkaSetupError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
