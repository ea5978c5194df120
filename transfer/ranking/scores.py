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
import scipy.sparse

from storage.errors import AftzooError

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
# roughly the square of this, but the posterior weights only to about this
# itself: hence far tighter than the reference code (at most 11 iterations).
LOGME_TOL = 1e-8
LOGME_MAX_ITER = 1000
# How far outside the spectrum t = alpha/beta must run before the boundary is taken.
_EDGE = 1e-8


class InvalidRankingInput(AftzooError, ValueError):
    """An input array a transferability score cannot use; the message says what was expected."""


# ----------------------------------------------------------------------------- validation


def _check_features(features, name: str = "features", keep_float32: bool = False) -> np.ndarray:
    F = np.asarray(features)
    if F.dtype == object:  # e.g. a list of Python numbers with a None in it
        try:
            F = F.astype(np.float64)
        except (TypeError, ValueError):
            raise InvalidRankingInput(f"{name} must be real numbers; got values that are not") from None
    if F.ndim != 2:
        raise InvalidRankingInput(
            f"{name} must be a 2-D array (n_samples, n_features); got an array of shape {F.shape}")
    if not (np.issubdtype(F.dtype, np.number) or F.dtype == np.bool_) or np.issubdtype(F.dtype, np.complexfloating):
        raise InvalidRankingInput(f"{name} must be real numbers; got dtype {F.dtype}")
    if F.shape[1] < 1:
        raise InvalidRankingInput(f"{name} must have at least 1 column; got shape {F.shape}")
    # LogME converts float32 features block by block itself (no float64 copy of all of F).
    F = np.asarray(F, dtype=np.float32 if keep_float32 and F.dtype == np.float32 else np.float64)
    if not np.isfinite(F).all():
        bad = int(np.size(F) - np.isfinite(F).sum())
        raise InvalidRankingInput(
            f"{name} must be finite; got {bad} NaN or infinite value(s), first in row "
            f"{int(np.argwhere(~np.isfinite(F))[0, 0])}")
    return F


def _show(value) -> str:
    """A label as the user wrote it: 3 or 'cat', not np.int64(3) or np.str_('cat')."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_n_samples(n_rows: int, n_labels: int, name: str = "features") -> None:
    if n_rows != n_labels:
        raise InvalidRankingInput(
            f"{name} and labels must have the same length; got {n_rows} rows and {n_labels} labels")
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
                f"{name} look continuous (non-integer floats such as {_show(y[y != np.round(y)][0])}); "
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
    return _check_labelled(_check_features(features), labels)


def _check_labelled(F: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, values = _encode_labels(labels)
    _check_n_samples(F.shape[0], y.shape[0])
    if values.size < 2:
        raise InvalidRankingInput(f"labels must contain at least 2 classes; got a single class {_show(values[0])}")
    return F, y, values


def _check_regression(features, targets) -> tuple[np.ndarray, np.ndarray]:
    """(F, Y) with Y float64 (N, K) for LogME's regression mode; same checks as check_features_labels."""
    F = _check_features(features, keep_float32=True)
    Y = np.asarray(targets)
    if Y.ndim not in (1, 2):
        raise InvalidRankingInput(
            f"regression targets must be a 1-D (n_samples,) or 2-D (n_samples, n_targets) array; got shape {Y.shape}")
    Y = _check_features(Y[:, None] if Y.ndim == 1 else Y, name="regression targets")
    _check_n_samples(F.shape[0], Y.shape[0])
    zero = np.flatnonzero(~Y.any(axis=0))
    if zero.size:
        # y = 0 is fitted exactly by w = 0 with noise precision beta -> inf: the evidence is unbounded.
        raise InvalidRankingInput(f"regression target column {int(zero[0])} is all zeros; LogME is unbounded for it")
    return F, Y


# ----------------------------------------------------------------------------- LogME


# Rows (or columns) of F converted to float64 per block of about this many bytes:
# float32 features never need a float64 copy of the whole matrix.
_BLOCK_BYTES = 1 << 24


