"""The model file and the Model that scores feature matrices.

A model file (.ww) is a NumPy .npz archive read with allow_pickle=False, so
loading one never runs code. It contains:

  metadata_json      uint8 bytes of a UTF-8 JSON object: format name and
                     version, class names, per-class thresholds, anomaly
                     threshold and its target false-positive rate, the
                     feature schema and its hash, training metadata
  classifier_*       the LightGBM classifier as TreeArrays (engine.detect.trees)
  anomaly_*          the isolation forest as TreeArrays

load_model() checks the format version, every array's dtype and indices,
and that the stored schema hash equals FEATURE_SCHEMA_HASH, so a model
trained on other columns is rejected before it scores anything.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from engine.detect import scorer
from engine.detect.anomaly import scores_from_path_sums
from engine.detect.trees import TREE_ARRAY_NAMES, TreeArrays
from engine.features.schema import FEATURE_NAMES, FEATURE_SCHEMA_HASH

FORMAT_NAME = "wardwatch-model"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, unreadable, of another version or for another feature schema."""


def default_model_path() -> Path:
    """Return the path of the model shipped in the package (engine/models/default.ww)."""
    return Path(__file__).resolve().parent.parent / "models" / "default.ww"


class Model:
    """A multi-class tree classifier plus an isolation-forest anomaly score."""

    def __init__(self, metadata: dict, classifier: TreeArrays, anomaly: TreeArrays):
        self.metadata = metadata
        self.classifier = classifier
        self.anomaly = anomaly
        self.class_names: tuple[str, ...] = tuple(metadata["class_names"])
        self.feature_names: tuple[str, ...] = tuple(f["name"] for f in metadata["feature_schema"])
        self.schema_hash: str = metadata["feature_schema_hash"]
        # Per class: a row is reported as that class when it is the row's
        # most probable class and its probability reaches the threshold.
        self.thresholds: dict[str, float] = {name: float(value) for name, value in metadata["thresholds"].items()}
        self.anomaly_threshold: float = float(metadata["anomaly"]["threshold"])
        self._anomaly_subsample = int(metadata["anomaly"]["subsample"])
        # Median of each feature over the benign training flows (None in
        # files written before the medians were recorded).
        medians = metadata["anomaly"].get("benign_medians")
        self.benign_medians = None if medians is None else np.asarray(medians, dtype=np.float64)
        self._outputs = len(self.class_names)

    def _check_matrix(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"invalid feature matrix shape {X.shape}: expected (rows, {len(self.feature_names)})"
            )
        if X.dtype != np.float32 and X.dtype != np.float64:
            raise TypeError(f"invalid feature matrix dtype {X.dtype}: expected float32 or float64")
        return np.ascontiguousarray(X)

    def raw_score(self, X) -> np.ndarray:
        """Return float64 [rows, classes]: the ensemble's raw (pre-softmax) scores."""
        X = self._check_matrix(X)
        t = self.classifier
        return scorer.raw_scores(
            X, t.tree_root, t.tree_class, t.feature, t.threshold, t.left, t.right,
            t.decision_flags, t.leaf_value, self._outputs,
        )

    def predict_proba(self, X) -> np.ndarray:
        """Return float64 [rows, classes]: class probabilities in class_names order."""
        return scorer.softmax_rows(self.raw_score(X))

    def contributions(self, X, class_index: int) -> np.ndarray:
        """Return float64 [rows, features + 1]: path contributions to one class's raw score.

        The last column is the expected raw score (bias); each row sums to
        raw_score(X)[:, class_index].
        """
        if not 0 <= class_index < self._outputs:
            raise ValueError(f"invalid class_index {class_index}: expected 0 to {self._outputs - 1}")
        X = self._check_matrix(X)
        t = self.classifier
        return scorer.path_contributions(
            X, class_index, t.tree_root, t.tree_class, t.feature, t.threshold, t.left, t.right,
            t.decision_flags, t.node_value, t.leaf_value,
        )

    def top_features(self, X, class_index: int, count: int = 5) -> list[list[tuple[str, float, float]]]:
        """Return per row the `count` features with the largest contributions: (name, value, contribution)."""
        contributions = self.contributions(X, class_index)[:, :-1]
        order = np.argsort(-contributions, axis=1)[:, :count]
        X = np.asarray(X)
        return [
            [(self.feature_names[j], float(X[row, j]), float(contributions[row, j])) for j in order[row]]
            for row in range(X.shape[0])
        ]

    def anomaly_score(self, X) -> np.ndarray:
        """Return float64 [rows]: isolation-forest scores; above anomaly_threshold is anomalous."""
        X = self._check_matrix(X)
        t = self.anomaly
        path_sums = scorer.raw_scores(
            X, t.tree_root, t.tree_class, t.feature, t.threshold, t.left, t.right,
            t.decision_flags, t.leaf_value, 1,
        )[:, 0]
        return scores_from_path_sums(path_sums, t.tree_root.size, self._anomaly_subsample)

    def detect(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Return (class index per row, True where that class is an attack at or above its threshold)."""
        proba = self.predict_proba(X)
        best = np.argmax(proba, axis=1)
        threshold_by_class = np.array([self.thresholds.get(name, np.inf) for name in self.class_names])
        flagged = proba[np.arange(best.size), best] >= threshold_by_class[best]
        return best, flagged


def save_model(path, metadata: dict, classifier: TreeArrays, anomaly: TreeArrays) -> None:
    """Write a model file; metadata gets the format name, version and the current schema hash."""
    metadata = dict(metadata)
    metadata["format"] = FORMAT_NAME
    metadata["format_version"] = FORMAT_VERSION
    arrays = {"metadata_json": np.frombuffer(json.dumps(metadata, sort_keys=True).encode("utf-8"), dtype=np.uint8)}
    for prefix, trees in (("classifier_", classifier), ("anomaly_", anomaly)):
        for name, array in trees.as_dict().items():
            arrays[prefix + name] = array
    path = os.fspath(path)
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(temporary, path)


def _read_archive(path: Path) -> tuple[dict, dict]:
    """Return (arrays by name, metadata) of a model file, with the format checked."""
    not_a_model = (
        f"model file {path} is not a WardWatch model; pass a file written by `wardwatch train`"
    )
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error.strerror}") from error
    # A model file is a zip (.npz) archive. Checked first because np.load
    # raises EOFError on an empty file and, on other files, suggests loading
    # them with pickle, which would run code from the file.
    if magic != b"PK\x03\x04":
        raise ModelFileError(not_a_model)
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{not_a_model} ({type(error).__name__})") from error
    if "metadata_json" not in contents:
        raise ModelFileError(f"model file {path} has no metadata_json entry")

    try:
        metadata = json.loads(contents["metadata_json"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"model file {path} has invalid metadata JSON: {error}") from error
    if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"model file {path} has format {metadata.get('format')!r} version "
            f"{metadata.get('format_version')!r}; expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    return contents, metadata


def _check_schema(path: Path, metadata: dict) -> None:
    if metadata.get("feature_schema_hash") != FEATURE_SCHEMA_HASH:
        raise ModelFileError(
            f"model file {path} was trained on feature schema {metadata.get('feature_schema_hash')}, "
            f"but this engine computes {FEATURE_SCHEMA_HASH}; retrain with `wardwatch train`"
        )
    stored_names = tuple(f["name"] for f in metadata.get("feature_schema", ()))
    if stored_names != FEATURE_NAMES:
        raise ModelFileError(f"model file {path} lists features that differ from FEATURE_SCHEMA")
    medians = metadata.get("anomaly", {}).get("benign_medians")
    if medians is not None and len(medians) != len(FEATURE_NAMES):
        raise ModelFileError(f"model file {path} has {len(medians)} benign medians for {len(FEATURE_NAMES)} features")


def _check_tree_targets(path: Path, classifier: TreeArrays, anomaly: TreeArrays, outputs: int) -> None:
    """Raise ModelFileError unless every split feature and tree output is in range."""
    features = len(FEATURE_NAMES)
    for label, trees in (("classifier", classifier), ("anomaly", anomaly)):
        if trees.feature.size and (trees.feature.min() < 0 or trees.feature.max() >= features):
            raise ModelFileError(f"model file {path}: {label} splits on a feature outside 0..{features - 1}")
    if classifier.tree_class.size and (classifier.tree_class.min() < 0 or classifier.tree_class.max() >= outputs):
        raise ModelFileError(f"model file {path}: a classifier tree adds to a class outside 0..{outputs - 1}")
    if anomaly.tree_class.size and anomaly.tree_class.max() != 0:
        raise ModelFileError(f"model file {path}: anomaly trees must all add to output 0")
    # A NaN split threshold fails every comparison, so walks always take the
    # right branch there. With all thresholds NaN every flow scores the same.
    for label, trees in (("classifier", classifier), ("anomaly", anomaly)):
        for name in ("threshold", "leaf_value"):
            nan_count = int(np.isnan(getattr(trees, name)).sum())
            if nan_count:
                raise ModelFileError(
                    f"model file {path}: {nan_count} {label} {name} entries are NaN; retrain it with `wardwatch train`"
                )


def load_model(path=None) -> Model:
    """Load and check a model file (the shipped default when path is None)."""
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found; train one with `wardwatch train`")
    contents, metadata = _read_archive(path)
    _check_schema(path, metadata)
    if not isinstance(metadata.get("class_names"), list) or not metadata["class_names"]:
        raise ModelFileError(f"model file {path} has no class_names list")

    try:
        classifier = TreeArrays.from_dict({n: contents["classifier_" + n] for n in TREE_ARRAY_NAMES})
        anomaly = TreeArrays.from_dict({n: contents["anomaly_" + n] for n in TREE_ARRAY_NAMES})
    except KeyError as error:
        raise ModelFileError(f"model file {path} lacks the array {error.args[0]}") from error
    except ValueError as error:
        raise ModelFileError(f"model file {path}: {error}") from error
    _check_tree_targets(path, classifier, anomaly, len(metadata["class_names"]))

    try:
        return Model(metadata, classifier, anomaly)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"model file {path} has incomplete metadata: {error!r}") from error
