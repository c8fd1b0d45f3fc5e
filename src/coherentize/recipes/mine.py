"""The resumable run behind ``coherentize mine``: clusters scored by evaluate/mining.py into a folder, chunk by chunk
(a re-run skips what is scored), then the ranking, the training-ready top clusters and the page
(report/mining_page.py).

    summary = mine_to_dir("mined/", clusters, settings, load, top=20, layers=["mid", -1])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from coherentize.clusters import Cluster
from coherentize.errors import CoherentizeError
from coherentize.evaluate.mining import (
    FORMULA, ScoredCluster, rank_clusters, rank_families, read_scored, score_clusters, top_clusters,
)

PARTIAL = "scores.partial.jsonl"
"""Scored clusters appended one a line as chunks finish (input order); a re-run skips the ids found here."""
SETTINGS = "mine.settings.json"
"""What the scores depend on (model, input, families, seed, layers, ...); resuming with others is an error."""


@dataclass
class MineSummary:
    """What one run did and wrote."""

    scored: int = 0
    resumed: int = 0
    seconds: float = 0.0
    ranked: list[ScoredCluster] = field(default_factory=list)
    families: dict = field(default_factory=dict)
    files: list = field(default_factory=list)


def _check_settings(path, settings: dict, resuming: bool) -> None:
    import json

    if resuming and path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings:
            diff = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now"
                             for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k))
            raise CoherentizeError(
                f"{path.parent}: scores there were made with other settings ({diff}). Re-run with the same settings to "
                f"resume, use another --out, or delete {path.parent / PARTIAL} and ranked.jsonl to start over.")
    from coherentize.io import atomic_write

    atomic_write(path, json.dumps(settings, sort_keys=True) + "\n")


def mine_to_dir(out_dir, clusters: Sequence[Cluster], settings: dict, load: Callable[[], tuple], *, top: int,
                layers: Sequence[int | str] = (), max_new_tokens: int = 32, batch_size: int = 16, chunk_size: int = 8,
                harmful: bool | None = None, progress: bool | None = None, meta: dict | None = None) -> MineSummary:
    """Score clusters into out_dir resumably and write the ranking and the page.

    Scores go to out_dir/scores.partial.jsonl as chunks finish; clusters already scored there (or in a finished
    ranked.jsonl) with the same settings are not scored again, and the model is loaded (load() -> (model,
    tokenizer, chat)) only if something is left to score. Writes ranked.jsonl (every cluster, most incoherent first,
    with "rank"), top.jsonl (the top clusters, clusters.load_clusters format), families.json (rank_families),
    mine.md, mine.html and families.png (report/mining_page.py). meta: shown on the page (model, input, ...)."""
    import json
    import time
    from pathlib import Path

    from coherentize.clusters import write_clusters
    from coherentize.report.mining_page import write_page

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial, ranked_path = out / PARTIAL, out / "ranked.jsonl"
    done = {s.id: s for s in read_scored(ranked_path)}
    done.update({s.id: s for s in read_scored(partial, truncate=True)})
    _check_settings(out / SETTINGS, settings, bool(done))
    for c in clusters:
        if c.id in done and done[c.id].cluster.to_json() != c.to_json():
            raise CoherentizeError(
                f"{out}: cluster {c.id!r} was scored with other members than the input gives now (the input "
                f"changed). Use another --out, or delete {partial} and {ranked_path} to start over.")
    todo = [c for c in clusters if c.id not in done]
    summary = MineSummary(resumed=len(clusters) - len(todo))
    if todo:
        model, tokenizer, chat = load()
        bar = None
        if progress is not False:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(clusters), initial=summary.resumed, desc="mine", unit="cluster",
                       disable=None if progress is None else not progress)
        try:
            with partial.open("a", encoding="utf-8") as f:
                for s in score_clusters(model, tokenizer, todo, chat=chat, layers=layers,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size, chunk_size=chunk_size,
                                        harmful=harmful, progress=bar.update if bar is not None else False):
                    f.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
                    f.flush()
                    done[s.id] = s
                    summary.scored += 1
        finally:
            if bar is not None:
                bar.close()
    ranked = rank_clusters([done[c.id] for c in clusters])
    families = rank_families(ranked)
    from coherentize.io import atomic_open, atomic_write

    with atomic_open(ranked_path) as f:
        for rank, s in enumerate(ranked, 1):
            f.write(json.dumps({"rank": rank, **s.to_json()}, ensure_ascii=False) + "\n")
    partial.unlink(missing_ok=True)  # everything is in ranked.jsonl now
    write_clusters(out / "top.jsonl", top_clusters(ranked, top))
    atomic_write(out / "families.json", json.dumps(families, indent=1) + "\n")
    summary.seconds = time.time() - t0
    page = write_page(out, ranked, families, top, {**(meta or {}), "settings": settings, "formula": FORMULA,
                                                   "scored": summary.scored, "resumed": summary.resumed,
                                                   "seconds": summary.seconds})
    summary.ranked, summary.families = ranked, families
    summary.files = [ranked_path, out / "top.jsonl", out / "families.json", *page]
    return summary
