"""The deployment files checked by real tools: `python -m devplatform.deploycheck` (`make deploy-check`).

- docker-compose.yml is loaded by the Compose Specification's own Go loader (compose-go, the library
  `docker compose` is built on; tools/deploycheck/cmd/composecheck): schema, interpolation, every
  profile and the consistency checks. The tool is built once from the Go module proxy with the
  versions tools/deploycheck/go.sum pins, and kept under ~/.cache/shrinkwatch/deploycheck/.

- Every Kubernetes manifest under k8s/ is validated against the JSON schemas of the Kubernetes
  API (OpenAPI) of a named version, strict (an unknown field is an error, as `kubectl apply
  --validate=strict` has it), from the schemas the `kubernetes-validate` package ships.

The drift tests (tests/integration/test_deployment.py) read the resolved project it prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "deploycheck"
CACHE = Path(os.environ.get("SW_TOOLS_CACHE", Path.home() / ".cache" / "shrinkwatch" / "deploycheck"))
BUILD_TIMEOUT_S = 900
# The oldest Kubernetes minor the manifests are held to (supported upstream until 2026-06, and
# still what many managed clusters run); `--kubernetes-version` checks another.
KUBERNETES_VERSION = "1.33.0"


class DeployCheckError(RuntimeError):
    """A deployment file a real tool refused, or a tool that could not be built (with why)."""


def _sources_digest(name: str) -> str:
    digest = hashlib.sha256()
    for path in [TOOLS / "go.mod", TOOLS / "go.sum", *sorted((TOOLS / "cmd" / name).glob("*.go"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def tool(name: str, echo: Any = print) -> Path:
    """The built tool `tools/deploycheck/cmd/<name>`, built now if these sources never were."""
    target = CACHE / _sources_digest(name) / name
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise DeployCheckError(f"{name}: the Go toolchain (`go`) is not on PATH; it builds the deployment checkers from tools/deploycheck")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    # go.sum pins every module; the Go module proxy serves them. GOTOOLCHAIN=local: a version that
    # needs a newer Go says so instead of downloading a toolchain.
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
    echo(f"building {name} (Go, once; modules from the Go proxy)...")
    started = time.monotonic()
    try:
        done = subprocess.run([go, "build", "-o", str(partial), f"./cmd/{name}"], cwd=TOOLS, env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeployCheckError(f"{name}: `go build` took over {BUILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise DeployCheckError(f"{name}: `go build` failed:\n{done.stderr.strip()[-3000:]}")
    partial.rename(target)
    echo(f"built {name} in {time.monotonic() - started:.0f}s -> {target}")
    return target


def compose_project(compose_file: Path, env: dict[str, str] | None = None, echo: Any = print) -> dict[str, Any]:
    """The project as the Compose loader resolves it (services, volumes, networks), or DeployCheckError
    with the loader's own message."""
    checker = tool("composecheck", echo)
    # Only what the file interpolates from: the caller's environment would change the result.
    done = subprocess.run([str(checker), str(compose_file)], capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ.get("PATH", ""), **(env or {})})
    if done.returncode != 0:
        raise DeployCheckError(done.stderr.strip() or f"composecheck exited {done.returncode}")
    return json.loads(done.stdout)


@dataclass(frozen=True)
class ManifestError:
    file: str
    resource: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file} {self.resource}: {self.path or '(top)'}: {self.message}"


def _kubernetes_schemas(version: str) -> Path:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    path = Path(str(folder))
    if not path.is_dir():
        raise DeployCheckError(f"no Kubernetes {version} schemas in the kubernetes-validate package (it has 1.25.0 to its own release's version)")
    return path


def _schema_file_name(document: dict[str, Any]) -> str:
    """kind-group-version.json, the schema files' naming: apps/v1 Deployment -> deployment-apps-v1.json."""
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(document.get("apiVersion", "")))
    return f"{str(document.get('kind', '')).lower()}-{api_version}.json"


def validate_manifests(files: list[Path], version: str = KUBERNETES_VERSION) -> tuple[int, list[ManifestError]]:
    """Every document of `files` against its kind's schema; returns (documents, errors). A kind with
    no schema is an error: a typo in apiVersion or kind would otherwise pass unchecked."""
    schemas = _kubernetes_schemas(version)
    definitions = Resource.from_contents(json.loads((schemas / "_definitions.json").read_text()))
    validators: dict[str, jsonschema.protocols.Validator | None] = {}
    errors: list[ManifestError] = []
    count = 0
    for file in files:
        shown = str(file.relative_to(ROOT)) if file.is_relative_to(ROOT) else str(file)
        try:
            documents = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            errors.append(ManifestError(shown, "-", "", f"not YAML: {exc}"))
            continue
        for document in documents:
            count += 1
            name = f"{document.get('kind', '?')}/{(document.get('metadata') or {}).get('name', '?')}"
            schema_name = _schema_file_name(document)
            if schema_name not in validators:
                path = schemas / schema_name
                if path.exists():
                    schema = json.loads(path.read_text())
                    registry: Registry = Resource.from_contents(schema) @ Registry()
                    validators[schema_name] = jsonschema.Draft202012Validator(schema, registry=definitions @ registry)
                else:
                    validators[schema_name] = None
            validator = validators[schema_name]
            if validator is None:
                errors.append(ManifestError(shown, name, "", f"no schema for {document.get('apiVersion')} {document.get('kind')} in Kubernetes {version}"))
                continue
            for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
                errors.append(ManifestError(shown, name, ".".join(map(str, error.absolute_path)), error.message))
    return count, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devplatform.deploycheck", description=__doc__.splitlines()[0])
    parser.add_argument("--compose-file", type=Path, default=ROOT / "docker-compose.yml")
    parser.add_argument("--manifests", type=Path, default=ROOT / "k8s", help="a folder of Kubernetes manifests (*.yaml)")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    try:
        project = compose_project(args.compose_file)
        result["compose"] = {"ok": True, "services": sorted(project["services"])}
        print(f"compose: {args.compose_file.name} resolves: {len(project['services'])} services, {len(project.get('volumes') or {})} volumes")
    except DeployCheckError as exc:
        result["compose"] = {"ok": False, "error": str(exc)}
        print(f"compose: {exc}", file=sys.stderr)
    files = sorted(args.manifests.rglob("*.yaml"))
    try:
        count, errors = validate_manifests(files, args.kubernetes_version)
    except DeployCheckError as exc:
        count, errors = 0, [ManifestError(str(args.manifests), "-", "", str(exc))]
    for error in errors:
        print(f"k8s: {error}", file=sys.stderr)
    print(f"k8s: {count} resources in {len(files)} files against Kubernetes {args.kubernetes_version} (strict): {len(errors)} errors")
    result["k8s"] = {"ok": not errors, "resources": count, "kubernetes_version": args.kubernetes_version, "errors": [str(e) for e in errors]}
    ok = all(part["ok"] for part in result.values())
    print(json.dumps({"ok": ok, **result}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
