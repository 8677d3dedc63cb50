"""Load a learned-risk model (return risk or alert triage) and score one decision with its reasons.

A model version is `models/risk/<kind>/<version>/model.skops` (a scikit-learn RandomForest saved
with skops, never a pickle) plus `metadata.json` (features with their wording, thresholds, metrics;
written by modeling/risk/train.py). Loading never raises: it returns a `LoadResult` whose `error`
says why there is no model (missing, untrusted types in the file, features that differ from
services/shared/riskfeatures.py), so the caller falls back to its rules and shows the warning.

Reasons are the model's own, per decision: each tree's path for this input is walked, and the
change of the tree's confirmed share at every split is credited to the split's feature
(treeinterpreter's decomposition: probability = the forest's base rate + the sum of the
contributions, exactly). The features that pushed this decision most towards risk are worded with
their feature's wording.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.shared.riskfeatures import FEATURES, KINDS, Feature, Kind, vector

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
# skops trusts numpy and scikit-learn estimators by default; a RandomForest's file holds one more
# type, its trees' inner structure. Anything else in the file is refused unloaded.
EXPECTED_UNTRUSTED = frozenset({"sklearn.tree._tree.Tree"})
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reason:
    """One feature's push on a decision: its value, its contribution to the probability, in words."""

    feature: str
    value: float
    contribution: float
    text: str


@dataclass(frozen=True)
class Score:
    probability: float
    # The decision the thresholds give (e.g. "accept", "warn", "deny"), lowest first in the metadata.
    decision: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class _Tree:
    left: list[int]
    right: list[int]
    feature: list[int]
    threshold: list[float]
    risk: list[float]  # P(positive) at each node


class RiskModel:
    """A loaded RandomForest with its metadata; `score` is cheap enough for every decision (~1 ms)."""

    def __init__(self, kind: Kind, path: Path, forest: Any, metadata: dict[str, Any]) -> None:
        self.kind = kind
        self.path = path
        self.forest = forest
        self.metadata = metadata
        self.version = int(metadata.get("version", 0))
        self.features: tuple[Feature, ...] = FEATURES[kind]
        thresholds = sorted(metadata.get("thresholds", []), key=lambda t: float(t["threshold"]))
        self.thresholds: list[tuple[str, float]] = [(str(t["name"]), float(t["threshold"])) for t in thresholds]
        self.default_decision = str(metadata.get("default_decision", ""))
        self._trees = [_tree(estimator.tree_, len(self.features)) for estimator in forest.estimators_]
        self.base_rate = float(np.mean([t.risk[0] for t in self._trees]))

    def decision(self, probability: float) -> str:
        """The highest threshold the probability reaches, or the default decision below all."""
        reached = [name for name, threshold in self.thresholds if probability >= threshold]
        return reached[-1] if reached else self.default_decision

    def contributions(self, values: Mapping[str, float]) -> tuple[float, np.ndarray]:
        """(probability, per-feature contributions): probability = base_rate + contributions.sum()."""
        # The trees compare float32 inputs with their thresholds, as scikit-learn does.
        x = [float(v) for v in np.asarray(vector(self.kind, values), dtype=np.float32)]
        total = np.zeros(len(x))
        probability = 0.0
        for tree in self._trees:
            node = 0
            while tree.left[node] != -1:
                feature = tree.feature[node]
                child = tree.left[node] if x[feature] <= tree.threshold[node] else tree.right[node]
                total[feature] += tree.risk[child] - tree.risk[node]
                node = child
            probability += tree.risk[node]
        n = len(self._trees)
        return probability / n, total / n

    def score(self, values: Mapping[str, float], top: int = 3, min_contribution: float = 0.005) -> Score:
        """The probability, the decision, and the `top` features that pushed it most towards risk."""
        probability, contributions = self.contributions(values)
        order = np.argsort(-contributions)
        reasons = []
        for index in order[:top]:
            if contributions[index] < min_contribution:
                break
            feature = self.features[index]
            text = feature.words(values)
            if text:
                reasons.append(Reason(feature.name, float(values[feature.name]), round(float(contributions[index]), 4), text))
        return Score(round(probability, 4), self.decision(probability), tuple(reasons))


def _tree(tree: Any, n_features: int) -> _Tree:
    value = np.asarray(tree.value)[:, 0, :]
    sums = value.sum(axis=1)
    risk = np.where(sums > 0, value[:, 1] / np.where(sums > 0, sums, 1), 0.0)
    left, right, feature = tree.children_left.tolist(), tree.children_right.tolist(), tree.feature.tolist()
    # scikit-learn numbers children after their parent; a file whose links point back (or past the
    # end, or at a feature the forest lacks) would send the walk in `contributions` round forever.
    for node, (lo, hi, f) in enumerate(zip(left, right, feature, strict=True)):
        if (lo == -1) != (hi == -1) or (lo != -1 and not (node < lo < len(left) and node < hi < len(left) and 0 <= f < n_features)):
            raise _Refused(f"tree node {node} links to {lo}/{hi} on feature {f}: not a tree scikit-learn builds")
    return _Tree(left, right, feature, tree.threshold.tolist(), risk.tolist())


