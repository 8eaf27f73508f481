"""Metrics against hand-computed values on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fashion.model import metrics


def test_sample_f2_by_hand():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    p = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    # sample 1: tp=1 fn=1 fp=0 -> 5/(5+4) ; sample 2: tp=1 fp=1 -> 5/(5+1) ; sample 3: nothing -> 1
    assert metrics.fbeta_samples(y, p) == pytest.approx((5 / 9 + 5 / 6 + 1) / 3)


def test_average_precision_by_hand():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.4]])
    ap = metrics.average_precision(y, s)
    # ranking 0.9(+) 0.8(-) 0.3(+) 0.1(-): AP = (1/1 + 2/3) / 2
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(ap[1]), "no positives: undefined, not 0"
    assert metrics.mean_ap(ap) == pytest.approx((1 + 2 / 3) / 2)


def test_tuned_thresholds_beat_half_and_reach_the_constant():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < [0.9, 0.5, 0.2, 0.05, 0.0]).astype(int)
    scores = np.clip(0.3 * y + rng.random(y.shape) * 0.5, 0, 1) * 0.6  # informative but low: 0.5 is a bad cut
    th = metrics.tune_thresholds(y, scores)
    tuned = metrics.fbeta_samples(y, scores >= th)
    assert tuned > metrics.fbeta_samples(y, scores >= 0.5)
    const = metrics.constant_baseline(y, y)
    assert tuned >= const["f2_samples"] - 1e-9
    assert const["labels"][0] == 0, "the most frequent label is in the best constant set"
    assert not (scores[:, 4] >= th[4]).any(), "a class without positives is never predicted"


def test_prior_baseline_map_equals_prevalence():
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    out = metrics.prior_baseline(y, y)
    assert out["mAP"] == pytest.approx((0.5 + 0.25) / 2)


def test_crossfit_is_not_above_in_sample_tuning_on_noise():
    rng = np.random.default_rng(5)
    y = (rng.random((300, 6)) < 0.3).astype(int)
    scores = rng.random(y.shape)  # pure noise: in-sample tuning flatters, cross-fitting must not
    in_sample = metrics.fbeta_samples(y, scores >= metrics.tune_thresholds(y, scores, min_gain=0))
    assert metrics.crossfit_f2(y, scores) < in_sample


def test_thresholds_stay_at_the_constant_set_unless_scores_earn_more():
    rng = np.random.default_rng(7)
    y_train = (rng.random((500, 5)) < [0.8, 0.6, 0.3, 0.1, 0.05]).astype(int)
    y = (rng.random((60, 5)) < [0.8, 0.6, 0.3, 0.1, 0.05]).astype(int)  # a small split, like ccp-dev's halves
    const = metrics.constant_baseline(y_train, y)
    noise = rng.random(y.shape)
    free = metrics.tune_thresholds(y, noise, y_train=y_train, min_gain=0)
    assert metrics.fbeta_samples(y, noise >= free) > const["f2_samples"], "unrestricted tuning fits the noise"
    th = metrics.tune_thresholds(y, noise, y_train=y_train)
    assert set(np.flatnonzero(th == 0.0)) == set(const["labels"]) and set(th) <= {0.0, 1.0}, (
        "noise earns no threshold: the tuned set is the constant one"
    )
    informative = np.clip(0.5 * y + 0.5 * rng.random(y.shape), 0, 1)
    th = metrics.tune_thresholds(y, informative, y_train=y_train)
    assert ((th > 0) & (th < 1)).any()
    assert metrics.fbeta_samples(y, informative >= th) > const["f2_samples"] + 1 / len(y)


def test_class_without_positives_is_never_predicted():
    rng = np.random.default_rng(3)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    y[:, 2] = 0  # like myntra-dev's smart_casual/party/travel
    scores = rng.random((60, 3)) * 0.5
    scores[:, 2] *= 0.01  # the model learnt "no": tiny scores, which any low threshold would still fire on
    th = metrics.tune_thresholds(y, scores)
    assert th[2] == 1.0 and th[:2].max() < 1.0
