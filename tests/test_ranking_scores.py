"""Transferability scores (transfer.ranking): LogME against independent computations, and the other scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.linear_model import BayesianRidge

from transfer.ranking import (
    InvalidRankingInput,
    check_features_labels,
    hscore,
    leep,
    logme,
    nce,
    probe_accuracy,
)


def _blobs(n, d, c, seed, separation=1.0):
    """Class means plus unit noise: informative, well-conditioned features."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % c)
    means = rng.standard_normal((c, d)) * separation
    return means[labels] + rng.standard_normal((n, d)), labels


def _sklearn_logme(features, labels):
    """LogME from scikit-learn's BayesianRidge, one one-vs-rest fit per class.

    BayesianRidge names are reversed with respect to the paper: its ``alpha_`` is
    the noise precision (the paper's beta) and ``lambda_`` the weight precision
    (the paper's alpha). With alpha_1 = alpha_2 = lambda_1 = lambda_2 = 0 its Gamma
    hyper-priors vanish and ``_log_marginal_likelihood`` in sklearn/linear_model/_bayes.py
    is 0.5 * (D log lambda + N log alpha - alpha ||y - X w||^2 - lambda ||w||^2
    - log det(lambda I + alpha X^T X) - N log 2 pi): exactly the paper's Equation 2,
    -N/2 log 2 pi included, so no constant has to be added or removed here.
    (Its last entry of ``scores_`` pairs the final hyper-parameters with the
    previous iterate's w; at tol=1e-10 the two are the same to far below 1e-6.)
    """
    scores, weights = [], []
    for c in np.unique(labels):
        model = BayesianRidge(fit_intercept=False, compute_score=True, alpha_1=0, alpha_2=0, lambda_1=0,
                              lambda_2=0, tol=1e-10, max_iter=1000)
        model.fit(features, (labels == c).astype(np.float64))
        assert model.n_iter_ < 1000, "scikit-learn did not converge: the comparison would not be fair"
        scores.append(model.scores_[-1] / len(labels))
        weights.append(model.coef_)
    return float(np.mean(scores)), np.array(weights)


def _brute_force_evidence(features, y):
    """max over (alpha, beta) of log N(y | 0, I/beta + F F^T/alpha) / N, by search, not MacKay.

    Uses the eigendecomposition of the N x N Gram matrix (not the SVD of F), the
    Gaussian density directly (not Equation 2), beta at its closed-form best for
    each t = alpha/beta, and a scan of log t over [-40, 60] refined by Brent's
    method. A supremum on the boundary (t -> 0 or t -> inf) shows up as the end
    of the scan, whose value equals the limit to double precision.
    """
    n = len(y)
    w, Q = np.linalg.eigh(features @ features.T)
    q2 = (Q.T @ y) ** 2
    w = np.clip(w, 0.0, None)

    def log_evidence(u):
        cov_eig = 1.0 + w / math.exp(u)  # eigenvalues of (I + F F^T / t); covariance = that / beta
        quad = float((q2 / cov_eig).sum())
        beta = n / quad
        return (-0.5 * n * math.log(2 * math.pi) + 0.5 * n * math.log(beta)
                - 0.5 * float(np.log(cov_eig).sum()) - 0.5 * beta * quad)

    grid = np.linspace(-40.0, 60.0, 1001)
    values = np.array([log_evidence(u) for u in grid])
    k = int(values.argmax())
    if 0 < k < grid.size - 1:
        best = minimize_scalar(lambda u: -log_evidence(u), bounds=(grid[k - 1], grid[k + 1]),
                               method="bounded", options={"xatol": 1e-12})
        return max(-best.fun, values[k]) / n
    return values[k] / n


# ----------------------------------------------------------------------------- LogME vs independent computations


@pytest.mark.parametrize("n, d, c, seed", [(300, 20, 4, 0), (200, 50, 5, 1), (60, 80, 4, 0), (45, 120, 3, 2)],
                         ids=["N>D", "N>D-5cls", "N<D", "N<<D"])
def test_logme_matches_sklearn_bayesian_ridge(n, d, c, seed):
    features, labels = _blobs(n, d, c, seed)
    score, weights = logme(features, labels, return_weights=True)
    expected, expected_weights = _sklearn_logme(features, labels)
    assert score == pytest.approx(expected, rel=1e-6)
    assert weights.shape == (c, d)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-6, atol=1e-6 * np.abs(expected_weights).max())


