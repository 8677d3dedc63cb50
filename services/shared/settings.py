"""Typed settings shared by every service, read from SW_* environment variables at start.

Each service subclasses `ServiceSettings` with its own fields; a bad value fails at start with a
message that names the variable, never later in the middle of a stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

T = TypeVar("T", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SW_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", min_length=3)
    store_config: Path = Path("config/sample-store.yaml")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Port of the /healthz, /readyz and /metrics endpoints; 0 picks a free one.
    http_host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)


class SettingsError(SystemExit):
    """Raised at start when the environment holds an invalid setting."""


def load_settings(cls: type[T]) -> T:
    """Build settings or exit with one line per bad SW_ variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid setting {prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("\n".join(lines)) from None
