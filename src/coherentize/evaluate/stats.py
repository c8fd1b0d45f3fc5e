"""Statistics for every reported figure: a mean with n and a 95% interval, and paired differences.

A summary is a plain dict ``{"mean", "n", "ci_low", "ci_high"}`` (``mean`` and the bounds are None when n = 0), so it
goes straight into the results JSON. Resampling is seeded: the same inputs always give the same interval.

Which interval (alpha = 0.05 throughout):

- **Two sources of noise: prompts and training seeds.** Items (prompts, requests, clusters) are sampled from a
  population, and so is the training run: another seed trains another model. With one seed an interval covers prompt
  sampling only (the percentile bootstrap over items). With several seeds evaluated on the same items,
  ``summarize_seeds`` and ``paired_seeds`` use a **two-level bootstrap** for seeds crossed with items: each draw picks
  S seeds with replacement and, independently, n items with replacement (one item draw shared by every drawn seed,
  because the seeds are scored on the same items); the draw's value is the average over the drawn seeds of each
  seed's mean over the drawn items. A paired difference (arm - control within a seed; arm seed s - baseline) is
  formed per item within its seed first, then bootstrapped the same way. n is the number of items, never of (seed,
  item) pairs, and "per_seed" lists each seed's own mean (or mean difference) so a reader sees the spread.
  Exactness: the item draws come from the same generator as the one-seed bootstrap and each draw is written as the
  first seed's mean plus the average of the seeds' offsets from it, so S identical seeds give exactly the interval of
  one seed (the seed level adds nothing), while seeds that disagree (a whole seed shifted) widen it. Known limit:
  with S seeds the bootstrap's between-seed variance is (S - 1) / S of the unbiased one and a percentile interval has
  no small-sample (t) correction, so with 2-3 seeds it is still narrower than a t-interval over the seed means; use
  5 seeds or more for a claim, and read the per-seed values.
- **A rate** (every value 0 or 1: refused, succeeded, correct) gets a Wilson score interval instead, because a
  percentile interval at 0% or 100% has zero width (0/20 gives [0%, 16.1%], not [0%, 0%]). With several seeds it is
  Wilson at the pooled rate with n = items: an item's seed-average lies in [0, 1], so its variance is at most
  p(1 - p). With several seeds n is divided by the design effect of the seeds: deff = (variance of the two-level
  bootstrap) / (variance of the item-only bootstrap, seeds held fixed), both from the same item draws and never below
  1, so Wilson's interval widens by about sqrt(deff) when seeds disagree and is unchanged when they agree (deff is
  exactly 1 for identical seeds). Where the item-only variance is 0 but the seeds differ, n_eff = 1.
- **A paired difference of rates** (after - before on the same items; arm - control within a seed) gets Newcombe's
  hybrid score interval for paired proportions (Newcombe 1998, Stat Med 17:2635, method 10), which also keeps its
  width when no item changed. With several seeds the 2x2 table's cells are the pooled fractions of (before, after)
  pairs scaled to n_eff = items / deff, deff from the per-seed paired differences as for Wilson above. Other paired
  differences: the two-level bootstrap of the per-seed differences.
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


def _matrix(runs: Sequence[Mapping[str, float]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(item ids in first-seen order, values (S, n), present (S, n)): one row per run with at least one finite value
    (runs with none are dropped); a missing or non-finite value is 0 with present False."""
    ids: dict[str, int] = {}
    rows = []
    for run in runs:
        row = {i: float(v) for i, v in run.items() if v is not None and np.isfinite(float(v))}
        if row:
            rows.append(row)
            for i in row:
                ids.setdefault(i, len(ids))
    values = np.zeros((len(rows), len(ids)))
    present = np.zeros((len(rows), len(ids)), dtype=bool)
    for s, row in enumerate(rows):
        for i, v in row.items():
            values[s, ids[i]] = v
            present[s, ids[i]] = True
    return list(ids), values, present


