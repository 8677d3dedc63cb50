"""Correlator settings (SW_ prefix), read when the worker is configured, never at import.

What loss-prevention tunes (rules, windows, thresholds) is in the store config file's `rules:`
sections (services/shared/rulesconfig.py), taken live; these are the worker's own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from services.shared.settings import ServiceSettings


class CorrelatorSettings(ServiceSettings):
    # How long a presence sample vouches for what it reports; a longer silence is a coverage gap.
    coverage_gap_ms: int = Field(3000, ge=500, le=60000)
    # Register history kept for POS events that arrive late.
    register_retention_s: float = Field(900.0, ge=60, le=86400)
    correlator_app_id: str = "sw-correlator"
    # Faust's data folder: the RocksDB tables live here (rebuilt from their changelogs when lost).
    correlator_data_dir: Path = Path("var/correlator")
    # rocksdb (production and tests) or memory (quick experiments: state only in the changelog).
    table_store: Literal["rocksdb", "memory"] = "rocksdb"
    # How often the store config file is checked for edits (0: only at start).
    config_poll_s: float = Field(2.0, ge=0, le=3600)
