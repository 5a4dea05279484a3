"""Binomial intervals and tests of the overlap analysis (exact, from scipy)."""
from __future__ import annotations


def ratio(k: int, n: int) -> float | None:
    """k / n, or None when n is 0."""
    return k / n if n else None


def clopper_pearson(k: int, n: int, confidence: float = 0.995) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial proportion with k successes in n trials."""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def binomial_p_greater(k: int, n: int, p: float) -> float:
    """One-sided p-value P(X >= k) for X ~ Binomial(n, p): is the success rate k/n higher than p?"""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return float(binomtest(k, n, min(max(p, 0.0), 1.0), alternative="greater").pvalue)
