"""Training: LightGBM classifier, isolation forest, thresholds and metrics.

Works on feature matrices and class labels; engine.detect.dataset turns
captures and simulator labels into those. LightGBM is imported here only,
so scoring needs no LightGBM.
"""

from __future__ import annotations

import datetime
import logging

import numpy as np

from engine.detect.anomaly import fit_isolation_forest
from engine.detect.model import Model
from engine.detect.trees import trees_from_lightgbm
from engine.features.schema import FEATURE_NAMES, FEATURE_SCHEMA_HASH, schema_to_json
from engine.taxonomy import ATTACK_CLASSES, BENIGN

log = logging.getLogger(__name__)

# Target false-positive rates on benign validation flows. The anomaly rate
# applies to each validation group on its own (see choose_anomaly_threshold),
# so quiet night traffic cannot hide behind a busy day capture.
CLASSIFIER_BENIGN_FPR = 0.001
ANOMALY_BENIGN_FPR = 0.01

LIGHTGBM_PARAMS = {
    "objective": "multiclass",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 10,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
}


def ordered_class_names(labels) -> list[str]:
    """Return benign first, then the attack classes present, in ATTACK_CLASSES order."""
    present = set(labels)
    unknown = present - set(ATTACK_CLASSES) - {BENIGN}
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}: expected benign or a key of ATTACK_CLASSES")
    return [BENIGN] + [name for name in ATTACK_CLASSES if name in present]


def choose_class_thresholds(proba, y, class_names, max_benign_fpr=CLASSIFIER_BENIGN_FPR, floor=0.25) -> dict[str, float]:
    """Choose per attack class the probability threshold with the best validation F1.

    A row counts as class c when c is its most probable class and the
    probability reaches c's threshold. Each attack class may flag at most
    its share (max_benign_fpr / attack classes) of the benign rows, so the
    total benign false-positive rate stays within max_benign_fpr.
    """
    benign = class_names.index(BENIGN)
    best = np.argmax(proba, axis=1)
    top = proba[np.arange(best.size), best]
    benign_rows = int(np.sum(y == benign))
    attack_classes = len(class_names) - 1
    allowed_benign = int(np.floor(max_benign_fpr * benign_rows / max(attack_classes, 1)))
    thresholds = {}
    for index, name in enumerate(class_names):
        if index == benign:
            continue
        candidates = np.unique(np.concatenate([[floor], top[(best == index) & (top >= floor)]]))
        chosen, chosen_f1 = 1.0, -1.0
        for threshold in candidates:
            flagged = (best == index) & (top >= threshold)
            if np.sum(flagged & (y == benign)) > allowed_benign:
                continue
            true_positive = np.sum(flagged & (y == index))
            positives = np.sum(y == index)
            f1 = 2.0 * true_positive / max(np.sum(flagged) + positives, 1)
            if f1 > chosen_f1:
                chosen, chosen_f1 = float(threshold), f1
        thresholds[name] = chosen
    return thresholds


def choose_anomaly_threshold(benign_scores, target_fpr=ANOMALY_BENIGN_FPR, groups=None) -> float:
    """Return the score above which at most target_fpr of the benign rows lie.

    With `groups` (one label per row, such as the capture a row came from),
    every group meets the bound, because the result is the largest of the
    per-group thresholds.
    """
    benign_scores = np.asarray(benign_scores)
    if benign_scores.size == 0:
        raise ValueError("no benign validation rows to choose the anomaly threshold on")
    if groups is None:
        return float(np.quantile(benign_scores, 1.0 - target_fpr, method="higher"))
    return max(anomaly_thresholds_by_group(benign_scores, groups, target_fpr).values())


def anomaly_thresholds_by_group(benign_scores, groups, target_fpr=ANOMALY_BENIGN_FPR) -> dict[str, float]:
    """Return per group the score above which at most target_fpr of its benign rows lie."""
    benign_scores = np.asarray(benign_scores)
    groups = np.asarray(groups)
    if groups.shape != benign_scores.shape:
        raise ValueError(f"got {groups.size} group labels for {benign_scores.size} benign scores; pass one per row")
    return {
        str(name): float(np.quantile(benign_scores[groups == name], 1.0 - target_fpr, method="higher"))
        for name in np.unique(groups)
    }


