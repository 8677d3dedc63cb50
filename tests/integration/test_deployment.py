"""The deployment files against the code that runs in them.

docker-compose.yml is read as the Compose Specification's own loader resolves it (compose-go, built
from the Go module proxy by devplatform/deploycheck.py); k8s/ as each overlay renders (kustomize's own
library, built the same way), the YAML the API server would take.
A setting the code adds and a deployment forgets, a service with no deployable, a probe on a port the
service does not serve, or a setting with a typo fails here rather than in a chain's cluster.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from devplatform.deploycheck import (
    DeployCheckError,
    check_dashboards,
    check_dockerfiles,
    check_rules,
    compose_project,
    crd_validators,
    dockerfile_stages,
    kafka_topics_manifest,
    keda_crds,
    overlays,
    render,
    rendered,
    strimzi_crds,
    unlisted_manifests,
    validate_documents,
    validate_manifests,
)
from services.notifier.routing import DEFAULT_SECRET_ENV_PREFIX
from services.shared.settings import ServiceSettings
from services.shared.topics import PARTITIONS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ENTRYPOINT = ["python", "-m"]
# The settings class each service reads at start (`load_settings(...)` in its __main__).
SETTINGS = {
    "api": "services.api.__main__:ApiSettings",
    "correlator": "services.correlator.settings:CorrelatorSettings",
    "inference": "services.inference.__main__:InferenceSettings",
    "ingest": "services.ingest.__main__:IngestSettings",
    "notifier": "services.notifier.__main__:NotifierSettings",
    "pos": "services.pos.__main__:PosSettings",
    "recorder": "services.recorder.settings:RecorderSettings",
}
# Variables read outside the settings classes: the notifier's routing file names its secrets by prefix.
READ_BY_PREFIX = {"notifier": DEFAULT_SECRET_ENV_PREFIX}
# Defaults that only make sense on a developer's machine, beside every default naming a loopback
# address: a deployment must set them (a health port of 0 is a random one; var/ is the image's
# read-only, ephemeral file system).
LOCAL_ONLY = ("SW_HTTP_PORT", "SW_EVIDENCE_URL", "SW_CORRELATOR_DATA_DIR")
LOOPBACK = ("127.0.0.1", "localhost")


def _settings(service: str) -> type[ServiceSettings]:
    module, _, name = SETTINGS[service].partition(":")
    return getattr(importlib.import_module(module), name)


def _env_names(settings: type[ServiceSettings]) -> dict[str, bool]:
    """SW_* name -> whether its default would do in a deployment (there is one, and it is not local)."""
    prefix = settings.model_config.get("env_prefix", "")
    names: dict[str, bool] = {}
    for name, field in settings.model_fields.items():
        env_name = f"{prefix}{name}".upper()
        if field.default_factory is not None:
            names[env_name] = True
            continue
        default = field.default.get_secret_value() if isinstance(field.default, SecretStr) else field.default
        local = env_name in LOCAL_ONLY or any(host in str(default) for host in LOOPBACK)
        names[env_name] = default is not PydanticUndefined and not local
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_project(ROOT / "docker-compose.yml")


BASE = ROOT / "k8s" / "base"


@pytest.fixture(scope="module", params=[path.name for path in overlays()])
def k8s(request) -> list[dict[str, Any]]:
    """What one overlay renders: every drift test holds for each installation's shape."""
    return rendered(ROOT / "k8s" / "overlays" / request.param)


def _compose_service(compose: dict[str, Any], service: str) -> dict[str, Any]:
    found = [s for s in compose["services"].values() if s.get("command") == [f"services.{service}"]]
    assert len(found) == 1, f"docker-compose.yml: {len(found)} services run services.{service} (want 1)"
    return found[0]


def _k8s_container(k8s: list[dict[str, Any]], service: str) -> dict[str, Any]:
    found = [c for doc in k8s if doc["kind"] in ("Deployment", "StatefulSet")
             for c in doc["spec"]["template"]["spec"]["containers"] if c.get("args") == [f"services.{service}"]]
    assert len(found) == 1, f"k8s/: {len(found)} containers run services.{service} (want 1)"
    return found[0]


def _configmap(k8s: list[dict[str, Any]], name: str) -> dict[str, str]:
    (data,) = [doc.get("data") or {} for doc in k8s if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name]
    return data


def _k8s_env(k8s: list[dict[str, Any]], container: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """(name -> value or source, for `env`; the names that come whole from ConfigMaps with envFrom)."""
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}
    from_maps = {key for ref in container.get("envFrom", []) if "configMapRef" in ref for key in _configmap(k8s, ref["configMapRef"]["name"])}
    return env, from_maps


