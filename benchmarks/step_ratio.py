"""Consistency step vs plain SFT step on the same trained sequences, in one process: time, tokens/s, peak memory, ratios.

    python benchmarks/step_ratio.py --model smollm2-135m-instruct --seq-len 256 --batch 2          # CPU, LoRA
    python benchmarks/step_ratio.py --model tiny --steps 2 --warmup 1                               # seconds
    python benchmarks/step_ratio.py --model qwen2.5-0.5b-arch --device cuda --dtype bfloat16 \\
        --seq-len 512 --batch 16 --full --peak-tflops 989                                           # GPU, MFU

Workload. --batch B clusters of 1 anchor + 3 variations share one response of --response-len tokens. Every variant row
is --seq-len tokens long (no padding); anchors are --anchor-frac of the variant prompt length; anchor and variants share
their last --suffix-len prompt tokens (the chat template's tail). Tokens are random ids: throughput does not depend on
them. The trained sequences are the 3B variant rows in every arm:

  consistency arms: ConsistencyTrainer.training_step (forward + backward) + optimizer step, one arm per objective
      (output forward-KL, BCT, ACT at the middle layer, output-KL + ACT), each without the leash and with it (0.1)
      at every --leash-fractions value: "+leash" is leash_fraction 1.0 (every anchor row in the training pass, the
      behaviour before leash_fraction), "+leash@0.5" the default (half the anchor rows, rotating);
      the anchors under theta0 (adapters disabled / frozen copy) are the targets;
  SFT arms: the 3B variant rows through transformers.Trainer (labels = the response, prompt masked with -100) and,
      when trl is installed, trl.SFTTrainer on the same rows (its collator, completion-only loss).

Figures. Arms step in rounds (each arm once per round, shuffled order) so that load from other processes falls on all
of them. Step time: median over the --steps measured rounds, after --warmup rounds; on CPU it is this process's CPU
time by default (--clock wall for wall time; run with OMP_NUM_THREADS=1 on a shared machine), on CUDA wall time.
Ratios: median over rounds of (arm step / SFT step in the same round). tokens/s: trained tokens (3B x seq_len) / time.
Memory: on CUDA, torch.cuda.max_memory_allocated over the measured steps (weights, gradients, optimizer state, frozen
copy, activations). On CPU, peak RSS over the measured steps (VmHWM, reset through /proc/self/clear_refs; glibc is told
to mmap every allocation over 64 KiB so freed tensors leave the RSS): "peak" is above the RSS the process had before
the model was built, "step" is above the RSS just before the measured steps (activations and temporaries only).
Each arm builds its own trainer and optimizer and frees them before the next arm.

FLOPs executed by one step (for MFU, CUDA only, against --peak-tflops; 989 = H100/H200 SXM dense bf16):
  N   = weights of the transformer blocks' matmuls (embeddings, norms and LoRA adapters not counted)
  N_h = vocab x hidden (the LM head), counted only at positions where logits are computed
  A   = 4 x n_layers x T x d_attn per token of a forward pass (QK^T and AV, 2 FLOPs per multiply-add, over the
        full row length T: attention with a padding mask runs the full square, so no causal halving; PaLM's count)
  a pass without grad:     2N per token + 2N_h per logit position + A per token
  a pass with grad:        c(N per token + N_h per logit position) + 3A per token, c = 6 for full fine-tuning,
                           c = 4 with LoRA (the backward computes input gradients but no base-weight gradients;
                           attention has no weights, its backward is 2A either way)
  consistency step = (no-grad pass over the B anchors, L+1 logit positions per row)
                   + (grad pass over the 3B variants [+ the leash's share of the B anchors], L+1 logit positions)
  SFT step         = grad pass over the 3B variants with logits at every position (transformers Trainer and TRL
                     both compute the full-vocabulary LM head over the whole row).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gc
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch

from coherentize.collate import ConsistencyCollator, Example
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer

ARMS = [  # name, ConsistencyConfig overrides
    ("output-KL", dict(output_weight=1.0, output_divergence="forward_kl")),
    ("BCT", dict(output_weight=0.0, bct_weight=1.0)),
    ("ACT", dict(output_weight=0.0, act_weight=1.0)),
    ("output-KL+ACT", dict(output_weight=1.0, output_divergence="forward_kl", act_weight=1.0)),
]

QWEN25_05B = dict(  # the Qwen2.5-0.5B architecture (494M parameters, tied embeddings)
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
)


# ---- memory ------------------------------------------------------------------------------------------------------

def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, so large freed blocks go back to the OS
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
        return libc
    except (OSError, AttributeError):
        return None


LIBC = _libc()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Memory:
    """Peak memory of a block: CUDA allocator peak, or CPU peak RSS (VmHWM after a reset)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.base = self.rss() if not self.cuda else 0

    def rss(self) -> int:
        return _status_kib("VmRSS") * 1024

    def settle(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()  # no empty_cache: a step should reuse the allocator's cached blocks
        elif LIBC is not None:
            LIBC.malloc_trim(0)

    @contextlib.contextmanager
    def measure(self, out: dict):
        self.settle()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            before = self.rss()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            out["peak"], out["step_mem"] = peak, peak - before
        else:
            peak = _status_kib("VmHWM") * 1024
            out["peak"], out["step_mem"] = peak - self.base, peak - before


# ---- model and data ----------------------------------------------------------------------------------------------

def build_model(name: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from coherentize.testing import tiny_model, tiny_tokenizer

    if name == "tiny":
        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64)
    elif name == "qwen2.5-0.5b-arch":
        tok = tiny_tokenizer()  # only its pad id is used; token ids are random
        cfg = Qwen2Config(**QWEN25_05B, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    else:
        from coherentize.models import ModelConfig, load_model

        model, tok = load_model(ModelConfig(name_or_path=name, device=device, dtype="float32"), for_training=True)
    return model.to(device=device, dtype=dtype), tok


def make_examples(B: int, seq_len: int, response_len: int, suffix_len: int, anchor_frac: float, vocab: int,
                  seed: int = 0) -> list[Example]:
    """B clusters of 1 anchor + 3 variations; every variant row is exactly seq_len tokens with the response."""
    rng = random.Random(seed)
    rand = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731
    pv = seq_len - response_len
    pa = max(suffix_len + 1, round(anchor_frac * pv))
    out = []
    for b in range(B):
        tail, response = rand(suffix_len), rand(response_len)
        anchor = rand(pa - suffix_len) + tail
        variants = [rand(pv - suffix_len) + tail for _ in range(3)]
        out.append(Example(f"c{b}", anchor, variants, response))
    return out


# ---- FLOPs -------------------------------------------------------------------------------------------------------

def model_shape(model) -> dict:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    n = sum(p.numel() for name, p in base.named_parameters()
            if ".layers." in name and p.dim() == 2 and "lora_" not in name)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(N=n, N_h=c.vocab_size * c.hidden_size, layers=c.num_hidden_layers,
                d_attn=c.num_attention_heads * head_dim)


def pass_flops(s: dict, rows: int, T: int, logit_pos: int, grad: bool, lora: bool) -> float:
    A = 4 * s["layers"] * T * s["d_attn"]
    c = (4 if lora else 6) if grad else 2
    return c * (rows * T * s["N"] + rows * logit_pos * s["N_h"]) + (3 if grad else 1) * rows * T * A


# ---- arms --------------------------------------------------------------------------------------------------------

class Arm:
    """One trainer and its batch; step() = Trainer.training_step (forward + backward) + optimizer step."""

    def __init__(self, name, trainer, batch, flops: float, optimizer, sync):
        self.name, self.trainer, self.batch, self.flops, self.sync = name, trainer, batch, flops, sync
        trainer.optimizer = optimizer  # one optimizer for every arm: the same state memory in each
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by training_step
        self.times, self.cpu_times, self.peaks, self.step_mems = [], [], [], []

    def step(self):
        model = self.trainer.model
        # Trainer.train() would wrap the model's forward in accelerate's autocast; training_step alone does not, so
        # every arm steps under the accelerator's autocast (a no-op without bf16) as it would inside train().
        with self.trainer.accelerator.autocast():
            self.trainer.training_step(model, dict(self.batch))
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        self.sync()

    def measured_step(self, mem):
        res = {}
        with mem.measure(res):
            t0, c0 = time.perf_counter(), time.process_time()
            self.step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        self.times.append(dt)
        self.cpu_times.append(dc)
        self.peaks.append(res["peak"])
        self.step_mems.append(res["step_mem"])


def common_args(a, out_dir: str) -> dict:
    return dict(output_dir=out_dir, per_device_train_batch_size=a.batch, max_steps=10, learning_rate=1e-5,
                report_to="none", save_strategy="no", logging_strategy="no", use_cpu=a.device == "cpu",
                bf16=a.autocast_bf16, gradient_checkpointing=a.grad_ckpt,
                gradient_checkpointing_kwargs={"use_reentrant": False} if a.grad_ckpt else None, seed=0)


def prepare_model(model, a):
    if a.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if a.lora:
            model.enable_input_require_grads()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m-instruct", "qwen2.5-0.5b-arch"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights' dtype (bfloat16 on CUDA also autocasts: the pure-bf16 path); see --precision")
    p.add_argument("--precision", choices=["float32", "bf16", "bf16-mixed"],
                   help="overrides --dtype: bf16 = bf16 weights + autocast (the path before model.precision), "
                        "bf16-mixed = float32 master weights + bf16 autocast, frozen copy in bf16 (model.precision)")
    p.add_argument("--profile", metavar="ARM", help="after the measured rounds, profile 2 steps of this arm "
                                                    "(torch.profiler) and print the top operators by device time")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per variant row (prompt + response)")
    p.add_argument("--response-len", type=int, default=64, help="response tokens (the positions the losses score)")
    p.add_argument("--suffix-len", type=int, default=16, help="prompt tokens anchor and variants share at their end")
    p.add_argument("--anchor-frac", type=float, default=1.0, help="anchor prompt length / variant prompt length")
    p.add_argument("--batch", type=int, default=2, help="clusters per step (3x as many trained rows)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lora", dest="lora", action="store_true", default=True, help="LoRA r=16 on attention (default)")
    g.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning (frozen copy as theta0)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in every arm")
    p.add_argument("--steps", type=int, default=5, help="measured steps per arm (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--arms", default="all", help="comma-separated arm names (e.g. output-KL+ACT,SFT), or all")
    p.add_argument("--leash-fractions", default="1.0,0.5",
                   help="leash_fraction values of the +leash arms, side by side (1.0: every anchor row)")
    p.add_argument("--no-trl", action="store_true", help="skip the TRL SFTTrainer arm")
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="on CPU devices, ratios from process CPU time (robust to other load) or wall time")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU (CUDA only)")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if a.precision:
        a.dtype = "bfloat16" if a.precision == "bf16" else "float32"
    a.autocast_bf16 = a.precision in ("bf16", "bf16-mixed") or (
        a.precision is None and a.dtype == "bfloat16" and a.device != "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mem = Memory(a.device)
    model, tok = build_model(a.model, a.device, dtype)
    if a.lora:
        from coherentize.recipes.train_job import LoraSettings, apply_lora

        model = apply_lora(model, LoraSettings())
    prepare_model(model, a)
    model.train()
    shape = model_shape(model)
    vocab = model.config.vocab_size
    examples = make_examples(a.batch, a.seq_len, a.response_len, a.suffix_len, a.anchor_frac, min(vocab, len(tok)))
    batch = ConsistencyCollator(tok.pad_token_id)(examples)
    batch = {k: v.to(a.device) for k, v in batch.items()}
    V, T = batch["variant_input_ids"].shape
    B, Ta = batch["anchor_input_ids"].shape
    L = a.response_len
    trained_tokens = V * T
    load = os.getloadavg()
    print(f"# model={a.model} ({shape['N'] / 1e6:.1f}M block params, vocab {vocab}) device={a.device} dtype={a.dtype} "
          f"autocast={'bf16' if a.autocast_bf16 else 'none'} "
          f"{'LoRA' if a.lora else 'full'}{' +grad-ckpt' if a.grad_ckpt else ''} torch threads={torch.get_num_threads()}")
    print(f"# batch: {B} clusters -> {B} anchor rows x {Ta} tokens, {V} variant rows x {T} tokens "
          f"(response {L}, shared suffix {a.suffix_len}); steps {a.steps} after {a.warmup} warmup; "
          f"load avg {load[0]:.2f} {load[1]:.2f}")

    wanted = None if a.arms == "all" else set(a.arms.split(","))
    tmp = tempfile.mkdtemp(prefix="step_ratio_")  # the Trainers' unused output_dir, removed when the run ends
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    from transformers import Trainer, TrainingArguments

    # Full fine-tuning: one frozen copy shared by the consistency arms; its bytes are taken off the SFT arms' peaks.
    ref_model, ref_bytes = None, 0
    if not a.lora:
        import copy

        ref_model = copy.deepcopy(model).requires_grad_(False).eval()
        if a.precision == "bf16-mixed":  # as the toolkit loads theta0 for evaluation: in the compute dtype
            ref_model.to(torch.bfloat16)
        ref_bytes = sum(t.numel() * t.element_size() for t in ref_model.parameters())
    arms: list[Arm] = []
    optimizer = None

    def add(name, trainer, arm_batch, flops):
        nonlocal optimizer
        if optimizer is None:
            optimizer = trainer.create_optimizer()
        arms.append(Arm(name, trainer, arm_batch, flops, optimizer, sync))

    # SFT on the variant rows: labels on the response only (what an SFT user trains on these sequences).
    sft_flops = pass_flops(shape, V, T, T, True, a.lora)
    if wanted is None or "SFT" in wanted:
        labels = batch["variant_input_ids"].clone()
        labels[:, : T - L] = -100
        sft_batch = {"input_ids": batch["variant_input_ids"], "attention_mask": batch["variant_attention_mask"],
                     "labels": labels}
        add("SFT (Trainer)", Trainer(model=model, args=TrainingArguments(**common_args(a, tmp)), processing_class=tok),
            sft_batch, sft_flops)
    if (wanted is None or "SFT-TRL" in wanted) and not a.no_trl:
        try:
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer
        except ImportError:
            print("# SFT (TRL SFTTrainer) skipped: trl is not installed (pip install trl)")
        else:
            ds = Dataset.from_list([{"input_ids": r.tolist(), "labels": [-100] * (T - L) + r[T - L:].tolist()}
                                    for r in batch["variant_input_ids"].cpu()])
            cfg = SFTConfig(**common_args(a, tmp), max_length=None, dataset_kwargs={"skip_prepare_dataset": True})
            trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
            trl_batch = {k: v.to(a.device) for k, v in trainer.data_collator([ds[i] for i in range(len(ds))]).items()}
            add("SFT (TRL SFTTrainer)", trainer, trl_batch, sft_flops)
    fractions = [float(f) for f in a.leash_fractions.split(",")]
    for name, over in ARMS:
        for leash, fraction in [(0.0, 1.0)] + [(0.1, f) for f in fractions]:
            arm = name + ("" if not leash else " +leash" if fraction == 1.0 else f" +leash@{fraction:g}")
            if wanted is not None and arm not in wanted:
                continue
            cfg = ConsistencyConfig(**common_args(a, tmp), leash_weight=leash, leash_fraction=fraction, **over)
            trainer = ConsistencyTrainer(model=model, args=cfg, processing_class=tok, ref_model=ref_model)
            leash_rows = math.floor(fraction * B) if leash else 0  # per step (rotating; B * fraction on average)
            grad_rows = V + leash_rows
            grad_T = max(T, Ta) if leash_rows else T
            flops = pass_flops(shape, B, Ta, L + 1, False, a.lora) + pass_flops(shape, grad_rows, grad_T, L + 1, True, a.lora)
            add(arm, trainer, batch, flops)

    # Rounds: every arm steps once per round, in a shuffled order, so that load from other processes hits all arms.
    rng = random.Random(0)
    for r in range(a.warmup + a.steps):
        order = rng.sample(arms, len(arms))
        for arm in order:
            if r < a.warmup:
                arm.step()
            else:
                arm.measured_step(mem)
        print(f"# round {r + 1}/{a.warmup + a.steps} done", file=sys.stderr, flush=True)

    # On CPU the ratios use this process's CPU time: other processes on the machine stretch wall time, not CPU time.
    clock = (lambda x: x.times) if cuda or a.clock == "wall" else (lambda x: x.cpu_times)
    sft = next((x for x in arms if x.name == "SFT (Trainer)"), None)
    print(f"\n# time = median {'wall' if cuda or a.clock == 'wall' else 'CPU (process)'} time per step; "
          f"wall ms is printed too")
    print(f"{'arm':<26} {'step ms':>9} {'wall ms':>9} {'tok/s':>8} {'peak MiB':>9} {'step MiB':>9}"
          + ("   time/SFT  peak/SFT  step-mem/SFT" if sft else "") + "   TFLOP/s    MFU")
    for x in arms:
        t = statistics.median(clock(x))
        is_sft = x.name.startswith("SFT")
        peak = max(x.peaks) - (ref_bytes if is_sft else 0)
        step_mem = max(x.step_mems)
        line = (f"{x.name:<26} {t * 1e3:9.1f} {statistics.median(x.times) * 1e3:9.1f} {trained_tokens / t:8.0f} "
                f"{peak / 2**20:9.0f} {step_mem / 2**20:9.0f}")
        if sft is not None:
            # Time ratio: median over rounds of this arm's step / SFT's step in the same round.
            ratio = statistics.median(ti / si for ti, si in zip(clock(x), clock(sft)))
            sft_peak = max(sft.peaks) - ref_bytes
            line += f"   x{ratio:8.2f}  x{peak / sft_peak:7.2f}  x{step_mem / max(sft.step_mems):11.2f}"
        tf = x.flops / t / 1e12  # MFU means something on an accelerator only; on CPU it checks the arithmetic
        line += f"   {tf:7.3f}  {100 * tf / a.peak_tflops:5.1f}%"
        print(line)
    print(f"# load avg at the end {os.getloadavg()[0]:.2f}; step times (ms) per arm: "
          + "; ".join(f"{x.name}: " + ",".join(f"{t * 1e3:.0f}" for t in clock(x)) for x in arms))
    if a.profile:
        profile(next(x for x in arms if x.name == a.profile), cuda)
    return 0


def profile(arm: Arm, cuda: bool, steps: int = 2, top: int = 25) -> None:
    """Where one arm's step goes: torch.profiler over `steps` steps, operators sorted by self device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            arm.step()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"\n# profile of {arm.name}, {steps} steps, top {top} operators by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
