"""Inference stage plugins, one file per kind; a camera's `stages` in the store config say which run.

`plugins_for(camera)` builds the camera's plugins in the order their inputs need: presence, then the
detector (tracks and zones), pose (on the detector's persons), anomaly.
"""

from __future__ import annotations

from typing import assert_never

from services.inference.stages.anomaly import AnomalyPlugin
from services.inference.stages.base import BatchContext, CameraState, FrameWork, StagePlugin, new_analysis, saved_model_predict
from services.inference.stages.detector import DetectorPlugin
from services.inference.stages.pose import PosePlugin
from services.inference.stages.presence import PresencePlugin
from services.shared.storeconfig import AnomalyStage, Camera, DetectorStage, PoseStage, PresenceStage


def build_plugin(stage: PresenceStage | AnomalyStage | DetectorStage | PoseStage) -> StagePlugin:
    match stage:
        case PresenceStage():
            return PresencePlugin(stage)
        case DetectorStage():
            return DetectorPlugin(stage)
        case PoseStage():
            return PosePlugin(stage)
        case AnomalyStage():
            return AnomalyPlugin(stage)
    assert_never(stage)


def plugins_for(camera: Camera) -> list[StagePlugin]:
    return sorted((build_plugin(stage) for stage in camera.stages), key=lambda plugin: plugin.ORDER)


__all__ = ["BatchContext", "CameraState", "FrameWork", "StagePlugin", "build_plugin", "new_analysis", "plugins_for", "saved_model_predict"]
