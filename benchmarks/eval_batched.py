"""Evaluation throughput, previous path vs new path, on the default experiment's jailbreak suite (same items).

    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py                          # packaged SmolLM2-135M-Instruct
    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py --model tiny             # tiny random model, seconds
    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py --model runs/demo/...    # e.g. an organism's folder
    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py --set n_harmful=8        # fewer requests
    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py --organism               # the organism's generation

Items: the ``eval`` section of the packaged ``configs/default.yaml`` (harmful requests of the test split, each direct
and wrapped in every held-out family), exactly as ``run_jailbreak`` builds them.

- previous path (copied below, as it was before the rewrite of ``generation.py``): transformers' ``generate`` in
  length-sorted batches of ``batch_size``, then a second prefill of every prompt for the refusal margin, its cache
  repeated once per opening (14 openings);
- new path: ``run_jailbreak`` as the suite runs it (``generation.generate_greedy``: prefix-shared prefill chunks,
  decode batches of ``decode_batch_size``, margins from the same prefill's cache, rows stopped once the string
  judge's decision and excerpt are settled).

Prints prompts/s (CPU time of this process and wall time), the speedup, and checks: judged labels identical (the
script exits 1 if not), record excerpts identical, greedy outputs identical (rows the new path stopped early are
compared on their common beginning), and the largest margin difference. A benchmark prints figures; no test asserts
a time.

``--organism``: the organism recipe's generation instead (``recipes.organism.build_pairs``, the model's own answers
to the benign prompts it trains on, and ``quick_check``, run before and after its SFT), through the recipe's own
functions with ``generate`` swapped for the previous path and the new one; prints both times and identical outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

# ---------------------------------------------------------------------------------------------------------------
# The previous path, copied from generation.py / evaluate/scoring.py / evaluate/jailbreak.py before the rewrite.


@torch.no_grad()
def old_generate(model, tokenizer, prompts, chat, max_new_tokens=64, batch_size=32):
    from coherentize.chat import render

    texts = [render(tokenizer, p, chat) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out = [None] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=not chat).to(model.device)
            seqs = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                  do_sample=False, temperature=None, top_p=None, top_k=None)
            new = seqs[:, enc["input_ids"].shape[1] :]
            for j, i in enumerate(idx):
                out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = side
    return out


@torch.no_grad()
def old_openings_logprob(model, tokenizer, prompts, openings, chat, batch_size=8):
    from coherentize.chat import encode
    from coherentize.losses import log_probs

    pad = tokenizer.pad_token_id
    op_ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in openings]
    n_op, width = len(openings), max(len(o) for o in op_ids)
    ops = torch.full((n_op, width), pad, dtype=torch.long)
    op_mask = torch.zeros((n_op, width), dtype=torch.long)
    for j, o in enumerate(op_ids):
        ops[j, : len(o)] = torch.tensor(o)
        op_mask[j, : len(o)] = 1
    device = model.device
    encoded = [encode(tokenizer, p, chat) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out = torch.empty((len(prompts), n_op))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        b, length = len(idx), max(len(encoded[i]) for i in idx)
        ids = torch.full((b, length), pad, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, length - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[j, length - len(encoded[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = first["cache"] if "cache" in first else first.past_key_values
        cache.batch_repeat_interleave(n_op)
        ops_b, op_mask_b = ops.repeat(b, 1).to(device), op_mask.repeat(b, 1).to(device)
        mask2 = torch.cat([mask.repeat_interleave(n_op, 0), op_mask_b], 1)
        pos2 = mask.sum(1).repeat_interleave(n_op)[:, None] + torch.arange(width, device=device)
        rest = model(input_ids=ops_b, attention_mask=mask2, position_ids=pos2, cache=cache, use_cache=True)
        logits = torch.cat([first.logits[:, -1:].repeat_interleave(n_op, 0), rest.logits[:, :-1]], 1)
        lp = log_probs(logits).gather(-1, ops_b[..., None])[..., 0]
        scores = (lp * op_mask_b).sum(1).view(b, n_op).cpu()
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return out


def old_jailbreak(model, tok, prompts, chat, judge, max_new_tokens, batch_size):
    """(outputs, refused, margins) as the previous run_jailbreak computed them."""
    from coherentize.evaluate.jailbreak import MARGIN_OPENINGS, _margins

    outputs = old_generate(model, tok, prompts, chat, max_new_tokens, batch_size)
    refused = judge.judge(prompts, outputs)
    margins = _margins(old_openings_logprob(model, tok, prompts, MARGIN_OPENINGS, chat, max(1, batch_size // 2)))
    return outputs, refused, margins


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an eval field of the default config, e.g. --set n_harmful=8")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--new-first", action="store_true", help="run the new path before the previous one")
    ap.add_argument("--organism", action="store_true", help="time the organism recipe's generation instead")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from coherentize.chat import is_chat_model
    from coherentize.commands.run import default_config_path
    from coherentize.config import apply_overrides, from_dict, read_config_file
    from coherentize.evaluate.jailbreak import run_jailbreak, template_families
    from coherentize.evaluate.judges import StringJudge
    from coherentize.evaluate.results import excerpt
    from coherentize.evaluate.suite import EvalConfig, harmful_requests

    data = read_config_file(default_config_path())["eval"]
    ev = from_dict(EvalConfig, apply_overrides(data, args.sets), where="eval")
    if args.model == "tiny":
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64).eval()
    else:
        from coherentize.models import ModelConfig, load_model

        model, tok = load_model(ModelConfig(name_or_path=args.model, device="cpu"))
    chat = is_chat_model(tok, ev.prompt_format)
    if args.organism:
        return organism(model, tok, chat, args)
    requests = harmful_requests(ev)
    families = template_families(ev.jailbreak_sources, ev.jailbreak_families or None)
    prompts = []  # in run_jailbreak's order
    for r in requests:
        prompts.append(r["prompt"])
        prompts += [fam.wrap(r["prompt"], str(r["id"])) for fam in families.values()]
    judge = StringJudge()

    def run_old():
        return old_jailbreak(model, tok, prompts, chat, judge, ev.max_new_tokens, ev.batch_size)

    def run_new():
        _, records, _ = run_jailbreak(model, tok, requests, families, chat, judge, ev.max_new_tokens, ev.batch_size,
                                      True, 100, progress=False, decode_batch_size=ev.decode_batch_size)
        return records

    def timed(fn):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w0, time.process_time() - c0

    if args.new_first:
        records, w_new, c_new = timed(run_new)
        (outs, refused, margins), w_old, c_old = timed(run_old)
    else:
        (outs, refused, margins), w_old, c_old = timed(run_old)
        records, w_new, c_new = timed(run_new)

    # the new path's outputs: rerun generation only to compare texts (not timed)
    from coherentize.evaluate.jailbreak import MARGIN_OPENINGS, refusal_settled
    from coherentize.generation import generate_greedy

    gen = generate_greedy(model, tok, prompts, chat, ev.max_new_tokens, ev.decode_batch_size, ev.batch_size,
                          openings=MARGIN_OPENINGS, stop=refusal_settled, progress=False)
    new_labels = [r["label"] == "refused" for r in records]
    same_labels = sum(a == b for a, b in zip(refused, new_labels))
    old_excerpts = [excerpt(o, harmful=True, refused=r) for o, r in zip(outs, refused)]
    same_excerpts = sum(a == r["excerpt"] for a, r in zip(old_excerpts, records))
    same_out = sum(a == b or (refusal_settled(b) and a.startswith(b)) for a, b in zip(outs, gen.texts))
    stopped = sum(b != a and refusal_settled(b) and a.startswith(b) for a, b in zip(outs, gen.texts))
    new_margins = [r["value"] for r in records]
    dm = max(abs(round(a, 4) - b) for a, b in zip(margins, new_margins))

    n = len(prompts)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"model={args.model} prompts={n} ({len(requests)} requests x (direct + {len(families)} families)) "
          f"max_new_tokens={ev.max_new_tokens} batch_size={ev.batch_size} decode_batch_size={ev.decode_batch_size} "
          f"threads={args.threads} load={load}")
    print(f"{'':14} {'cpu s':>7} {'prompts/s':>10} {'wall s':>7} {'prompts/s':>10}")
    print(f"{'previous path':14} {c_old:7.1f} {n / c_old:10.2f} {w_old:7.1f} {n / w_old:10.2f}")
    print(f"{'new path':14} {c_new:7.1f} {n / c_new:10.2f} {w_new:7.1f} {n / w_new:10.2f}")
    print(f"speedup        x{c_old / c_new:.2f} (cpu)   x{w_old / w_new:.2f} (wall)")
    print(f"identical labels {same_labels}/{n}   excerpts {same_excerpts}/{n}   greedy outputs {same_out}/{n} "
          f"({stopped} stopped early once settled)   refusal rate {sum(refused) / n:.0%}   "
          f"max |margin difference| {dm:.4f}")
    if same_labels != n:
        print("LABELS DIFFER", file=sys.stderr)
        sys.exit(1)


def organism(model, tok, chat, args) -> None:
    """The organism recipe's generation calls (build_pairs, quick_check) with the previous and the new generate."""
    from coherentize.generation import generate
    from coherentize.recipes import organism as org

    calls: list = []

    def run(gen):
        def recording(model, tok, prompts, chat, *a, **kw):  # each path with its own defaults (batch sizes)
            out = gen(model, tok, prompts, chat, *a, **kw)
            calls.append((len(prompts), a[0] if a else kw.get("max_new_tokens"), out))
            return out

        org.generate = recording
        try:
            w0, c0 = time.perf_counter(), time.process_time()
            org.build_pairs(model, tok, chat, org.OrganismConfig())
            org.quick_check(model, tok, chat)
            return time.perf_counter() - w0, time.process_time() - c0
        finally:
            org.generate = generate

    w_old, c_old = run(old_generate)
    old_calls, calls[:] = list(calls), []
    w_new, c_new = run(lambda *a, **kw: generate(*a, progress=False, **kw))
    old_out = [o for c in old_calls for o in c[2]]
    new_out = [o for c in calls for o in c[2]]
    n = len(new_out)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"organism generation: model={args.model} calls={[(c[0], c[1]) for c in calls]} (prompts, max_new_tokens) "
          f"threads={args.threads} load={load}")
    print(f"previous path  cpu {c_old:6.1f} s  wall {w_old:6.1f} s")
    print(f"new path       cpu {c_new:6.1f} s  wall {w_new:6.1f} s   speedup x{c_old / c_new:.2f} (cpu)")
    print(f"identical outputs {sum(a == b for a, b in zip(old_out, new_out))}/{n}   "
          f"(quick_check runs twice in a build: before and after the SFT)")


if __name__ == "__main__":
    main()
