"""Recorder settings (SW_ prefix), read at start."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.recorder.service import RecorderOptions
from services.shared.settings import EvidenceSettings


class RecorderSettings(EvidenceSettings):
    # redis_url: camera status for the dashboard (hash sw:cameras:status, services/shared/cameras.py).
    recorder_group_id: str = "sw-recorder"
    recorder_batch_size: int = Field(64, ge=1, le=1000)
    # Seconds of each camera's frames kept (capture time), and at most this many MiB of JPEG per camera.
    # An alert can come well after its window: a refund is decided once the camera has passed the
    # window (seconds behind under load), or after the correlator's max wait (120 s) when the camera
    # stalls. With 30 s, `make chaos` found a third of refund alerts' frames gone under load.
    recorder_buffer_s: float = Field(150.0, gt=0, le=600)
    recorder_buffer_max_mib: float = Field(64.0, gt=0, le=4096)
    # An alert's window is its evidence refs widened by these.
    recorder_before_s: float = Field(5.0, ge=0, le=300)
    recorder_after_s: float = Field(5.0, ge=0, le=300)
    # Wall-clock seconds a pending alert waits without progress from its camera before it is written as it is.
    recorder_max_wait_s: float = Field(20.0, gt=0, le=3600)
    recorder_pos_retention_s: float = Field(3600.0, gt=0, le=7 * 86400)
    recorder_pos_max_events: int = Field(50_000, ge=100)
    recorder_retention_sweep_s: float = Field(3600.0, gt=0)
    # How often the store config file is checked for edits (0: only at start).
    recorder_config_poll_s: float = Field(2.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _window_fits_buffer(self) -> RecorderSettings:
        if self.recorder_before_s + self.recorder_after_s >= self.recorder_buffer_s:
            raise ValueError(f"recorder_before_s + recorder_after_s ({self.recorder_before_s + self.recorder_after_s:g}) must be less than "
                             f"recorder_buffer_s ({self.recorder_buffer_s:g}), or no window fits in the buffer")
        return self

    def options(self) -> RecorderOptions:
        return RecorderOptions(
            buffer_ms=int(self.recorder_buffer_s * 1000), buffer_max_bytes=int(self.recorder_buffer_max_mib * 1024 * 1024),
            before_ms=int(self.recorder_before_s * 1000), after_ms=int(self.recorder_after_s * 1000),
            max_wait_ms=int(self.recorder_max_wait_s * 1000), pos_retention_ms=int(self.recorder_pos_retention_s * 1000),
            pos_max_events=self.recorder_pos_max_events, max_clock_skew_ms=int(self.max_clock_skew_s * 1000),
        )
