"""Statistics for every reported figure: a mean with n and a 95% interval, and paired differences.

A summary is a plain dict ``{"mean", "n", "ci_low", "ci_high"}`` (``mean`` and the bounds are None when n = 0), so it
goes straight into the results JSON. Resampling is seeded: the same inputs always give the same interval.

Which interval (alpha = 0.05 throughout):

- **The unit of resampling is the item** (a prompt, a request, a cluster). With several training seeds evaluated on
  the same items, ``summarize_seeds`` and ``paired_seeds`` run a cluster bootstrap: each draw picks n items with
  replacement and takes every seed's value of each picked item; the mean is over all values drawn. n is the number
  of items, never of (seed, item) pairs, so three copies of one seed's results give the interval of one seed: seeds
  add precision only as far as they disagree. One seed is the ordinary percentile bootstrap of the mean.
- **A rate** (every value 0 or 1: refused, succeeded, correct) gets a Wilson score interval instead, because a
  percentile interval at 0% or 100% has zero width (0/20 gives [0%, 16.1%], not [0%, 0%]). With several seeds it is
  Wilson at the pooled rate with n = items: an item's seed-average lies in [0, 1], so its variance is at most
  p(1 - p) and this interval is at least as wide as the clustered one (conservative when seeds disagree).
- **A paired difference of rates** (after - before on the same items; arm - control within a seed) gets Newcombe's
  hybrid score interval for paired proportions (Newcombe 1998, Stat Med 17:2635, method 10), which also keeps its
  width when no item changed. With several seeds the 2x2 table's cells are the pooled fractions of (before, after)
  pairs scaled to n = items, as for Wilson above. Other paired differences: the cluster bootstrap of the differences.
- Known limit: values that are fractions but not 0/1 (e.g. attack success averaged over families per request) get
  the percentile bootstrap, which is a little narrow with few items, and zero-width when no item changed (such a
  difference has mean 0 and is never reported as a change).

Rates are detected from the data (``rate=None``): pass ``rate=False`` for a continuous metric whose values can all
be exactly 0 or 1 by chance (e.g. a KL that is 0 on every item).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

N_BOOT = 2000
ALPHA = 0.05


def _values(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def _is_rate(*arrays: np.ndarray) -> bool:
    return all(np.isin(a, (0.0, 1.0)).all() for a in arrays)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the n values with replacement n_boot times."""
    arr = _values(values)
    if arr.size == 0:
        raise ValueError("bootstrap_ci of an empty sample")
    return cluster_bootstrap_ci(arr, np.ones_like(arr), n_boot, alpha, seed)


def cluster_bootstrap_ci(
    sums: np.ndarray, counts: np.ndarray, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of a pooled mean when values come in clusters (an item's values over seeds).

    sums, counts: (n_clusters,) sum and number of the values of each cluster. Each draw picks n_clusters clusters
    with replacement; its mean is sum(picked sums) / sum(picked counts).
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sums.size, size=(n_boot, sums.size))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)  # (n_boot,)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def wilson_ci(p: float, n: float, alpha: float = ALPHA) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n items (never zero width for n > 0)."""
    z2 = _z(alpha) ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = np.sqrt(z2) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At p = 0 (or 1) the bound is exactly 0 (or 1); the formula leaves a rounding residue there.
    lo = 0.0 if p <= 0 else max(0.0, float(centre - half))
    hi = 1.0 if p >= 1 else min(1.0, float(centre + half))
    return lo, hi


def newcombe_paired_ci(both: float, before_only: float, after_only: float, neither: float,
                       alpha: float = ALPHA) -> tuple[float, float]:
    """CI of p(after) - p(before) for paired 0/1 outcomes from the 2x2 table of (before, after) counts
    (Newcombe 1998, method 10, as in Fagerland, Lydersen & Laake 2017 ch. 8: Wilson intervals of each margin
    combined with the pairs' continuity-corrected phi correlation)."""
    a, b, c, d = both, before_only, after_only, neither
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n  # before, after
    l1, u1 = wilson_ci(p1, n, alpha)
    l2, u2 = wilson_ci(p2, n, alpha)
    # phi: the pairs' correlation with Newcombe's continuity correction (0 for 0 <= ad - bc <= n / 2), so that
    # concordant pairs alone never give a zero-width interval.
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0.0)
    phi = cross / np.sqrt(denom) if denom > 0 else 0.0
    # Interval of p1 - p2 (Newcombe's orientation), then flipped to after - before.
    delta = np.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = np.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    lo, hi = (p1 - p2) - delta, (p1 - p2) + eps
    return max(-1.0, float(-hi)), min(1.0, float(-lo))


def _empty(**extra) -> dict:
    return {"mean": None, "n": 0, "ci_low": None, "ci_high": None, **extra}


def _item_table(runs: Sequence[Mapping[str, float]]) -> tuple[list[str], list[list[float]]]:
    """Item ids (first-seen order) and each item's finite values over runs."""
    by_item: dict[str, list[float]] = {}
    for run in runs:
        for i, v in run.items():
            if v is not None and np.isfinite(float(v)):
                by_item.setdefault(i, []).append(float(v))
    return list(by_item), list(by_item.values())


