"""Train the learned-risk models: return risk at the till and alert triage (`make train-risk`).

Each is a scikit-learn RandomForestClassifier over the features of services/shared/riskfeatures.py,
trained from

  (a) the synthetic bootstrap (modeling/risk/synthetic.py): a simulated chain with injected abuse
      and ground truth, and alerts with verdicts drawn from a known model of what HQ confirms;
  (b) where given, HQ's real verdicts (`--verdicts-from`, sw.feedback.v1 on a broker or a JSON-lines
      export) joined by alert id with the alerts they judge (`--alerts-from`, sw.alerts.v1 or an
      export). An alert's triage features come from its own rule and facts, which the correlator
      wrote when it raised it; a return's risk features are the `risk.*` facts recorded with the
      alert when the return was decided (riskfeatures.as_facts). Verdicts weigh `--hq-weight` times
      a synthetic row.

The split is by time, per source: the oldest 70 % trains, the next 15 % (validation) chooses the
thresholds, the newest 15 % (test) is what the metrics are measured on; so a model is judged on a
later period than it learnt from, as it is used, and no return's future leaks into its past.
Thresholds are the lowest scores whose validation precision reaches a target (e.g. deny at 90 %).

Each model is written as a new version, `models/risk/<kind>/<version>/model.skops` (skops, never a
pickle) and `metadata.json` (features with wording, thresholds, metrics, importances, data window,
library versions, seed), into place at once. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from devplatform.progress import Progress
from modeling.risk.synthetic import AlertConfig, SyntheticConfig, generate_alerts, generate_returns
from modeling.versions import next_version
from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.feedback_pb2 import Feedback, Verdict
from services.shared.riskfeatures import FEATURES, KINDS, Kind, TriageContext, feature_names, from_facts, store_confirm_rate, triage_features, vector
from services.shared.riskmodel import METADATA_FILE, MODEL_FILE
from services.shared.topics import ALERTS, FEEDBACK

# (decision, validation precision it must reach), lowest first; below all: DEFAULT_DECISION.
THRESHOLD_TARGETS: dict[Kind, tuple[tuple[str, float], ...]] = {"return": (("warn", 0.6), ("deny", 0.9)),
                                                                "triage": (("likely", 0.65), ("very_likely", 0.8))}
DEFAULT_DECISION: dict[Kind, str] = {"return": "accept", "triage": "routine"}
# Leaves this large keep the forest small and, for triage's noisy verdicts, generalise better
# (synthetic triage test AUC 0.760 / 0.774 / 0.778 / 0.775 at 3 / 10 / 20 / 40 rows a leaf; file 19 / 9 / 6 / 5 MB).
MIN_SAMPLES_LEAF: dict[Kind, int] = {"return": 5, "triage": 20}
SPLIT = (0.70, 0.15, 0.15)
# A threshold chosen on fewer flagged validation rows than this would be a guess.
MIN_FLAGGED = 10
# HQ verdicts choose the thresholds and are reported once a split has this many of each class.
MIN_HQ_CLASS = 10


@dataclass(frozen=True)
class TrainOptions:
    models_dir: Path = Path("models")
    kinds: tuple[Kind, ...] = KINDS
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    trees: int = 200
    min_samples_leaf: int | None = None  # None: MIN_SAMPLES_LEAF of the kind
    seed: int = 7
    permutation_repeats: int = 5
    alerts_from: str = ""
    verdicts_from: str = ""
    store_config: str = ""
    hq_weight: float = 5.0


# The tests' model: the same code on a small chain, a few seconds on one core.
QUICK = TrainOptions(synthetic=SyntheticConfig(days=50, warmup_days=20, stores=5, customers=1200, sales_per_store_day=40),
                     alerts=AlertConfig(days=50, stores=5), trees=40, permutation_repeats=2)


@dataclass
class Dataset:
    """Rows of one kind from every source, in feature order."""

    kind: Kind
    X: np.ndarray
    y: np.ndarray
    time_ms: np.ndarray
    source: np.ndarray  # "synthetic" or "hq" per row
    notes: dict[str, Any] = field(default_factory=dict)
    # The synthetic abuse pattern per row ("" for the rest), where known.
    patterns: np.ndarray | None = None

    def weights(self, hq_weight: float) -> np.ndarray:
        return np.where(self.source == "hq", hq_weight, 1.0)


def _day(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _window(times: np.ndarray) -> dict[str, Any]:
    return {"first": _day(float(times.min())), "last": _day(float(times.max()))} if len(times) else {}


# --- HQ verdicts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordedReturn:
    """A return decided at the till with the feature values it was decided on (the api's decision
    record: `decision_id`, `decided_time_ms`, `store_id`, `features`); HQ's verdict names it by
    `alert_id` = its decision id."""

    decision_id: str
    time_ms: int
    store_id: str
    features: dict[str, float]


@dataclass
class HqRecords:
    alerts: list[Alert] = field(default_factory=list)
    verdicts: list[Feedback] = field(default_factory=list)
    decisions: list[RecordedReturn] = field(default_factory=list)
    unreadable: int = 0


def _read_jsonl(path: Path) -> HqRecords:
    """Alerts, verdicts and decided returns from a JSON-lines export (protobuf JSON, one record a
    line: a verdict has `verdict`, a decided return `decision_id` and `features`, anything else is
    an Alert). Unreadable lines are counted and skipped."""
    records = HqRecords()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise ValueError("not an object")
                if "verdict" in raw:
                    records.verdicts.append(json_format.ParseDict(raw, Feedback(), ignore_unknown_fields=True))
                elif "decision_id" in raw and isinstance(raw.get("features"), dict):
                    records.decisions.append(RecordedReturn(str(raw["decision_id"]), int(raw.get("decided_time_ms") or raw.get("decidedTimeMs") or 0),
                                                            str(raw.get("store_id") or raw.get("storeId") or ""),
                                                            {str(k): float(v) for k, v in raw["features"].items()}))
                else:
                    records.alerts.append(json_format.ParseDict(raw, Alert(), ignore_unknown_fields=True))
            except (ValueError, TypeError, json_format.ParseError):
                records.unreadable += 1
    return records


def _read_topic(bootstrap: str, topic: str, message_type: type[Message], timeout_s: float = 60.0) -> tuple[list[Any], int]:
    """Every message of a topic from the beginning to its end now (nothing committed), and how many
    could not be read."""
    from devplatform.kafkatools import TopicReader
    from services.shared.serde import PoisonMessage, decode

    def parse(msg: Any) -> Any:
        try:
            return decode(message_type, msg.value())
        except PoisonMessage:
            return None

    reader = TopicReader(bootstrap, [topic], parse)
    read = reader.read_to_end(timeout_s)
    if not reader.at_end:
        raise TimeoutError(f"reading {topic} from {bootstrap}: not at its end after {timeout_s:.0f}s")
    messages = [m for m in read if m is not None]
    return messages, len(read) - len(messages)


def read_source(source: str, topic: str) -> HqRecords:
    """A JSON-lines file if `source` is one, else a broker's bootstrap servers to read `topic` from."""
    if Path(source).is_file():
        return _read_jsonl(Path(source))
    if topic == ALERTS:
        alerts, bad = _read_topic(source, ALERTS, Alert)
        return HqRecords(alerts=alerts, unreadable=bad)
    verdicts, bad = _read_topic(source, FEEDBACK, Feedback)
    return HqRecords(verdicts=verdicts, unreadable=bad)


