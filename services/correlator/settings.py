"""Correlator settings (SW_ prefix), read once when the Faust app is built."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.shared.settings import ServiceSettings


class CorrelatorSettings(ServiceSettings):
    # The window around a refund in which someone must have been at the customer side of the counter.
    refund_presence_before_s: float = Field(5.0, ge=0, le=600)
    refund_presence_after_s: float = Field(5.0, ge=0, le=600)
    # A refund whose camera stays silent this long is decided on what it covered (a gap: not alerted).
    refund_max_wait_s: float = Field(120.0, gt=0)
    # Presence is forwarded on every change and at least this often (it is also the watermark).
    presence_heartbeat_ms: int = Field(1000, ge=100, le=60000)
    correlator_app_id: str = "sw-correlator"
    # Faust's own data folder (it creates one even for in-memory tables).
    correlator_data_dir: Path = Path("var/correlator")
