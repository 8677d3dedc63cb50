"""Model versions in TF Serving layout: `models/<name>/<version>/saved_model.pb` plus our metadata.

A version folder appears all at once: it is written under a hidden name beside its final place and
renamed into place when complete, so a polling model server never loads a half-written version.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

METADATA_FILE = "shrinkwatch-model.json"


def next_version(model_root: Path) -> int:
    existing = [int(p.name) for p in model_root.iterdir() if p.name.isdigit()] if model_root.is_dir() else []
    return max(existing) + 1 if existing else 1


def publish(models_dir: Path, name: str, build: Callable[[Path], None], metadata: dict, version: int | None = None) -> Path:
    """Write a new version of `name` with `build(folder)`, add the metadata file, and move it into place."""
    model_root = models_dir / name
    model_root.mkdir(parents=True, exist_ok=True)
    version = version or next_version(model_root)
    final = model_root / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists: model versions are immutable, publish a new one")
    staging = model_root / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build(staging)
        write_metadata(staging, {"name": name, "version": version, **metadata})
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def read_metadata(version_dir: Path) -> dict:
    return json.loads((version_dir / METADATA_FILE).read_text())


def write_metadata(version_dir: Path, metadata: dict) -> None:
    (version_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
