"""Typed settings shared by every service, read from SW_* environment variables at start.

Each service subclasses `ServiceSettings` with its own fields; a bad value fails at start with a
message that names the variable, never later in the middle of a stream.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from services.shared.evidence import EvidenceStore

T = TypeVar("T", bound="ServiceSettings")


class FileNamedByEnvSource(PydanticBaseSettingsSource):
    """Settings read from a file whose path an environment variable names; nothing when it is unset.

    Where it stands among the sources decides what wins; every value it gives still passes the
    settings' own validation.
    """

    env_var: ClassVar[str]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(self.env_var)
        return self.values_from(Path(path)) if path else {}

    def values_from(self, path: Path) -> dict[str, Any]:
        raise NotImplementedError


class RuntimeFileSource(FileNamedByEnvSource):
    """Addresses from the local platform's runtime file (SW_RUNTIME_FILE), below real env vars.

    Lets a developer run one service by hand against `shrinkwatch dev up`'s broker, Redis and model
    server without copying their random ports: `SW_RUNTIME_FILE=var/run/runtime.json python -m services.api`.
    """

    env_var = "SW_RUNTIME_FILE"

    def values_from(self, path: Path) -> dict[str, Any]:
        try:
            env = json.loads(path.read_text()).get("env", {})
        except (OSError, ValueError) as exc:
            raise ValueError(f"SW_RUNTIME_FILE {path}: cannot read the platform's runtime file ({exc})") from None
        fields = self.settings_cls.model_fields
        values = {key.removeprefix("SW_").lower(): value for key, value in env.items()}
        return {name: value for name, value in values.items() if name in fields}


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SW_", extra="ignore", frozen=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings, RuntimeFileSource(settings_cls), dotenv_settings, file_secret_settings

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", min_length=3)
    store_config: Path = Path("config/sample-store.yaml")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Port of the /healthz, /readyz and /metrics endpoints; 0 picks a free one.
    http_host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)
    # Event times further ahead of this host's clock are refused: a skewed camera or POS clock
    # would otherwise push watermarks into the future.
    max_clock_skew_s: float = Field(300.0, gt=0)


class RedisSettings(ServiceSettings):
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")


class WebSettings(RedisSettings):
    """For the services with a public HTTP port (the HQ api, the store-facing pos service)."""

    # The proxies (addresses or CIDR networks, JSON list: ["10.0.0.0/8"]) whose X-Forwarded-For is
    # believed: the Ingress or load balancer in front. Empty: each client is the address that
    # connected. Sign-in limits and the audit log go by the client's address, so set it wherever a
    # proxy is in front, or every user shares the proxy's address.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an address or a CIDR network") from None
        return values


class EvidenceSettings(RedisSettings):
    """For the services that read or write evidence (recorder, api, notifier)."""

    # Where evidence goes: a folder, file:///path, or s3://bucket/prefix (any S3-compatible store:
    # set the endpoint for MinIO and the like; without keys the usual AWS credential chain is used).
    evidence_url: str = "var/evidence"
    evidence_s3_endpoint: str = ""
    evidence_s3_key: SecretStr | None = None
    evidence_s3_secret: SecretStr | None = None

    def evidence_store(self) -> EvidenceStore:
        from services.shared.evidence import evidence_store_from_settings

        return evidence_store_from_settings(self.evidence_url, self.evidence_s3_endpoint, self.evidence_s3_key, self.evidence_s3_secret)


class SettingsError(SystemExit):
    """Raised at start when the environment holds an invalid setting."""


M = TypeVar("M", bound=BaseModel)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's usual quote of the offending line: the files these errors
    are about (users, POS keys and secrets, notification routing) may hold secrets."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return where + "; ".join(part[:200] for part in (exc.problem, exc.context) if part)
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.position + 1}: {exc.reason}"
    return type(exc).__name__


def load_yaml_file(path: Path, model: type[M], what: str) -> M:
    """A YAML file named by a setting, validated at start: a bad one stops the service with one line
    per problem, each naming the file and the field (`what` says which file it is, e.g. "users file")."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return model.model_validate(data)
    except OSError as exc:
        raise SystemExit(f"{what} {path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"{what} {path}: not valid YAML: {yaml_problem(exc)}") from None
    except ValidationError as exc:
        lines = [f"{what} {path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise SystemExit("\n".join(lines)) from None


def load_settings(cls: type[T]) -> T:
    """Build settings or exit with one line per bad SW_ variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid setting {prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("\n".join(lines)) from None
