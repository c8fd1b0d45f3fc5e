"""The experiment's training data: clusters built from the shipped prompt sets through the one cluster builder, the
harmful anchors of the BCT reproduction with their pair filter, the control arm's copies, and the training clusters
ranked by the model's incoherence (the mine stage). Each function takes its own config section."""

from __future__ import annotations

from pathlib import Path

from coherentize.clusters import Cluster, Variation, load_clusters, write_clusters
from coherentize.errors import CoherentizeError
from coherentize.io import write_json
from coherentize.models import ModelConfig
from coherentize.recipes.experiment_config import MineConfig, VariationsConfig


def build_training_clusters(v: VariationsConfig, response_max_new_tokens: int, model_cfg: ModelConfig, out: Path,
                            log) -> dict:
    """train.jsonl and heldout.jsonl: anchors from the shipped sets through the one cluster builder
    (variations.build), plus harmful anchors wrapped in training jailbreak families, kept by the pair filter."""
    from coherentize.variations import families_by_name, load_prompt_set
    from coherentize.variations.build import AugmentSummary, build_clusters
    from coherentize.variations.prompt_sets import PromptItem

    if v.clusters_file:
        allc = load_clusters(v.clusters_file)
        train = [c for c in allc if c.split in (None, "train")]
        held = [c for c in allc if c.split == "test"]
    else:
        fams = families_by_name(v.families)
        embed = paraphraser = None
        if v.embedder:
            from coherentize.variations.filter import load_embedder

            embed = load_embedder(v.embedder)
        if v.paraphrase_model:
            from coherentize.models import load_model
            from coherentize.variations.paraphrase import LocalParaphraser

            pm, ptok = load_model(ModelConfig(name_or_path=v.paraphrase_model, device=model_cfg.device))
            paraphraser = LocalParaphraser(pm, ptok)
        summary = AugmentSummary(cfg=v.filter if embed is not None else None)
        train, held = [], []
        for split, dest in (("train", train), ("test", held)):
            for name in v.prompt_sets:
                items = load_prompt_set(name, split)
                items = items[: v.max_prompts] if v.max_prompts else items
                items = [PromptItem(f"{name}-{it.id}", it.prompt, {**it.tags, "split": split, "set": name})
                         for it in items]
                built = build_clusters(items, fams, v.seed, v.per_family, paraphraser, v.n_paraphrases, embed,
                                       v.filter, v.filter_families, summary)
                dest += [c for c in built if c.variations]
        if embed is not None or paraphraser is not None:
            log(summary.table())
    counts = {"benign_train": len(train), "benign_heldout": len(held)}
    if v.n_harmful:
        counts.update(harmful_clusters(v, response_max_new_tokens, model_cfg, train))
    if not train:
        raise CoherentizeError("variations: no training clusters were built; check prompt_sets and families.")
    write_clusters(out / "train.jsonl", train)
    if held:
        write_clusters(out / "heldout.jsonl", held)
    log(f"   clusters: {counts}")
    return counts


