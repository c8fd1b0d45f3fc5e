"""Training examples as a ``datasets.Dataset``, for ConsistencyTrainer in your own script.

    train = examples_dataset(clusters, responses, tokenizer)          # columns: cluster_id, anchor_ids, variant_ids,
    trainer = ConsistencyTrainer(model=model, args=ConsistencyConfig(...), train_dataset=train,   # response_ids
                                 data_collator=ConsistencyCollator(tokenizer.pad_token_id), processing_class=tokenizer)

The rows are collate.Example fields (token ids), so the collator packs them as it packs a list of Example. A Dataset
of clusters (columns id, anchor, variations, and optionally continuations / tags, as in the clusters JSONL) turns
into Cluster objects with ``clusters_from_dataset``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from coherentize.chat import is_chat_model
from coherentize.clusters import Cluster, parse_cluster
from coherentize.collate import build_examples


def clusters_from_dataset(rows: Iterable[dict], name: str = "dataset") -> list[Cluster]:
    """Cluster objects from rows shaped like the clusters JSONL (a datasets.Dataset or any iterable of dicts)."""
    return [parse_cluster({k: v for k, v in dict(row).items() if v is not None}, f"{name} row {i}")
            for i, row in enumerate(rows)]


def examples_dataset(clusters, responses: dict[str, str], tokenizer, chat: bool | None = None,
                     members_per_cluster: int = 4, max_prompt_length: int = 256, max_response_length: int = 64,
                     seed: int = 0):
    """A datasets.Dataset of tokenized examples (collate.build_examples) from clusters (a list of Cluster or a
    Dataset of cluster rows) and the response each cluster's members are trained on ({cluster id: text}).
    chat: use the chat template (default: when the tokenizer has one)."""
    from datasets import Dataset

    if not isinstance(clusters, list) or (clusters and not isinstance(clusters[0], Cluster)):
        clusters = clusters_from_dataset(clusters)
    chat = is_chat_model(tokenizer) if chat is None else chat
    examples = build_examples(clusters, responses, tokenizer, chat, members_per_cluster, max_prompt_length,
                              max_response_length, seed)
    return Dataset.from_list([dataclasses.asdict(ex) for ex in examples])

