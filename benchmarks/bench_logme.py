"""LogME: the vectorised ``transfer.ranking.logme`` against a plain per-class implementation.

    python -m benchmarks.bench_logme [--n 10000 --d 1024 --c 100] [--quick] [--seed 0]

Both run the same fixed-point algorithm (MacKay's updates as in the talk's
Algorithm 2, "optimized by You et al.": F = U S V^T decomposed once, then per
class m = beta V (Lambda^-1 (V^T (F^T y))) and ||F m - y||^2), with the same
stopping rule, in the same process on the same data. Times are wall-clock and
include the one SVD of F in both (best of ``--repeat`` alternating runs). Peak memory is measured in a second, separate
run of each under ``tracemalloc`` (so the timings are not slowed by it): the
peak of Python/NumPy heap allocations during the call, above what was allocated
before it (the inputs are not counted; BLAS/LAPACK internal buffers are not seen).
"""
from __future__ import annotations

import argparse
import math
import time
import tracemalloc

import numpy as np

from transfer.ranking import logme
from transfer.ranking import scores as _scores


def synthetic(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with class structure: class means in a random 32-dim subspace plus isotropic noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % c)
    basis = rng.standard_normal((min(32, d), d)) / math.sqrt(d)
    means = rng.standard_normal((c, basis.shape[0])) @ basis * 3.0
    features = means[labels] + rng.standard_normal((n, d)) / math.sqrt(d)
    return features, labels


def logme_per_class(features: np.ndarray, labels: np.ndarray) -> tuple[float, list[int], np.ndarray]:
    """The plain reference: one class at a time, every class doing its own O(N D) work.

    Returns the score, the number of MacKay iterations each class took and the
    per-class log evidence / N.
    """
    F = np.asarray(features, dtype=np.float64)
    n, d = F.shape
    _, s, Vt = _scores._svd(F)  # "F has been pre-decomposed into F = U S V^T"
    V, sigma2 = Vt.T, s * s
    evidences, iterations = [], []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        Vt_Fty = Vt @ (F.T @ y)  # loop-invariant, hoisted as in the official code
        alpha, beta = 1.0, 1.0
        for it in range(1, _scores.LOGME_MAX_ITER + 1):
            gamma = np.sum(beta * sigma2 / (alpha + beta * sigma2))
            m = beta * (V @ (Vt_Fty / (alpha + beta * sigma2)))
            mm = m @ m
            res = np.sum((F @ m - y) ** 2)
            new_alpha, new_beta = gamma / mm, (n - gamma) / res
            t, new_t = alpha / beta, new_alpha / new_beta
            alpha, beta = new_alpha, new_beta
            if abs(new_t - t) <= _scores.LOGME_TOL * t:
                break
        iterations.append(it)
        m = beta * (V @ (Vt_Fty / (alpha + beta * sigma2)))
        mm, res = m @ m, np.sum((F @ m - y) ** 2)
        eig = np.zeros(d)
        eig[: sigma2.size] = sigma2  # F^T F has D - rank zero eigenvalues
        evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * res - alpha / 2 * mm - 0.5 * np.sum(np.log(alpha + beta * eig)))
        evidences.append(evidence / n)
    return float(np.mean(evidences)), iterations, np.array(evidences)


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _peak_bytes(fn, *args) -> int:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="examples (default 10,000)")
    parser.add_argument("--d", type=int, default=1_024, help="feature width (default 1,024)")
    parser.add_argument("--c", type=int, default=100, help="classes (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="time each this many times, alternating; report the best")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap BLAS/LAPACK threads (steadier timings on a shared machine); default: as installed")
    parser.add_argument("--quick", action="store_true", help="small sizes (N=2,000, D=256, C=20) for a smoke run")
    args = parser.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.threads):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> dict:
    from threadpoolctl import threadpool_info

    n, d, c = (2_000, 256, 20) if args.quick else (args.n, args.d, args.c)
    blas_threads = max((pool["num_threads"] for pool in threadpool_info()), default=1)

    features, labels = synthetic(n, d, c, args.seed)
    _scores._svd(features[: min(n, 256)])  # warm BLAS/LAPACK up outside the timings

    svd_time = _timed(_scores._svd, features)[1]
    fast_time = slow_time = math.inf
    for _ in range(max(1, args.repeat)):  # alternate, so a busy machine slows both alike
        fast, seconds = _timed(logme, features, labels)
        fast_time = min(fast_time, seconds)
        (slow, iterations, slow_per_class), seconds = _timed(logme_per_class, features, labels)
        slow_time = min(slow_time, seconds)
    rel = abs(fast - slow) / abs(slow)
    # Per-class values of the vectorised path (untimed; logme itself returns only their mean).
    codes = np.unique(labels, return_inverse=True)[1]
    onehot = np.eye(codes.max() + 1)[codes]
    fast_per_class = _scores._logme_targets(features, onehot)[0]
    rel_class = float(np.max(np.abs(fast_per_class - slow_per_class) / np.abs(slow_per_class)))
    fast_peak = _peak_bytes(logme, features, labels)
    slow_peak = _peak_bytes(logme_per_class, features, labels)

    mib = 1024.0**2
    print(f"LogME benchmark: N={n:,} D={d:,} C={c} float64, seed {args.seed}, best of {max(1, args.repeat)}, "
          f"{blas_threads} BLAS thread(s)")
    print(f"  SVD of F alone (included in both times):   {svd_time:8.3f} s")
    print(f"  vectorised transfer.ranking.logme:         {fast_time:8.3f} s   score {fast:.10f}")
    print(f"  per-class reference (talk's Algorithm 2):  {slow_time:8.3f} s   score {slow:.10f}"
          f"   (MacKay iterations per class: min {min(iterations)}, median {int(np.median(iterations))},"
          f" max {max(iterations)})")
    speedup = slow_time / fast_time
    print(f"  speed-up: {speedup:.2f}x   (target >= 3x: {'met' if speedup >= 3 else 'MISSED'})")
    worst = max(rel, rel_class)
    print(f"  relative difference of the scores: {rel:.3e}; max over the {c} per-class evidences: {rel_class:.3e}"
          f"   (target <= 1e-6: {'met' if worst <= 1e-6 else 'MISSED'})")
    print(f"  peak memory (tracemalloc peak above the inputs): vectorised {fast_peak / mib:.1f} MiB, "
          f"per-class {slow_peak / mib:.1f} MiB   (F itself is {features.nbytes / mib:.1f} MiB)")
    return {"speedup": speedup, "fast_s": fast_time, "slow_s": slow_time, "rel": rel, "rel_class": rel_class,
            "fast_peak": fast_peak, "slow_peak": slow_peak}


if __name__ == "__main__":
    main()