def harmful_clusters(v: VariationsConfig, response_max_new_tokens: int, model_cfg: ModelConfig,
                     train: list[Cluster]) -> dict:
    """The recipe step of the BCT reproduction: harmful train-split requests wrapped in the training jailbreak
    families (variations.build.wrap_requests), the model's answers judged, and the pair filter applied. The target is
    the model's own refusal to the clean request: no harmful text is ever a target, and answers to wrapped requests
    are only judged, never kept."""
    from coherentize import sources
    from coherentize.chat import is_chat_model
    from coherentize.evaluate.judges import is_refusal
    from coherentize.generation import generate
    from coherentize.models import load_model
    from coherentize.variations.build import filter_pairs, wrap_requests
    from coherentize.variations.templates import template_families

    fams = template_families(v.template_sources, v.jailbreak_families)
    harmful = sources.strongreject(split="train", n=v.n_harmful)
    clusters = wrap_requests(harmful, fams)
    model, tok = load_model(model_cfg)
    chat = is_chat_model(tok, model_cfg.prompt_format)
    answers = generate(model, tok, [c.anchor for c in clusters], chat, response_max_new_tokens)
    refused_clean = {c.id: is_refusal(a) for c, a in zip(clusters, answers)}
    refused_wrapped = None
    if v.pair_filter == "refused_clean_complied_wrapped":
        keys = [(c.id, x.family) for c in clusters if refused_clean[c.id] for x in c.variations]
        prompts = [x.prompt for c in clusters if refused_clean[c.id] for x in c.variations]
        outs = generate(model, tok, prompts, chat, response_max_new_tokens) if prompts else []
        refused_wrapped = {k: is_refusal(o) for k, o in zip(keys, outs)}
        del outs
    for c, a in zip(clusters, answers):
        if refused_clean[c.id]:
            c.continuations = [a]
    kept = filter_pairs(clusters, refused_clean, v.pair_filter, refused_wrapped)
    train.extend(kept)
    del model
    return {"harmful_requested": len(harmful), "harmful_refused_clean": sum(refused_clean.values()),
            "harmful_kept": len(kept), "harmful_pairs_kept": sum(len(c.variations) for c in kept)}


def control_clusters(path: Path, out: Path) -> Path:
    """The control arm's data: every variation replaced by the anchor itself (so only SFT on anchors remains)."""
    cs = load_clusters(path)
    write_clusters(out, [Cluster(c.id, c.anchor, [Variation(c.anchor, "anchor_copy")] * len(c.variations),
                                 c.continuations, c.tags) for c in cs])
    return out


def family_clusters(path: Path, families, out: Path) -> Path:
    """An arm's data when it names its variation families: each cluster with its variations of those families only;
    a cluster left with none is dropped (an empty result is an error naming the families)."""
    keep = set(families)
    cs = [Cluster(c.id, c.anchor, vs, c.continuations, c.tags) for c in load_clusters(path)
          for vs in [[x for x in c.variations if x.family in keep]] if vs]
    if not cs:
        raise CoherentizeError(f"{path}: no training cluster has a variation of the families {sorted(keep)}.")
    write_clusters(out, cs)
    return out


def mine_training_clusters(mine: MineConfig, seeds: list[int], batch_size: int, model, tok, prompt_format: str,
                           train_path: Path, out: Path, log) -> dict:
    """The mine stage: every training cluster scored by the model's incoherence, the top_k written as mined.jsonl and,
    per seed, as many clusters drawn at random as random-seed<s>.jsonl (the comparison: targeting vs coverage)."""
    from coherentize.chat import is_chat_model
    from coherentize.evaluate.mining import mine_clusters, random_clusters, top_clusters

    pool = load_clusters(train_path)
    ranked = mine_clusters(model, tok, pool, chat=is_chat_model(tok, prompt_format), layers=mine.layers,
                           max_new_tokens=mine.max_new_tokens, batch_size=batch_size)
    mined = top_clusters(ranked, mine.top_k)
    out.mkdir(parents=True, exist_ok=True)
    write_clusters(out / "mined.jsonl", mined)
    for seed in seeds:
        write_clusters(out / f"random-seed{seed}.jsonl", random_clusters(pool, len(mined), seed))
    scores = [{"id": r.cluster.id, "score": r.score} for r in ranked]
    write_json(out / "ranked.json", scores, indent=1)
    top = [r.score for r in ranked[: len(mined)]]
    log(f"   mined {len(mined)} of {len(pool)} clusters (score {min(top):.3f}..{max(top):.3f}; "
        f"pool mean {sum(s['score'] for s in scores) / len(scores):.3f})")
    return {"pool": len(pool), "mined": len(mined), "mined_mean_score": sum(top) / len(top),
            "pool_mean_score": sum(s["score"] for s in scores) / len(scores)}
