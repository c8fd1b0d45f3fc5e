"""The resumable augment pipeline: base prompts -> clusters (anchor + tagged variations) in a JSONL file.

Clusters are appended to ``<out>.partial`` one line each, flushed as soon as they are finished, in input order; a
re-run reads the ids already there and skips them (no repeated calls to a paid API; a line cut short by a kill is
dropped and redone). When every prompt is done the file is renamed to ``<out>``, so an interrupted run never leaves a
file that looks complete. The settings (families, seed, filter) sit next to it in ``<out>.partial.settings.json``;
resuming with other settings is an error rather than a file of mixed clusters. A cluster whose variations were all
filtered out is left out of ``<out>`` (it is counted; a later run retries it).

    from coherentize.variations import augment, families_by_name, load_prompt_set
    summary = augment(load_prompt_set("benign", "train"), "clusters.jsonl",
                      families_by_name(["wrapper", "opinion_cue"]), seed=0)
    print(summary.table())
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from coherentize.chat import Prompt
from coherentize.clusters import Cluster, Variation, parse_cluster, read_jsonl, write_clusters
from coherentize.errors import CoherentizeError
from coherentize.variations.families import BUILTIN_FAMILIES, Family, last_user_text, replace_user_text, vary
from coherentize.variations.filter import Embedder, FilterConfig, Verdict, filter_variations
from coherentize.variations.paraphrase import FAMILY as PARAPHRASE, RewriteJob, clean_rewrite, rewrite_jobs
from coherentize.variations.prompt_sets import PromptItem

Paraphraser = Callable[[Sequence[RewriteJob]], list[str]]


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


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def read_done(partial: Path) -> list[Cluster]:
    """Clusters already in a .partial file. A last line cut short (the process was killed while writing it) is
    truncated away so the next append starts on a clean line; a bad line elsewhere is an error."""
    if not partial.exists():
        return []
    raw = partial.read_bytes()
    lines = raw.split(b"\n")
    # Everything after the last newline is an unfinished line.
    good_end = raw.rfind(b"\n") + 1
    clusters = []
    for lineno, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise CoherentizeError(
                f"{partial}:{lineno}: not valid JSON. Delete {partial} to start over."
            ) from None
        clusters.append(parse_cluster(obj, f"{partial}:{lineno}"))
    if good_end < len(raw):
        with partial.open("r+b") as f:
            f.truncate(good_end)
    return clusters


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


def augment(
    items: Sequence[PromptItem],
    out: str | os.PathLike,
    families: Sequence[Family],
    seed: int = 0,
    per_family: int = 1,
    paraphraser: Paraphraser | None = None,
    n_paraphrases: int = 2,
    embed: Embedder | None = None,
    filter_cfg: FilterConfig | None = None,
    filter_families: Sequence[str] = (PARAPHRASE,),
    chunk_size: int = 16,
    progress: bool = True,
) -> AugmentSummary:
    """Build one cluster per item and write them to out (resumably, see the module docstring).

    families: programmatic families (per_family variations each); paraphraser: a back end making n_paraphrases
    rewrites per prompt; embed: an embedder for the similarity filter (None: no filter, no cosines);
    filter_families: families the filter may drop from ('all' for every family); the others are measured only.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    partial = partial_path(out)
    filter_cfg = filter_cfg or FilterConfig()
    enforce_all = list(filter_families) == ["all"]
    summary = AugmentSummary(enforced=tuple(f.name for f in families) + (PARAPHRASE,) if enforce_all else
                             tuple(filter_families), cfg=filter_cfg if embed is not None else None)
    for name in [f.name for f in families] + ([PARAPHRASE] if paraphraser else []):
        summary.add(name)  # rows in the order asked for
    settings = {
        "families": [f.name for f in families], "seed": seed, "per_family": per_family,
        "paraphrases": n_paraphrases if paraphraser else 0,
        "filter": None if embed is None else [filter_cfg.min_cosine, filter_cfg.max_cosine, filter_cfg.dedup_cosine,
                                               sorted(filter_families)],
    }
    wanted = {it.id for it in items}
    if out.exists():
        done_out = {str(obj.get("id")) for _, obj in read_jsonl(out)}
        if wanted <= done_out:
            summary.already_done = len(wanted)
            return summary
        if partial.exists():
            raise CoherentizeError(f"both {out} and {partial} exist; delete one of them and re-run.")
        os.replace(out, partial)  # the input grew since out was finished: extend it
    _check_settings(settings_path(out), settings, partial.exists())
    done = read_done(partial)
    done_ids = {c.id for c in done}
    todo = [it for it in items if it.id not in done_ids]
    summary.already_done = len(items) - len(todo)

    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(items), initial=summary.already_done, desc="augment", unit="cluster", disable=not progress)
    try:
        _write_clusters(todo, partial, families, seed, per_family, paraphraser, n_paraphrases, embed, filter_cfg,
                        enforce_all, filter_families, chunk_size, summary, bar)
    finally:
        bar.close()
        if partial.exists() and partial.stat().st_size == 0:
            partial.unlink()  # failed before the first cluster: leave nothing behind
            settings_path(out).unlink(missing_ok=True)

    clusters = read_done(partial)
    kept = [c for c in clusters if c.variations]
    summary.empty = len(clusters) - len(kept)
    if summary.empty or not partial.exists():
        write_clusters(out, kept)
        partial.unlink(missing_ok=True)
    else:
        os.replace(partial, out)
    settings_path(out).unlink(missing_ok=True)
    return summary


def settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.settings.json")


def _check_settings(path: Path, settings: dict, resuming: bool) -> None:
    """Refuse to resume a .partial file begun with other settings (the file would mix two kinds of cluster)."""
    if resuming and path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings:
            diff = ", ".join(
                f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items() if before.get(k) != v
            )
            raise CoherentizeError(
                f"{path.name.removesuffix('.settings.json')} was started with other settings ({diff}). "
                "Re-run with the same settings to resume, or delete the .partial file to start over."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings) + "\n", encoding="utf-8")


def _write_clusters(todo, partial, families, seed, per_family, paraphraser, n_paraphrases, embed, filter_cfg,
                    enforce_all, filter_families, chunk_size, summary, bar) -> None:
    """Append one finished cluster a line to partial, flushed, chunk by chunk (a chunk is paraphrased together)."""
    with partial.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            paraphrases = (
                _paraphrase(chunk, paraphraser, n_paraphrases, seed, summary) if paraphraser else [[] for _ in chunk]
            )
            for it, para in zip(chunk, paraphrases):
                variations = vary(it.prompt, families, seed, per_family) + para
                cluster = Cluster(it.id, it.prompt, _filter(it.prompt, variations, embed, filter_cfg,
                                                             summary, enforce_all, filter_families), tags=dict(it.tags))
                f.write(json.dumps(cluster.to_json(), ensure_ascii=False) + "\n")
                f.flush()
                summary.written += 1
                bar.update(1)


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
