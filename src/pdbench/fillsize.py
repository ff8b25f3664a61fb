"""How many prompts fill every DP rank when the DP rank of each request is random.

A decode server that picks DP ranks by ``bootstrap_room % dp`` (SGLang up to 0.5.7, and
later releases with ``--load-balance-method follow_bootstrap_room``) receives, out of N
requests whose rooms are the router's random 63-bit numbers, per-rank counts
``(X_1, …, X_dp) ~ Multinomial(N, 1/dp each)``. The fill needs every rank to reach its
target ``t``; the chance that some rank does not is bounded on both sides by Bonferroni's
inequalities with the binomial tail ``q = P(Bin(N, 1/dp) < t)`` of one rank:

    dp·q − C(dp, 2)·q²  ≤  P(min_i X_i < t)  ≤  dp·q

(the upper bound is the union bound; the lower one uses ``P(X_i < t, X_j < t) ≤ q²``,
which holds because multinomial counts are negatively associated: Joag-Dev and Proschan,
"Negative association of random variables with applications", Ann. Statist. 11(1), 1983).
At the probabilities that matter (failure ≤ 1e-3) the two bounds agree to within
``C(dp, 2)·q²`` ≈ 1e-6 or less, so choosing N by the upper bound is exact in practice and
never optimistic. The binomial tail is summed term by term from log-gamma, which is exact
to floating-point rounding for the sizes involved (N up to millions, t up to thousands).
"""

from __future__ import annotations

import math
from functools import cache

DEFAULT_FILL_PROBABILITY = 0.999


def _log_binom_pmf(n: int, k: int, log_p: float, log_q: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * log_p + (n - k) * log_q)


def binomial_below(n: int, p: float, t: int) -> float:
    """``P(Bin(n, p) < t)``: the chance that one rank receives fewer than ``t`` of ``n``."""
    if t <= 0:
        return 0.0
    if t > n:
        return 1.0
    if p >= 1.0:
        return 0.0
    if p <= 0.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    logs = [_log_binom_pmf(n, k, log_p, log_q) for k in range(t)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def shortfall_bounds(prompts: int, ranks: int, target: int) -> tuple[float, float]:
    """Lower and upper bound of ``P(some rank receives fewer than target)`` when each of
    ``prompts`` requests goes to one of ``ranks`` ranks uniformly at random."""
    if ranks < 1 or target < 0 or prompts < 0:
        raise ValueError(f"ranks {ranks}, target {target}, prompts {prompts}")
    if ranks == 1:
        return (0.0, 0.0) if prompts >= target else (1.0, 1.0)
    if prompts < ranks * target:
        return 1.0, 1.0  # pigeonhole: some rank gets fewer than target
    q = binomial_below(prompts, 1.0 / ranks, target)
    upper = min(1.0, ranks * q)
    lower = max(0.0, ranks * q - ranks * (ranks - 1) / 2 * q * q)
    return lower, upper


def fill_probability(prompts: int, ranks: int, target: int) -> float:
    """A guaranteed lower bound of ``P(every rank receives at least target)`` (within
    ``C(ranks, 2)·q²`` of the exact value; see the module doc)."""
    return 1.0 - shortfall_bounds(prompts, ranks, target)[1]


@cache
def prompts_to_fill(ranks: int, target: int, probability: float) -> int:
    """The fewest prompts N for which every one of ``ranks`` ranks receives at least
    ``target`` requests with at least ``probability`` under random routing."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if target <= 0:
        return 0
    low = ranks * target  # fewer cannot fill every rank
    if fill_probability(low, ranks, target) >= probability:
        return low
    high = 2 * low
    while fill_probability(high, ranks, target) < probability:
        low, high = high, 2 * high
    while high - low > 1:  # fill_probability(low) < probability <= fill_probability(high)
        mid = (low + high) // 2
        if fill_probability(mid, ranks, target) >= probability:
            high = mid
        else:
            low = mid
    return high


__all__ = [
    "DEFAULT_FILL_PROBABILITY",
    "binomial_below",
    "fill_probability",
    "prompts_to_fill",
    "shortfall_bounds",
]