@pytest.mark.parametrize("n, d", [(700, 180), (180, 700)], ids=["N>D", "N<D"])
def test_logme_float32_features_match_sklearn_in_blocks(n, d, monkeypatch):
    """float32 features (what models hand over) are converted to float64 block by block for the
    Gram product; with blocks far smaller than F the answer is still BayesianRidge's on float64."""
    from transfer.ranking import scores

    features, labels = _blobs(n, d, 4, seed=21, separation=0.3)
    features = features.astype(np.float32)
    monkeypatch.setattr(scores, "_BLOCK_BYTES", 8 * 64 * max(n, d))  # 64 rows or columns per block
    score, weights = logme(features, labels, return_weights=True)
    expected, expected_weights = _sklearn_logme(features.astype(np.float64), labels)
    assert score == pytest.approx(expected, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-6, atol=1e-6 * np.abs(expected_weights).max())
    monkeypatch.undo()
    assert logme(features.astype(np.float64), labels) == pytest.approx(score, rel=1e-10)


@pytest.mark.parametrize("n, d", [(400, 60), (60, 400)], ids=["N>D", "N<D"])
def test_logme_ill_conditioned_and_rank_deficient_features(n, d):
    """The Gram matrix squares F's condition number; singular values spread over six decades and
    exactly repeated columns (rank < min(N, D)) must still give BayesianRidge's evidence."""
    rng = np.random.default_rng(22)
    features, labels = _blobs(n, d, 3, seed=23)
    u, _, vt = np.linalg.svd(features, full_matrices=False)
    features = (u * np.logspace(0, -6, u.shape[1])) @ vt * 30.0
    features[:, -5:] = features[:, :5]  # rank deficient
    features = features[:, rng.permutation(d)]
    expected, _ = _sklearn_logme(features, labels)
    assert logme(features, labels) == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("n, d, signal, real_valued, seed", [
    (80, 12, 0.0, False, 0),    # pure noise: the supremum is at alpha -> inf (w = 0)
    (25, 200, 0.5, False, 5),   # N << D, separable: the supremum is at beta -> inf (interpolation)
    (40, 90, 0.0, True, 1),     # interior, but plain MacKay needs ~600 steps (rate near 1)
    (120, 30, 0.05, False, 2),  # barely informative, interior
    (80, 12, 0.5, False, 3),    # informative, N > D, interior
    (25, 200, 2.0, True, 4),    # N << D, real-valued target, interior
    (120, 30, 1.0, True, 6),
    (60, 60, 1.0, False, 7),    # N = D
])
def test_logme_is_the_maximum_evidence(n, d, signal, real_valued, seed):
    """Against a brute-force search, including data whose supremum is on a boundary."""
    rng = np.random.default_rng(100 + seed)
    y = rng.integers(0, 2, n).astype(np.float64)
    features = rng.standard_normal((n, d)) + signal * np.outer(y - 0.5, rng.standard_normal(d))
    if real_valued:
        y = y + 0.3 * rng.standard_normal(n)
    assert logme(features, y, regression=True) == pytest.approx(_brute_force_evidence(features, y), rel=1e-8)


def test_logme_finds_the_higher_of_two_maxima():
    """The evidence can have two maxima in t; MacKay started at alpha = beta = 1, as
    in the paper, reaches the lower one here (N < D), logme the higher one."""
    from benchmarks.bench_logme import logme_per_class

    rng = np.random.default_rng(75)
    n = int(rng.integers(8, 40))
    d = int(rng.integers(n + 1, 150))
    labels = rng.integers(0, 2, n)
    features = rng.standard_normal((n, d)) + rng.uniform(0, 3) * np.outer(labels - 0.5, rng.standard_normal(d))
    best = np.mean([_brute_force_evidence(features, (labels == c).astype(np.float64)) for c in (0, 1)])
    assert logme(features, labels) == pytest.approx(best, rel=1e-8)
    assert logme_per_class(features, labels)[0] < best - 1e-3


def test_logme_vectorised_equals_plain_per_class_loop():
    from benchmarks.bench_logme import logme_per_class

    for n, d, c in [(400, 30, 7), (70, 150, 4)]:
        features, labels = _blobs(n, d, c, seed=3, separation=0.7)
        reference = logme_per_class(features, labels)[0]
        assert logme(features, labels) == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("n, d", [(200, 40), (40, 200)])
