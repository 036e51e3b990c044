"""Two-sample drift statistics: PSI, the Kolmogorov–Smirnov test and MMD² with a permutation test.

PSI and MMD are written here rather than taken from alibi-detect, the usual library, which is
BSL-licensed and pins numpy<2; KS is ``scipy.stats.ks_2samp``.

* **PSI** (population stability index) of a scalar feature: the reference's deciles cut the line
  into ``PSI_BINS`` bins (ties merge bins, so a discrete feature gets fewer); with ``p`` the
  reference's and ``q`` the window's proportion per bin, PSI = Σ (q − p) · ln(q / p). Proportions
  below ``PSI_EPSILON`` are raised to it first, so an empty bin adds a large finite term instead
  of an infinite one. Convention: < 0.1 stable, 0.1–0.25 moderate shift, ≥ 0.25 significant.
  Categorical PSI (predicted classes) uses one bin per class.
* **KS**: the two-sided two-sample test's statistic and p-value.
* **MMD²**: the unbiased estimate with the RBF kernel k(x, y) = exp(−‖x − y‖² / (2σ²)), σ the
  median pairwise distance of the pooled sample (the median heuristic); its p-value is the
  fraction of random relabellings of the pooled sample whose MMD² reaches the observed one.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

PSI_BINS = 10
PSI_EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
# Significance level of the KS (Bonferroni-corrected over features) and MMD tests.
ALPHA = 0.05


def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Interior bin edges: the reference's quantiles at 1/bins, ..., (bins − 1)/bins, ties
    dropped."""
    reference = np.asarray(reference, np.float64)
    if reference.size == 0:
        raise ValueError("PSI needs a non-empty reference sample")
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The fraction of ``values`` in each bin (−inf, e₁], (e₁, e₂], ..., (e_k, inf)."""
    values = np.asarray(values, np.float64)
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(values.size, 1)


def psi_from_proportions(
    expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON
) -> float:
    """PSI of bin proportions ``actual`` (the window) against ``expected`` (the reference)."""
    p = np.maximum(np.asarray(expected, np.float64), epsilon)
    q = np.maximum(np.asarray(actual, np.float64), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(
    reference: np.ndarray,
    current: np.ndarray,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
) -> float:
    """PSI of ``current`` against ``reference`` over the reference's quantile bins."""
    edges = quantile_edges(reference, bins)
    return psi_from_proportions(
        bin_proportions(reference, edges), bin_proportions(current, edges), epsilon
    )


def class_proportions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The fraction of ``labels`` (ints in [0, num_classes)) equal to each class."""
    labels = np.asarray(labels, np.int64).ravel()
    return np.bincount(labels, minlength=num_classes)[:num_classes] / max(labels.size, 1)


def categorical_psi(
    reference: np.ndarray, current: np.ndarray, num_classes: int, epsilon: float = PSI_EPSILON
) -> float:
    """PSI between the class frequencies of two label arrays, one bin per class."""
    return psi_from_proportions(
        class_proportions(reference, num_classes), class_proportions(current, num_classes), epsilon
    )


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The two-sample KS statistic and its p-value (``scipy.stats.ks_2samp``, two-sided)."""
    result = scipy.stats.ks_2samp(np.asarray(reference), np.asarray(current))
    return float(result.statistic), float(result.pvalue)


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sq = np.sum(x**2, 1)[:, None] + np.sum(y**2, 1)[None, :] - 2.0 * x @ y.T
    return np.maximum(sq, 0.0)


def median_bandwidth(squared_distances: np.ndarray) -> float:
    """σ of the median heuristic: the median distance between distinct points, from their
    squared distances [N, N] (1.0 when all points coincide)."""
    upper = squared_distances[np.triu_indices(len(squared_distances), k=1)]
    sigma = float(np.sqrt(np.median(upper))) if upper.size else 0.0
    return sigma if sigma > 0 else 1.0


def _rbf_kernel(pooled: np.ndarray, bandwidth: float | None) -> tuple[np.ndarray, float]:
    """The RBF kernel matrix of ``pooled`` and its σ (the median heuristic's when None)."""
    squared = _squared_distances(pooled, pooled)
    sigma = bandwidth or median_bandwidth(squared)
    return np.exp(-squared / (2.0 * sigma**2)), sigma


def _mmd2_of_assignments(kernel: np.ndarray, in_x: np.ndarray) -> np.ndarray:
    """Unbiased MMD² for each row of ``in_x`` [P, N] (1.0 marks the x sample) over the pooled
    ``kernel`` [N, N] (its diagonal is 1: an RBF kernel)."""
    n = in_x[0].sum()
    m = in_x.shape[1] - n
    in_y = 1.0 - in_x
    k_x = in_x @ kernel
    xx = np.sum(k_x * in_x, 1) - n
    xy = np.sum(k_x * in_y, 1)
    yy = kernel.sum() - 2.0 * xy - (xx + n) - m
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)


def _pooled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"MMD needs at least 2 examples per sample, got {len(x)} and {len(y)}")
    in_x = np.zeros((1, len(x) + len(y)))
    in_x[0, : len(x)] = 1.0
    return np.concatenate([x, y]), in_x


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased MMD² between samples ``x`` [n, d] and ``y`` [m, d] (RBF kernel; ``bandwidth``
    defaults to the median heuristic over the pooled sample)."""
    pooled, in_x = _pooled(x, y)
    kernel, _ = _rbf_kernel(pooled, bandwidth)
    return float(_mmd2_of_assignments(kernel, in_x)[0])


def mmd_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0
) -> tuple[float, float, float]:
    """``(mmd2, p_value, bandwidth)``: the p-value is (1 + #relabellings with MMD² ≥ the
    observed) / (1 + permutations), relabellings drawn with ``seed``."""
    pooled, in_x = _pooled(x, y)
    kernel, sigma = _rbf_kernel(pooled, None)
    observed = float(_mmd2_of_assignments(kernel, in_x)[0])
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(in_x[0]) for _ in range(permutations)])
    null = _mmd2_of_assignments(kernel, shuffled)
    p_value = (1.0 + np.sum(null >= observed)) / (1.0 + permutations)
    return observed, float(p_value), sigma
