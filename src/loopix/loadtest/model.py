"""The round trip a loop should take if the network added nothing but the delays its packets carry.

A loop is held by every hop that has a delay in its Sphinx header, each for an independent
exponential time with the configured mean. In this codebase those are the mix layers: the sender's
provider forwards a client's packet without delay (`Provider.submit`) and the last hop's delay is
never encoded (`worker.delays`). The model is the sum of those exponentials: Erlang(k, mean) when
every hop has the same mean, the hypoexponential otherwise. Nothing in it is fitted to the data;
what the network adds on top (transport, processing, queueing) shows up as the *excess*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
from hdrh.histogram import HdrHistogram

__all__ = ["RttModel", "erlang_cdf", "erlang_quantile", "ks_distance", "loop_hop_means"]


def loop_hop_means(mean_hop_delay_ms: float, mix_layers: int) -> tuple[float, ...]:
    """The per-hop mean delays (ms) a loop carries: one per mix layer; providers add none."""
    return tuple(float(mean_hop_delay_ms) for _ in range(mix_layers)) if mean_hop_delay_ms > 0 else ()


def erlang_cdf(x_ms: float, k: int, mean_ms: float) -> float:
    """P(sum of k independent Exp(mean) delays <= x): 1 - sum_{n<k} e^{-λx}(λx)^n/n!."""
    if k <= 0 or mean_ms <= 0:
        return 1.0 if x_ms >= 0 else 0.0
    if x_ms <= 0:
        return 0.0
    lx = x_ms / mean_ms
    term = math.exp(-lx)
    tail = term
    for n in range(1, k):
        term *= lx / n
        tail += term
    return min(1.0, max(0.0, 1.0 - tail))


def _hypoexp_cdf(x_ms: float, means: Sequence[float]) -> float:
    """CDF of a sum of independent exponentials with any means, by uniformization of the
    phase-type chain (exact up to the truncated Poisson series; no closed form needed for
    repeated rates)."""
    if x_ms <= 0:
        return 0.0
    rates = [1.0 / m for m in means]
    lam = max(rates)
    k = len(rates)
    # state vector over phases 0..k-1 (absorbed mass leaves); P = I + Q/lam
    state = [0.0] * k
    state[0] = 1.0
    lx = lam * x_ms
    weight = math.exp(-lx)  # Poisson(n; lam x), n = 0
    survive = weight * sum(state)
    n = 0
    limit = int(lx + 12 * math.sqrt(lx + 1) + 40)
    while n < limit:
        n += 1
        nxt = [0.0] * k
        for i, p in enumerate(state):
            if p == 0.0:
                continue
            move = rates[i] / lam
            nxt[i] += p * (1.0 - move)
            if i + 1 < k:
                nxt[i + 1] += p * move
        state = nxt
        weight *= lx / n
        survive += weight * sum(state)
    return min(1.0, max(0.0, 1.0 - survive))


def erlang_quantile(p: float, k: int, mean_ms: float) -> float:
    """The x with erlang_cdf(x) = p, by bisection."""
    return RttModel(tuple([mean_ms] * k) if mean_ms > 0 else ()).quantile(p)


class RttModel(msgspec.Struct, frozen=True):
    """The sum of the loop's per-hop exponential delays (means in ms)."""

    hop_means_ms: tuple[float, ...]

    @property
    def name(self) -> str:
        means = self.hop_means_ms
        if not means:
            return "no delay"
        if len(set(means)) == 1:
            return f"Erlang(k={len(means)}, mean {means[0]:g} ms)"
        return "hypoexponential(" + ", ".join(f"{m:g}" for m in means) + " ms)"

    @property
    def mean_ms(self) -> float:
        return sum(self.hop_means_ms)

    def cdf(self, x_ms: float) -> float:
        means = self.hop_means_ms
        if not means:
            return 1.0 if x_ms >= 0 else 0.0
        if len(set(means)) == 1:
            return erlang_cdf(x_ms, len(means), means[0])
        return _hypoexp_cdf(x_ms, means)

    def quantile(self, p: float) -> float:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {p}")
        if not self.hop_means_ms or p == 0.0:
            return 0.0
        lo, hi = 0.0, max(self.mean_ms, 1e-9)
        while self.cdf(hi) < p:
            lo, hi = hi, hi * 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if self.cdf(mid) < p:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-9 * hi:
                break
        return (lo + hi) / 2


def ks_distance(hist: HdrHistogram, model: RttModel) -> float | None:
    """Kolmogorov–Smirnov distance (µs histogram vs the model in ms): the largest gap between the
    observed and the model CDF, checked at both edges of every recorded bucket. None if empty."""
    total = hist.get_total_count()
    if total == 0:
        return None
    worst = 0.0
    before = 0
    for item in hist.get_recorded_iterator():
        value = item.value_iterated_to
        lo = hist.get_lowest_equivalent_value(value) / 1000
        hi = hist.get_highest_equivalent_value(value) / 1000
        after = item.total_count_to_this_value
        worst = max(worst, abs(before / total - model.cdf(lo)), abs(after / total - model.cdf(hi)))
        before = after
    return worst
