"""Decoding into preallocated cache buffers vs transformers' DynamicLayer, on the same prompts, side by side.

    OMP_NUM_THREADS=2 python benchmarks/decode_cache.py --threads 2                  # default config, packaged model
    OMP_NUM_THREADS=2 python benchmarks/decode_cache.py --threads 2 --config configs/paraphrase_only.yaml \\
        --model ORGANISM_DIR                                                         # that config's jailbreak suite

The prompts are the jailbreak suite's (every request direct and in its families, the config's ``eval`` section),
generated greedily with the refusal margins and the settled-row stop rule, as ``run_jailbreak`` runs them. Each
path runs ``--reps`` times, alternating (noise on a shared machine hits both). Prints wall seconds per run, the
medians, their ratio, and how many outputs and margins are identical (it exits 1 when an output differs). A
DynamicLayer concatenates each decode step's key and value onto the layer's whole cache, a copy of every layer's
cache per step; the preallocated layer writes them in place (``generation._preallocate``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


class _Captured(Exception):
    pass


def jailbreak_prompts(model, tok, ev):
    """The (prompts, chat, args, kwargs) run_jailbreak passes to generate_greedy (captured, not run)."""
    from coherentize import generation
    from coherentize.evaluate.suite import run_suite

    seen = {}
    real = generation.generate_greedy

    def spy(model, tokenizer, prompts, chat, *a, **k):
        seen["call"] = (prompts, chat, a, k)
        raise _Captured

    generation.generate_greedy = spy
    try:
        ev.suites = ["jailbreak"]
        run_suite(model, tok, ev, quiet=True)
    except _Captured:
        pass
    finally:
        generation.generate_greedy = real
    return seen["call"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--config", help="take the eval section from this experiment config (default: the packaged one)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from coherentize import generation
    from coherentize.commands.run import default_config_path
    from coherentize.config import from_dict, read_config_file
    from coherentize.evaluate.suite import EvalConfig
    from coherentize.models import ModelConfig, load_model

    ev = from_dict(EvalConfig, read_config_file(args.config or default_config_path())["eval"], where="eval")
    if args.model == "tiny":  # a tiny random model: checks the script in seconds
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64).eval()
    else:
        model, tok = load_model(ModelConfig(name_or_path=args.model, device="cpu"))
    prompts, chat, a, k = jailbreak_prompts(model, tok, ev)
    k = {**k, "progress": False}
    times, out = {False: [], True: []}, {}
    for rep in range(args.reps):
        for flag in (False, True):
            generation.PREALLOCATE = flag
            t = time.perf_counter()
            out[flag] = generation.generate_greedy(model, tok, prompts, chat, *a, **k)
            times[flag].append(time.perf_counter() - t)
            print(f"rep {rep} {'preallocated' if flag else 'DynamicLayer'}: {times[flag][-1]:.1f} s", flush=True)
    old, new = out[False], out[True]
    same = sum(x == y for x, y in zip(old.texts, new.texts))
    margins = "n/a" if old.openings is None else f"max |difference| {float((old.openings - new.openings).abs().max()):.2g}"
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    m_old, m_new = statistics.median(times[False]), statistics.median(times[True])
    print(f"model={args.model} threads={args.threads} prompts={len(prompts)} max_new_tokens={a[0] if a else '?'} "
          f"load={load}")
    print(f"DynamicLayer  median {m_old:6.1f} s  {len(prompts) / m_old:5.2f} prompts/s")
    print(f"preallocated  median {m_new:6.1f} s  {len(prompts) / m_new:5.2f} prompts/s  ({m_old / m_new:.2f}x)")
    print(f"identical outputs {same}/{len(prompts)}; opening log-probs: {margins}")
    sys.exit(0 if same == len(prompts) else 1)


if __name__ == "__main__":
    main()
