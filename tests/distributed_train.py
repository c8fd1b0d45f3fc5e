"""A few ConsistencyTrainer steps on a tiny model, single process or under `accelerate launch` (used by
tests/test_distributed.py).

    python tests/distributed_train.py OUT --batch 4                                   # one process, batch 4
    accelerate launch --cpu --num_processes 2 tests/distributed_train.py OUT --batch 2  # two processes, 2 each

Every rank writes OUT/rank{r}.json (the clusters it saw, its final trainable weights, the logged losses); the
global batch of one step is the same examples in both commands above (sequential sampler, sharded by accelerate).
All examples have the same shape statistics (3 variants, equal response and shared-suffix lengths), so a per-rank mean
averaged over ranks equals the single-process mean and the two runs must agree up to float reduction order.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from coherentize.collate import ConsistencyCollator, Example  # noqa: E402
from coherentize.testing import tiny_model, tiny_tokenizer  # noqa: E402
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer  # noqa: E402


def examples(n: int, vocab: int, variant_len: tuple[int, int], seed: int = 0) -> list[Example]:
    """n clusters: prompts of varying length (so rows are padded), 3 variants, response 6, shared suffix 4.

    variant_len bounds the variants' own prefix: (3, 12) keeps the single process's anchors and variants close in
    length, (12, 24) makes the single process cut them into two training passes (trainer.forward_rows); several
    processes always use one pass, so the LoRA test also checks that the two ways give the same training."""
    rng = random.Random(seed)
    rand = lambda k: [rng.randrange(10, vocab) for _ in range(k)]  # noqa: E731
    out = []
    for i in range(n):
        tail = rand(4)
        anchor = [rng.randrange(3, 9)] + rand(rng.randrange(2, 6)) + tail  # distinct first token: suffix stays 4
        variants = [[9] + rand(rng.randrange(*variant_len)) + tail for _ in range(3)]
        out.append(Example(f"c{i}", anchor, variants, rand(6)))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--batch", type=int, required=True, help="per-process batch (clusters)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--full", action="store_true",
                   help="full fine-tuning (frozen copy) instead of LoRA; also variants of about the anchors' length")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0, layers=2, hidden=32)
    if not a.full:
        from coherentize.recipes.train_job import LoraSettings, apply_lora

        torch.manual_seed(0)
        model = apply_lora(model, LoraSettings(r=4, alpha=8))
        # LoRA B starts at zero, so the first step moves only B; seed B too so every adapter weight moves from step 1.
        for n, w in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(w, std=0.02)
    before = {n: w.detach().flatten().tolist() for n, w in model.named_parameters() if w.requires_grad}
    data = examples(24, len(tok), (3, 12) if a.full else (12, 24))
    collate = ConsistencyCollator(tok.pad_token_id)
    seen: list[str] = []  # the cluster ids this rank trains on (its collator sees only its shard)

    def collate_and_record(batch):
        seen.extend(ex.cluster_id for ex in batch)
        return collate(batch)

    cfg = ConsistencyConfig(
        output_dir=str(out / "trainer"), per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=1e-3,
        optim="adamw_torch", lr_scheduler_type="constant", train_sampling_strategy="sequential", dataloader_num_workers=0,
        output_weight=1.0, output_divergence="forward_kl", act_weight=1.0, act_layers=[1], leash_weight=0.1,
        leash_fraction=1.0,  # every anchor row: a rotating share picks different rows from a batch split over ranks
        seed=0, logging_steps=1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
    )
    trainer = ConsistencyTrainer(model=model, args=cfg, train_dataset=data, data_collator=collate_and_record,
                                 processing_class=tok)
    trainer.train()
    rank = trainer.args.process_index
    full = lambda w: w.full_tensor() if hasattr(w, "full_tensor") else w  # noqa: E731  (FSDP2 shards are DTensors)
    weights = {n: full(w.detach()).flatten().tolist() for n, w in trainer.model.named_parameters() if w.requires_grad}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # The dataloader collates one batch ahead: the first steps x batch clusters are the trained ones.
    record = {"rank": rank, "world_size": trainer.args.world_size, "fsdp": trainer.is_fsdp_enabled,
              "reference": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None, "trained": seen[: a.steps * a.batch],
              "losses": losses, "weights": weights, "weights_before": before}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