def _blocks(F: np.ndarray, axis: int):
    """(slice, float64 block) pairs covering F along ``axis`` (0: row blocks, 1: column blocks)."""
    n = F.shape[axis]
    if F.dtype == np.float64:
        yield slice(0, n), F
        return
    step = max(64, _BLOCK_BYTES // (8 * F.shape[1 - axis]))
    for start in range(0, n, step):
        part = slice(start, min(start + step, n))
        yield part, np.asarray(F[part] if axis == 0 else F[:, part], dtype=np.float64)


def _gram_eigh(F: np.ndarray, Y) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eigen-pairs of the smaller Gram matrix and the targets projected on its eigenvectors.

    Returns ``(s2, Q, z, yy)``: s2 the eigenvalues of F^T F (N > D) or F F^T
    (descending), Q its eigenvectors, z = Q^T (F^T Y) (N > D) or Q^T Y, and
    ||Y||^2 per column. The Gram product is a symmetric rank-k update (half the
    flops of a general product; numpy calls syrk for a matrix times its own
    transpose) and a symmetric eigendecomposition costs several times less than
    an SVD of F. Both are float64: a float32 Gram moves the score by 1e-5 to 1e-4.
    Squaring F's condition number costs digits only in directions with s_i^2
    below about eps * s_max^2, which the caller treats as zero. F^T Y (a sum of
    rows per class for one-hot Y) comes from the same pass over F.
    """
    n, d = F.shape
    rows = n > d
    G = np.zeros((d, d) if rows else (n, n))
    FtY = np.zeros((d, Y.shape[1])) if rows else None
    for part, B in _blocks(F, 0 if rows else 1):
        if rows:
            G += B.T @ B
            FtY += np.asarray((Y[part].T @ B).T)
        else:
            G += B @ B.T
    s2, Q = np.linalg.eigh(G)
    s2, Q = s2[::-1], Q[:, ::-1]
    yy = np.asarray(Y.multiply(Y).sum(axis=0)).ravel() if scipy.sparse.issparse(Y) else np.einsum("ij,ij->j", Y, Y)
    return s2, Q, (Q.T @ FtY if rows else np.asarray((Y.T @ Q).T)), yy


def _times_F(F: np.ndarray, X: np.ndarray, transpose: bool = False) -> np.ndarray:
    """F @ X (or F^T @ X) in float64, block by block."""
    out = np.zeros((F.shape[1] if transpose else F.shape[0], X.shape[1]))
    for part, B in _blocks(F, 1 if not transpose else 0):
        if transpose:
            out += B.T @ X[part]
        else:
            out += B @ X[part]
    return out


def _profile(u: np.ndarray, s2: np.ndarray, z2: np.ndarray, delta: np.ndarray, n: int) -> np.ndarray:
    """Log evidence at t = exp(u) with beta at its best for that t, up to a constant: only for comparing t's.

    log N(y | 0, (I + F F^T / t) / beta) maximised over beta is
    -N/2 log(sum z_i^2 t/(t + s_i^2) + delta) - 1/2 sum log(1 + s_i^2/t) + const;
    its stationary points in t are exactly MacKay's fixed points.
    """
    t = np.exp(u)
    fit = (z2 * (t / (t + s2[:, None]))).sum(axis=0) + delta
    return -n / 2 * np.log(fit) - 0.5 * np.log1p(s2[:, None] / t).sum(axis=0)


def _mackay_fixed_point(s2: np.ndarray, z: np.ndarray, delta: np.ndarray, n: int):
    """MacKay's updates for all C targets at once (Algorithm 3 of You et al., vectorised).

    ``s2`` (r,) positive squared singular values, ``z`` (r, C) = U^T Y, ``delta``
    (C,) the part of ||y||^2 outside the column space of F. Both updates depend on
    (alpha, beta) only through t = alpha/beta, so only t is iterated; each target
    stops on its own, when one plain MacKay step moves t by less than LOGME_TOL
    relatively, so the result is MacKay's fixed point whatever the path. The
    start is the best point of a coarse scan over t (``_best_start``).

    The map converges linearly and, for features that barely beat noise, with a
    rate near 1 (thousands of steps). Every third step therefore extrapolates
    log t with Aitken's delta-squared from the last three plain steps, kept only
    where it raises the evidence (``_extrapolate``); this only changes where the
    next plain step starts, never the stopping test.

    Returns ``(alpha, beta, edge)``; ``edge`` is 0 for an interior maximum, -1
    where t -> 0 (beta -> inf) and +1 where t -> inf (alpha -> inf): the evidence
    then has no interior maximum and its supremum is the limit.
    """
    C = z.shape[1]
    z2 = z * z
    yy = z2.sum(axis=0) + delta
    alpha, beta, edge = np.ones(C), np.ones(C), np.zeros(C, dtype=np.int64)
    # A target with no component along any feature direction (all-zero features,
    # say) has an evidence that does not depend on alpha: it is the alpha -> inf value.
    edge[~(s2[:, None] * z2).any(axis=0)] = 1
    # Far outside [s_min^2, s_max^2] the map is t' = c t (1 + O(t/s_min^2) or
    # O(s_max^2/t)), so a t still moving outward there keeps going geometrically
    # to the boundary: stop and take the limit. t -> 0 needs y wholly inside the
    # column space (delta = 0, only when N <= D).
    low, high = (_EDGE * s2.min(), s2.max() / _EDGE) if s2.size else (1.0, 1.0)
    bounds = (math.log(low) - 1.0, math.log(high) + 1.0)
    active = np.flatnonzero(edge == 0)
    u = np.zeros(C)  # log t
    u[active] = _best_start(s2, z2[:, active], delta[active], n, bounds)
    hist = np.zeros((2, C))  # the two previous plain iterates of log t
    for step in range(LOGME_MAX_ITER):
        ta = np.exp(u[active])
        shrink = 1.0 / (ta + s2[:, None])  # (r, A)
        gamma = (s2[:, None] * shrink).sum(axis=0)
        mm = (s2[:, None] * z2[:, active] * shrink**2).sum(axis=0)
        res = (z2[:, active] * (ta * shrink) ** 2).sum(axis=0) + delta[active]
        alpha[active] = gamma / mm
        beta[active] = (n - gamma) / res
        t_new = alpha[active] / beta[active]
        to_zero = (t_new < low) & (t_new < ta) & (delta[active] == 0)
        to_inf = (t_new > high) & (t_new > ta)
        edge[active[to_zero]], edge[active[to_inf]] = -1, 1
        moved = (np.abs(t_new - ta) > LOGME_TOL * ta) & ~to_zero & ~to_inf
        u[active] = np.log(t_new)
        active = active[moved]
        if active.size == 0:
            break
        if step % 3 == 2:
            u[active] = _extrapolate(hist[0, active], hist[1, active], u[active], s2, z2[:, active],
                                     delta[active], n, bounds)
        hist[0, active], hist[1, active] = hist[1, active], u[active]
    else:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"LogME: MacKay's iteration did not converge in {LOGME_MAX_ITER} iterations for "
                      f"{active.size} of {C} targets; their scores are the last iterate's", ConvergenceWarning,
                      stacklevel=4)
    # The limits on the two boundaries (derivation in _logme_targets).
    lower, upper = edge == -1, edge == 1
    alpha[lower] = n / (z2[:, lower] / s2[:, None]).sum(axis=0)
    beta[lower] = np.inf
    alpha[upper] = np.inf
    beta[upper] = n / yy[upper]
    return alpha, beta, edge


def _best_start(s2, z2, delta, n, bounds):
    """log t to start MacKay's iteration from: the best of t = 1 (the paper's alpha = beta = 1)
    and a grid over the whole range of t, one point per factor e.

    The evidence can have more than one maximum in t (typically one towards
    interpolation, t -> 0, when N <= D, and one towards t -> inf), and the fixed
    point reached depends on the start; the grid makes it the highest one. Where
    the maximum is unique, as usual, this changes nothing but the path. The whole
    grid is one (C, r) x (r, G) product: only the fit term depends on the target.
    """
    grid = np.concatenate([[0.0], np.arange(bounds[0], bounds[1] + 1.0, 1.0)])
    t = np.exp(grid)
    shrink = t / (t + s2[:, None])  # (r, G)
    fit = z2.T @ shrink + delta[:, None]  # (C, G)
    value = -n / 2 * np.log(fit) - 0.5 * np.log1p(s2[:, None] / t).sum(axis=0)
    # argmax takes the first of equal values, so t = 1 wins ties, as a strict ">" scan would.
    return grid[np.argmax(value, axis=1)]


def _extrapolate(u0, u1, u2, s2, z2, delta, n, bounds):
    """A better start than u2 for the next MacKay step, from the plain iterates u0 -> u1 -> u2 of log t.

    Aitken's delta-squared gives where the iteration is heading: u2 + d2 rho / (1 - rho)
    with steps d1, d2 and ratio rho = d2 / d1 < 1; with rho >= 1 t is speeding
    towards a boundary, so head for the boundary threshold. Far from the fixed
    point either can overshoot, so the points 2^-k of the way there (k < 12) are
    tried too and the one with the highest evidence kept, u2 itself if none beats it.
    """
    d1, d2 = u1 - u0, u2 - u1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rho = d2 / d1
        ahead = u2 + d2 * rho / (1.0 - rho)
    ahead = np.where(rho >= 1.0, np.where(d2 > 0, bounds[1], bounds[0]), ahead)
    ahead = np.clip(np.where(np.isfinite(ahead), ahead, u2), *bounds)
    best_u, best = u2, _profile(u2, s2, z2, delta, n)
    for k in range(12):
        trial = u2 + (ahead - u2) * 2.0**-k
        value = _profile(trial, s2, z2, delta, n)
        better = value > best
        best_u, best = np.where(better, trial, best_u), np.where(better, value, best)
    return best_u


def _logme_targets(F: np.ndarray, Y, weights: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-target log evidence / N (C,) and, if ``weights``, posterior means m (C, D) for targets Y (N, C).

    Y is dense, or a sparse one-hot matrix for classes: then F^T Y (N > D) is a
    sum of rows per class and no N x C array is built. Everything after the one
    Gram eigendecomposition works on length-min(N, D) vectors, all targets at once.
    """
    n, d = F.shape
    s2, Q, z, yy = _gram_eigh(F, Y)
    # Gram eigenvalues are accurate to about eps * s_max^2 only: below that a
    # direction is numerically in the null space, and is folded into delta.
    kept = s2 > max(n, d) * np.finfo(np.float64).eps * (s2[0] if s2.size else 0.0)
    if n <= d:  # Q is square and orthogonal: y lies wholly in its columns
        delta = (z[~kept] ** 2).sum(axis=0)
        z = z[kept]
    else:
        z = z[kept] / np.sqrt(s2[kept])[:, None]  # U^T Y = S^-1 Q^T F^T Y
        delta = np.maximum(yy - (z**2).sum(axis=0), 0.0)
        # When y is nearly in the column space the subtraction loses the digits
        # that matter; measure those residuals directly.
        close = np.flatnonzero(delta <= 1e-6 * yy)
        if close.size:
            near = Y[:, close].toarray() if scipy.sparse.issparse(Y) else Y[:, close]
            fitted = _times_F(F, Q[:, kept] @ (z[:, close] / np.sqrt(s2[kept])[:, None]))
            delta[close] = ((near - fitted) ** 2).sum(axis=0)
    s2, Q = s2[kept], Q[:, kept]
    r = s2.size
    alpha, beta, edge = _mackay_fixed_point(s2, z, delta, n)
    # Evaluate Equation 2 at the final (alpha, beta) with m recomputed for them, so
    # every term belongs to the same point (the reference code mixes two iterates).
    with np.errstate(divide="ignore", invalid="ignore"):  # the edge columns are replaced below
        t = np.where(edge == 0, alpha / beta, 0.0)
        shrink = 1.0 / (t + s2[:, None])
        coef = z * shrink  # S^-1 V^T m = U^T F m / s^2 (r, C); at t = 0 the minimum-norm interpolant's
        coef[:, edge == 1] = 0.0
        mm = (s2[:, None] * coef * coef).sum(axis=0)
        res = (z * z * (t * shrink) ** 2).sum(axis=0) + delta
        # D/2 log alpha - 1/2 sum_{i<=D} log(alpha + beta s_i^2): the D - r zero
        # eigenvalues of F^T F (N < D, or rank < D) cancel (D - r)/2 of the log alpha.
        evidence = (n / 2 * np.log(beta) + r / 2 * np.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * res - alpha / 2 * mm
                    - 0.5 * np.log(alpha + beta * s2[:, None]).sum(axis=0))
    # Limits of Equation 2 (= log N(y | 0, I/beta + F F^T/alpha)) on the boundary:
    # beta -> inf (N <= D, y = F m exactly): log N(y | 0, F F^T/alpha) at its best
    #   alpha = N / sum z_i^2/s_i^2, i.e. -N/2 log 2pi + N/2 log alpha - 1/2 sum log s_i^2 - N/2;
    # alpha -> inf (m = 0): log N(y | 0, I/beta) at beta = N/||y||^2.
    lower, upper = edge == -1, edge == 1
    evidence[lower] = (-n / 2 * math.log(2 * math.pi) + n / 2 * np.log(alpha[lower])
                       - 0.5 * np.log(s2).sum() - n / 2)
    evidence[upper] = n / 2 * np.log(beta[upper]) - n / 2 * math.log(2 * math.pi) - n / 2
    if not weights:
        return evidence / n, None
    # m = V S coef: V = Q for N > D; V = F^T U S^-1 with U = Q for N <= D.
    m = Q @ (np.sqrt(s2)[:, None] * coef) if n > d else _times_F(F, Q @ coef, transpose=True)
    return evidence / n, m.T


