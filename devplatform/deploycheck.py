"""The deployment files checked by real tools: `python -m devplatform.deploycheck` (`make deploy-check`).

- docker-compose.yml is loaded by the Compose Specification's own Go loader (compose-go, the library
  `docker compose` is built on; tools/deploycheck/cmd/composecheck): schema, interpolation, every
  profile and the consistency checks. The tool is built once from the Go module proxy with the
  versions tools/deploycheck/go.sum pins, and kept under ~/.cache/shrinkwatch/deploycheck/.

The drift tests (tests/integration/test_deployment.py) read the resolved project it prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "deploycheck"
CACHE = Path(os.environ.get("SW_TOOLS_CACHE", Path.home() / ".cache" / "shrinkwatch" / "deploycheck"))
BUILD_TIMEOUT_S = 900


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devplatform.deploycheck", description=__doc__.splitlines()[0])
    parser.add_argument("--compose-file", type=Path, default=ROOT / "docker-compose.yml")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    try:
        project = compose_project(args.compose_file)
        result["compose"] = {"ok": True, "services": sorted(project["services"])}
        print(f"compose: {args.compose_file.name} resolves: {len(project['services'])} services, {len(project.get('volumes') or {})} volumes")
    except DeployCheckError as exc:
        result["compose"] = {"ok": False, "error": str(exc)}
        print(f"compose: {exc}", file=sys.stderr)
    ok = all(part["ok"] for part in result.values())
    print(json.dumps({"ok": ok, **result}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