def evaluate(model: Model, X, y_names) -> dict:
    """Return per-class precision, recall and F1, macro F1 over attack classes and the benign FPR."""
    best, flagged = model.detect(X)
    predicted = np.where(flagged, best, model.class_names.index(BENIGN))
    names = np.asarray(model.class_names)
    y_names = np.asarray(y_names)
    per_class = {}
    for index, name in enumerate(model.class_names):
        if name == BENIGN:
            continue
        actual = y_names == name
        chosen = predicted == index
        true_positive = int(np.sum(actual & chosen))
        precision = true_positive / max(int(np.sum(chosen)), 1)
        recall = true_positive / max(int(np.sum(actual)), 1)
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        per_class[name] = {
            "flows": int(np.sum(actual)),
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
        }
    present = [v["f1"] for v in per_class.values() if v["flows"] > 0]
    benign = y_names == BENIGN
    unknown = ~np.isin(y_names, names)
    return {
        "per_class": per_class,
        "macro_f1": round(float(np.mean(present)), 6) if present else None,
        "benign_flows": int(np.sum(benign)),
        "benign_fpr": round(float(np.mean(flagged[benign])) if benign.any() else 0.0, 6),
        "rows_of_unknown_classes": int(np.sum(unknown)),
    }


def cap_rows_per_class(X, y, max_rows: int, seed: int = 0):
    """Return (X, y) with at most max_rows rows drawn at random from each class.

    Floods yield tens of thousands of near-identical flows per capture; a cap
    keeps them from dominating training time and the loss.
    """
    rng = np.random.default_rng(seed)
    keep = []
    for name in np.unique(y):
        rows = np.flatnonzero(y == name)
        if rows.size > max_rows:
            rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
        keep.append(rows)
    keep = np.sort(np.concatenate(keep))
    return X[keep], y[keep]