def test_every_service_has_one_compose_service_and_one_k8s_container_running_it(compose, k8s):
    runnable = sorted(path.parent.name for path in (ROOT / "services").glob("*/__main__.py"))
    assert runnable == sorted(SETTINGS), "a service was added or removed: update SETTINGS here, and its deployables"
    for service in runnable:
        assert _compose_service(compose, service)["image"] == compose["services"]["api"]["image"]
        assert _k8s_container(k8s, service)["image"].rsplit(":", 1)[1] == compose["services"]["api"]["image"].rsplit(":", 1)[1]


def test_the_image_builds_from_the_lock_runs_as_the_manifests_user_and_takes_the_models_from_their_volume(k8s):
    """deploy/Dockerfile as BuildKit parses it (no Docker engine here to build it), held to the
    deployments: the Python pyproject asks for, the locked dependencies only, the uid the pods
    run as, /models a volume where the manifests mount the models, `python -m` as the entrypoint."""
    [stage] = dockerfile_stages()
    commands = [(c["instruction"], c["text"]) for c in stage["commands"]]
    python = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text())
    assert python and stage["base"] == f"python:{python.group(1)}-slim"
    runs = [text for instruction, text in commands if instruction == "run"]
    lock_copied = next(i for i, (instruction, text) in enumerate(commands) if instruction == "copy" and "uv.lock" in text.split())
    syncs = [i for i, (instruction, text) in enumerate(commands) if instruction == "run" and "uv sync" in text]
    assert syncs and min(syncs) > lock_copied and all("--frozen" in commands[i][1] and "--no-dev" in commands[i][1] for i in syncs)
    assert [text for text in runs if "pip install" in text] == ['RUN pip install "uv==${UV_VERSION}"'], "only uv, pinned, outside the lock"
    [user] = [text.split()[1] for instruction, text in commands if instruction == "user"][-1:]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    pods = [doc["spec"]["template"]["spec"] for doc in k8s if doc["kind"] == "Deployment"
            and any(c["image"].endswith("/shrinkwatch:" + c["image"].rsplit(":", 1)[1]) for c in doc["spec"]["template"]["spec"]["containers"])]
    assert pods and {pod["securityContext"]["runAsUser"] for pod in pods} == {int(uid)}
    volumes = [text for instruction, text in commands if instruction == "volume"]
    assert volumes == ['VOLUME ["/models"]']
    mounts = {m["mountPath"] for pod in pods for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] == "models"}
    assert mounts == {"/models"}
    [entrypoint] = [text for instruction, text in commands if instruction == "entrypoint"]
    assert entrypoint == "ENTRYPOINT " + json.dumps(IMAGE_ENTRYPOINT), "the image's entrypoint must take a module name as args"


