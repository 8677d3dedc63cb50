"""The evidence store: each alert's frames, snapshot, clip and POS events, in a folder or a bucket.

The recorder writes it and the api reads it. Any fsspec URL works: a local folder ("var/evidence",
"file:///srv/evidence") for development, "s3://bucket/prefix" for production on any S3-compatible
store (AWS S3, MinIO, Ceph), with the endpoint and keys passed as `storage_options`.

Layout, one folder per alert:

    <root>/<store_id>/<alert_id>/manifest.json
                                 frames/<sequence:010d>.jpg
                                 snapshot.jpg
                                 clip.avi

The manifest is written last (atomically where the filesystem allows), so a manifest that says
"complete" or "partial" lists only files that exist; "pending" means the recorder is still waiting
for the camera to pass the alert's window (or stopped while waiting).
"""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import SecretStr

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
STATUSES = ("complete", "partial", "pending")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NAME = re.compile(r"[A-Za-z0-9_./-]+")


class EvidenceNotFound(LookupError):
    """No such alert, or no such file of an alert."""


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a store's backend raises when it is down or refuses: OSError, and botocore's own errors
    (s3fs translates HTTP errors into OSError but lets connection errors through untranslated)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - s3fs (and so botocore) is a dependency
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


# Failures of the storage itself (disk full, bucket unreachable, access denied): retry later.
STORE_ERRORS: tuple[type[BaseException], ...] = _backend_errors()


def check_id(value: str, what: str = "id") -> str:
    """A store or alert id that is safe as one path segment."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not path-safe (letters, digits, '_', '.', '-'; at most 128; no '..')")
    return value


def check_name(name: str) -> str:
    """A file name inside an alert's folder: relative, no '..', only [A-Za-z0-9_./-]."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"evidence file name {name!r} is not allowed (relative, [A-Za-z0-9_./-], no '..' or empty segments)")
    return name


def frame_name(sequence: int) -> str:
    return f"frames/{sequence:010d}.jpg"


def manifest_files(manifest: dict) -> list[str]:
    """Every file a manifest lists (frames, snapshot, clip, then each other camera's frames and clip), in that order."""
    names = [f["name"] for f in manifest.get("frames") or []]
    names += [part["name"] for part in (manifest.get("snapshot"), manifest.get("clip")) if part]
    for other in manifest.get("other_cameras") or []:
        names += [f["name"] for f in other.get("frames") or []]
        names += [other["clip"]["name"]] if other.get("clip") else []
    return names


def _mtime_ms(info: dict) -> int | None:
    """Modification time of an fsspec `ls(detail=True)` entry: local files have `mtime`, S3 objects `LastModified`."""
    if info.get("mtime") is not None:
        return int(float(info["mtime"]) * 1000)
    modified = info.get("LastModified")
    if modified is not None and hasattr(modified, "timestamp"):
        return int(modified.timestamp() * 1000)
    return None