def _tally(idx: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) counts of each index 0..n-1 in each row of idx (rows, k)."""
    flat = (np.arange(idx.shape[0])[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def _draw_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n): how often each of n indices is drawn in each of n_boot draws of n with replacement."""
    return _tally(rng.integers(0, n, size=(n_boot, n)), n)


def seed_item_bootstrap(values: np.ndarray, present: np.ndarray, n_boot: int = N_BOOT, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap means of a seeds x items table (module docstring): (item_only, two_level), each (n_boot,).

    values, present: (S, n). Every draw resamples the n items with replacement (one draw shared by all seeds, from
    ``default_rng(seed)`` as the one-seed bootstrap); item_only averages every seed's mean over the drawn items,
    two_level averages the means of S seeds drawn with replacement (from an independent generator). Each draw is the
    first seed's mean plus the (weighted) average offset of the seeds from it, so identical seeds give offsets of
    exactly 0 and both arrays equal the one-seed bootstrap exactly. A draw where no drawn seed has a drawn item is NaN.
    """
    n_seeds, n = values.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = _tally(idx, n)  # (n_boot, n): times each item was drawn
    # (n_boot, S): each seed's mean over the drawn items; one matrix-vector product per seed, so that identical seeds
    # get bitwise identical columns.
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = np.stack([(counts @ np.where(present[s], values[s], 0.0)) / (counts @ present[s].astype(float))
                             for s in range(n_seeds)], axis=1)
    ok = ~np.isnan(per_seed)
    ref = per_seed[np.arange(n_boot), np.argmax(ok, axis=1)]  # (n_boot,): the first seed with a drawn item
    offsets = np.where(ok, per_seed - ref[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        item_only = ref + offsets.sum(axis=1) / ok.sum(axis=1)
        if n_seeds == 1:
            return item_only, item_only
        picks = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_boot, n_seeds))
        weights = _tally(picks, n_seeds)  # (n_boot, S): times each seed was drawn
        two_level = ref + (weights * offsets).sum(axis=1) / (weights * ok).sum(axis=1)
    return item_only, two_level


def bootstrap_ci(
    values: Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample the n values with replacement n_boot times."""
    arr = _values(values)
    if arr.size == 0:
        raise ValueError("bootstrap_ci of an empty sample")
    means, _ = seed_item_bootstrap(arr[None, :], np.ones((1, arr.size), dtype=bool), n_boot, seed)
    return _percentile(means, alpha)


def _percentile(draws: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    return float(np.nanquantile(draws, alpha / 2)), float(np.nanquantile(draws, 1 - alpha / 2))


def _design_effect(item_only: np.ndarray, two_level: np.ndarray, n: int) -> float:
    """Variance of the two-level bootstrap over the item-only one (>= 1; n when only the seeds vary)."""
    v1, v2 = float(np.nanvar(item_only)), float(np.nanvar(two_level))
    if v2 <= v1:
        return 1.0
    return v2 / v1 if v1 > 0 else float(n)


def _seed_summary(values: np.ndarray, present: np.ndarray, rate: bool | None, n_boot: int, seed: int,
                  pooled: np.ndarray | None = None) -> dict:
    """The summary of a seeds x items table: pooled mean, n = items, the interval (Wilson for rates, else the
    two-level percentile bootstrap), "per_seed" means, "deff" (the seeds' design effect) and the item-only interval
    ("ci_items", seeds held fixed) for comparison. pooled: the values whose mean is reported (default: all present)."""
    n_seeds, n = values.shape
    if n == 0:
        return _empty(seeds=0, per_seed=[])
    flat = values[present]
    mean = float(flat.mean())
    is_rate = rate if rate is not None else _is_rate(flat if pooled is None else pooled)
    item_only, two_level = seed_item_bootstrap(values, present, n_boot, seed)
    deff = _design_effect(item_only, two_level, n)
    if is_rate:
        lo, hi = wilson_ci(mean, n / deff)
    else:
        lo, hi = _percentile(two_level)
    per_seed = [float(values[s][present[s]].mean()) for s in range(n_seeds)]
    return {"mean": mean, "n": n, "ci_low": lo, "ci_high": hi, "seeds": n_seeds, "per_seed": per_seed,
            "deff": deff, "ci_items": list(_percentile(item_only)), "method": "wilson" if is_rate else "bootstrap"}


def summarize(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, rate: bool | None = None) -> dict:
    """{"mean", "n", "ci_low", "ci_high"} of a sample of independent items (None entries and NaNs are dropped and
    not counted). A 0/1 sample gets a Wilson interval, any other a percentile bootstrap (module docstring)."""
    s = summarize_seeds([dict(enumerate(_values(values)))], n_boot, seed, rate)
    return {k: s[k] for k in ("mean", "n", "ci_low", "ci_high")}


def summarize_seeds(runs: Sequence[Mapping[str, float]], n_boot: int = N_BOOT, seed: int = 0,
                    rate: bool | None = None) -> dict:
    """Pooled mean over seeds of per-item values, with the two-level (seeds x items) interval of the module
    docstring. runs: one {item id: value} per seed. n counts items; "seeds" counts runs with at least one value;
    "per_seed" is each such run's mean; "method" names the interval (wilson, bootstrap); "deff" the seeds' design
    effect; "ci_items" the item-only interval (seeds held fixed), for comparison."""
    _, values, present = _matrix(runs)
    return _seed_summary(values, present, rate, n_boot, seed)


def paired_seeds(pairs: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], n_boot: int = N_BOOT,
                 seed: int = 0, rate: bool | None = None) -> dict:
    """Mean of (after - before) over the items each pair shares, formed within each pair (seed) first, with the
    two-level interval of the module docstring.

    pairs: one (before, after) per seed, each {item id: value} (e.g. (control seed s, arm seed s), or (baseline, arm
    seed s)). Items missing or non-finite on either side of a pair are dropped from that pair. Returns {"mean", "n"
    (items), "ci_low", "ci_high", "seeds", "per_seed" (each pair's mean difference), "deff", "ci_items", "paired":
    True, "method": "newcombe" | "bootstrap"}.
    """
    diffs, both = [], []
    for before, after in pairs:
        d, ba = {}, []
        for i in before:
            if i in after and before[i] is not None and after[i] is not None:
                b, a = float(before[i]), float(after[i])
                if np.isfinite(a) and np.isfinite(b):
                    d[i] = a - b
                    ba.append((b, a))
        diffs.append(d)
        both += ba
    _, values, present = _matrix(diffs)
    if values.shape[1] == 0:
        return _empty(seeds=0, per_seed=[], paired=True)
    ba = np.asarray(both)  # (n values, 2): before, after
    is_rate = rate if rate is not None else _is_rate(ba)
    out = _seed_summary(values, present, False, n_boot, seed)
    out["mean"] = float(np.mean(ba[:, 1] - ba[:, 0]))
    if is_rate:
        n_eff = out["n"] / out["deff"]
        frac = lambda x, y: n_eff * float(np.mean((ba[:, 0] == x) & (ba[:, 1] == y)))  # noqa: E731
        out["ci_low"], out["ci_high"] = newcombe_paired_ci(frac(1, 1), frac(1, 0), frac(0, 1), frac(0, 0))
    return {**out, "paired": True, "method": "newcombe" if is_rate else "bootstrap"}


def _drawn_means(values: np.ndarray, ok: np.ndarray, counts: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Each bootstrap draw's pooled mean of a seeds x items table (values, present: (S, n)): the average over the
    drawn seeds (picks: (n_boot, S) counts) of each seed's mean over the drawn items (counts: (n_boot, n)); (n_boot,)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = np.stack([(counts @ np.where(ok[s], values[s], 0.0)) / (counts @ ok[s].astype(float))
                             for s in range(values.shape[0])], axis=1)  # (n_boot, S)
        good = ~np.isnan(per_seed)
        return (picks * np.where(good, per_seed, 0.0)).sum(axis=1) / (picks * good).sum(axis=1)