def test_a_dockerfile_buildkit_refuses_or_warns_about_is_named_with_its_line(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim as build\nMAINTAINER someone\nCMD [\"python\"]\n")
    problems = check_dockerfiles([broken])
    assert any(":1: FromAsCasing:" in p for p in problems) and any(":2: MaintainerDeprecated:" in p for p in problems), problems
    broken.write_text("FROM\n")
    assert any("FROM requires" in p for p in check_dockerfiles([broken]))
    with pytest.raises(DeployCheckError, match="FROM requires"):
        dockerfile_stages(broken)


def test_every_setting_a_deployment_sets_is_one_its_service_reads(compose, k8s):
    """A typo (SW_REDIS_URI) or a setting the code dropped would be ignored silently at start."""
    shared_k8s: set[str] = set()
    read_anywhere: set[str] = set()
    for service in SETTINGS:
        names = set(_env_names(_settings(service)))
        read_anywhere |= names
        prefix = READ_BY_PREFIX.get(service, "\0")
        compose_env = {k for k in _compose_service(compose, service).get("environment") or {} if k.startswith("SW_")}
        assert {k for k in compose_env - names if not k.startswith(prefix)} == set(), f"docker-compose.yml {service}: set but never read"
        env, from_maps = _k8s_env(k8s, _k8s_container(k8s, service))
        assert {k for k in set(env) - names if k.startswith("SW_") and not k.startswith(prefix)} == set(), f"k8s {service}: set but never read"
        shared_k8s |= {k for k in from_maps if k.startswith("SW_")}
    assert shared_k8s - read_anywhere == set(), "k8s shrinkwatch-env: set but read by no service"


def test_every_setting_without_a_default_fit_for_a_deployment_is_set_wherever_the_service_runs(compose, k8s):
    for service in SETTINGS:
        names = _env_names(_settings(service))
        needed = {name for name, usable in names.items() if not usable}
        compose_env = set(_compose_service(compose, service).get("environment") or {})
        assert needed - compose_env == set(), f"docker-compose.yml {service}: not set"
        env, from_maps = _k8s_env(k8s, _k8s_container(k8s, service))
        assert needed - set(env) - from_maps == set(), f"k8s {service}: not set"


def test_probes_and_ports_are_the_ports_each_service_serves(compose, k8s):
    shared = _configmap(k8s, "shrinkwatch-env")
    public = {"api": "SW_API_PORT", "pos": "SW_POS_PORT"}
    for service in SETTINGS:
        compose_service = _compose_service(compose, service)
        health_port = compose_service["environment"]["SW_HTTP_PORT"]
        check = " ".join(compose_service["healthcheck"]["test"])
        assert f"127.0.0.1:{health_port}/healthz" in check or f"127.0.0.1:{health_port}/readyz" in check, f"docker-compose.yml {service}: healthcheck"
        container = _k8s_container(k8s, service)
        env, _ = _k8s_env(k8s, container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["health"]) == str(env.get("SW_HTTP_PORT", shared["SW_HTTP_PORT"])), f"k8s {service}: health port"
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "health"}, f"k8s {service}: {probe}"
        if service in public:
            assert str(ports["http"]) == str(env[public[service]]) == str(compose_service["environment"][public[service]]), f"{service}: public port"
            (k8s_service,) = [doc for doc in k8s if doc["kind"] == "Service" and doc["metadata"]["name"] == service]
            assert [p["targetPort"] for p in k8s_service["spec"]["ports"]] == ["http"], f"k8s Service {service}"


def test_a_compose_file_with_a_dependency_on_a_service_it_does_not_define_is_refused_with_the_loaders_reason(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump({"services": {"api": {"image": "busybox", "depends_on": ["redis"]}}}))
    with pytest.raises(DeployCheckError, match='depends on undefined service "redis"'):
        compose_project(broken)


def test_a_compose_file_with_a_field_the_specification_does_not_have_is_refused(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump({"services": {"api": {"image": "busybox", "restart_policy": "always"}}}))
    with pytest.raises(DeployCheckError, match="restart_policy"):
        compose_project(broken)


@pytest.fixture(scope="module")
def custom_resources() -> dict:
    """Strimzi's and KEDA's CRDs of the pinned releases, as validators."""
    return crd_validators(strimzi_crds() + keda_crds())


def test_every_overlay_renders_and_is_valid_against_the_named_versions_api_schemas_and_the_pinned_crds(custom_resources):
    assert [path.name for path in overlays()] == ["production", "trial"]
    assert unlisted_manifests() == []
    for overlay in overlays():
        count, errors = validate_documents([(overlay.name, render(overlay))], custom=custom_resources)
        assert count >= 50 and errors == [], "\n".join(map(str, errors))


def test_a_manifest_the_base_does_not_list_is_named(tmp_path, monkeypatch):
    import devplatform.deploycheck as deploycheck

    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("resources: [listed.yaml]\n")
    (base / "listed.yaml").write_text("{}\n")
    (base / "forgotten.yaml").write_text("{}\n")
    monkeypatch.setattr(deploycheck, "BASE", base)
    monkeypatch.setattr(deploycheck, "ROOT", tmp_path)
    assert unlisted_manifests() == ["base/forgotten.yaml"]


def test_the_trial_overlay_keeps_one_copy_of_every_topic_and_runs_the_model_server_without_a_gpu():
    """The trial's patches reach every resource they are meant for, whatever topics.py adds."""
    trial = rendered(ROOT / "k8s" / "overlays" / "trial")
    topics = [doc["spec"] for doc in trial if doc["kind"] == "KafkaTopic"]
    assert len(topics) == len(kafka_topics_manifest().split("\n---\n")) - 1
    assert {(spec["replicas"], spec["config"]["min.insync.replicas"]) for spec in topics} == {(1, "1")}
    (pool,) = [doc for doc in trial if doc["kind"] == "KafkaNodePool"]
    assert pool["spec"]["replicas"] == 1
    (server,) = [doc["spec"]["template"]["spec"] for doc in trial if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "tf-serving"]
    assert "nvidia.com/gpu" not in json.dumps(server)
    production = rendered(ROOT / "k8s" / "overlays" / "production")
    assert {doc["spec"]["replicas"] for doc in production if doc["kind"] == "KafkaTopic"} == {3}


