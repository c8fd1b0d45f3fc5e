"""The output head's input made contiguous (models.contiguous_head_input), old vs new in one run: greedy generation
with the weights frozen (as in every evaluation of a trained LoRA arm, whose base does not require grad).

    OMP_NUM_THREADS=2 python benchmarks/head_fold.py                                  # Qwen2.5-Coder-0.5B-Instruct
    OMP_NUM_THREADS=2 python benchmarks/head_fold.py --model smollm2-135m-instruct --rows 16

Old: the head sees transformers' strided ``hidden[:, -1:, :]`` view; with a weight that does not require grad,
torch's matmul then multiplies batch by batch over an expanded copy of the whole head weight, one copy per row, at
every prefill. New: the hook copies the small input instead. Prints wall seconds of each, the ratio, and whether the
generated tokens are identical (they must be: the same products in the same order). A benchmark prints figures; no
test asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rows", type=int, default=16, help="prompts generated at once")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from coherentize.models import ModelConfig, load_model, resolved_precision

    cfg = ModelConfig(name_or_path=args.model, device="cpu")
    model, tok = load_model(cfg)
    model.requires_grad_(False)  # as a LoRA arm's frozen base
    head = model.get_output_embeddings()
    prompts = [f"In two sentences, explain idea number {i} of good kitchen hygiene." for i in range(args.rows)]
    enc = tok(prompts, return_tensors="pt", padding=True)

    def run() -> tuple[float, torch.Tensor]:
        best, out = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False)
            best = min(best, time.perf_counter() - t)
        return best, out

    run()  # warm-up
    hooks = dict(head._forward_pre_hooks)
    head._forward_pre_hooks.clear()  # old: no hook
    old_s, old_out = run()
    head._forward_pre_hooks.update(hooks)  # new
    new_s, new_out = run()
    print(f"model={args.model} precision={resolved_precision(cfg)} threads={args.threads} rows={args.rows} "
          f"new_tokens={args.new_tokens} head={tuple(head.weight.shape)} (best of {args.repeats})")
    print(f"old (strided head input)     {old_s:7.2f} s")
    print(f"new (contiguous head input)  {new_s:7.2f} s   x{old_s / new_s:.2f}")
    print(f"generated tokens identical: {torch.equal(old_out, new_out)}")


if __name__ == "__main__":
    main()