def train_model(
    X_train, y_train, X_valid, y_valid, *, seed=0, rounds=300, anomaly_trees=200,
    max_train_rows_per_class=None, metadata_extra=None, valid_groups=None,
    anomaly_target_fpr=ANOMALY_BENIGN_FPR, anomaly_extra_benign=None,
) -> Model:
    """Train the classifier and the benign-only anomaly model; return a Model ready to save.

    y_* are class names. Validation rows stop boosting early and set the
    per-class and anomaly thresholds; they are never trained on.
    valid_groups names the traffic kind of each validation row (such as
    its capture); the anomaly threshold then keeps every kind's benign
    false-positive rate within anomaly_target_fpr. anomaly_extra_benign
    contains benign rows that only the isolation forest learns from.
    """
    import lightgbm

    y_train = np.asarray(y_train)
    y_valid = np.asarray(y_valid)
    if max_train_rows_per_class is not None:
        X_train, y_train = cap_rows_per_class(X_train, y_train, max_train_rows_per_class, seed)
    class_names = ordered_class_names(np.concatenate([y_train, y_valid]))
    index = {name: i for i, name in enumerate(class_names)}
    train_codes = np.array([index[n] for n in y_train])
    valid_codes = np.array([index[n] for n in y_valid])
    for name in class_names:
        if not np.any(train_codes == index[name]):
            raise ValueError(f"class {name!r} occurs in validation labels only; add training captures with it")

    params = dict(LIGHTGBM_PARAMS, num_class=len(class_names), seed=seed, num_threads=0)
    train_set = lightgbm.Dataset(X_train, train_codes, feature_name=list(FEATURE_NAMES), free_raw_data=False)
    valid_set = lightgbm.Dataset(X_valid, valid_codes, reference=train_set)
    booster = lightgbm.train(
        params, train_set, num_boost_round=rounds, valid_sets=[valid_set],
        callbacks=[lightgbm.early_stopping(20, verbose=False)],
    )
    # Keep only the trees up to the best iteration, so the flattened model and
    # LightGBM's own predict() agree.
    booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    classifier, outputs = trees_from_lightgbm(booster)
    if outputs != len(class_names):
        raise RuntimeError(f"LightGBM returned {outputs} outputs for {len(class_names)} classes")

    benign_train = X_train[y_train == BENIGN]
    if anomaly_extra_benign is not None and len(anomaly_extra_benign):
        benign_train = np.concatenate([benign_train, np.asarray(anomaly_extra_benign, dtype=benign_train.dtype)])

    metadata = {
        "class_names": class_names,
        "thresholds": {},
        "anomaly": {"threshold": 1.0, "subsample": 1},
        "feature_schema": schema_to_json(),
        "feature_schema_hash": FEATURE_SCHEMA_HASH,
        "training": {
            "lightgbm_version": lightgbm.__version__,
            "lightgbm_params": params,
            "boosting_rounds": booster.current_iteration(),
            "seed": seed,
            "max_train_rows_per_class": max_train_rows_per_class,
            "train_rows": int(X_train.shape[0]),
            "validation_rows": int(X_valid.shape[0]),
            "train_rows_per_class": {n: int(np.sum(y_train == n)) for n in class_names},
            "anomaly_train_rows": int(benign_train.shape[0]),
            "validation_rows_per_class": {n: int(np.sum(y_valid == n)) for n in class_names},
            "classifier_target_benign_fpr": CLASSIFIER_BENIGN_FPR,
            "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    if metadata_extra:
        metadata["training"].update(metadata_extra)
    model = Model(metadata, classifier, None)
    fit_anomaly_forest(model, benign_train, seed=seed, trees=anomaly_trees)

    proba = model.predict_proba(X_valid)
    model.thresholds = choose_class_thresholds(proba, valid_codes, class_names)
    metadata["thresholds"] = model.thresholds
    benign_valid = y_valid == BENIGN
    benign_groups = None if valid_groups is None else np.asarray(valid_groups)[benign_valid]
    calibrate_anomaly(model, X_valid[benign_valid], benign_groups, anomaly_target_fpr)
    metadata["validation_metrics"] = evaluate(model, X_valid, y_valid)
    log.info("validation metrics: %s", metadata["validation_metrics"])
    return model


def fit_anomaly_forest(model: Model, benign_train, *, seed=0, trees=200) -> None:
    """Fit the model's isolation forest on benign rows, in place; the threshold is left to calibrate_anomaly()."""
    benign_train = np.asarray(benign_train)
    forest, subsample = fit_isolation_forest(benign_train, trees=trees, seed=seed)
    model.anomaly = forest
    model._anomaly_subsample = subsample
    # Analysts compare an anomalous flow's features with these medians.
    medians = np.nan_to_num(np.nanmedian(benign_train.astype(np.float64), axis=0))
    model.benign_medians = medians
    model.metadata["anomaly"] = {
        "threshold": 1.0,
        "subsample": subsample,
        "trees": trees,
        "seed": seed,
        "train_rows": int(benign_train.shape[0]),
        "benign_medians": [float(v) for v in medians],
    }
    model.anomaly_threshold = 1.0


def calibrate_anomaly(model: Model, benign_valid, groups=None, target_fpr=ANOMALY_BENIGN_FPR) -> None:
    """Set the model's anomaly threshold from benign validation rows, in place.

    With `groups` (one label per row), every group's benign false-positive
    rate stays within target_fpr, and the metadata records each group's
    own threshold and row count.
    """
    scores = model.anomaly_score(benign_valid)
    anomaly = model.metadata["anomaly"]
    anomaly["target_benign_fpr"] = target_fpr
    if groups is None:
        model.anomaly_threshold = choose_anomaly_threshold(scores, target_fpr)
        anomaly.pop("threshold_by_group", None)
        anomaly.pop("benign_rows_by_group", None)
    else:
        groups = np.asarray(groups)
        by_group = anomaly_thresholds_by_group(scores, groups, target_fpr)
        model.anomaly_threshold = max(by_group.values())
        anomaly["threshold_by_group"] = by_group
        anomaly["benign_rows_by_group"] = {name: int(np.sum(groups == name)) for name in by_group}
    anomaly["threshold"] = model.anomaly_threshold