def ratio_seeds(numerator: Sequence[Mapping[str, float]], denominator: Sequence[Mapping[str, float]],
                n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The ratio of two pooled means measured on the same seeds but different items (e.g. a narrow fine-tune's
    off-domain change over its in-domain change: the spread ratio), with a two-level percentile interval: each draw
    picks S seeds with replacement (the same seeds for both), and the items of each side with replacement on their
    own; the draw's value is the ratio of the two sides' drawn means (each the average over the drawn seeds of the
    seed's mean over the drawn items).

    numerator, denominator: one {item id: value} per seed, aligned (element s of each is seed s). Returns {"ratio"
    (pooled mean / pooled mean), "ci_low", "ci_high", "numerator", "denominator" (the pooled means), "n_numerator",
    "n_denominator" (items), "seeds", "per_seed" (each seed's own ratio), "denominator_excludes_zero" (whether the
    denominator's own two-level interval excludes 0: if not, the ratio and its interval mean little)}. A ratio whose
    denominator is 0 is None; draws with a zero denominator are dropped (the interval is then over the rest)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"ratio_seeds needs one numerator and one denominator per seed, got {len(numerator)} and "
                         f"{len(denominator)}")
    _, num, num_ok = _matrix(numerator)
    _, den, den_ok = _matrix(denominator)
    if num.shape[0] != den.shape[0] or num.size == 0 or den.size == 0:
        return {"ratio": None, "ci_low": None, "ci_high": None, "numerator": None, "denominator": None,
                "n_numerator": int(num.shape[1]), "n_denominator": int(den.shape[1]), "seeds": 0, "per_seed": [],
                "denominator_excludes_zero": False}
    n_seeds = num.shape[0]
    rng = np.random.default_rng(seed)
    picks = _draw_counts(rng, n_boot, n_seeds)  # (n_boot, S)
    top = _drawn_means(num, num_ok, _draw_counts(rng, n_boot, num.shape[1]), picks)
    bottom = _drawn_means(den, den_ok, _draw_counts(rng, n_boot, den.shape[1]), picks)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = np.where(bottom != 0, top / bottom, np.nan)
    pooled_num, pooled_den = float(num[num_ok].mean()), float(den[den_ok].mean())
    seed_means = lambda v, ok: [float(v[s][ok[s]].mean()) if ok[s].any() else float("nan")  # noqa: E731
                                for s in range(n_seeds)]
    per_seed = [a / b if b else None for a, b in zip(seed_means(num, num_ok), seed_means(den, den_ok))]
    lo, hi = _percentile(draws) if np.isfinite(draws).any() else (None, None)
    den_lo, den_hi = _percentile(bottom)
    return {"ratio": pooled_num / pooled_den if pooled_den else None, "ci_low": lo, "ci_high": hi,
            "numerator": pooled_num, "denominator": pooled_den, "n_numerator": int(num.shape[1]),
            "n_denominator": int(den.shape[1]), "seeds": n_seeds, "per_seed": per_seed,
            "denominator_excludes_zero": bool(den_lo > 0 or den_hi < 0)}


def _aligned(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two conditions' {item id: value} per seed on one set of item columns (ids in first-seen order over both):
    (values a, present a, values b, present b), each (S, n); a missing or non-finite value is 0 with present False."""
    ids: dict[str, int] = {}
    for run in list(a) + list(b):
        for i in run:
            ids.setdefault(i, len(ids))
    out = []
    for runs in (a, b):
        values, present = np.zeros((len(runs), len(ids))), np.zeros((len(runs), len(ids)), dtype=bool)
        for s, run in enumerate(runs):
            for i, v in run.items():
                if v is not None and np.isfinite(float(v)):
                    values[s, ids[i]], present[s, ids[i]] = float(v), True
        out += [values, present]
    return tuple(out)


def ratio_difference_seeds(ref_numerator: Sequence[Mapping[str, float]], ref_denominator: Sequence[Mapping[str, float]],
                           numerator: Sequence[Mapping[str, float]], denominator: Sequence[Mapping[str, float]],
                           n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """A condition's ratio of pooled means minus a reference condition's (ratio_seeds' ratio; e.g. a defended
    narrow fine-tune's spread ratio minus the undefended one's), with a paired two-level percentile interval: each
    draw picks the same S seeds and the same items (by id) for both conditions, so what the two share (which items
    and seeds were drawn) cancels. All four sequences: one {item id: value} per seed, seed s at element s of each.
    Returns {"difference" (own pooled ratio - reference's), "ci_low", "ci_high", "seeds", "per_seed" (each seed's own
    ratio minus the reference's; None where a denominator is 0)}; draws with a zero denominator are dropped."""
    if not len(ref_numerator) == len(ref_denominator) == len(numerator) == len(denominator):
        raise ValueError("ratio_difference_seeds needs one {item: value} per seed in each of its four sequences, got "
                         f"{len(ref_numerator)}, {len(ref_denominator)}, {len(numerator)} and {len(denominator)}")
    n_seeds = len(numerator)
    empty = {"difference": None, "ci_low": None, "ci_high": None, "seeds": n_seeds, "per_seed": []}
    if n_seeds == 0:
        return empty
    rn, rn_ok, on, on_ok = _aligned(ref_numerator, numerator)
    rd, rd_ok, od, od_ok = _aligned(ref_denominator, denominator)
    if rn.shape[1] == 0 or rd.shape[1] == 0:
        return empty
    rng = np.random.default_rng(seed)
    picks = _draw_counts(rng, n_boot, n_seeds)  # (n_boot, S)
    num_counts, den_counts = _draw_counts(rng, n_boot, rn.shape[1]), _draw_counts(rng, n_boot, rd.shape[1])

    with np.errstate(invalid="ignore", divide="ignore"):
        ref_draws = _drawn_means(rn, rn_ok, num_counts, picks) / _drawn_means(rd, rd_ok, den_counts, picks)
        own_draws = _drawn_means(on, on_ok, num_counts, picks) / _drawn_means(od, od_ok, den_counts, picks)
        draws = own_draws - ref_draws
    draws = draws[np.isfinite(draws)]

    def pooled(v: np.ndarray, ok: np.ndarray) -> float:
        return float(v[ok].mean()) if ok.any() else float("nan")

    def ratio(num: float, den: float) -> float:
        return num / den if den and np.isfinite(den) else float("nan")

    def seed_ratio(num: np.ndarray, num_ok: np.ndarray, den: np.ndarray, den_ok: np.ndarray, s: int) -> float | None:
        r = ratio(pooled(num[s], num_ok[s]), pooled(den[s], den_ok[s]))
        return r if np.isfinite(r) else None

    ref_ratio, own_ratio = ratio(pooled(rn, rn_ok), pooled(rd, rd_ok)), ratio(pooled(on, on_ok), pooled(od, od_ok))
    per_seed = []
    for s in range(n_seeds):
        r, o = seed_ratio(rn, rn_ok, rd, rd_ok, s), seed_ratio(on, on_ok, od, od_ok, s)
        per_seed.append(None if r is None or o is None else o - r)
    lo, hi = _percentile(draws) if draws.size else (None, None)
    diff = own_ratio - ref_ratio
    return {"difference": float(diff) if np.isfinite(diff) else None, "ci_low": lo, "ci_high": hi, "seeds": n_seeds,
            "per_seed": per_seed}


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
    for k in ("seeds", "per_seed", "deff", "ci_items", "method"):
        d.pop(k, None)
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


def harmonic_mean(values: Sequence[float]) -> float:
    """n / sum(1/x): the selection score of rates that must all be high (0.0 when any is 0 or below, so one rate at
    zero cannot be bought back by the others)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("harmonic_mean of no values")
    return 0.0 if min(xs) <= 0 else len(xs) / sum(1.0 / x for x in xs)


def fmt(s: dict, pct: bool = False, digits: int = 3) -> str:
    """'0.250 [0.100, 0.400] (n=20)' — or as percentages."""
    if s.get("mean") is None:
        return f"n/a (n={s.get('n', 0)})"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.{digits}f}")
    return f"{f(s['mean'])} [{f(s['ci_low'])}, {f(s['ci_high'])}] (n={s['n']})"
