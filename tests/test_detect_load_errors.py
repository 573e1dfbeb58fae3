"""Model files with NaN trees are rejected; `train` without LightGBM names the extra to install."""

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.detect import ModelFileError, load_model, save_model

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "engine" / "data" / "sample.pcap"
SAMPLE_LABELS = REPO / "engine" / "data" / "sample.labels.jsonl"


@pytest.fixture(scope="module")
def shipped_model():
    return load_model()


def write_with_nan(model, path: Path, part: str, array_name: str, rows) -> None:
    trees = getattr(model, part)
    edited = getattr(trees, array_name).copy()
    edited[rows] = np.nan
    replaced = type(trees)(**dict(trees.as_dict(), **{array_name: edited}))
    classifier = replaced if part == "classifier" else model.classifier
    anomaly = replaced if part == "anomaly" else model.anomaly
    save_model(path, model.metadata, classifier, anomaly)


@pytest.mark.parametrize(
    ("part", "array_name", "rows", "count"),
    [
        ("classifier", "threshold", slice(None), None),
        ("classifier", "threshold", [0], 1),
        ("anomaly", "threshold", [3, 4], 2),
        ("classifier", "leaf_value", [7], 1),
    ],
    ids=["all classifier thresholds", "one threshold", "anomaly thresholds", "leaf value"],
)
def test_model_with_nan_rejected(shipped_model, tmp_path, part, array_name, rows, count):
    path = tmp_path / "nan.ww"
    write_with_nan(shipped_model, path, part, array_name, rows)
    if count is None:
        count = getattr(getattr(shipped_model, part), array_name).size
    with pytest.raises(ModelFileError, match=f"{count} {part} {array_name} entries are NaN"):
        load_model(path)


def test_model_round_trip_without_nan(shipped_model, tmp_path):
    # The check must not reject the shipped model written out again.
    path = tmp_path / "same.ww"
    save_model(path, shipped_model.metadata, shipped_model.classifier, shipped_model.anomaly)
    reloaded = load_model(path)
    assert np.array_equal(reloaded.classifier.threshold, shipped_model.classifier.threshold)


def test_analyze_rejects_nan_model(shipped_model, tmp_path):
    path = tmp_path / "nan.ww"
    write_with_nan(shipped_model, path, "classifier", "threshold", slice(None))
    store = tmp_path / "ward.db"
    result = CliRunner().invoke(main, ["analyze", "--no-bus", "--model", str(path), "--store", str(store), str(SAMPLE)])
    assert result.exit_code == 1, result.output
    assert "entries are NaN; retrain it with `wardwatch train`" in result.output
    assert not store.exists()


def test_train_without_lightgbm(monkeypatch, tmp_path):
    # None in sys.modules makes `import lightgbm` raise ImportError, as when
    # the train extra is not installed.
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    output = tmp_path / "model.ww"
    result = CliRunner().invoke(main, ["train", str(SAMPLE), str(SAMPLE), "--labels", str(SAMPLE_LABELS),
                                       "--labels", str(SAMPLE_LABELS), "-o", str(output)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "training needs LightGBM" in result.output
    assert "pip install '.[train]'" in result.output
    assert not output.exists()
