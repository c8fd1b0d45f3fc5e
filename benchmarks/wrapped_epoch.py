"""An epoch of consistency training on long wrapped prompts: where a step goes, and its batching before and after.

    python benchmarks/wrapped_epoch.py                                                       # tiny model, seconds
    python benchmarks/wrapped_epoch.py --model smollm2-135m-instruct                         # CPU, LoRA, minutes
    python benchmarks/wrapped_epoch.py --model qwen2.5-coder-0.5b-instruct --arms BCT --max-steps 3   # a step's cost
    python benchmarks/wrapped_epoch.py --model qwen2.5-coder-0.5b-instruct --tokens-only     # tokens run, no model

Workload: the shape of bct_jailbreak.yaml's training data, in benign text. The shipped benign train prompts: the
first --benign of them varied by the wrapper and register families (short prompts), and --wrapped of them each
wrapped in the 7 training jailbreak families of bct_jailbreak.yaml (long prompts, up to max_prompt_length = 256
tokens); every cluster shares one fixed response of --response-len tokens; examples as build_examples makes them
(members_per_cluster 4); --batch examples a step; LoRA r=16 on attention, as train_job applies it.

Arms, per objective (BCT: bct_weight 1; output-KL+ACT: forward KL and ACT at the middle layer; no leash, as the BCT
configs train; targets from theta0, the model with adapters disabled), --compare of:
  before:  the code before issue 21's training items: train_sampling_strategy random, every pass over all its rows at
      once (trainer.ROW_SPLIT_LIMIT set to 1.0: never cut) and, for BCT, the theta0 pass over the anchors that
      run_passes ran although BCT reads no target (run here explicitly, as that code ran it);
  grouped: as before but with group_by_length batches and no unused theta0 pass;
  after:   the defaults (group_by_length batches; theta0 only where its outputs are used; a pass over rows of very
      different lengths cut in two, trainer.forward_rows).
Each arm runs the trainer's own data loader for one epoch (or its first --max-steps batches): training_step
(forward + backward) and the optimizer step per batch, under the accelerator's autocast (--precision).

--tokens-only: no model runs; the tokens each arm's passes would run over the epoch (the variant rows, and theta0's
anchor rows where that arm runs them), from the tokenizer alone: grouped and after in the trainer's own batches
(LengthGroupedBatches, seed 0), before in a random order of seed 0 (not the permutation of the trainer's sampler).

Printed per arm: CPU time of the epoch (this process's; wall time beside it), split into theta0 forwards (no grad),
training forwards and the rest (backward, losses, optimizer); tokens the passes ran and their padding share; steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import torch

from coherentize import trainer as T
from coherentize.collate import ConsistencyCollator, build_examples
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer

TRAINING_FAMILIES = ["roleplay_actor", "hypothetical_world", "opening_sure", "no_apology_rules", "prefix_injection",
                     "AIM", "hide_among_benign"]  # configs/bct_jailbreak.yaml's variations.jailbreak_families
RESPONSE = ("I'm sorry, but I can't help with that request. If you have another question, for example about a "
            "safe topic, I would be glad to help with it and to explain the reasons in more detail.")
OBJECTIVES = {
    "BCT": dict(output_weight=0.0, bct_weight=1.0),
    "output-KL+ACT": dict(output_weight=1.0, output_divergence="forward_kl", act_weight=1.0),
}


def wrapped_examples(tok, benign: int, wrapped: int, response_len: int, chat: bool = True):
    """Training examples of short (wrapper/register) and long (jailbreak-family) prompts; see the module docstring."""
    from coherentize.variations import families_by_name, load_prompt_set
    from coherentize.variations.build import build_clusters, wrap_requests
    from coherentize.variations.templates import template_families

    items = load_prompt_set("benign", "train")
    clusters = build_clusters(items[:benign], families_by_name(["wrapper", "register"]), seed=0)
    fams = template_families(["project", "easyjailbreak"], TRAINING_FAMILIES)
    clusters += wrap_requests([{"id": it.id, "prompt": it.prompt} for it in items[:wrapped]], fams, prefix="wrap-")
    response = tok.decode(tok(RESPONSE * 4, add_special_tokens=False)["input_ids"][:response_len])
    return build_examples(clusters, {c.id: response for c in clusters}, tok, chat, 4, 256, response_len, seed=0)


class PassClock:
    """Wraps trainer.forward_tail: CPU time and tokens of the passes without grad (theta0 here) and with grad."""

    def __init__(self):
        self.cpu = {"theta0": 0.0, "train": 0.0}
        self.tokens = {"theta0": [0, 0], "train": [0, 0]}  # [real, with padding]
        self.inner = T.forward_tail

    def __call__(self, model, ids, mask, *args, **kw):
        kind = "train" if torch.is_grad_enabled() else "theta0"
        c0 = time.process_time()
        out = self.inner(model, ids, mask, *args, **kw)
        self.cpu[kind] += time.process_time() - c0
        self.tokens[kind][0] += int(mask.sum())
        self.tokens[kind][1] += mask.numel()
        return out


def run_arm(name, model, tok, examples, a, overrides, old_reference_pass, split_limit, clock: PassClock, out_dir):
    from coherentize.precision import with_training_precision

    args = ConsistencyConfig(output_dir=out_dir, per_device_train_batch_size=a.batch, max_steps=10**6,
                             learning_rate=1e-5, seed=0, data_seed=0, use_cpu=True, report_to="none",
                             logging_strategy="no", save_strategy="no", leash_weight=0.0, **overrides)
    args = with_training_precision(args, a.precision, "cpu")
    trainer = ConsistencyTrainer(model=model, args=args, train_dataset=examples,
                                 data_collator=ConsistencyCollator(tok.pad_token_id), processing_class=tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    if old_reference_pass:  # the theta0 anchor pass the code before ran for BCT (its targets were never read)
        inner = trainer.compute_loss

        def compute_loss(model, inputs, *rest, **kw):
            L = int(inputs["anchor_response_len"].max())
            anchors = [inputs[f"anchor_{k}"] for k in ("input_ids", "attention_mask", "position_ids")]
            with trainer.original_model(model) as original, torch.no_grad():
                T.forward_tail(original, *anchors, L, [], 0)
            return inner(model, inputs, *rest, **kw)

        trainer.compute_loss = compute_loss
    clock.__init__()
    T.forward_tail, limit, T.ROW_SPLIT_LIMIT = clock, T.ROW_SPLIT_LIMIT, split_limit
    steps, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    try:
        for batch in trainer.get_train_dataloader():
            with trainer.accelerator.autocast():
                trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            steps += 1
            if a.max_steps and steps >= a.max_steps:
                break
    finally:
        T.forward_tail, T.ROW_SPLIT_LIMIT = clock.inner, limit
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return dict(name=name, steps=steps, cpu=cpu, wall=wall, theta0=clock.cpu["theta0"], fwd=clock.cpu["train"],
                tokens=dict(clock.tokens))


def epoch_tokens(examples, a, compare) -> None:
    """--tokens-only: tokens the passes of each arm run over one epoch, with padding, and the tokens of the rows."""
    import random

    from coherentize.collate import LengthGroupedBatches, padded_length

    collate = ConsistencyCollator(0)
    grouped = list(LengthGroupedBatches([padded_length(ex) for ex in examples], a.batch, seed=0))
    shuffled = list(range(len(examples)))
    random.Random(0).shuffle(shuffled)
    print(f"\n{'arm':<10} {'variant tok':>11} {'padding':>8} {'theta0 tok (BCT)':>16} {'total (BCT)':>11}")
    for when in compare:
        order = shuffled if when == "before" else grouped
        real = run = theta0 = 0
        for s in range(0, len(order), a.batch):
            b = collate([examples[i] for i in order[s : s + a.batch]])
            lengths = sorted(b["variant_attention_mask"].sum(-1).tolist())
            c = T.row_split(lengths) if when == "after" else 0
            real += sum(lengths)
            run += c * lengths[c - 1] + (len(lengths) - c) * lengths[-1] if c else len(lengths) * lengths[-1]
            theta0 += b["anchor_attention_mask"].numel() if when == "before" else 0
        print(f"{when:<10} {run:11d} {1 - real / run:8.1%} {theta0:16d} {run + theta0:11d}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, or a model name load_model knows (smollm2-135m-instruct)")
    p.add_argument("--precision", default=None, help="float32 or bf16-mixed (default: what model.precision auto "
                                                      "resolves to on this CPU; float32 for tiny)")
    p.add_argument("--benign", type=int, default=16, help="prompts varied by wrapper and register")
    p.add_argument("--wrapped", type=int, default=12, help="prompts wrapped in the 7 training jailbreak families")
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=4, help="examples per step (bct_jailbreak.yaml: 4)")
    p.add_argument("--arms", default="BCT,output-KL+ACT", help="objectives, comma-separated")
    p.add_argument("--max-steps", type=int, default=0, help="steps per arm (0: one epoch)")
    p.add_argument("--compare", default="before,after", help="arms per objective: before, grouped, after")
    p.add_argument("--tokens-only", action="store_true", help="print the tokens each arm runs; no model runs")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from coherentize.recipes.train_job import LoraSettings, apply_lora

    if a.tokens_only:
        from transformers import AutoTokenizer

        from coherentize.models import packaged_model_path
        from coherentize.testing import tiny_tokenizer

        tok = tiny_tokenizer() if a.model == "tiny" else AutoTokenizer.from_pretrained(packaged_model_path(a.model))
        examples = wrapped_examples(tok, a.benign, a.wrapped, a.response_len)
        print(f"# {a.model} tokenizer: {len(examples)} examples ({a.benign} benign clusters x wrapper/register, "
              f"{a.wrapped} x {len(TRAINING_FAMILIES)} jailbreak families), batch {a.batch}")
        epoch_tokens(examples, a, ["before", "grouped", "after"])
        return 0
    if a.model == "tiny":
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64)
        a.precision = a.precision or "float32"
    else:
        from coherentize.models import ModelConfig, load_model, resolved_precision

        cfg = ModelConfig(name_or_path=a.model, device="cpu", precision=a.precision or "auto")
        a.precision = resolved_precision(cfg)
        model, tok = load_model(cfg, for_training=True)
    model = apply_lora(model, LoraSettings())
    model.train()
    examples = wrapped_examples(tok, a.benign, a.wrapped, a.response_len)
    lengths = sorted(max(len(v) for v in ex.variant_ids) + len(ex.response_ids) for ex in examples)
    print(f"# model={a.model} precision={a.precision} LoRA r=16 torch threads={torch.get_num_threads()}; "
          f"{len(examples)} examples ({a.benign} benign clusters x wrapper/register, {a.wrapped} x "
          f"{len(TRAINING_FAMILIES)} jailbreak families), batch {a.batch}; longest variant row per example: min "
          f"{lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]} tokens; "
          f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    clock, results = PassClock(), []
    with tempfile.TemporaryDirectory(prefix="wrapped_epoch_") as tmp:
        for objective in a.arms.split(","):
            over = OBJECTIVES[objective]
            for when in a.compare.split(","):
                sampling = {"train_sampling_strategy": "random"} if when == "before" else {}
                old_pass = when == "before" and over.get("output_weight", 0) == 0 and not over.get("act_weight")
                split_limit = T.ROW_SPLIT_LIMIT if when == "after" else 1.0
                r = run_arm(f"{objective} {when}", model, tok, examples, a, {**over, **sampling}, old_pass,
                            split_limit, clock, tmp)
                results.append(r)
                print(f"# {r['name']}: {r['steps']} steps, {r['cpu']:.1f} s CPU", file=sys.stderr, flush=True)
    print(f"\n{'arm':<24} {'steps':>5} {'CPU s':>8} {'wall s':>8} {'s/step':>7} {'theta0 s':>9} {'train fwd s':>11} "
          f"{'rest s':>7} {'train tok':>10} {'padding':>8} {'theta0 tok':>10} {'padding':>8}")
    pad = lambda real, run: f"{1 - real / run:.1%}" if run else "-"  # noqa: E731
    for r in results:
        (tr, tp), (rr, rp) = r["tokens"]["train"], r["tokens"]["theta0"]
        print(f"{r['name']:<24} {r['steps']:5d} {r['cpu']:8.1f} {r['wall']:8.1f} {r['cpu'] / r['steps']:7.2f} "
              f"{r['theta0']:9.1f} {r['fwd']:11.1f} {r['cpu'] - r['theta0'] - r['fwd']:7.1f} {tp:10d} "
              f"{pad(tr, tp):>8} {rp:10d} {pad(rr, rp):>8}")
    n = len(a.compare.split(","))
    for objective in range(0, len(results), n):
        before = results[objective]
        for after in results[objective + 1 : objective + n]:
            print(f"# {after['name']} / {before['name']}: CPU time x{after['cpu'] / before['cpu']:.2f} "
                  f"(speed-up x{before['cpu'] / after['cpu']:.2f})")
    print(f"# load avg at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
