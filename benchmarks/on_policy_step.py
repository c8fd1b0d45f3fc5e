"""On-policy consistency step vs a BCT step on the same clusters, in one process: time, sampling share, peak memory.

    python benchmarks/on_policy_step.py                                                  # tiny model, seconds
    python benchmarks/on_policy_step.py --model smollm2-135m-instruct --steps 3 --warmup 1   # CPU, LoRA
    python benchmarks/on_policy_step.py --model smollm2-135m-instruct --device cuda --dtype bfloat16 --batch 8

Workload: step_ratio.py's (make_examples): --batch B clusters of 1 anchor + 3 variations, variant rows of --seq-len
tokens whose last --response-len are the anchor's response, random token ids. Arms, each a ConsistencyTrainer
training_step (forward + backward) + optimizer step on that batch, targets from theta0 (LoRA adapters disabled, or a
frozen copy with --full):

  BCT:                  bct_weight 1 (cross-entropy of the fixed response under the 3B variants);
  on-policy (exact):    on_policy_weight 1: --rollouts samples per variant of up to --max-new-tokens tokens (temperature
                        0.7, batched, over the KV cache), then theta0 on anchor prompt + y (no grad) and the model on
                        variant prompt + y (grad), the full-vocabulary reverse KL at each sampled token;
  on-policy (sampled):  the same passes, OPCT's importance-weighted sampled-token estimate;
  with --leash, each arm also with the default leash (0.1 on half the anchor rows, rotating).

Random prompts rarely sample EOS, so every rollout runs to --max-new-tokens (the worst case for the sampling cost; a
real model stops earlier). With --response-len equal to --max-new-tokens (the default) both arms score the same number
of tokens per variant row. Arms step in rounds, shuffled (load falls on all arms); time is the median over the
measured rounds (CPU: this process's CPU time, --clock wall for wall time; CUDA: synchronized wall time); "sampling"
is the part of the step spent in trainer.sample_rollouts; ratios are medians over rounds of arm / BCT. Memory as in
step_ratio.py (CUDA max_memory_allocated; CPU peak RSS above the RSS before the model / before the step).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_ratio as sr  # noqa: E402  (the shared helpers: Memory, build_model, make_examples, Arm, common_args)

from coherentize import trainer as T  # noqa: E402
from coherentize.collate import ConsistencyCollator  # noqa: E402
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer  # noqa: E402

ARMS = [  # name, ConsistencyConfig overrides
    ("BCT", dict(output_weight=0.0, bct_weight=1.0)),
    ("on-policy (exact)", dict(output_weight=0.0, on_policy_weight=1.0, on_policy_estimator="exact")),
    ("on-policy (sampled)", dict(output_weight=0.0, on_policy_weight=1.0, on_policy_estimator="sampled")),
]


class SamplingClock:
    """Wraps trainer.sample_rollouts to add up the time spent in it (wall and process CPU)."""

    def __init__(self, sync):
        self.wall = self.cpu = 0.0
        self.tokens = 0
        self.sync = sync
        self.inner = T.sample_rollouts
        T.sample_rollouts = self

    def __call__(self, *args, **kwargs):
        self.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        ys, lps = self.inner(*args, **kwargs)
        self.sync()
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        self.tokens += sum(len(y) for y in ys)
        return ys, lps

    def take(self) -> tuple[float, float, int]:
        out = (self.wall, self.cpu, self.tokens)
        self.wall = self.cpu = 0.0
        self.tokens = 0
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m-instruct", "qwen2.5-0.5b-arch"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seq-len", type=int, default=96, help="tokens per variant row (prompt + response)")
    p.add_argument("--response-len", type=int, default=32, help="response tokens (what BCT scores)")
    p.add_argument("--suffix-len", type=int, default=16, help="prompt tokens anchor and variants share at their end")
    p.add_argument("--batch", type=int, default=2, help="clusters per step (3 variants each)")
    p.add_argument("--rollouts", type=int, default=1, help="on_policy_rollouts (samples per variant; ctm uses 4)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="on_policy_max_new_tokens (default: --response-len)")
    p.add_argument("--leash", action="store_true", help="also every arm with the default leash (0.1, fraction 0.5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lora", dest="lora", action="store_true", default=True, help="LoRA r=16 on attention (default)")
    g.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning (frozen copy as theta0)")
    p.add_argument("--steps", type=int, default=3, help="measured rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"], help="on CPU: process CPU time or wall time")
    a = p.parse_args(argv)
    a.grad_ckpt = False  # step_ratio.common_args reads it
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    max_new = a.max_new_tokens or a.response_len

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mem = sr.Memory(a.device)
    model, tok = sr.build_model(a.model, a.device, dtype)
    if a.lora:
        from coherentize.recipes.train_job import LoraSettings, apply_lora

        model = apply_lora(model, LoraSettings())
    model.train()
    vocab = model.config.vocab_size
    examples = sr.make_examples(a.batch, a.seq_len, a.response_len, a.suffix_len, 1.0, min(vocab, len(tok)))
    batch = {k: v.to(a.device) for k, v in ConsistencyCollator(tok.pad_token_id)(examples).items()}
    V, Tv = batch["variant_input_ids"].shape
    print(f"# model={a.model} device={a.device} dtype={a.dtype} {'LoRA' if a.lora else 'full'} "
          f"torch threads={torch.get_num_threads()}; {a.batch} clusters -> {V} variant rows x {Tv} tokens "
          f"(response {a.response_len}); on-policy: {a.rollouts} rollout(s)/variant, up to {max_new} tokens, "
          f"temperature 0.7; {a.steps} rounds after {a.warmup} warmup; load avg {os.getloadavg()[0]:.2f}")

    ref_model = None
    if not a.lora:
        import copy

        ref_model = copy.deepcopy(model).requires_grad_(False).eval()
    tmp = tempfile.mkdtemp(prefix="on_policy_step_")
    clock = SamplingClock(sync)
    arms, optimizer = [], None
    for name, over in ARMS:
        for leash in ([0.0, 0.1] if a.leash else [0.0]):
            cfg = ConsistencyConfig(**sr.common_args(a, tmp), leash_weight=leash, leash_fraction=0.5,
                                    on_policy_rollouts=a.rollouts, on_policy_max_new_tokens=max_new, **over)
            trainer = ConsistencyTrainer(model=model, args=cfg, processing_class=tok, ref_model=ref_model)
            if optimizer is None:
                optimizer = trainer.create_optimizer()
            arm = sr.Arm(name + (" +leash@0.5" if leash else ""), trainer, batch, 0.0, optimizer, sync)
            arm.sampling, arm.sampling_cpu, arm.sampled = [], [], []
            arms.append(arm)

    rng = random.Random(0)
    for r in range(a.warmup + a.steps):
        for arm in rng.sample(arms, len(arms)):
            clock.take()
            if r < a.warmup:
                arm.step()
                continue
            arm.measured_step(mem)
            wall, cpu, n = clock.take()
            arm.sampling.append(wall)
            arm.sampling_cpu.append(cpu)
            arm.sampled.append(n)
        print(f"# round {r + 1}/{a.warmup + a.steps} done", file=sys.stderr, flush=True)

    use_wall = cuda or a.clock == "wall"
    times = (lambda x: x.times) if use_wall else (lambda x: x.cpu_times)
    samp = (lambda x: x.sampling) if use_wall else (lambda x: x.sampling_cpu)
    bct = arms[0]
    print(f"\n# time = median {'wall' if use_wall else 'CPU (process)'} time per step; wall ms printed too")
    print(f"{'arm':<32} {'step ms':>9} {'wall ms':>9} {'sampling ms':>12} {'sampled tok':>12} {'peak MiB':>9} "
          f"{'step MiB':>9}   time/BCT  peak/BCT  step-mem/BCT")
    for x in arms:
        t = statistics.median(times(x))
        ratio = statistics.median(ti / bi for ti, bi in zip(times(x), times(bct)))
        print(f"{x.name:<32} {t * 1e3:9.1f} {statistics.median(x.times) * 1e3:9.1f} "
              f"{statistics.median(samp(x)) * 1e3:12.1f} {statistics.median(x.sampled):12.0f} "
              f"{max(x.peaks) / 2**20:9.0f} {max(x.step_mems) / 2**20:9.0f}   x{ratio:8.2f}  "
              f"x{max(x.peaks) / max(bct.peaks):7.2f}  x{max(x.step_mems) / max(bct.step_mems):11.2f}")
    print(f"# load avg at the end {os.getloadavg()[0]:.2f}; step times (ms): "
          + "; ".join(f"{x.name}: " + ",".join(f"{t * 1e3:.0f}" for t in times(x)) for x in arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