def logme(features, labels, *, regression: bool = False, return_weights: bool = False):
    """LogME: mean over targets of the maximised log evidence of Bayesian linear regression, per sample.

    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
    Transfer Learning", ICML 2021. For each class c the one-vs-rest target
    y_c in {0, 1}^N (with ``regression=True``: each column of a float target,
    1-D or 2-D) is modelled as y = F w + e, w ~ N(0, alpha^-1 I), e ~ N(0, beta^-1 I),
    and (alpha, beta) maximise the evidence p(y | F, alpha, beta) by MacKay's
    fixed point: gamma = sum beta s_i^2 / (alpha + beta s_i^2), alpha = gamma / m^T m,
    beta = (N - gamma) / ||F m - y||^2, with s_i the singular values of F, until
    alpha/beta moves by less than 1e-8 relatively. Then

        L = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 ||F m - y||^2
            - alpha/2 m^T m - 1/2 log det(alpha I + beta F^T F).

    Returns mean_c L_c / N (float), or ``(score, weights)`` with ``weights`` the
    (C, D) posterior means m_c in the original feature space. No centring and no
    intercept, as in the paper. One eigendecomposition of the smaller Gram matrix
    (F^T F or F F^T, in float64; float32 features are converted block by block)
    serves every target, so the cost is O(N D min(N, D) + min(N, D)^3) plus
    O(N min(N, D) C) for the projection of the targets.

    Where this differs from the paper's code, it is to return the maximum it
    defines: the iteration starts from the best point of a coarse scan over
    alpha/beta rather than from alpha = beta = 1 (the same answer whenever the
    evidence has one maximum; the higher one when it has two, which happens
    with N < D); and where the evidence only approaches its supremum on a
    boundary -- alpha -> inf (features no better than noise for that target) or
    beta -> inf (N <= D and y interpolated exactly) -- the limit is returned.
    """
    if regression:
        F, Y = _check_regression(features, labels)
    else:
        F, y, values = _check_labelled(_check_features(features, keep_float32=True), labels)
        Y = scipy.sparse.csr_array((np.ones(y.size), (np.arange(y.size), y)), shape=(y.size, values.size))
    per_target, weights = _logme_targets(F, Y, weights=return_weights)
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
        raise InvalidRankingInput(
            f"target_labels must contain at least 2 classes; got a single class {_show(values[0])}")
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
            f"class {_show(values[np.bincount(y).argmin()])} has {smallest}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=seed)
    return float(cross_val_score(probe, F, y, cv=cv, scoring="accuracy").mean())