def test_logme_invariant_to_rotating_the_features(n, d):
    features, labels = _blobs(n, d, 5, seed=4)
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((d, d)))
    assert logme(features @ q, labels) == pytest.approx(logme(features, labels), rel=1e-8)


def test_logme_informative_features_beat_noise_of_the_same_width():
    features, labels = _blobs(500, 32, 5, seed=6)
    noise = np.random.default_rng(7).standard_normal(features.shape)
    assert logme(features, labels) > logme(noise, labels) + 0.05


def test_logme_regression_targets():
    rng = np.random.default_rng(8)
    features = rng.standard_normal((300, 10))
    targets = features @ rng.standard_normal((10, 3)) + 0.3 * rng.standard_normal((300, 3))
    both, weights = logme(features, targets, regression=True, return_weights=True)
    columns = [logme(features, targets[:, k], regression=True) for k in range(3)]
    assert weights.shape == (3, 10)
    assert both == pytest.approx(np.mean(columns), rel=1e-12)
    assert both > logme(rng.standard_normal((300, 10)), targets, regression=True) + 0.5
    assert logme(features, targets[:, 0], regression=True, return_weights=True)[1].shape == (1, 10)


def test_logme_string_labels_and_all_zero_features():
    features, labels = _blobs(120, 8, 3, seed=9)
    names = np.array(["cat", "dog", "emu"])[labels]
    assert logme(features, names) == pytest.approx(logme(features, labels), rel=1e-12)
    # Features that say nothing: the evidence no longer depends on alpha and is
    # the noise-only model's, log N(y | 0, ||y||^2/N I) per class.
    counts = np.bincount(labels)
    noise_only = np.mean(0.5 * np.log(120 / counts) - 0.5 * math.log(2 * math.pi) - 0.5)
    assert logme(np.zeros((120, 8)), labels) == pytest.approx(noise_only, rel=1e-12)


def test_logme_raw_digits_pixels_beat_noise():
    datasets = pytest.importorskip("zoo.datasets")
    try:
        split = datasets.load_dataset("digits").split("train")
    except Exception as exc:  # a missing pack is an environment problem, not this module's
        pytest.skip(f"digits data set not available: {exc}")
    pixels = split.inputs.reshape(len(split.labels), -1).astype(np.float64) / 255.0
    noise = np.random.default_rng(10).uniform(0.0, 1.0, pixels.shape)
    assert pixels.shape[1] == 64
    assert logme(pixels, split.labels) > logme(noise, split.labels) + 0.1


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("features, labels, match", [
    (np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), [0, 1, 0], "finite; got 1 NaN or infinite"),
    (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), [0, 1, 0], "finite"),
    (np.zeros(3), [0, 1, 0], r"2-D array \(n_samples, n_features\); got an array of shape \(3,\)"),
    (np.zeros((3, 2, 2)), [0, 1, 0], r"2-D array .* shape \(3, 2, 2\)"),
    (np.array([["a", "b"], ["c", "d"]]), [0, 1], "real numbers; got dtype <U1"),
    (np.zeros((4, 2)), [0, 1, 0], "same length; got 4 rows and 3 labels"),
    (np.zeros((1, 2)), [0], "at least 2 samples; got 1"),
    (np.zeros((3, 2)), [1, 1, 1], "at least 2 classes; got a single class 1"),
    (np.zeros((3, 2)), [0.5, 1.0, 0.0], "continuous .*regression=True"),
    (np.zeros((3, 2)), [[0, 1], [1, 0], [0, 1]], r"1-D array of class labels; got an array of shape \(3, 2\)"),
])
def test_bad_inputs_say_what_is_wrong(features, labels, match):
    with pytest.raises(InvalidRankingInput, match=match):
        check_features_labels(features, labels)
    with pytest.raises(ValueError, match=match):  # every score validates the same way
        logme(features, labels)
    with pytest.raises(ValueError, match=match):
        hscore(features, labels)


def test_check_features_labels_maps_labels():
    features, y, values = check_features_labels([[1, 2], [3, 4], [5, 6]], ["b", "a", "b"])
    assert features.dtype == np.float64 and y.dtype == np.int64
    assert y.tolist() == [1, 0, 1] and values.tolist() == ["a", "b"]