def test_a_patch_that_matches_nothing_is_refused_with_kustomizes_reason(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(BASE, overlay)}]\npatches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n"
        "      metadata: {name: no-such-service, namespace: shrinkwatch}\n      spec: {replicas: 2}\n")
    with pytest.raises(DeployCheckError, match="no-such-service"):
        render(overlay)


def test_the_kafka_topics_are_the_ones_topics_py_defines():
    """One definition of the topics: the launcher, compose's kafka-init and Strimzi's KafkaTopics."""
    assert (BASE / "kafka" / "topics.yaml").read_text() == kafka_topics_manifest(), \
        "k8s/base/kafka/topics.yaml differs: `python -m devplatform.deploycheck topics > k8s/base/kafka/topics.yaml`"


def test_a_custom_resource_with_an_unknown_field_or_a_missing_one_is_refused(tmp_path, custom_resources):
    topic = yaml.safe_load((BASE / "kafka" / "topics.yaml").read_text().split("---", 2)[1])
    topic["spec"]["partitionz"] = 6
    kafka = next(d for d in yaml.safe_load_all((BASE / "kafka" / "kafka.yaml").read_text()) if d["kind"] == "Kafka")
    del kafka["spec"]["kafka"]["listeners"][0]["tls"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all([topic, kafka]))
    _, errors = validate_manifests([broken], custom=custom_resources)
    assert any(e.resource.startswith("KafkaTopic/") and "partitionz" in e.message for e in errors), errors
    assert any(e.resource == "Kafka/shrinkwatch" and e.path == "spec.kafka.listeners.0" and "'tls' is a required property" in e.message for e in errors), errors


def test_a_manifest_with_a_wrong_type_an_unknown_field_or_an_unknown_kind_is_refused_with_where(tmp_path):
    deployment = yaml.safe_load((BASE / "correlator.yaml").read_text())
    deployment["spec"]["replicas"] = "2"
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all([deployment, {"apiVersion": "apps/v1", "kind": "Deployement", "metadata": {"name": "x"}}]))
    count, errors = validate_manifests([broken])
    assert count == 2
    found = {(e.resource, e.path) for e in errors}
    assert ("Deployment/correlator", "spec.replicas") in found
    assert any(e.path == "spec.template.spec.containers.0" and "imagePullPolice" in e.message for e in errors)
    assert any(e.resource == "Deployement/x" and "no schema" in e.message for e in errors)


def _readers_of(field: str) -> set[str]:
    return {service for service in SETTINGS if field in _settings(service).model_fields}


def _allowed_names(policy: dict[str, Any]) -> set[str]:
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    selector = peer["podSelector"]
    if "matchLabels" in selector:
        return {selector["matchLabels"]["app.kubernetes.io/name"]}
    (expression,) = selector["matchExpressions"]
    return set(expression["values"])


def test_network_policies_let_in_exactly_the_services_whose_settings_use_each_backend(k8s):
    policies = {doc["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name"): doc for doc in k8s if doc["kind"] == "NetworkPolicy"}
    assert _allowed_names(policies["redis"]) == _readers_of("redis_url"), "k8s/base/networkpolicies.yaml: Redis's clients"
    assert _allowed_names(policies["tf-serving"]) == _readers_of("model_server"), "k8s/base/networkpolicies.yaml: the model server's clients"
    assert any(doc["spec"]["podSelector"] == {} and doc["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in doc["spec"]
               for doc in k8s if doc["kind"] == "NetworkPolicy"), "no default deny"


def test_each_scaled_consumer_scales_on_its_own_group_within_its_partitions_and_has_a_disruption_budget(k8s):
    groups = {service: _settings(service).model_fields[field].default
              for service, field in (("inference", "inference_group_id"), ("notifier", "notifier_group_id"), ("correlator", "correlator_app_id"))}
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc["spec"] for doc in k8s if doc["kind"] == "ScaledObject"}
    assert set(scaled) == set(groups)
    deployments = {doc["metadata"]["name"]: doc for doc in k8s if doc["kind"] == "Deployment"}
    budgets = {doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for doc in k8s if doc["kind"] == "PodDisruptionBudget"}
    for name, spec in scaled.items():
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == groups[name], name
        assert spec["maxReplicaCount"] <= PARTITIONS, f"{name}: members beyond the partitions sit idle"
        assert "replicas" not in deployments[name]["spec"], f"{name}: `replicas` would fight the autoscaler at each apply"
        assert name in budgets, f"{name}: no PodDisruptionBudget"


