"""Transferability scores: how well a frozen model's outputs suit a labelled target task.

Every score takes what a pre-trained model produced for the N target examples
(features, source-class probabilities or hard source labels) plus the target
labels, and returns one float where higher means "expected to transfer better".

* :func:`logme` -- You, Liu, Wang, Long. "LogME: Practical Assessment of
  Pre-trained Models for Transfer Learning", ICML 2021.
* :func:`leep` -- Nguyen, Hassner, Seeger, Archambeau. "LEEP: A New Measure to
  Evaluate Transferability of Learned Representations", ICML 2020.
* :func:`nce` -- Tran, Nguyen, Hassner. "Transferability and Hardness of
  Supervised Classification Tasks", ICCV 2019.
* :func:`hscore` -- Bao, Li, Huang, Zheng, Wang, Tong. "An Information-Theoretic
  Approach to Transferability in Task Transfer Learning", ICIP 2019.
* :func:`probe_accuracy` -- cross-validated linear-probe accuracy, the cheap
  stand-in for fine-tuning that the scores above try to predict.

All inputs are validated by :func:`check_features_labels` (or its label half),
so a bad array fails the same way, with the same wording, whichever score sees it.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg

__all__ = [
    "InvalidRankingInput",
    "check_features_labels",
    "hscore",
    "leep",
    "logme",
    "nce",
    "probe_accuracy",
]

# Stop MacKay's iteration when t = alpha/beta moves by less than this, relatively.
# The evidence is stationary at the fixed point, so the score is accurate to
# roughly the square of this; the posterior weights only to about this itself,
# which is why it is far tighter than the reference code's 1e-2 (11 iterations).
LOGME_TOL = 1e-8
LOGME_MAX_ITER = 100


class InvalidRankingInput(ValueError):
    """An input array a transferability score cannot use; the message says what was expected."""


# ----------------------------------------------------------------------------- validation


def _check_features(features, name: str = "features") -> np.ndarray:
    F = np.asarray(features)
    if F.ndim != 2:
        raise InvalidRankingInput(
            f"{name} must be a 2-D array (n_samples, n_features); got an array of shape {F.shape}")
    if not (np.issubdtype(F.dtype, np.number) or F.dtype == np.bool_) or np.issubdtype(F.dtype, np.complexfloating):
        raise InvalidRankingInput(f"{name} must be real numbers; got dtype {F.dtype}")
    if F.shape[1] < 1:
        raise InvalidRankingInput(f"{name} must have at least 1 column; got shape {F.shape}")
    F = np.asarray(F, dtype=np.float64)
    if not np.isfinite(F).all():
        bad = int(np.size(F) - np.isfinite(F).sum())
        raise InvalidRankingInput(
            f"{name} must be finite; got {bad} NaN or infinite value(s), first in row "
            f"{int(np.argwhere(~np.isfinite(F))[0, 0])}")
    return F


def _check_n_samples(n_rows: int, n_labels: int, name: str = "features") -> None:
    if n_rows != n_labels:
        raise InvalidRankingInput(f"{name} and labels must have the same length; got {n_rows} rows and {n_labels} labels")
    if n_rows < 2:
        raise InvalidRankingInput(f"need at least 2 samples; got {n_rows}")


def _encode_labels(labels, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Class codes 0..C-1 (int64) and the sorted distinct values they stand for."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InvalidRankingInput(f"{name} must be a 1-D array of class labels; got an array of shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise InvalidRankingInput(f"{name} must not contain NaN or infinite values")
        if (y != np.round(y)).any():
            raise InvalidRankingInput(
                f"{name} look continuous (non-integer floats such as {y[y != np.round(y)][0]!r}); "
                "class labels must be integers or strings (for a regression target use regression=True)")
    elif y.dtype.kind not in "biuUSO":
        raise InvalidRankingInput(f"{name} must be integers or strings; got dtype {y.dtype}")
    try:
        values, codes = np.unique(y, return_inverse=True)
    except TypeError as exc:  # e.g. a mix of str and int in an object array
        raise InvalidRankingInput(f"{name} must be all of one comparable type; {exc}") from None
    return codes.reshape(-1).astype(np.int64), values


def check_features_labels(features, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a (features, class labels) pair the way every score here needs it.

    Returns ``(F, y, class_values)``: ``F`` float64 ``(N, D)``, ``y`` int64 codes in
    ``0..C-1`` and ``class_values`` the original label of each code (labels may be
    any integers or strings; ``np.unique(..., return_inverse=True)`` maps them).

    Raises :class:`InvalidRankingInput` (a ``ValueError``) naming what was expected
    and what arrived for: features not 2-D, non-numeric, NaN or infinite; labels not
    1-D, continuous or NaN; mismatched lengths; fewer than 2 samples; a single class.
    """
    F = _check_features(features)
    y, values = _encode_labels(labels)
    _check_n_samples(F.shape[0], y.shape[0])
    if values.size < 2:
        raise InvalidRankingInput(f"labels must contain at least 2 classes; got a single class {values[0]!r}")
    return F, y, values


