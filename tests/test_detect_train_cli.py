"""`wardwatch train` on simulator captures, and the shipped default model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.detect import default_model_path, load_model
from engine.features import FEATURE_SCHEMA_HASH

pytest.importorskip("lightgbm")


def simulate(runner, directory, seed):
    capture = directory / f"sim-{seed}.pcap"
    result = runner.invoke(main, ["simulate", "--profile", "small", "--duration", "5m", "--attack", "all",
                                  "--seed", str(seed), "-o", str(capture)])
    if result.exit_code != 0:
        pytest.skip(f"simulator failed: {result.output[-300:]}")
    return capture


def test_train_cli_writes_loadable_model(tmp_path):
    runner = CliRunner()
    captures = [simulate(runner, tmp_path, seed) for seed in (11, 12)]
    output = tmp_path / "model.ww"
    result = runner.invoke(main, ["train", *map(str, captures), "-o", str(output), "--rounds", "20"])
    assert result.exit_code == 0, result.output
    assert f"wrote {output}" in result.output
    model = load_model(output)
    assert model.class_names[0] == "benign"
    assert model.metadata["training"]["train_captures"] == ["sim-11.pcap"]
    assert model.metadata["training"]["validation_captures"] == ["sim-12.pcap"]
    metrics = json.loads(result.output[: result.output.rindex("}") + 1])
    assert metrics["benign_flows"] > 0


def test_train_cli_needs_training_capture(tmp_path):
    capture = tmp_path / "only.pcap"
    capture.write_bytes(b"")
    labels = tmp_path / "only.labels.jsonl"
    labels.write_text("")
    result = CliRunner().invoke(main, ["train", str(capture), "-o", str(tmp_path / "m.ww")])
    assert result.exit_code == 2
    assert "leaves no capture to train on" in result.output


def test_train_cli_label_count_mismatch(tmp_path):
    paths = []
    for name in ("a.pcap", "b.pcap"):
        path = tmp_path / name
        path.write_bytes(b"")
        paths.append(str(path))
    labels = tmp_path / "a.labels.jsonl"
    labels.write_text("")
    result = CliRunner().invoke(main, ["train", *paths, "--labels", str(labels), "-o", str(tmp_path / "m.ww")])
    assert result.exit_code == 2
    assert "2 captures but 1 --labels" in result.output


def test_default_model_ships():
    path = default_model_path()
    if not path.is_file():
        pytest.fail(f"{path} is missing; run python tools/train_default_model.py")
    assert path.stat().st_size < 5 * 1024 * 1024
    model = load_model()
    assert model.schema_hash == FEATURE_SCHEMA_HASH
    assert set(model.thresholds) == set(model.class_names[1:])
    test_metrics = model.metadata["test_metrics"]
    # A sanity floor; the measured values are in the metrics JSON beside it.
    assert test_metrics["macro_f1"] > 0.8
    assert test_metrics["benign_fpr"] < 0.01


def test_default_model_on_sample_capture():
    from engine.detect.dataset import extract_capture, label_flows, read_labels

    data = default_model_path().parent.parent / "data"
    capture = data / "sample.pcap"
    if not capture.is_file():
        pytest.skip("engine/data/sample.pcap not shipped")
    flows, X = extract_capture(capture)
    truth = label_flows(flows, read_labels(data / "sample.labels.jsonl"))
    model = load_model()
    best, flagged = model.detect(X)
    predicted = np.where(flagged, np.asarray(model.class_names)[best], "benign")
    attacks = truth != "benign"
    assert attacks.any()
    # Sanity floors: most attack flows found, few benign flows flagged.
    assert np.mean(predicted[attacks] == truth[attacks]) > 0.5
    assert np.mean(predicted[~attacks] != "benign") < 0.05
