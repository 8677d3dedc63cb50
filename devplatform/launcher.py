"""The local platform launcher: start, check and stop everything, in order, by PID.

`shrinkwatch dev up` starts Apache Kafka (KRaft), a real redis-server, the local model server, a webhook
sink and the seven services, waits for each to be ready before the next, and writes the addresses it
chose to one runtime file (var/run/runtime.json) that services and tests read. Anything that fails
to start (a taken port, a missing binary, a service that never gets ready) ends `up` with a message
naming it, after stopping whatever had already been started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = ROOT / "var" / "run"
SERVICES = ("correlator", "inference", "notifier", "recorder", "pos", "api", "ingest")
# The services that scale out in one consumer group (replicas split the partitions; their state is in
# Kafka or Redis). The recorder keeps each camera's frames in memory beside that camera's alerts, and
# the api and pos serve one public port locally: one of each.
SCALABLE = ("correlator", "inference", "notifier")


def service_of(name: str) -> str:
    """The service a component runs: `inference-2` is a replica of `inference`."""
    base, _, number = name.rpartition("-")
    return base if number.isdigit() and base in SERVICES else name


class LaunchError(RuntimeError):
    """Startup failed; the message names the component and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def distinct_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` free ports, all different (the kernel may hand the same one out twice in a row)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): tells our process from a reused PID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_ours(component: dict) -> bool:
    """The recorded process is still running, and is the one we started (not a reused PID)."""
    return pid_alive(component["pid"]) and start_ticks(component["pid"]) == component.get("start_ticks")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours still "exists"; treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: services flush and commit on SIGTERM."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process of ours: this one's, unbuffered, quiet TensorFlow, no GPU."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **(extra or {})}


def spawn_logged(argv: list[str], log_path: Path, env: dict[str, str] | None = None, own_session: bool = False) -> subprocess.Popen:
    """A child process of ours, run from the project's root: its output appended to `log_path`, no
    standard input, no GPU, unbuffered. In its own session it outlives a terminal's Ctrl-C and is
    stopped by PID."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(argv, cwd=ROOT, env=child_env(env), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=own_session)

@dataclass
class Platform:
    """What `up` started; serialised to the runtime file."""

    run_dir: Path = DEFAULT_RUN_DIR
    store_config: Path = ROOT / "config" / "sample-store.yaml"
    models_dir: Path = ROOT / "models"
    api_port: int = 8080
    # The store-facing service (POS gateway, return authorization at the till); 0 picks a free port.
    pos_port: int = 0
    ingest_pace: str = "realtime"
    # 0 picks a free port; tests fix it to start a model server where a client already points.
    model_server_port: int = 0
    # Nodes of the local Kafka cluster: 1 for the demo and most tests, 3 (replication factor 3,
    # min.insync.replicas 2, as production) for the fault tests.
    brokers: int = 1
    # 0 picks free ports; tests fix it to start a broker where a service already points.
    kafka_port: int = 0
    # How often the model server looks for new model versions and config changes.
    model_poll_s: float = 2.0
    ready_timeout_s: float = 120.0
    # The api's users; None: one user per role with fresh passwords (see devplatform/devusers.py).
    users_file: Path | None = None
    # The POS gateway's keys; None: one fresh key per store (devplatform/devusers.py).
    pos_keys_file: Path | None = None
    # Processes per scalable service (SCALABLE): {"inference": 2} runs `inference` and `inference-2`
    # in one consumer group.
    replicas: dict[str, int] = field(default_factory=dict)
    # Files played by ingest start again at their end (a load that lasts as long as the run).
    ingest_loop_files: bool = False
    # Redis with its append-only file (fsync every write): what it acknowledged survives a kill.
    redis_appendonly: bool = False
    # Pages to one recipient within 5 minutes before the rest wait for a digest (the routing's
    # default is 5; a load test pages every incident on its own).
    page_burst_limit: int = 5
    components: dict[str, dict] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # What each component was started with (command, settings), to start it again after a kill;
    # never saved (secrets).
    _started_with: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict, repr=False)

    @property
    def runtime_file(self) -> Path:
        return self.run_dir / "runtime.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {"components": self.components, "env": self.env, "store_config": str(self.store_config), "api_port": self.api_port}
        tmp = self.runtime_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.runtime_file)

    # ---- starting ----------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a component (its log in the platform's log folder), recorded so that `down` stops it by PID."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        proc = spawn_logged(argv, log_path, env, own_session=True)
        kept = {key: value for key, value in self.components.get(name, {}).items() if key not in ("pid", "start_ticks", "log", "argv")}
        self.components[name] = {"pid": proc.pid, "start_ticks": start_ticks(proc.pid), "log": str(log_path), "argv": argv, **kept}
        self._started_with[name] = (argv, env)
        self.save()
        return proc

    def _wait(self, name: str, proc: subprocess.Popen, check, what: str, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or self.ready_timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LaunchError(f"{name} exited with code {proc.returncode} before it was ready; last log lines:\n{self.tail(name)}")
            if check():
                return
            time.sleep(0.2)
        raise LaunchError(f"{name} did not become ready ({what}) within {timeout_s:.0f}s; last log lines:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join("    " + line[:300] for line in path.read_text(errors="replace").splitlines()[-lines:])

    def _ready_file(self, name: str) -> Path:
        path = self.run_dir / f"{name}.ready.json"
        path.unlink(missing_ok=True)
        return path

    def start_broker(self) -> None:
        """A real Apache Kafka cluster of `brokers` KRaft nodes (each broker and controller) on free
        loopback ports, with every topic created as production defines it."""
        from devplatform import broker as kafka
        from services.shared.topicadmin import ensure_topics
        from services.shared.topics import all_topics, min_insync_replicas, replication_factor_for

        try:
            kafka.classpath()
        except kafka.KafkaSetupError as exc:
            raise LaunchError(str(exc)) from None
        factor = replication_factor_for(self.brokers)
        ports = distinct_free_ports(2 * self.brokers)
        if self.kafka_port:
            ports = [self.kafka_port, *(port for port in ports if port != self.kafka_port)][: 2 * self.brokers]
        nodes = [kafka.KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], self.run_dir / f"kafka-{i + 1}") for i in range(self.brokers)]
        cluster_id = kafka.new_cluster_id()
        formatting = []
        for node in nodes:
            shutil.rmtree(node.folder, ignore_errors=True)
            node.folder.mkdir(parents=True)
            node.config_file.write_text(kafka.server_properties(node, nodes, factor, min_insync_replicas(factor)))
            formatting.append(subprocess.Popen(kafka.storage_format_argv(node, cluster_id), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        for node, proc in zip(nodes, formatting, strict=True):
            try:
                output, _ = proc.communicate(timeout=self.ready_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise LaunchError(f"kafka: formatting {node.data_dir} took over {self.ready_timeout_s:.0f}s") from None
            if proc.returncode != 0:
                raise LaunchError(f"kafka: formatting {node.data_dir} failed (exit {proc.returncode}):\n{output.decode(errors='replace')[-2000:]}")
        bootstrap = ",".join(node.address for node in nodes)
        for node in nodes:
            name = self.broker_name(node.node_id)
            self.spawn(name, kafka.broker_argv(node))
            self.components[name].update(bootstrap_servers=bootstrap, address=node.address, node_id=node.node_id, folder=str(node.folder))
        self.env["SW_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        self.save()
        for node in nodes:
            self._wait_for_node(self.broker_name(node.node_id))
        try:
            problems = ensure_topics(bootstrap, factor, timeout=self.ready_timeout_s)
        except Exception as exc:  # any admin failure is a failed start, named
            raise LaunchError(f"kafka: creating the topics failed: {exc}") from exc
        if problems:
            raise LaunchError("kafka: topics with the wrong settings: " + "; ".join(problems))
        self._wait_for_topic_leaders([node.address for node in nodes], [spec.name for spec in all_topics()])

    def _wait_for_topic_leaders(self, addresses: list[str], names: list[str]) -> None:
        """Until every node's metadata has each topic with a leader for every partition: a client
        that bootstraps from any node right after `up` must find them."""
        from services.shared.topicadmin import admin_client

        admins = [admin_client(address, quiet=True) for address in addresses]

        def led(admin: Any) -> bool:
            try:
                found = admin.list_topics(timeout=2).topics
            except Exception:  # a node still catching up on metadata
                return False
            return all(name in found and found[name].partitions and all(p.leader >= 0 for p in found[name].partitions.values()) for name in names)

        deadline = time.monotonic() + self.ready_timeout_s
        while not all(led(admin) for admin in admins):
            if time.monotonic() > deadline:
                raise LaunchError(f"kafka: topics still without leaders after {self.ready_timeout_s:.0f}s")
            time.sleep(0.2)

    def broker_name(self, node_id: int) -> str:
        """`broker` for a one-node cluster, `broker-N` for the nodes of a larger one."""
        return "broker" if self.brokers == 1 else f"broker-{node_id}"

    def _wait_for_node(self, name: str) -> None:
        """Until the node answers metadata requests and sees every node of the cluster."""
        from services.shared.topicadmin import admin_client

        comp = self.components[name]
        admin = admin_client(comp["address"], quiet=True)

        def answers() -> bool:
            try:
                return len(admin.list_topics(timeout=1).brokers) == self.brokers
            except Exception:  # not up yet
                return False

        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not is_ours(comp):
                raise LaunchError(f"{name} exited before it was ready; last log lines:\n{self.tail(name)}")
            if answers():
                return
            time.sleep(0.2)
        raise LaunchError(f"{name} did not answer on {comp['address']} within {self.ready_timeout_s:.0f}s; last log lines:\n{self.tail(name)}")

    def kill_component(self, name: str) -> None:
        """SIGKILL, as a crash or a pulled plug: no flush, no controlled shutdown."""
        comp = self.components[name]
        if is_ours(comp):
            os.kill(comp["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(comp["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            _reap(comp["pid"])

    def restart_broker(self, name: str) -> None:
        """Start a stopped or killed node again on its ports and log folder, and wait until it answers."""
        comp = self.components[name]
        if is_ours(comp):
            raise LaunchError(f"{name} is still running (pid {comp['pid']})")
        self.spawn(name, comp["argv"])
        self._wait_for_node(name)

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise LaunchError("redis: the redis-server binary is not installed; run `make setup` (apt-get install redis-server)")
        port = free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.redis_appendonly else ["--appendonly", "no"]
        (self.run_dir / "redis").mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence, "--dir", str(self.run_dir / "redis"), "--daemonize", "no"]
        proc = self.spawn("redis", argv)
        self._wait("redis", proc, lambda: redis_pong(port), f"PING on port {port}")
        self.components["redis"].update(url=f"redis://127.0.0.1:{port}/0", port=port)
        self.env["SW_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        self.save()

    def start_model_server(self) -> None:
        self.await_model_server(self.launch_model_server())

    def launch_model_server(self) -> subprocess.Popen:
        """Start the model server without waiting: it loads its models while the broker starts."""
        config_file = self.models_dir / "models.config"
        if not config_file.exists():
            raise LaunchError(f"modelserver: no model config file at {config_file}")
        ready = self._ready_file("modelserver")
        argv = [sys.executable, "-m", "devplatform.modelserver", "--model-config-file", str(config_file),
                "--models-dir", str(self.models_dir), "--port", str(self.model_server_port or free_port()), "--poll-seconds", str(self.model_poll_s), "--ready-file", str(ready)]
        return self.spawn("modelserver", argv)

    def await_model_server(self, proc: subprocess.Popen) -> None:
        ready = self.run_dir / "modelserver.ready.json"
        self._wait("modelserver", proc, ready.exists, "models loaded")
        info = json.loads(ready.read_text())
        self.components["modelserver"].update(address=info["address"], models=info["models"])
        unserved = [name for name, versions in info["models"].items() if not versions]
        if unserved:
            errors = "; ".join(info.get("errors", {}).values()) or "no version folders"
            raise LaunchError(f"modelserver: no servable version of {', '.join(unserved)}: {errors} (build them with `make models`)")
        self.env["SW_MODEL_SERVER"] = info["address"]

    def start_webhook_sink(self) -> None:
        """The local receivers: a webhook endpoint that checks signatures, and an ntfy-compatible push server."""
        ready = self._ready_file("webhook-sink")
        record = self.run_dir / "webhook-deliveries.jsonl"
        record.unlink(missing_ok=True)
        # A fresh shared secret per start: the notifier signs with it, the sink verifies.
        self.env["SW_ROUTING_DEV_WEBHOOK_SECRET"] = secrets.token_urlsafe(24)
        argv = [sys.executable, "-m", "devplatform.webhooksink", "--record", str(record), "--ready-file", str(ready), f"--secret={self.env['SW_ROUTING_DEV_WEBHOOK_SECRET']}"]
        proc = self.spawn("webhook-sink", argv)
        self._wait("webhook-sink", proc, ready.exists, "listening")
        info = json.loads(ready.read_text())
        self.components["webhook-sink"].update(url=info["url"], ntfy=info["ntfy"], record=str(record))
        self.components["webhook-sink"]["argv"] = [*argv[:-1], "--secret=***"]  # the runtime file holds no secret
        self.save()

    def _dev_routing(self) -> Path:
        """The notifier's routing for the local platform: the on-call officer's phone (ntfy, snapshot
        attached) and HQ's signed webhook at once, the store manager if nobody acknowledges in 10 minutes."""
        sink = self.components["webhook-sink"]
        routing = {
            "dashboard_url": f"http://127.0.0.1:{self.api_port}",
            "recipients": {
                "officer": {"contacts": [{"type": "apprise", "name": "phone", "url": f"{sink['ntfy']}/lp-officer"}, {"type": "log"}]},
                "hq": {"contacts": [{"type": "webhook", "name": "webhook-sink", "url": sink["url"], "secret": "${SW_ROUTING_DEV_WEBHOOK_SECRET}"}]},
                "manager": {"contacts": [{"type": "apprise", "name": "phone", "url": f"{sink['ntfy']}/lp-manager"}]},
            },
            "routes": [{"name": "every-alert", "levels": [{"notify": ["officer", "hq"]}, {"after_min": 10, "notify": ["manager"]}]}],
            "limits": {"max_per_window": self.page_burst_limit, "window_s": 300},
        }
        path = self.run_dir / "notifier-routing.yaml"
        path.write_text(yaml.safe_dump(routing, sort_keys=False))
        return path

    def start_service(self, name: str) -> None:
        """Start a service (or a replica: `inference-2`) and wait for its /readyz."""
        proc = self.launch_service(name)
        self._wait_ready(name, proc)

    def launch_service(self, name: str) -> subprocess.Popen:
        """Start a service (or a replica) without waiting for it. The api and pos serve their routes
        on a public port and /metrics (and the OpenAPI document) on a health port of their own."""
        service = service_of(name)
        public = {"api": "SW_API_PORT", "pos": "SW_POS_PORT"}
        if service == "pos" and not self.pos_port:
            self.pos_port = free_port()
        port = self.api_port if service == "api" else self.pos_port if service == "pos" else free_port()
        health_port = free_port() if service in public else port
        env = {**self.env, "SW_STORE_CONFIG": str(self.store_config), "SW_HTTP_PORT": str(health_port), "SW_LOG_LEVEL": "INFO"}
        if service in public:
            env[public[service]] = str(port)
        if service == "api":
            env["SW_API_USERS_FILE"] = str(self.users_file or self._dev_users())
        if service == "pos":
            env["SW_POS_KEYS_FILE"] = str(self.pos_keys_file or self._dev_pos_keys())
            env["SW_POS_SECRETS_FILE"] = str(self._dev_pos_secrets())
            env["SW_POS_SQUARE_NOTIFICATION_URL"] = f"http://127.0.0.1:{port}/v1/pos/webhooks/square"
        if service == "correlator":
            # Each `up` formats a new Kafka cluster, so tables kept on disk from an earlier run
            # would be ahead of their (now empty) changelogs, which Faust refuses at start. Each
            # worker keeps its own (a restart after a kill finds its own again).
            data_dir = self.run_dir / ("correlator-data" if name == service else f"{name}-data")
            shutil.rmtree(data_dir, ignore_errors=True)
            env["SW_CORRELATOR_DATA_DIR"] = str(data_dir)
        if service == "ingest":
            env["SW_INGEST_PACE"] = self.ingest_pace
            env["SW_INGEST_LOOP_FILES"] = "true" if self.ingest_loop_files else "false"
        if service == "notifier":
            env["SW_NOTIFIER_ROUTING_FILE"] = str(self._dev_routing())
        proc = self.spawn(name, [sys.executable, "-m", f"services.{service}"], env)
        self.components[name].update(http=f"http://127.0.0.1:{port}", health=f"http://127.0.0.1:{health_port}")
        self.save()
        return proc

    def _launch_named(self, name: str) -> subprocess.Popen:
        """launch_service, with what stopped it (a store config the dev keys cannot be made from) named."""
        try:
            return self.launch_service(name)
        except LaunchError:
            raise
        except Exception as exc:
            raise LaunchError(f"{name} could not be started: {exc}") from exc

    def _wait_ready(self, name: str, proc: subprocess.Popen, timeout_s: float | None = None) -> None:
        url = self.components[name]["http"] + "/readyz"
        self._wait(name, proc, lambda: http_ready(url), f"GET {url}", timeout_s)

    def _wait_all_ready(self, launched: list[tuple[str, subprocess.Popen, float]], echo) -> None:
        """Wait for services started together, each in a thread of its own (waiting only reads); the
        first failure is raised once every wait has ended. They share the machine's cores while they
        start, so each may take as long as a start alone would, times the starts per core."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        timeout_s = self.ready_timeout_s * max(1, -(-len(launched) // cores))
        failures: list[BaseException] = []

        def wait(name: str, proc: subprocess.Popen, started: float) -> None:
            try:
                self._wait_ready(name, proc, timeout_s)
                echo(f"  {name:<13} ready in {time.monotonic() - started:4.1f}s  pid {proc.pid}")
            except BaseException as exc:  # handed to the caller below
                failures.append(exc)

        waiters = [threading.Thread(target=wait, args=item, name=f"wait-{item[0]}") for item in launched]
        for thread in waiters:
            thread.start()
        for thread in waiters:
            thread.join()
        if failures:
            raise next((f for f in failures if isinstance(f, LaunchError)), failures[0])

    def service_components(self) -> list[str]:
        """Every service process to start, in order: each service, then its replicas."""
        counts = {s: max(1, self.replicas.get(s, 1)) if s in SCALABLE else 1 for s in SERVICES}
        return [f"{s}-{n}" if n > 1 else s for s in SERVICES for n in range(1, counts[s] + 1)]

    def restart(self, name: str, wait: bool = True) -> None:
        """Start a killed or stopped component again, as it was started (same command, settings, ports
        and folders), and wait until it is ready again: a crashed process brought back by its supervisor."""
        comp = self.components[name]
        if is_ours(comp):
            raise LaunchError(f"{name} is still running (pid {comp['pid']})")
        if name.split("-")[0] == "broker":
            self.restart_broker(name)
            return
        argv, env = self._started_with.get(name, (comp["argv"], None))
        ready = Path(argv[argv.index("--ready-file") + 1]) if "--ready-file" in argv else None
        if ready is not None:
            ready.unlink(missing_ok=True)
        proc = self.spawn(name, argv, env)
        if not wait:
            return
        if name == "redis":
            self._wait(name, proc, lambda: redis_pong(comp["port"]), "PING")
        elif ready is not None:
            self._wait(name, proc, ready.exists, "ready")
        elif "http" in comp:
            self._wait_ready(name, proc)

    def signal(self, name: str, signum: int) -> None:
        """Send a signal to a running component (SIGSTOP/SIGCONT: a process that hangs, then goes on)."""
        comp = self.components[name]
        if is_ours(comp):
            os.kill(comp["pid"], signum)

    def _dev_users(self) -> Path:
        from devplatform.devusers import write_dev_users
        from services.shared.storeconfig import load_store_config

        return write_dev_users(self.run_dir, [s.id for s in load_store_config(self.store_config).stores])

    def _dev_pos_keys(self) -> Path:
        from devplatform.devusers import write_dev_pos_keys
        from services.shared.storeconfig import load_store_config

        return write_dev_pos_keys(self.run_dir, [s.id for s in load_store_config(self.store_config).stores])

    def _dev_pos_secrets(self) -> Path:
        from devplatform.devusers import write_dev_pos_secrets
        from services.shared.storeconfig import load_store_config

        shops = [s.pos.shopify_shop_domain for s in load_store_config(self.store_config).stores if s.pos.shopify_shop_domain]
        return write_dev_pos_secrets(self.run_dir, shops)

    def up(self, echo=print) -> None:
        if self.runtime_file.exists() and any(is_ours(c) for c in _load(self.runtime_file).get("components", {}).values()):
            raise LaunchError(f"a platform is already running (see {self.runtime_file}); run `shrinkwatch dev down` first")
        if not port_is_free(self.api_port):
            raise LaunchError(f"api: port {self.api_port} is already taken by another process; free it or pass --api-port")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.components, self.env = {}, {}
        # One evidence folder for the recorder (writes) and the api (reads); S3 in production. Emptied
        # at each start like the broker and Redis: a deterministic alert id of an earlier run would
        # otherwise find that run's evidence.
        shutil.rmtree(self.run_dir / "evidence", ignore_errors=True)
        self.env["SW_EVIDENCE_URL"] = str(self.run_dir / "evidence")
        try:
            # The model server loads its models while the broker starts; the services, which need
            # all four, start together once they are up; ingest last, so the cameras' first frames
            # find every consumer ready (the demo's POS script is timed from the first frame).
            began = time.monotonic()
            model_server = self.launch_model_server()
            steps = [("broker", self.start_broker), ("redis", self.start_redis), ("webhook-sink", self.start_webhook_sink),
                     ("modelserver", lambda: self.await_model_server(model_server))]
            for name, start in steps:
                started = began if name == "modelserver" else time.monotonic()
                start()
                pids = [str(c["pid"]) for n, c in self.components.items() if n == name or (name == "broker" and n.startswith("broker-"))]
                echo(f"  {name:<13} ready in {time.monotonic() - started:4.1f}s  pid {' '.join(pids)}")
            services = self.service_components()
            for batch in ([s for s in services if service_of(s) != "ingest"], [s for s in services if service_of(s) == "ingest"]):
                self._wait_all_ready([(name, self._launch_named(name), time.monotonic()) for name in batch], echo)
            self.save()
        except BaseException:
            self.down(echo=lambda *_: None)
            raise

    # ---- status and stopping -------------------------------------------------------------------

    def down(self, echo=print) -> None:
        data = _load(self.runtime_file) if self.runtime_file.exists() else {"components": self.components}
        components = list(data.get("components", {}).items())
        # The services first (they flush and commit into the broker), the Kafka nodes last and all at
        # once: a node stopped alone waits for a controller quorum its stopped peers no longer give.
        brokers = [(name, comp) for name, comp in components if name.split("-")[0] == "broker"]
        others = [(name, comp) for name, comp in reversed(components) if (name, comp) not in brokers]
        for name, comp in others:
            if not is_ours(comp):
                echo(f"  {name} (pid {comp['pid']}) was not running")
                continue
            stop_pid(comp["pid"])
            echo(f"  stopped {name} (pid {comp['pid']})")
        running = [(name, comp) for name, comp in brokers if is_ours(comp)]
        stoppers = [threading.Thread(target=stop_pid, args=(comp["pid"],)) for _, comp in running]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for name, comp in brokers:
            echo(f"  stopped {name} (pid {comp['pid']})" if (name, comp) in running else f"  {name} (pid {comp['pid']}) was not running")
        self.runtime_file.unlink(missing_ok=True)

    def status(self) -> dict[str, dict]:
        if not self.runtime_file.exists():
            return {}
        result = {}
        for name, comp in _load(self.runtime_file)["components"].items():
            alive = is_ours(comp)
            ready = alive and (http_ready(comp["http"] + "/readyz") if "http" in comp else True)
            result[name] = {**comp, "alive": alive, "ready": ready}
        return result


def _load(path: Path) -> dict:
    return json.loads(path.read_text())

