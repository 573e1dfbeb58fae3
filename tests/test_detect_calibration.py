"""Anomaly threshold calibration per traffic kind, and the shipped model's calibration."""

import numpy as np
import pytest

from engine.detect.model import load_model
from engine.detect.training import anomaly_thresholds_by_group, choose_anomaly_threshold


def test_grouped_threshold_bounds_each_group():
    rng = np.random.default_rng(4)
    # A large day group with low scores and a small night group with a
    # heavier tail: pooled, the night group's tail hides in the day rows.
    day = rng.uniform(0.30, 0.50, size=9_000)
    night = rng.uniform(0.40, 0.60, size=1_000)
    scores = np.concatenate([day, night])
    groups = np.array(["day"] * day.size + ["night"] * night.size)

    pooled = choose_anomaly_threshold(scores, target_fpr=0.01)
    assert np.mean(night > pooled) > 0.05

    grouped = choose_anomaly_threshold(scores, target_fpr=0.01, groups=groups)
    assert np.mean(day > grouped) <= 0.01
    assert np.mean(night > grouped) <= 0.01
    by_group = anomaly_thresholds_by_group(scores, groups, target_fpr=0.01)
    assert grouped == max(by_group.values())
    assert by_group["night"] == float(np.quantile(night, 0.99, method="higher"))


def test_grouped_threshold_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="3 group labels for 4 benign scores"):
        anomaly_thresholds_by_group(np.zeros(4), np.array(["a", "b", "c"]))


def test_shipped_model_calibrated_per_capture():
    model = load_model()
    anomaly = model.metadata["anomaly"]
    by_group = anomaly["threshold_by_group"]
    # One hour of the small profile and one day of the week profile.
    assert sorted(by_group) == ["sim-small-60m-201", "sim-week-1d-211"]
    assert model.anomaly_threshold == max(by_group.values())
    assert anomaly["target_benign_fpr"] == 0.01
    assert all(rows > 1000 for rows in anomaly["benign_rows_by_group"].values())
