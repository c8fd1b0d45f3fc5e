"""Statistics for every reported figure: a mean with n and a 95% percentile-bootstrap CI, and before/after differences.

A summary is a plain dict ``{"mean", "n", "ci_low", "ci_high"}`` (``mean`` and the bounds are None when n = 0), so it
goes straight into the results JSON. Resampling is seeded: the same inputs always give the same interval.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

N_BOOT = 2000
ALPHA = 0.05


def _values(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    values: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the n values with replacement n_boot times."""
    arr = _values(values)
    if arr.size == 0:
        raise ValueError("bootstrap_ci of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    means = arr[idx].mean(axis=1)  # (n_boot,)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def summarize(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{"mean", "n", "ci_low", "ci_high"} of a sample (None entries and NaNs are dropped and not counted)."""
    arr = _values(values)
    if arr.size == 0:
        return {"mean": None, "n": 0, "ci_low": None, "ci_high": None}
    lo, hi = bootstrap_ci(arr, n_boot=n_boot, seed=seed)
    return {"mean": float(arr.mean()), "n": int(arr.size), "ci_low": lo, "ci_high": hi}


def paired_difference(
    before: Sequence[float], after: Sequence[float], n_boot: int = N_BOOT, seed: int = 0
) -> dict:
    """Mean of (after - before) over the same prompts, with a bootstrap CI that resamples prompts (pairs kept together).

    The two arrays must be aligned: element i of each is the same prompt. Pairs where either side is None/NaN are
    dropped. Returns {"mean", "n", "ci_low", "ci_high", "paired": True}.
    """
    if len(before) != len(after):
        raise ValueError(f"paired_difference needs aligned arrays, got lengths {len(before)} and {len(after)}")
    b = np.asarray([np.nan if v is None else float(v) for v in before])
    a = np.asarray([np.nan if v is None else float(v) for v in after])
    keep = np.isfinite(a) & np.isfinite(b)
    return {**summarize(a[keep] - b[keep], n_boot=n_boot, seed=seed), "paired": True}


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
