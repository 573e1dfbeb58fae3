"""Model file round trip and checks, the anomaly forest and the training step."""

import json

import numpy as np
import pytest

from engine.detect import ModelFileError, load_model, save_model
from engine.detect.anomaly import average_path_length, fit_isolation_forest
from engine.detect.training import choose_anomaly_threshold, choose_class_thresholds, evaluate, train_model
from engine.features import FEATURE_NAMES

pytest.importorskip("lightgbm")

COLUMNS = len(FEATURE_NAMES)


def synthetic_dataset(seed, rows_per_class=600):
    """Benign rows plus two attack classes that differ in a few columns."""
    rng = np.random.default_rng(seed)
    blocks, names = [], []
    for name, shift_columns in (("benign", []), ("port_scan", [1, 30]), ("ssh_bruteforce", [2, 40])):
        block = rng.lognormal(mean=2.0, sigma=1.0, size=(rows_per_class, COLUMNS)).astype(np.float32)
        for column in shift_columns:
            block[:, column] *= 50.0
        blocks.append(block)
        names += [name] * rows_per_class
    return np.concatenate(blocks), np.array(names)


@pytest.fixture(scope="module")
def trained():
    X_train, y_train = synthetic_dataset(0)
    X_valid, y_valid = synthetic_dataset(1)
    return train_model(X_train, y_train, X_valid, y_valid, seed=0, rounds=30, anomaly_trees=50)


def test_train_model_separates_classes(trained):
    X_test, y_test = synthetic_dataset(2)
    metrics = evaluate(trained, X_test, y_test)
    assert trained.class_names == ("benign", "port_scan", "ssh_bruteforce")
    # A sanity floor only: the classes are far apart by construction.
    assert metrics["macro_f1"] > 0.95
    assert metrics["benign_fpr"] <= 0.01
    assert set(trained.thresholds) == {"port_scan", "ssh_bruteforce"}


def test_model_file_round_trip(trained, tmp_path):
    path = tmp_path / "model.ww"
    save_model(path, trained.metadata, trained.classifier, trained.anomaly)
    loaded = load_model(path)
    X, _ = synthetic_dataset(3, rows_per_class=50)
    assert np.array_equal(loaded.predict_proba(X), trained.predict_proba(X))
    assert np.array_equal(loaded.anomaly_score(X), trained.anomaly_score(X))
    assert loaded.thresholds == trained.thresholds
    assert loaded.anomaly_threshold == trained.anomaly_threshold
    assert loaded.metadata["training"]["seed"] == 0
    assert np.array_equal(loaded.benign_medians, trained.benign_medians)


def test_benign_medians_recorded(trained):
    X_train, y_train = synthetic_dataset(0)
    expected = np.median(X_train[y_train == "benign"].astype(np.float64), axis=0)
    assert trained.benign_medians.shape == (COLUMNS,)
    assert np.allclose(trained.benign_medians, expected)


def test_model_file_is_pickle_free(trained, tmp_path):
    path = tmp_path / "model.ww"
    save_model(path, trained.metadata, trained.classifier, trained.anomaly)
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)


def test_model_file_rejects_other_schema(trained, tmp_path):
    path = tmp_path / "model.ww"
    metadata = dict(trained.metadata, feature_schema_hash="0" * 64)
    save_model(path, metadata, trained.classifier, trained.anomaly)
    # save_model keeps the hash it is given, so the loader must reject it.
    with pytest.raises(ModelFileError, match="feature schema"):
        load_model(path)


def test_model_file_rejects_truncation(trained, tmp_path):
    path = tmp_path / "model.ww"
    save_model(path, trained.metadata, trained.classifier, trained.anomaly)
    data = path.read_bytes()
    broken = tmp_path / "broken.ww"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(broken)


def test_model_file_rejects_bad_node_index(trained, tmp_path):
    path = tmp_path / "model.ww"
    classifier = trained.classifier
    left = classifier.left.copy()
    left[0] = classifier.feature.size + 5
    classifier_bad = type(classifier)(**dict(classifier.as_dict(), left=left))
    save_model(path, trained.metadata, classifier_bad, trained.anomaly)
    with pytest.raises(ModelFileError, match="internal nodes"):
        load_model(path)


def test_model_file_missing(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.ww")


def test_contributions_of_model_sum(trained):
    X, _ = synthetic_dataset(4, rows_per_class=20)
    raw = trained.raw_score(X)
    contributions = trained.contributions(X, 1)
    assert np.allclose(contributions.sum(axis=1), raw[:, 1], atol=1e-9)
    top = trained.top_features(X[:1], 1, count=3)
    assert len(top[0]) == 3
    assert top[0][0][2] >= top[0][1][2] >= top[0][2][2]


def test_anomaly_scores_outliers_higher():
    rng = np.random.default_rng(7)
    benign = rng.normal(100.0, 10.0, size=(2_000, 6)).astype(np.float32)
    outliers = rng.normal(100.0, 10.0, size=(200, 6)).astype(np.float32)
    # Out of the benign range in half the columns, as a flood differs in
    # rate, size and fan-out at once.
    outliers[:, [1, 2, 4]] = 5_000.0
    forest, subsample = fit_isolation_forest(benign, trees=60, seed=1)
    from engine.detect import scorer
    from engine.detect.anomaly import scores_from_path_sums

    def scores(X):
        sums = scorer.raw_scores(X, forest.tree_root, forest.tree_class, forest.feature, forest.threshold,
                                 forest.left, forest.right, forest.decision_flags, forest.leaf_value, 1)[:, 0]
        return scores_from_path_sums(sums, forest.tree_root.size, subsample)

    benign_scores = scores(benign)
    threshold = choose_anomaly_threshold(benign_scores, target_fpr=0.01)
    assert np.mean(benign_scores > threshold) <= 0.01
    assert np.mean(scores(outliers) > threshold) > 0.8
    assert np.mean(scores(outliers)) > np.mean(benign_scores)


def test_average_path_length_values():
    # c(n) = 2 H(n-1) - 2 (n-1) / n with H(i) ~ ln(i) + Euler's constant.
    assert average_path_length(1) == 0.0
    assert average_path_length(2) == 1.0
    assert average_path_length(256) == pytest.approx(2 * (np.log(255) + 0.5772156649) - 2 * 255 / 256)


def test_class_thresholds_respect_benign_budget():
    # 2000 benign rows and one attack class: the budget 0.001 * 2000 = 2 rows.
    rng = np.random.default_rng(3)
    benign_p = rng.uniform(0.0, 0.9, size=2_000)
    attack_p = rng.uniform(0.6, 1.0, size=200)
    p_attack = np.concatenate([benign_p, attack_p])
    proba = np.stack([1 - p_attack, p_attack], axis=1)
    y = np.array([0] * 2_000 + [1] * 200)
    thresholds = choose_class_thresholds(proba, y, ["benign", "port_scan"], max_benign_fpr=0.001)
    flagged_benign = np.sum((proba[:2_000, 1] >= thresholds["port_scan"]) & (proba[:2_000, 1] > 0.5))
    assert flagged_benign <= 2
    assert json.dumps(thresholds)


def test_train_rejects_unknown_class():
    X, y = synthetic_dataset(5, rows_per_class=20)
    y = y.copy()
    y[0] = "made_up"
    with pytest.raises(ValueError, match="unknown classes"):
        train_model(X, y, X, y, rounds=2)



@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", b"not a model at all"])
def test_load_model_rejects_non_archive(tmp_path, content):
    path = tmp_path / "bogus.ww"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as raised:
        load_model(path)
    message = str(raised.value)
    assert "is not a WardWatch model" in message
    assert "pickle" not in message