@dataclass(frozen=True)
class LoadResult:
    """A model, or the reason there is none (`error`); `warnings` name what the caller should show
    even when a model loaded (a newer version that failed, a different scikit-learn)."""

    model: RiskModel | None
    error: str = ""
    warnings: tuple[str, ...] = field(default=())


class _Refused(Exception):
    pass


def _read_metadata(version_dir: Path, kind: Kind) -> dict[str, Any]:
    path = version_dir / METADATA_FILE
    if not path.is_file():
        raise _Refused(f"{path} is missing")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _Refused(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise _Refused(f"{path} is not a JSON object")
    if metadata.get("kind") != kind:
        raise _Refused(f"{path} is a {metadata.get('kind')!r} model, not {kind!r}")
    recorded = [f.get("name") for f in metadata.get("features", []) if isinstance(f, dict)]
    expected = [f.name for f in FEATURES[kind]]
    if recorded != expected:
        missing = [n for n in expected if n not in recorded]
        extra = [n for n in recorded if n not in expected]
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "", f"unknown {', '.join(map(str, extra))}" if extra else "") if part)
        raise _Refused(f"{path}: the model's features differ from services/shared/riskfeatures.py ({detail or 'another order'}); retrain it (make train-risk)")
    return metadata


def _read_forest(version_dir: Path, n_features: int) -> Any:
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    path = version_dir / MODEL_FILE
    if not path.is_file():
        raise _Refused(f"{path} is missing")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise _Refused(f"{path} is not a skops file ({type(exc).__name__}: {exc})") from None
    unexpected = sorted(set(untrusted) - EXPECTED_UNTRUSTED)
    if unexpected:
        raise _Refused(f"{path} holds types a risk model never has, refused without loading: {', '.join(unexpected)}")
    try:
        forest = sio.load(path, trusted=sorted(untrusted))
    except Exception as exc:
        raise _Refused(f"{path} failed to load ({type(exc).__name__}: {exc})") from None
    if not isinstance(forest, RandomForestClassifier) or not all(isinstance(e, DecisionTreeClassifier) for e in getattr(forest, "estimators_", [None])):
        raise _Refused(f"{path} holds a {type(forest).__name__}, not a fitted RandomForestClassifier")
    if getattr(forest, "n_features_in_", None) != n_features or list(getattr(forest, "classes_", [])) != [0, 1]:
        raise _Refused(f"{path}: the forest takes {getattr(forest, 'n_features_in_', '?')} features and classes "
                       f"{list(getattr(forest, 'classes_', []))}; expected {n_features} and [0, 1]")
    return forest


def load_version(version_dir: Path, kind: Kind) -> LoadResult:
    """Load one version folder; never raises."""
    try:
        if kind not in KINDS:
            raise _Refused(f"unknown risk model kind {kind!r}; one of {', '.join(KINDS)}")
        metadata = _read_metadata(version_dir, kind)
        forest = _read_forest(version_dir, len(FEATURES[kind]))
        model = RiskModel(kind, version_dir, forest, metadata)
    except _Refused as exc:
        return LoadResult(None, str(exc))
    except Exception as exc:  # a bug or a broken install must not take the caller down: it falls back to rules
        log.exception("risk model %s failed to load", version_dir)
        return LoadResult(None, f"{version_dir} failed to load ({type(exc).__name__}: {exc})")
    warnings = []
    import sklearn

    trained_with = metadata.get("versions", {}).get("scikit-learn")
    if trained_with and trained_with != sklearn.__version__:
        warnings.append(f"{version_dir} was trained with scikit-learn {trained_with}, this is {sklearn.__version__}; retrain it (make train-risk)")
    return LoadResult(model, warnings=tuple(warnings))


def versions(models_dir: Path, kind: Kind) -> list[Path]:
    """The version folders of a kind, newest first."""
    root = models_dir / "risk" / kind
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name), reverse=True)


def load_latest(models_dir: Path, kind: Kind) -> LoadResult:
    """The newest version that loads; the ones newer than it that failed are warnings. Never raises."""
    try:
        found = versions(models_dir, kind)
    except OSError as exc:
        return LoadResult(None, f"cannot list {models_dir / 'risk' / kind}: {exc}")
    if not found:
        return LoadResult(None, f"no {kind} risk model in {models_dir / 'risk' / kind} (build one with `make train-risk`); deciding by the rules alone")
    failed: list[str] = []
    for version_dir in found:
        result = load_version(version_dir, kind)
        if result.model is not None:
            return LoadResult(result.model, warnings=(*failed, *result.warnings))
        failed.append(result.error)
    return LoadResult(None, "; ".join(failed))
