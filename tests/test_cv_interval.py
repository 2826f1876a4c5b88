"""The cross-validation interval is Nadeau & Bengio's (2003) corrected resampled t, checked
against a hand computation; folds where a metric is undefined are counted, not hidden."""

from __future__ import annotations

import math

import pytest

from anndata_rnn.metrics import cv_summary


def _folds(rnn, baseline):
    return [
        {"rnn": {"accuracy": r}, "baseline": {"accuracy": b}}
        for r, b in zip(rnn, baseline, strict=True)
    ]


def test_corrected_interval_matches_a_hand_computation():
    """Differences 0.1, 0.2, 0.0, 0.3 over 4 folds (n_test/n_train = 1/3):
    mean 0.15, sd 0.129099, se = 0.129099 × sqrt(1/4 + 1/3) = 0.098601,
    t(0.975, 3) = 3.182446, interval 0.15 ± 0.313793 = [-0.163793, 0.463793]
    (the plain t interval, 0.15 ± 3.182446 × 0.129099 / 2, would be [-0.05543, 0.35543])."""
    summary = cv_summary(_folds([0.6, 0.7, 0.5, 0.8], [0.5, 0.5, 0.5, 0.5]))
    d = summary["difference"]["rnn - baseline"]["accuracy"]
    assert d["mean"] == pytest.approx(0.15)
    assert d["sd"] == pytest.approx(0.129099, abs=1e-6)
    assert d["ci95_low"] == pytest.approx(-0.163793, abs=1e-6)
    assert d["ci95_high"] == pytest.approx(0.463793, abs=1e-6)
    assert d["n"] == 4 and d["n_dropped"] == 0
    assert summary["test_train_ratio"] == pytest.approx(1 / 3)
    assert "Nadeau" in summary["interval"]


def test_the_measured_test_train_ratio_widens_the_interval():
    folds = _folds([0.6, 0.7, 0.5, 0.8], [0.5, 0.5, 0.5, 0.5])
    narrow = cv_summary(folds, test_train_ratio=0.1)["difference"]["rnn - baseline"]["accuracy"]
    wide = cv_summary(folds, test_train_ratio=0.5)["difference"]["rnn - baseline"]["accuracy"]
    assert wide["ci95_high"] - wide["ci95_low"] > narrow["ci95_high"] - narrow["ci95_low"]


def test_folds_with_an_undefined_metric_are_counted():
    summary = cv_summary(_folds([0.6, math.nan, 0.5, 0.8, 0.7], [0.5, 0.5, 0.5, 0.5, 0.4]))
    d = summary["difference"]["rnn - baseline"]["accuracy"]
    assert summary["n_folds"] == 5 and d["n"] == 4 and d["n_dropped"] == 1
