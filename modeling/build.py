"""Build every model the sample store's models.config names, from the sample store's own footage."""

from __future__ import annotations

from pathlib import Path

from modeling.anomaly import TrainConfig


def has_version(models_dir: Path, name: str) -> bool:
    return any((models_dir / name).glob("[0-9]*/saved_model.pb"))


def build_sample_models(models_dir: Path, sample: dict[str, Path], quick: bool = False, echo=print) -> dict[str, Path]:
    """Train or export each model that has no version yet; `quick` trains the anomaly model briefly (tests)."""
    built = {}
    if not has_version(models_dir, "presence"):
        from modeling.presence import train_and_export

        built["presence"] = train_and_export(sample["empty"], models_dir)
    if not has_version(models_dir, "detector"):
        from modeling.detector import build_and_export

        built["detector"] = build_and_export(models_dir)
    if not has_version(models_dir, "anomaly"):
        from modeling.anomaly import train_and_export

        # The counter camera's own footage is its "normal": the clip itself and the empty store.
        config = TrainConfig(epochs=1, max_windows=32, base_channels=4) if quick else TrainConfig(epochs=3)
        built["anomaly"], _ = train_and_export(sample["clip"].parent, models_dir, config=config, log=lambda _m: None)
    for name, path in built.items():
        echo(f"  built {name} model -> {path}")
    return built