def test_the_alerting_rules_parse_as_prometheus_parses_them():
    files = sorted((ROOT / "deploy" / "monitoring").glob("*.rules.yaml"))
    assert files and check_rules(files) == []


def test_a_rule_with_bad_promql_or_an_unknown_field_is_refused_with_prometheus_reason(tmp_path):
    bad_expr = tmp_path / "expr.rules.yaml"
    bad_expr.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum by (camera (x)"}]}]}))
    unknown = tmp_path / "field.rules.yaml"
    unknown.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "B", "expr": "up == 0", "severity": "page"}]}]}))
    errors = check_rules([bad_expr, unknown])
    assert any("expr.rules.yaml" in e and "parse" in e for e in errors), errors
    assert any("field.rules.yaml" in e and "severity" in e for e in errors), errors


def _exposed(family: Any, labels: set[str]) -> dict[str, set[str]]:
    """The series names a scrape shows for a metric family (a counter's with _total), with its labels."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
    return {family.name + suffix: labels for suffix in suffixes}


def _served_metrics() -> dict[str, set[str]]:
    """Every series name the services' /metrics show -> its label names."""
    from prometheus_client import REGISTRY

    from services.ingest.camera import CAMERA_STATES
    from services.ingest.service import IngestCollector

    for module in ("services.correlator.agents", "services.inference.service", "services.inference.stages.base", "services.notifier.dispatcher",
                   "services.notifier.service", "services.recorder.service", "services.pos.returns", "services.pos.gateway.routes"):
        importlib.import_module(module)  # each registers its metrics on import
    served: dict[str, set[str]] = {}
    collectors = REGISTRY._names_to_collectors  # prometheus_client keeps no public map to a metric's label names
    for family in REGISTRY.collect():
        collector = collectors.get(family.name) or collectors.get(family.name + "_total")
        served |= _exposed(family, set(getattr(collector, "_labelnames", ())))
    # ingest's camera series are made at each scrape from its cameras: one camera's worth here.
    snapshot: dict[str, Any] = {"state": CAMERA_STATES[0], "dropped": {"queue_full": 0}}
    camera = type("Service", (), {"cameras": lambda self: {"cam-1": collections.defaultdict(float, snapshot)}})()
    for family in IngestCollector(camera).collect():
        served |= _exposed(family, {label for sample in family.samples for label in sample.labels})
    return served


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every alerting rule and dashboard panel that ships."""
    found = []
    for path in sorted((ROOT / "deploy" / "monitoring").glob("*.rules.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [(f"{path.name} {rule['alert']}", rule["expr"]) for rule in group["rules"]]
    for path in sorted((ROOT / "deploy" / "monitoring" / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        found += [(f"{path.name} {panel['title']}", target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    return found


def test_every_metric_and_label_a_rule_or_a_dashboard_reads_is_one_the_services_or_kafkas_exporter_serve():
    """A renamed metric or label would leave an alert silent, or a panel empty, for good."""
    served = _served_metrics()
    kafka_exporter = {"kafka_consumergroup_lag": {"consumergroup", "topic", "partition"}}
    queries = _queries()
    assert len(queries) > 40
    for where, expr in queries:
        names = set(re.findall(r"\b((?:sw|kafka)_[a-z_]+)\b", expr))
        labels: set[str] = set()
        for metric in names:
            assert metric in served or metric in kafka_exporter, f"{where}: {metric} is not a series the services serve"
            labels |= served.get(metric, set()) | kafka_exporter.get(metric, set())
        used = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        used |= set(re.findall(r"\{(?:[^}]*,)?\s*([a-z_]+)\s*=~?", expr))
        assert used - labels - {"le"} == set(), f"{where}: labels {used - labels} are not on {names}"


def test_the_dashboards_decode_with_grafanas_schema_and_a_wrong_field_is_refused(tmp_path):
    files = sorted((ROOT / "deploy" / "monitoring" / "grafana").glob("*.json"))
    assert len(files) == 7 and check_dashboards(files) == []
    board = json.loads(files[0].read_text())
    board["panels"][0]["gridPos"]["w"] = "wide"
    board["refreshEvery"] = "30s"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(board))
    (error,) = check_dashboards([broken])
    assert "broken.json" in error and ("gridPos" in error or "refreshEvery" in error), error


def test_the_dashboards_are_the_ones_devplatform_makes():
    from devplatform import dashboards

    committed = {path.name: path.read_text() for path in (ROOT / "deploy" / "monitoring" / "grafana").glob("*.json")}
    assert committed == dashboards.files(), "deploy/monitoring/grafana differs: `python -m devplatform.dashboards`"
