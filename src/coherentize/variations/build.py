"""The one cluster builder: base prompts -> clusters (anchor + tagged variations from programmatic families and an
LLM paraphraser, through the similarity filter). ``coherentize augment`` (pipeline.augment: resumable, into a file)
and ``coherentize run`` (recipes/experiment.py, its variations stage) both build clusters with ``build_clusters``.

Harmful anchors for BCT (Irpan et al.): ``wrap_requests`` wraps each request in one template of every training
jailbreak family; the recipe asks the model for its answers and ``filter_pairs`` keeps the (clean, wrapped) pairs the
chosen pair filter accepts:

- ``none``: every pair;
- ``refused_clean``: pairs whose clean request the model refuses (its refusal becomes the target);
- ``refused_clean_complied_wrapped``: pairs whose clean request it refuses AND whose wrapped request it answers
  (Irpan et al.: training only where the wrapper actually changes the behaviour).

    from coherentize.variations import families_by_name, load_prompt_set
    from coherentize.variations.build import build_clusters
    clusters = build_clusters(load_prompt_set("benign", "train"), families_by_name(["wrapper", "synonym"]), seed=0)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from coherentize.chat import Prompt
from coherentize.clusters import Cluster, Variation
from coherentize.errors import CoherentizeError
from coherentize.variations.families import BUILTIN_FAMILIES, Family, last_user_text, replace_user_text, vary
from coherentize.variations.filter import Embedder, FilterConfig, Verdict, filter_variations
from coherentize.variations.paraphrase import FAMILY as PARAPHRASE, RewriteJob, clean_rewrite, rewrite_jobs
from coherentize.variations.prompt_sets import PromptItem
from coherentize.variations.templates import TemplateFamily

Paraphraser = Callable[[Sequence[RewriteJob]], list[str]]
PAIR_FILTERS = ("none", "refused_clean", "refused_clean_complied_wrapped")


def families_by_name(names: Sequence[str], extra: Sequence[Family] = ()) -> list[Family]:
    """Families in the given order; 'all' means every built-in and extra family. Unknown names are one error that
    lists the valid ones."""
    known = {**BUILTIN_FAMILIES, **{f.name: f for f in extra}}
    if list(names) == ["all"]:
        return list(known.values())
    unknown = [n for n in names if n not in known]
    if PARAPHRASE in unknown:
        raise CoherentizeError(f"'{PARAPHRASE}' is not a programmatic family; choose a paraphraser with --paraphraser.")
    if unknown:
        raise CoherentizeError(
            f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(known)} (or 'all')."
        )
    return [known[n] for n in dict.fromkeys(names)]


@dataclass
class FamilyStats:
    generated: int = 0
    kept: int = 0
    passed: int = 0  # would pass the filter (counted whether or not it is enforced on this family)
    cosines: list[float] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> variations dropped (enforced families only)
    judged: Counter = field(default_factory=Counter)  # reason -> variations the filter objects to (all families)


@dataclass
class AugmentSummary:
    """What one run did; ``table()`` formats it."""

    written: int = 0
    already_done: int = 0
    empty: int = 0
    unusable_rewrites: int = 0
    families: dict[str, FamilyStats] = field(default_factory=dict)
    enforced: tuple[str, ...] = ()
    cfg: FilterConfig | None = None

    def add(self, fam: str) -> FamilyStats:
        return self.families.setdefault(fam, FamilyStats())

    def table(self) -> str:
        lines = [f"clusters written: {self.written}   already done (skipped): {self.already_done}   "
                 f"left out (no variation passed): {self.empty}"]
        if self.unusable_rewrites:
            lines.append(f"paraphrase completions dropped as empty or repeated: {self.unusable_rewrites}")
        head = (f"{'family':<16}{'made':>6}{'kept':>6}{'drifted':>9}{'copy':>6}{'near_dup':>10}{'mean_cos':>10}"
                f"{'<min':>7}{'>max':>7}{'pass':>7}")
        lines += [head, "-" * len(head)]
        tot = FamilyStats()
        for name, s in self.families.items():
            mark = "*" if name in self.enforced else ""
            lines.append(self._row(name + mark, s))
            tot.generated += s.generated
            tot.kept += s.kept
            tot.passed += s.passed
            tot.cosines += s.cosines
            tot.dropped.update(s.dropped)
            tot.judged.update(s.judged)
        lines += ["-" * len(head), self._row("total", tot)]
        if self.cfg is not None:
            lines.append(f"filter: cosine to anchor in [{self.cfg.min_cosine}, {self.cfg.max_cosine}], near-duplicate "
                         f">= {self.cfg.dedup_cosine}; it drops only from families marked *. mean_cos, <min (drifted), "
                         ">max (copy) and pass are measured on every family.")
        return "\n".join(lines)

    @staticmethod
    def _row(name: str, s: FamilyStats) -> str:
        n = len(s.cosines)
        mean = f"{sum(s.cosines) / n:.3f}" if n else "-"
        low, high, rate = (f"{x / n:.0%}" if n else "-" for x in (s.judged["drifted"], s.judged["copy"], s.passed))
        d = s.dropped
        return (f"{name:<16}{s.generated:>6}{s.kept:>6}{d['drifted']:>9}{d['copy']:>6}{d['near_duplicate']:>10}"
                f"{mean:>10}{low:>7}{high:>7}{rate:>7}")


def build_clusters(
    items: Sequence[PromptItem],
    families: Sequence[Family],
    seed: int = 0,
    per_family: int = 1,
    paraphraser: Paraphraser | None = None,
    n_paraphrases: int = 2,
    embed: Embedder | None = None,
    filter_cfg: FilterConfig | None = None,
    filter_families: Sequence[str] = (PARAPHRASE,),
    summary: AugmentSummary | None = None,
) -> list[Cluster]:
    """One cluster per item, in order (a cluster whose variations were all filtered out is kept, empty: the caller
    decides). families: programmatic families (per_family variations each); paraphraser: a back end making
    n_paraphrases rewrites per prompt (all items in one call); embed: the similarity filter's embedder (None: no
    filter); filter_families: families the filter may drop from ('all' for every family), the others are measured
    only. summary: counts are added to it."""
    summary = summary if summary is not None else AugmentSummary()
    filter_cfg = filter_cfg or FilterConfig()
    enforce_all = list(filter_families) == ["all"]
    paraphrases = _paraphrase(items, paraphraser, n_paraphrases, seed, summary) if paraphraser else [[] for _ in items]
    out = []
    for it, para in zip(items, paraphrases):
        variations = vary(it.prompt, families, seed, per_family) + para
        kept = _filter(it.prompt, variations, embed, filter_cfg, summary, enforce_all, filter_families)
        out.append(Cluster(it.id, it.prompt, kept, tags=dict(it.tags)))
    return out


def wrap_requests(requests: Sequence[Mapping], families: Mapping[str, TemplateFamily], tags: Mapping | None = None,
                  prefix: str = "harm-") -> list[Cluster]:
    """One cluster per request ({"id", "prompt"}): the clean request as anchor, one variation per family (the template
    picked by a hash of request id and family, as evaluation picks it). No continuation is set here."""
    tags = dict(tags if tags is not None else {"split": "train", "harmful": True})
    return [Cluster(f"{prefix}{r['id']}", r["prompt"],
                    [Variation(f.wrap(r["prompt"], str(r["id"])), name) for name, f in families.items()],
                    [], dict(tags)) for r in requests]


def filter_pairs(clusters: Sequence[Cluster], refused_clean: Mapping[str, bool], mode: str,
                 refused_wrapped: Mapping[tuple[str, str], bool] | None = None) -> list[Cluster]:
    """Clusters reduced to the (clean, wrapped) pairs that mode accepts (see the module docstring); a cluster with no
    pair left is dropped. refused_clean: {cluster id: the model refused the clean request}; refused_wrapped:
    {(cluster id, family): the model refused the wrapped request} (needed by refused_clean_complied_wrapped)."""
    if mode not in PAIR_FILTERS:
        raise CoherentizeError(f"variations.pair_filter: {mode!r}; use one of {', '.join(PAIR_FILTERS)}.")
    if mode == "refused_clean_complied_wrapped" and refused_wrapped is None:
        raise ValueError("refused_clean_complied_wrapped needs the judged answers to the wrapped requests")
    out = []
    for c in clusters:
        if mode != "none" and not refused_clean[c.id]:
            continue
        vs = c.variations
        if mode == "refused_clean_complied_wrapped":
            vs = [v for v in vs if not refused_wrapped[(c.id, v.family)]]
        if vs:
            out.append(Cluster(c.id, c.anchor, list(vs), list(c.continuations), dict(c.tags)))
    return out


def _paraphrase(
    items: Sequence[PromptItem], paraphraser: Paraphraser, n: int, seed: int, summary: AugmentSummary
) -> list[list[Variation]]:
    """n paraphrase variations per item (fewer where a completion is unusable or repeats another)."""
    jobs: list[RewriteJob] = []
    owner: list[int] = []
    for k, it in enumerate(items):
        text = last_user_text(it.prompt)
        if text is None:
            continue
        for job in rewrite_jobs(text, n, seed):
            jobs.append(job)
            owner.append(k)
    raw = paraphraser(jobs) if jobs else []
    out: list[list[Variation]] = [[] for _ in items]
    seen: list[set] = [{last_user_text(it.prompt)} for it in items]
    for k, completion in zip(owner, raw):
        text = clean_rewrite(completion)
        if text is None or text in seen[k]:
            summary.unusable_rewrites += 1
            continue
        seen[k].add(text)
        out[k].append(Variation(replace_user_text(items[k].prompt, text), PARAPHRASE))
    return out


def _filter(
    anchor: Prompt,
    variations: list[Variation],
    embed: Embedder | None,
    cfg: FilterConfig,
    summary: AugmentSummary,
    enforce_all: bool,
    filter_families: Sequence[str],
) -> list[Variation]:
    for v in variations:
        summary.add(v.family).generated += 1
    if embed is None:
        kept = variations
    else:
        kept, verdicts = filter_variations(
            anchor, variations, embed, cfg, enforce=lambda fam: enforce_all or fam in filter_families
        )
        _count(verdicts, summary, enforce_all, filter_families)
    for v in kept:
        summary.add(v.family).kept += 1
    return kept


def _count(verdicts: list[Verdict], summary, enforce_all, filter_families) -> None:
    for v in verdicts:
        s = summary.add(v.family)
        s.cosines.append(v.cosine)
        if v.reason is None:
            s.passed += 1
            continue
        s.judged[v.reason] += 1
        if enforce_all or v.family in filter_families:
            s.dropped[v.reason] += 1