def test_bad_regression_targets():
    features = np.ones((4, 2))
    with pytest.raises(InvalidRankingInput, match="column 1 is all zeros"):
        logme(features, np.c_[np.ones(4), np.zeros(4)], regression=True)
    with pytest.raises(InvalidRankingInput, match=r"1-D .* or 2-D .*; got shape \(4, 1, 1\)"):
        logme(features, np.ones((4, 1, 1)), regression=True)
    with pytest.raises(InvalidRankingInput, match="regression targets must be finite"):
        logme(features, [1.0, np.nan, 2.0, 3.0], regression=True)
    with pytest.raises(InvalidRankingInput, match="same length; got 4 rows and 3 labels"):
        logme(features, [1.0, 2.0, 3.0], regression=True)


# ----------------------------------------------------------------------------- NCE, LEEP, H-score, probe


def test_nce():
    target = np.array([0, 0, 1, 1, 2, 2])
    assert nce(np.array(["x", "x", "y", "y", "z", "z"]), target) == 0.0  # source determines target
    # z=5 -> y in (0, 0, 1), z=7 -> (1, 2), z=9 -> 2: -H(Y|Z) = -(3/6 H(2/3, 1/3) + 2/6 log 2).
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce([5, 5, 5, 7, 7, 9], target) == pytest.approx(-(0.5 * h + math.log(2) / 3), rel=1e-12)
    # Hand computation: z=0 -> y in {0, 1} (1/2 each), z=1 -> y=1; -H(Y|Z) = P(z=0) (-log 2).
    assert nce([0, 0, 1], [0, 1, 1]) == pytest.approx(-(2 / 3) * math.log(2), rel=1e-12)
    # A constant source label: -H(Y|Z) = -H(Y).
    assert nce([3, 3, 3, 3], [0, 1, 1, 1]) == pytest.approx(0.25 * math.log(0.25) + 0.75 * math.log(0.75), rel=1e-12)
    with pytest.raises(InvalidRankingInput, match="same length; got 3 rows and 2 labels"):
        nce([0, 1, 1], [0, 1])


def test_leep_matches_a_hand_computation():
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    y = np.array([0, 0, 1, 1])
    # P(y, z) = 1/4 sum_{i: y_i = y} theta_iz: [[1.5, 0.5], [0.5, 1.5]] / 4, so
    # P(z) = [0.5, 0.5] and P(y | z) = [[0.75, 0.25], [0.25, 0.75]].
    eep = [0.9 * 0.75 + 0.1 * 0.25, 0.6 * 0.75 + 0.4 * 0.25, 0.2 * 0.25 + 0.8 * 0.75, 0.3 * 0.25 + 0.7 * 0.75]
    assert leep(theta, y) == pytest.approx(np.mean(np.log(eep)), rel=1e-12)
    assert leep(np.eye(2)[y], y) == 0.0  # a source that already predicts the target perfectly
    with pytest.raises(InvalidRankingInput, match="probability distributions .* row 1 sums to 1.5"):
        leep(np.array([[0.5, 0.5], [1.0, 0.5]]), [0, 1])


def test_hscore():
    features, labels = _blobs(300, 6, 3, seed=11)
    centred = features - features.mean(axis=0)
    class_means = np.stack([features[labels == c].mean(axis=0) for c in labels])  # E[f | y] row by row
    expected = np.trace(np.linalg.pinv(np.cov(centred, rowvar=False)) @ np.cov(class_means, rowvar=False))
    assert hscore(features, labels) == pytest.approx(expected, rel=1e-9)
    noise = np.random.default_rng(12).standard_normal(features.shape)
    assert hscore(features, labels) > 10 * hscore(noise, labels)
    # Duplicated columns make cov(f) singular; the pseudo-inverse keeps the score unchanged.
    assert hscore(np.c_[features, features], labels) == pytest.approx(hscore(features, labels), rel=1e-6)


def test_probe_accuracy():
    features, labels = _blobs(200, 5, 4, seed=13, separation=6.0)
    assert probe_accuracy(features, labels) > 0.97
    noise = np.random.default_rng(14).standard_normal((200, 5))
    assert abs(probe_accuracy(noise, labels) - 0.25) < 0.12
    with pytest.raises(InvalidRankingInput, match="at least folds=5 examples .* class 3 has 2"):
        probe_accuracy(np.zeros((12, 2)), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 3, 3])
