"""The resumable augment pipeline: base prompts -> clusters (anchor + tagged variations) in a JSONL file. The
clusters themselves come from the one builder, ``variations.build.build_clusters`` (also used by ``coherentize run``).

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
from pathlib import Path
from typing import Sequence

from coherentize.clusters import Cluster, parse_cluster, read_jsonl, write_clusters
from coherentize.errors import CoherentizeError
from coherentize.variations.build import (  # noqa: F401  (families_by_name, AugmentSummary: re-exported)
    AugmentSummary, FamilyStats, Paraphraser, build_clusters, families_by_name,
)
from coherentize.variations.families import Family
from coherentize.variations.filter import Embedder, FilterConfig
from coherentize.variations.paraphrase import FAMILY as PARAPHRASE
from coherentize.variations.prompt_sets import PromptItem


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
    from coherentize.io import atomic_write

    atomic_write(path, json.dumps(settings) + "\n")


def _write_clusters(todo, partial, families, seed, per_family, paraphraser, n_paraphrases, embed, filter_cfg,
                    enforce_all, filter_families, chunk_size, summary, bar) -> None:
    """Append one finished cluster a line to partial, flushed, chunk by chunk (a chunk is paraphrased together)."""
    with partial.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            for cluster in build_clusters(chunk, families, seed, per_family, paraphraser, n_paraphrases, embed,
                                          filter_cfg, ["all"] if enforce_all else filter_families, summary):
                f.write(json.dumps(cluster.to_json(), ensure_ascii=False) + "\n")
                f.flush()
                summary.written += 1
                bar.update(1)