class EvidenceStore:
    """Evidence of alerts, by store and alert id, on any fsspec filesystem."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"EvidenceStore({self.url!r})"

    # ---- paths -------------------------------------------------------------------------------

    def _store_dir(self, store_id: str) -> str:
        return f"{self.root}/{check_id(store_id, 'store id')}"

    def _alert_dir(self, store_id: str, alert_id: str) -> str:
        return f"{self._store_dir(store_id)}/{check_id(alert_id, 'alert id')}"

    def _path(self, store_id: str, alert_id: str, name: str) -> str:
        return f"{self._alert_dir(store_id, alert_id)}/{check_name(name)}"

    def _put(self, path: str, data: bytes) -> None:
        if self.local:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    # ---- files -------------------------------------------------------------------------------

    def write(self, store_id: str, alert_id: str, name: str, data: bytes) -> None:
        self._put(self._path(store_id, alert_id, name), data)

    def write_files(self, store_id: str, alert_id: str, files: dict[str, bytes]) -> None:
        """Several files of one alert at once (concurrent uploads on S3)."""
        paths = {self._path(store_id, alert_id, name): data for name, data in files.items()}
        if not paths:
            return
        if self.local:
            for folder in {p.rsplit("/", 1)[0] for p in paths}:
                self.fs.makedirs(folder, exist_ok=True)
        self.fs.pipe(paths)

    def read(self, store_id: str, alert_id: str, name: str) -> bytes:
        path = self._path(store_id, alert_id, name)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise EvidenceNotFound(f"no evidence file {name} for alert {alert_id} of store {store_id}") from None
        except IsADirectoryError:
            raise EvidenceNotFound(f"{name} of alert {alert_id} is a folder, not a file") from None

    # ---- manifests ---------------------------------------------------------------------------

    def write_manifest(self, manifest: dict) -> None:
        """Write an alert's manifest.json, after its files: a reader never sees a manifest naming a
        file not yet there. Local folders get it atomically (a temporary file moved into place); an
        S3 PUT is atomic by itself."""
        store_id, alert_id = manifest.get("store_id", ""), manifest.get("alert_id", "")
        if manifest.get("status") not in STATUSES:
            raise ValueError(f"manifest status {manifest.get('status')!r} is not one of {STATUSES}")
        for name in manifest_files(manifest):
            check_name(name)
        path = self._path(store_id, alert_id, MANIFEST)
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        if self.local:
            tmp = self._path(store_id, alert_id, f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp")
            self._put(tmp, data)
            self.fs.mv(tmp, path)
        else:
            self._put(path, data)

    def manifest(self, store_id: str, alert_id: str) -> dict | None:
        """The alert's manifest, or None when it has none; ValueError when it is not a JSON object."""
        try:
            raw = self.read(store_id, alert_id, MANIFEST)
        except EvidenceNotFound:
            return None
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise ValueError(f"manifest of alert {alert_id} of store {store_id} is not valid JSON") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"manifest of alert {alert_id} of store {store_id} is not a JSON object")
        return manifest

    # ---- listing and deleting ----------------------------------------------------------------

    def _entries(self, path: str) -> list[dict]:
        # Listings are never served from s3fs's cache: another process (the recorder, the api) writes.
        self.fs.invalidate_cache(path)
        try:
            return self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []

    def alert_ids(self, store_id: str) -> list[str]:
        """Ids of the store's alerts with evidence (a folder each), sorted."""
        ids = []
        for entry in self._entries(self._store_dir(store_id)):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "directory" and _ID.fullmatch(name) and ".." not in name:
                ids.append(name)
        return sorted(ids)

    def delete(self, store_id: str, alert_id: str) -> None:
        path = self._alert_dir(store_id, alert_id)
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(self._store_dir(store_id))

    def _age_ms(self, store_id: str, alert_id: str) -> int | None:
        """When the alert happened: its manifest's raised_time_ms (or written_ms); for a folder
        without a readable manifest (a crash mid-write), its newest file's modification time."""
        try:
            manifest = self.manifest(store_id, alert_id)
        except ValueError:
            manifest = None
        if manifest is not None:
            stamp = manifest.get("raised_time_ms") or manifest.get("written_ms")
            if isinstance(stamp, int | float) and stamp > 0:
                return int(stamp)
        times = [t for t in (_mtime_ms(e) for e in self.fs.find(self._alert_dir(store_id, alert_id), detail=True).values()) if t is not None]
        return max(times) if times else None

    def expire(self, store_id: str, older_than_ms: int) -> int:
        """Delete the store's alerts raised before `older_than_ms` (epoch ms); returns how many."""
        deleted = 0
        for alert_id in self.alert_ids(store_id):
            age = self._age_ms(store_id, alert_id)
            if age is not None and age < older_than_ms:
                self.delete(store_id, alert_id)
                deleted += 1
        return deleted

    # ---- download ----------------------------------------------------------------------------

    def package(self, store_id: str, alert_id: str, extra: dict[str, bytes]) -> bytes:
        """One zip of the alert's evidence: every file its manifest lists, manifest.json, and `extra`
        (the api adds alert.json and audit.json). EvidenceNotFound without a manifest, or when a
        listed file is gone."""
        manifest = self.manifest(store_id, alert_id)
        if manifest is None:
            raise EvidenceNotFound(f"no evidence for alert {alert_id} of store {store_id}")
        names = manifest_files(manifest)
        for name in extra:
            check_name(name)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name in names:
                # JPEG and MJPEG are compressed already; deflating them again only costs time.
                zf.writestr(name, self.read(store_id, alert_id, name), compress_type=zipfile.ZIP_STORED)
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True), compress_type=zipfile.ZIP_DEFLATED)
            for name, data in extra.items():
                if name == MANIFEST or name in names:
                    raise ValueError(f"extra file {name} would replace a file of the evidence")
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
        return buffer.getvalue()


def evidence_store_from_settings(url: str, endpoint: str = "", key: SecretStr | None = None, secret: SecretStr | None = None) -> EvidenceStore:
    """The store from the SW_EVIDENCE_* settings, the same way in every service.

    `endpoint` (an S3-compatible server such as MinIO) and the keys apply to s3:// URLs; without
    keys, s3fs uses the usual AWS credential chain (environment, instance role).
    """
    options: dict[str, Any] = {}
    # An empty key counts as none (compose passes unset variables as empty strings).
    key_value, secret_value = (key.get_secret_value() if key else ""), (secret.get_secret_value() if secret else "")
    if url.startswith(("s3://", "s3a://")):
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        if key_value:
            options["key"] = key_value
        if secret_value:
            options["secret"] = secret_value
    elif endpoint or key_value or secret_value:
        raise ValueError(f"SW_EVIDENCE_S3_* settings are set but SW_EVIDENCE_URL {url!r} is not an s3:// URL")
    return EvidenceStore(url, options)