def _clustered(vals: list[list[float]], rate: bool | None, n_boot: int, seed: int) -> dict:
    if not vals:
        return _empty()
    sums = np.asarray([sum(v) for v in vals])
    counts = np.asarray([len(v) for v in vals], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    flat = np.concatenate([np.asarray(v) for v in vals])
    if rate if rate is not None else _is_rate(flat):
        lo, hi = wilson_ci(mean, len(vals))
    else:
        lo, hi = cluster_bootstrap_ci(sums, counts, n_boot, ALPHA, seed)
    return {"mean": mean, "n": len(vals), "ci_low": lo, "ci_high": hi}


def summarize(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, rate: bool | None = None) -> dict:
    """{"mean", "n", "ci_low", "ci_high"} of a sample of independent items (None entries and NaNs are dropped and
    not counted). A 0/1 sample gets a Wilson interval, any other a percentile bootstrap (module docstring)."""
    return _clustered([[v] for v in _values(values)], rate, n_boot, seed)


def summarize_seeds(runs: Sequence[Mapping[str, float]], n_boot: int = N_BOOT, seed: int = 0,
                    rate: bool | None = None) -> dict:
    """Pooled mean over seeds of per-item values, clustered by item. runs: one {item id: value} per seed.
    n counts items; "seeds" counts runs with at least one value; "method" names the interval (wilson, bootstrap)."""
    _, vals = _item_table(runs)
    is_rate = rate if rate is not None else _is_rate(np.asarray([v for vs in vals for v in vs]))
    return {**_clustered(vals, is_rate, n_boot, seed), "seeds": sum(1 for r in runs if _item_table([r])[0]),
            "method": "wilson" if is_rate else "bootstrap"}


def paired_seeds(pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], n_boot: int = N_BOOT,
                 seed: int = 0, rate: bool | None = None) -> dict:
    """Mean of (after - before) over the items each pair shares, clustered by item across pairs.

    pairs: one (before, after) per seed, each {item id: value} (e.g. (control seed s, arm seed s), or (baseline, arm
    seed s)). Items missing or non-finite on either side of a pair are dropped from that pair. Returns {"mean", "n"
    (items), "ci_low", "ci_high", "seeds", "paired": True, "method": "newcombe" | "bootstrap"}.
    """
    cells: dict[str, list[tuple[float, float]]] = {}
    for before, after in pairs:
        for i in before:
            if i in after and before[i] is not None and after[i] is not None:
                b, a = float(before[i]), float(after[i])
                if np.isfinite(a) and np.isfinite(b):
                    cells.setdefault(i, []).append((b, a))
    n_pairs = sum(1 for before, after in pairs if any(i in cells for i in before if i in after))
    if not cells:
        return _empty(seeds=0, paired=True)
    ba = np.asarray([p for ps in cells.values() for p in ps])  # (n values, 2): before, after
    is_rate = rate if rate is not None else _is_rate(ba)
    if is_rate:
        n = len(cells)
        frac = lambda x, y: n * float(np.mean((ba[:, 0] == x) & (ba[:, 1] == y)))  # noqa: E731
        lo, hi = newcombe_paired_ci(frac(1, 1), frac(1, 0), frac(0, 1), frac(0, 0))
        out = {"mean": float(np.mean(ba[:, 1] - ba[:, 0])), "n": n, "ci_low": lo, "ci_high": hi}
    else:
        out = _clustered([[a - b for b, a in ps] for ps in cells.values()], False, n_boot, seed)
    return {**out, "seeds": n_pairs, "paired": True, "method": "newcombe" if is_rate else "bootstrap"}


def paired_difference(
    before: Sequence[float], after: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, rate: bool | None = None
) -> dict:
    """Mean of (after - before) over the same prompts, with a CI that resamples prompts (pairs kept together).

    The two arrays must be aligned: element i of each is the same prompt. Pairs where either side is None/NaN are
    dropped. Returns {"mean", "n", "ci_low", "ci_high", "paired": True}.
    """
    if len(before) != len(after):
        raise ValueError(f"paired_difference needs aligned arrays, got lengths {len(before)} and {len(after)}")
    d = paired_seeds([(dict(enumerate(before)), dict(enumerate(after)))], n_boot, seed, rate)
    d.pop("seeds")
    d.pop("method", None)
    return d


def unpaired_difference(
    before: Sequence[float], after: Sequence[float], n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """Difference of means (after - before) of two independent samples, each resampled on its own."""
    b, a = _values(before), _values(after)
    if b.size == 0 or a.size == 0:
        return {"mean": None, "n": 0, "ci_low": None, "ci_high": None, "paired": False}
    rng = np.random.default_rng(seed)
    mb = b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1)
    ma = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    d = ma - mb
    return {
        "mean": float(a.mean() - b.mean()),
        "n": int(min(a.size, b.size)),
        "n_before": int(b.size),
        "n_after": int(a.size),
        "ci_low": float(np.quantile(d, ALPHA / 2)),
        "ci_high": float(np.quantile(d, 1 - ALPHA / 2)),
        "paired": False,
    }


def compare(before: dict, after: dict, n_boot: int = N_BOOT) -> dict:
    """Before/after differences for every metric two results share (results dicts from ``run_suite``).

    Paired over the item ids both runs scored (results["per_item"][metric] maps item id -> value); unpaired when the
    two runs share no ids. Returns {metric: difference summary}.
    """
    out = {}
    for key, b_items in before.get("per_item", {}).items():
        a_items = after.get("per_item", {}).get(key)
        if a_items is None:
            continue
        shared = sorted(set(b_items) & set(a_items))
        if shared:
            out[key] = paired_difference([b_items[i] for i in shared], [a_items[i] for i in shared], n_boot=n_boot)
        else:
            out[key] = unpaired_difference(list(b_items.values()), list(a_items.values()), n_boot=n_boot)
    return out


def fmt(s: dict, pct: bool = False, digits: int = 3) -> str:
    """'0.250 [0.100, 0.400] (n=20)' — or as percentages."""
    if s.get("mean") is None:
        return f"n/a (n={s.get('n', 0)})"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.{digits}f}")
    return f"{f(s['mean'])} [{f(s['ci_low'])}, {f(s['ci_high'])}] (n={s['n']})"