def _check_regression(features, targets) -> tuple[np.ndarray, np.ndarray]:
    F = _check_features(features)
    Y = _check_features(np.asarray(targets).reshape(len(targets), -1) if np.ndim(targets) == 1 else targets,
                        name="regression targets")
    _check_n_samples(F.shape[0], Y.shape[0])
    zero = np.flatnonzero(~Y.any(axis=0))
    if zero.size:
        # y = 0 is explained by alpha -> inf, beta -> inf: the evidence is unbounded.
        raise InvalidRankingInput(f"regression target column {int(zero[0])} is all zeros; LogME is unbounded for it")
    return F, Y


# ----------------------------------------------------------------------------- LogME


def _svd(F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        return scipy.linalg.svd(F, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:  # gesdd occasionally fails to converge; gesvd is slower but robust
        return scipy.linalg.svd(F, full_matrices=False, check_finite=False, lapack_driver="gesvd")


def _mackay_fixed_point(s2: np.ndarray, z: np.ndarray, delta: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """MacKay's updates for all C targets at once (Algorithm 3 of You et al., vectorised).

    ``s2`` (r,) squared singular values, ``z`` (r, C) = U^T Y, ``delta`` (C,) the
    part of ||y||^2 outside the column space of F. Both updates depend on
    (alpha, beta) only through t = alpha/beta, so only t is iterated; each target
    stops on its own once t settles, which makes the result identical to running
    the targets one by one.
    """
    C = z.shape[1]
    z2 = z * z
    t = np.ones(C)  # alpha = beta = 1, as in the paper
    alpha, beta = np.ones(C), np.ones(C)
    active = np.arange(C)
    for n_iter in range(1, LOGME_MAX_ITER + 1):
        ta = t[active]
        shrink = 1.0 / (ta + s2[:, None])  # (r, A)
        gamma = (s2[:, None] * shrink).sum(axis=0)
        mm = (s2[:, None] * z2[:, active] * shrink**2).sum(axis=0)
        res = (z2[:, active] * (ta * shrink) ** 2).sum(axis=0) + delta[active]
        alpha[active] = gamma / mm
        beta[active] = (n - gamma) / res
        t_new = alpha[active] / beta[active]
        moved = np.abs(t_new - ta) > LOGME_TOL * ta
        t[active] = t_new
        active = active[moved]
        if active.size == 0:
            break
    else:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"LogME: MacKay's iteration did not converge in {LOGME_MAX_ITER} iterations for "
                      f"{active.size} of {C} targets; their scores are the last iterate's", ConvergenceWarning,
                      stacklevel=3)
    return alpha, beta, n_iter


def _logme_targets(F: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-target log evidence / N (C,) and posterior means m (C, D) for targets Y (N, C)."""
    n, d = F.shape
    U, s, Vt = _svd(F)
    r = s.size  # min(N, D); singular values that are numerically 0 are harmless below
    s2 = s * s
    z = U.T @ Y  # the one O(N r C) product, shared by all targets
    if r == n:  # U is square and orthogonal: y lies wholly in the column space
        delta = np.zeros(Y.shape[1])
    else:
        delta = np.maximum(np.einsum("ij,ij->j", Y, Y) - np.einsum("ij,ij->j", z, z), 0.0)
    if not (s2[:, None] * z * z).any(axis=0).all():
        raise InvalidRankingInput("features carry no signal for at least one target (e.g. all-zero features); "
                                  "LogME's evidence is maximised only in the limit alpha -> inf")
    alpha, beta, _ = _mackay_fixed_point(s2, z, delta, n)
    # Evaluate Equation 2 at the final (alpha, beta) with m recomputed for them, so
    # every term belongs to the same point (the reference code mixes two iterates).
    t = alpha / beta
    shrink = 1.0 / (t + s2[:, None])
    coef = s[:, None] * z * shrink  # V^T m, (r, C)
    mm = (coef * coef).sum(axis=0)
    res = (z * z * (t * shrink) ** 2).sum(axis=0) + delta
    # D/2 log alpha - 1/2 sum_{i<=D} log(alpha + beta s_i^2): the D - r zero
    # eigenvalues of F^T F cancel exactly against (D - r)/2 of the log alpha.
    evidence = (n / 2 * np.log(beta) + r / 2 * np.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * res - alpha / 2 * mm
                - 0.5 * np.log(alpha + beta * s2[:, None]).sum(axis=0))
    return evidence / n, (Vt.T @ coef).T


def logme(features, labels, *, regression: bool = False, return_weights: bool = False):
    """LogME: mean over targets of the maximised log evidence of Bayesian linear regression, per sample.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
    Transfer Learning", ICML 2021. For each class c the one-vs-rest target
    y_c in {0, 1}^N (with ``regression=True``: each column of a float target,
    1-D or 2-D) is modelled as y = F w + e, w ~ N(0, alpha^-1 I), e ~ N(0, beta^-1 I).
    (alpha, beta) maximise the evidence p(y | F, alpha, beta) by MacKay's fixed
    point (gamma = sum beta s_i^2 / (alpha + beta s_i^2), alpha = gamma / m^T m,
    beta = (N - gamma) / ||F m - y||^2, from alpha = beta = 1) and

        L = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 ||F m - y||^2
            - alpha/2 m^T m - 1/2 log det(alpha I + beta F^T F).

    Returns mean_c L_c / N (float), or ``(score, weights)`` with ``weights`` the
    (C, D) posterior means m_c in the original feature space. No centring and no
    intercept, as in the paper. One SVD of F serves every target, so the cost is
    O(N D min(N, D) + N min(N, D) C) whatever the number of classes.
    """
    if regression:
        F, Y = _check_regression(features, labels)
    else:
        F, y, values = check_features_labels(features, labels)
        Y = np.zeros((y.size, values.size))
        Y[np.arange(y.size), y] = 1.0
    per_target, weights = _logme_targets(F, Y)
    score = float(per_target.mean())
    return (score, weights) if return_weights else score


# ----------------------------------------------------------------------------- label-based scores


def nce(source_labels, target_labels) -> float:
    """Negative conditional entropy -H(Y | Z) of target labels Y given hard source labels Z (nats).

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised
    Classification Tasks", ICCV 2019: NCE = sum_{z,y} P(z, y) log P(y | z) with the
    empirical joint of the N (z_i, y_i) pairs. At most 0, and 0 exactly when the
    source label determines the target label.
    """
    z, _ = _encode_labels(source_labels, name="source_labels")
    y, values = _encode_labels(target_labels, name="target_labels")
    _check_n_samples(z.size, y.size, name="source_labels")
    if values.size < 2:
        raise InvalidRankingInput(f"target_labels must contain at least 2 classes; got a single class {values[0]!r}")
    joint = np.zeros((z.max() + 1, values.size))
    np.add.at(joint, (z, y), 1.0)
    joint /= z.size
    p_z = joint.sum(axis=1, keepdims=True)
    nz = joint > 0  # 0 log 0 = 0
    return float((joint[nz] * np.log((joint / p_z)[nz])).sum())


def leep(source_probs, target_labels) -> float:
    """Log expected empirical prediction of a source classifier's probabilities on the target labels.

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020. With theta_i the
    source class distribution (row i of the N x Z ``source_probs``):
    P(y, z) = 1/N sum_{i: y_i = y} theta_iz, P(y | z) = P(y, z) / P(z) and
    LEEP = 1/N sum_i log sum_z P(y_i | z) theta_iz. At most 0; higher is better.
    """
    theta, y, values = check_features_labels(source_probs, target_labels)
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, rtol=0, atol=1e-4):
        worst = int(np.argmax(np.abs(theta.sum(axis=1) - 1.0) + (theta < 0).any(axis=1)))
        raise InvalidRankingInput(
            "source_probs rows must be probability distributions (non-negative, summing to 1); "
            f"row {worst} sums to {theta[worst].sum():.6g} with minimum {theta[worst].min():.6g}")
    n = y.size
    joint = np.zeros((values.size, theta.shape[1]))  # (C, Z)
    np.add.at(joint, y, theta)
    joint /= n
    p_z = joint.sum(axis=0)
    # A source class no example puts mass on has theta_iz = 0 everywhere, so its
    # conditional never counts; define it as 0 rather than 0/0.
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)
    eep = np.einsum("iz,iz->i", theta, cond[y])
    return float(np.log(eep).mean())


# ----------------------------------------------------------------------------- feature-based scores


def hscore(features, labels) -> float:
    """H-score tr(cov(f)^+ cov(E[f | y])): class separation of the features, in feature-noise units.

    Bao, Li, Huang, Zheng, Wang, Tong, "An Information-Theoretic Approach to
    Transferability in Task Transfer Learning", ICIP 2019. cov(f) is the D x D
    feature covariance and E[f | y] replaces each sample's features by its class
    mean. The Moore-Penrose pseudo-inverse (``^+``) stands in for the inverse so
    that redundant or constant features, common in real embeddings, do not make
    the score blow up; singular values below max(N, D) * eps * largest are dropped.
    """
    F, y, values = check_features_labels(features, labels)
    n, d = F.shape
    mean = F.mean(axis=0)
    centred = F - mean
    cov_f = centred.T @ centred / (n - 1)
    counts = np.bincount(y, minlength=values.size).astype(np.float64)
    class_means = np.zeros((values.size, d))
    np.add.at(class_means, y, F)
    class_means /= counts[:, None]
    # cov(E[f|y]) over the N rows = sum_c n_c (mu_c - mu)(mu_c - mu)^T / (N - 1).
    between = (class_means - mean) * np.sqrt(counts)[:, None]
    pinv = np.linalg.pinv(cov_f, rtol=max(n, d) * np.finfo(np.float64).eps, hermitian=True)
    return float(np.einsum("cd,cd->", between @ pinv, between) / (n - 1))


def probe_accuracy(features, labels, folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of a logistic-regression probe over stratified k-fold cross-validation.

    The baseline the other scores approximate: standardise the features (fitted
    on each training fold only), fit scikit-learn ``LogisticRegression(max_iter=1000)``,
    score accuracy on the held-out fold, and average over ``folds`` folds shuffled
    with ``seed``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    F, y, values = check_features_labels(features, labels)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InvalidRankingInput(f"folds must be an integer >= 2; got {folds!r}")
    smallest = int(np.bincount(y).min())
    if smallest < folds:
        raise InvalidRankingInput(
            f"every class needs at least folds={folds} examples for stratified {folds}-fold cross-validation; "
            f"class {values[np.bincount(y).argmin()]!r} has {smallest}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=seed)
    return float(cross_val_score(probe, F, y, cv=cv, scoring="accuracy").mean())