def _store_settings(path: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Store time zones and zone kinds from the store config, where one is given."""
    if not path:
        return {}, {}
    from services.shared.storeconfig import load_store_config

    config = load_store_config(path)
    timezones = {store.id: store.timezone for store in config.stores}
    zones: dict[str, dict[str, str]] = {store.id: {zone.id: str(zone.kind) for camera in store.cameras for zone in camera.zones} for store in config.stores}
    return timezones, zones


def hq_rows(alerts: Iterable[Alert], verdicts: Iterable[Feedback], timezones: dict[str, str] | None = None,
            zone_kinds: dict[str, dict[str, str]] | None = None,
            decisions: Iterable[RecordedReturn] = ()) -> dict[Kind, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Judged alerts and returns as (X, y, time_ms) per kind: every judged alert for triage; for
    return risk, the judged alerts that carry a decided return's `risk.*` facts and the judged
    decided returns with all their features. The latest verdict counts (confirmed 1, false alarm 0;
    acknowledgements are no verdict). A store's confirm rate is taken from the verdicts given
    before the alert was raised, as it was known then."""
    judged = [v for v in verdicts if v.verdict in (Verdict.VERDICT_CONFIRMED, Verdict.VERDICT_FALSE_ALARM)]
    judged.sort(key=lambda v: v.time_ms)
    latest = {v.alert_id: v for v in judged}
    by_id = {a.alert_id: a for a in alerts}
    labelled = sorted((a for a in by_id.values() if a.alert_id in latest), key=lambda a: (a.raised_time_ms or a.event_time_ms, a.alert_id))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    seen = 0
    rows: dict[Kind, tuple[list[list[float]], list[int], list[int]]] = {kind: ([], [], []) for kind in KINDS}
    for alert in labelled:
        raised = alert.raised_time_ms or alert.event_time_ms
        while seen < len(judged) and judged[seen].time_ms < raised:
            verdict = judged[seen]
            store = verdict.store_id or (by_id[verdict.alert_id].store_id if verdict.alert_id in by_id else "")
            counts[store][0] += verdict.verdict == Verdict.VERDICT_CONFIRMED
            counts[store][1] += 1
            seen += 1
        label = int(latest[alert.alert_id].verdict == Verdict.VERDICT_CONFIRMED)
        ctx = TriageContext(timezone=(timezones or {}).get(alert.store_id, "UTC"), confirm_rate=store_confirm_rate(*counts[alert.store_id]),
                            zone_kinds=(zone_kinds or {}).get(alert.store_id, {}))
        found: dict[Kind, dict[str, float] | None] = {"triage": triage_features(alert, ctx), "return": from_facts("return", alert.facts)}
        for kind, values in found.items():
            if values is not None:
                X, y, times = rows[kind]
                X.append(vector(kind, values))
                y.append(label)
                times.append(alert.event_time_ms)
    names = feature_names("return")
    for decision in sorted(decisions, key=lambda d: d.time_ms):
        if decision.decision_id in latest and decision.decision_id not in by_id and all(n in decision.features for n in names):
            X, y, times = rows["return"]
            X.append(vector("return", decision.features))
            y.append(int(latest[decision.decision_id].verdict == Verdict.VERDICT_CONFIRMED))
            times.append(decision.time_ms)
    return {kind: (np.asarray(X, dtype=np.float64).reshape(-1, len(FEATURES[kind])), np.asarray(y, dtype=np.int64), np.asarray(t, dtype=np.int64))
            for kind, (X, y, t) in rows.items()}


# --- training ---------------------------------------------------------------------------------------------

def split_by_time(times: np.ndarray, fractions: tuple[float, float, float] = SPLIT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, validation and test: oldest first, cut at the fractions of the rows."""
    order = np.argsort(times, kind="stable")
    first, second = round(fractions[0] * len(order)), round((fractions[0] + fractions[1]) * len(order))
    return order[:first], order[first:second], order[second:]


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, scores)), 4) if 0 < y.sum() < len(y) else None


def precision_recall_at(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = scores >= threshold
    hits = int((flagged & (y == 1)).sum())
    return {"precision": round(hits / int(flagged.sum()), 4) if flagged.any() else None,
            "recall": round(hits / int(y.sum()), 4) if y.sum() else None, "flagged": int(flagged.sum())}


def choose_threshold(y: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest score whose rows at or above it reach `target` precision (with at least
    MIN_FLAGGED of them); None where no threshold does."""
    order = np.argsort(-scores, kind="stable")
    ranked, labels = scores[order], y[order]
    hits = np.cumsum(labels)
    for i in range(len(ranked) - 1, MIN_FLAGGED - 2, -1):
        if i + 1 < len(ranked) and ranked[i + 1] == ranked[i]:
            continue  # a threshold takes every row of equal score
        if hits[i] / (i + 1) >= target:
            return round(float(ranked[i]), 4)
    return None


def permutation_importances(forest: Any, X: np.ndarray, y: np.ndarray, names: list[str], repeats: int, seed: int,
                            progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """ROC AUC lost when one feature's column is shuffled (sklearn's permutation importance with
    scoring="roc_auc"), mean and spread over `repeats` shuffles: what the model relies on."""
    rng = np.random.default_rng(seed)
    base = roc_auc(y, forest.predict_proba(X)[:, 1])
    result: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        drops = []
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            drops.append((base or 0.0) - (roc_auc(y, forest.predict_proba(shuffled)[:, 1]) or 0.0))
        result[name] = {"mean": round(float(np.mean(drops)), 5), "std": round(float(np.std(drops)), 5)}
        if progress is not None:
            progress.advance(note=name)
    return result


def fit_forest(X: np.ndarray, y: np.ndarray, weights: np.ndarray, options: TrainOptions, kind: Kind, stream: TextIO | None) -> Any:
    """A RandomForest grown in chunks of trees (warm start), so progress shows; the same forest as one fit."""
    from sklearn.ensemble import RandomForestClassifier

    leaf = options.min_samples_leaf or MIN_SAMPLES_LEAF[kind]
    forest = RandomForestClassifier(n_estimators=0, min_samples_leaf=leaf, max_features="sqrt", random_state=options.seed, n_jobs=1, warm_start=True)
    chunk = max(1, options.trees // 10)
    with Progress(f"{kind}: fitting trees", total=options.trees, unit="trees", stream=stream) as progress:
        while forest.n_estimators < options.trees:
            forest.set_params(n_estimators=min(options.trees, forest.n_estimators + chunk))
            forest.fit(X, y, sample_weight=weights)
            progress.update(forest.n_estimators)
    return forest


def synthetic_dataset(kind: Kind, options: TrainOptions, stream: TextIO | None) -> Dataset:
    with Progress(f"{kind}: simulating the synthetic chain", total=100, unit="%", stream=stream) as progress:
        def report(fraction: float) -> None:
            progress.update(round(100 * fraction, 1))

        if kind == "return":
            _, returns = generate_returns(options.synthetic, progress=report)
            X, y, times = returns.X, returns.y, returns.time_ms
            notes = {"config": asdict(options.synthetic), "patterns": {p: returns.patterns.count(p) for p in sorted(set(returns.patterns)) if p}}
            patterns = np.array(returns.patterns)
        else:
            alerts = generate_alerts(options.alerts, progress=report)
            X, y, times = alerts.X, alerts.y, alerts.time_ms
            notes = {"config": asdict(options.alerts)}
            patterns = None
    return Dataset(kind, X, y, times, np.full(len(y), "synthetic"), {"synthetic": notes}, patterns)


def with_hq(dataset: Dataset, rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None, notes: dict[str, Any]) -> Dataset:
    if rows is None or not len(rows[1]):
        return dataset
    X, y, times = rows
    patterns = None if dataset.patterns is None else np.concatenate([dataset.patterns, np.full(len(y), "")])
    return Dataset(dataset.kind, np.vstack([dataset.X, X]), np.concatenate([dataset.y, y]), np.concatenate([dataset.time_ms, times]),
                   np.concatenate([dataset.source, np.full(len(y), "hq")]), {**dataset.notes, "hq": notes}, patterns)


def _has_classes(y: np.ndarray, least: int) -> bool:
    return int(y.sum()) >= least and int(len(y) - y.sum()) >= least


def train_one(dataset: Dataset, options: TrainOptions, echo: Callable[[str], object], stream: TextIO | None) -> tuple[Path, dict[str, Any]]:
    """Fit, choose thresholds, measure, explain and write one model version; returns its folder and metadata."""
    import sklearn
    import skops
    import skops.io as sio

    kind = dataset.kind
    names = feature_names(kind)
    started = time.monotonic()
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for source in sorted(set(dataset.source.tolist())):
        rows = np.flatnonzero(dataset.source == source)
        train, validation, test = split_by_time(dataset.time_ms[rows])
        parts[source] = (rows[train], rows[validation], rows[test])
    train = np.concatenate([p[0] for p in parts.values()])
    hq_ok = "hq" in parts and _has_classes(dataset.y[parts["hq"][1]], MIN_HQ_CLASS) and _has_classes(dataset.y[parts["hq"][2]], MIN_HQ_CLASS)
    if "hq" in parts and not hq_ok:
        echo(f"{kind}: fewer than {MIN_HQ_CLASS} confirmed and false-alarm verdicts in HQ's validation or test period: "
             "thresholds and metrics come from the synthetic data; the verdicts still train")
    chosen_on = "hq" if hq_ok else "synthetic"
    if not _has_classes(dataset.y[train], 1):
        raise ValueError(f"{kind}: the training period has only one class; nothing to learn")
    forest = fit_forest(dataset.X[train], dataset.y[train], dataset.weights(options.hq_weight)[train], options, kind, stream)

    def scores(rows: np.ndarray) -> np.ndarray:
        return np.asarray(forest.predict_proba(dataset.X[rows])[:, 1]) if len(rows) else np.zeros(0)

    validation, test = parts[chosen_on][1], parts[chosen_on][2]
    val_scores, test_scores = scores(validation), scores(test)
    thresholds = []
    for name, target in THRESHOLD_TARGETS[kind]:
        threshold = choose_threshold(dataset.y[validation], val_scores, target)
        entry: dict[str, Any] = {"name": name, "precision_target": target, "chosen_on": f"{chosen_on} validation"}
        if threshold is None:
            entry.update(threshold=1.01, note=f"no threshold reaches precision {target} on validation: never decided by the model")
        else:
            entry["threshold"] = threshold
        entry["validation"] = precision_recall_at(dataset.y[validation], val_scores, entry["threshold"])
        entry["test"] = precision_recall_at(dataset.y[test], test_scores, entry["threshold"])
        thresholds.append(entry)
    metrics: dict[str, Any] = {}
    for source, (tr, va, te) in parts.items():
        metrics[source] = {"test_roc_auc": roc_auc(dataset.y[te], scores(te)), "validation_roc_auc": roc_auc(dataset.y[va], scores(va)),
                           "rows": {"train": len(tr), "validation": len(va), "test": len(te)},
                           "positives": {"train": int(dataset.y[tr].sum()), "validation": int(dataset.y[va].sum()), "test": int(dataset.y[te].sum())}}
        if source == "synthetic" and dataset.patterns is not None:
            # Which injected abuse each threshold catches in the test period.
            found, te_scores = dataset.patterns[te], scores(te)
            metrics[source]["test_recall_by_pattern"] = {
                pattern: {"rows": int((found == pattern).sum()),
                          **{t["name"]: round(float((te_scores[found == pattern] >= t["threshold"]).mean()), 4) for t in thresholds}}
                for pattern in sorted(set(found.tolist()) - {""})}
    with Progress(f"{kind}: permutation importances", total=len(names), unit="features", stream=stream) as progress:
        permutation = permutation_importances(forest, dataset.X[test], dataset.y[test], names, options.permutation_repeats, options.seed, progress)
    impurity = {name: round(float(value), 5) for name, value in zip(names, forest.feature_importances_, strict=True)}
    metadata: dict[str, Any] = {
        "kind": kind,
        "model": "sklearn.ensemble.RandomForestClassifier",
        "hyperparameters": {"n_estimators": options.trees, "min_samples_leaf": forest.min_samples_leaf, "max_features": "sqrt",
                            "hq_weight": options.hq_weight},
        "seed": options.seed,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": [asdict(feature) for feature in FEATURES[kind]],
        "default_decision": DEFAULT_DECISION[kind],
        "thresholds": thresholds,
        "split": "by time within each source: oldest 70 % train, next 15 % validation (thresholds), newest 15 % test (metrics)",
        "metrics": metrics,
        "importances": {"impurity": impurity, "permutation": permutation,
                        "permutation_on": f"{chosen_on} test, ROC AUC lost when the feature is shuffled, {options.permutation_repeats} repeats"},
        "data": {source: {"rows": int((dataset.source == source).sum()), "positives": int(dataset.y[dataset.source == source].sum()),
                          **_window(dataset.time_ms[dataset.source == source]), **dataset.notes.get(source, {})} for source in parts},
        "versions": {"scikit-learn": sklearn.__version__, "skops": skops.__version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    root = options.models_dir / "risk" / kind
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    metadata["version"] = version
    staging = root / f".{version}.partial-{os.getpid()}"
    final = root / str(version)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        sio.dump(forest, staging / MODEL_FILE)
        metadata["training_seconds"] = round(time.monotonic() - started, 1)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, metadata


def report(path: Path, metadata: dict[str, Any], echo: Callable[[str], object]) -> None:
    kind = metadata["kind"]
    for source, data in metadata["data"].items():
        echo(f"{kind}: {data['rows']} {source} rows ({100 * data['positives'] / max(data['rows'], 1):.1f} % positive), {data.get('first')} .. {data.get('last')}")
    for source, m in metadata["metrics"].items():
        echo(f"  ROC AUC on the {source} test period: {m['test_roc_auc']} ({m['rows']['test']} rows, {m['positives']['test']} positive); "
             f"validation {m['validation_roc_auc']}")
    for t in metadata["thresholds"]:
        test = t["test"]
        echo(f"  {t['name']:<12} score >= {t['threshold']:.3f} (validation precision >= {t['precision_target']}): test precision {test['precision']}, "
             f"recall {test['recall']} ({test['flagged']} flagged)")
    names = [t["name"] for t in metadata["thresholds"]]
    for m in metadata["metrics"].values():
        for pattern, recall in m.get("test_recall_by_pattern", {}).items():
            echo(f"    {pattern:<18} {recall['rows']:>4} test rows, recall " + ", ".join(f"{name} {recall[name]:.2f}" for name in names))
    top = sorted(metadata["importances"]["permutation"].items(), key=lambda item: -item[1]["mean"])[:5]
    echo("  top permutation importances (ROC AUC lost): " + ", ".join(f"{name} {value['mean']:.4f}" for name, value in top))
    impurity = sorted(metadata["importances"]["impurity"].items(), key=lambda item: -item[1])[:5]
    echo("  top impurity importances: " + ", ".join(f"{name} {value:.3f}" for name, value in impurity))
    echo(f"  wrote {path / MODEL_FILE} ({(path / MODEL_FILE).stat().st_size / 1e6:.1f} MB) and {METADATA_FILE}, in {metadata['training_seconds']} s")


def train_all(options: TrainOptions, echo: Callable[[str], object] = print, stream: TextIO | None = None) -> dict[Kind, Path]:
    """Train every kind asked for; returns each new version's folder."""
    hq: dict[Kind, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    hq_notes: dict[str, Any] = {}
    if options.alerts_from or options.verdicts_from:
        if not (options.alerts_from and options.verdicts_from):
            raise ValueError("HQ verdicts need both --alerts-from and --verdicts-from (they may name the same JSON-lines file)")
        found = read_source(options.alerts_from, ALERTS)
        judged = found if options.verdicts_from == options.alerts_from else read_source(options.verdicts_from, FEEDBACK)
        alerts, decisions, verdicts = found.alerts, found.decisions + (judged.decisions if judged is not found else []), judged.verdicts
        unreadable = found.unreadable + (judged.unreadable if judged is not found else 0)
        timezones, zone_kinds = _store_settings(options.store_config)
        hq = hq_rows(alerts, verdicts, timezones, zone_kinds, decisions)
        hq_notes = {"alerts_from": options.alerts_from, "verdicts_from": options.verdicts_from, "alerts": len(alerts), "decided_returns": len(decisions),
                    "verdicts": len(verdicts), "unreadable": unreadable}
        echo(f"HQ: {len(alerts)} alerts, {len(decisions)} decided returns, {len(verdicts)} verdicts ({unreadable} unreadable skipped): "
             f"{len(hq['triage'][1])} judged alerts for triage, {len(hq['return'][1])} judged returns with recorded features")
    built: dict[Kind, Path] = {}
    summary: dict[str, Any] = {}
    for kind in options.kinds:
        dataset = with_hq(synthetic_dataset(kind, options, stream), hq.get(kind), hq_notes)
        path, metadata = train_one(dataset, options, echo, stream)
        report(path, metadata, echo)
        built[kind] = path
        summary[kind] = {"version": metadata["version"], "path": str(path),
                         **{f"{source}_test_roc_auc": m["test_roc_auc"] for source, m in metadata["metrics"].items()},
                         "thresholds": {t["name"]: {"threshold": t["threshold"], "precision": t["test"]["precision"], "recall": t["test"]["recall"]}
                                        for t in metadata["thresholds"]}}
    echo(json.dumps(summary))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="all", help="which model to train (default both)")
    parser.add_argument("--days", type=int, default=SyntheticConfig.days, help="days of the synthetic chain (and of its alerts)")
    parser.add_argument("--stores", type=int, default=SyntheticConfig.stores)
    parser.add_argument("--customers", type=int, default=SyntheticConfig.customers)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--trees", type=int, default=TrainOptions.trees)
    parser.add_argument("--alerts-from", default="", help="sw.alerts.v1: a broker's bootstrap servers, or a JSON-lines export of alerts")
    parser.add_argument("--verdicts-from", default="", help="sw.feedback.v1: a broker's bootstrap servers, or a JSON-lines export of verdicts")
    parser.add_argument("--store-config", default=os.environ.get("SW_STORE_CONFIG", ""), help="store time zones and zone kinds for HQ's alerts")
    parser.add_argument("--hq-weight", type=float, default=TrainOptions.hq_weight, help="weight of one HQ verdict against one synthetic row")
    args = parser.parse_args(argv)
    options = TrainOptions(
        models_dir=args.models_dir, kinds=KINDS if args.kind == "all" else (args.kind,), seed=args.seed, trees=args.trees,
        synthetic=replace(SyntheticConfig(), days=args.days, stores=args.stores, customers=args.customers, seed=args.seed),
        alerts=replace(AlertConfig(), days=args.days, stores=args.stores, seed=args.seed),
        alerts_from=args.alerts_from, verdicts_from=args.verdicts_from, store_config=args.store_config, hq_weight=args.hq_weight)
    try:
        train_all(options)
    except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"train-risk: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
