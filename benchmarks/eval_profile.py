"""Profile one evaluation (``run_suite``) of the default experiment by suite and by part.

    OMP_NUM_THREADS=1 python benchmarks/eval_profile.py                      # packaged SmolLM2-135M-Instruct
    OMP_NUM_THREADS=1 python benchmarks/eval_profile.py --model tiny         # tiny random model, seconds
    OMP_NUM_THREADS=1 python benchmarks/eval_profile.py --set n_harmful=8 --suites jailbreak
    OMP_NUM_THREADS=1 python benchmarks/eval_profile.py --preset quick          # the --quick preset's evaluation
    OMP_NUM_THREADS=2 python benchmarks/eval_profile.py --config configs/paraphrase_only.yaml --model ORGANISM_DIR \
        --reference --threads 2                                                # one arm-seed's evaluation there
    OMP_NUM_THREADS=2 python benchmarks/eval_profile.py --config configs/qwen_bct.yaml \
        --model qwen2.5-coder-0.5b-instruct --adapter RUN/stages/train/KEY/model --threads 2   # a trained arm's, as run

The evaluation config is the ``eval`` section of the packaged ``configs/default.yaml`` or of ``--config`` (``--set FIELD=VALUE``
overrides a field). Prints:

- model load (from the converted cache) and the reference-model load an arm's evaluation adds;
- per suite: wall and CPU seconds, and prompts generated;
- per part (the innermost instrumented function: ``generate``/``generate_greedy``, ``refusal_margins``,
  ``openings_logprob``, ``continuation_logprobs``, ``last_token_hidden``, ``mc_choice``, ...): CPU seconds inside
  model forward passes split into prefill (a pass over more than one new token), decode (one new token per row) and
  tree (the openings' tree-masked pass, or a continuation's chain, on a prefill's cache), the rest of the part's own time (Python,
  tokenisation, cache copies, the judge), the forward passes, and the padding waste of the prefill passes (masked-out
  tokens / all new tokens).

CPU time is the process's (one torch thread: CPU time is what the work costs, wall time adds other processes' load).
A benchmark prints figures; no test asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

PARTS = [  # (module, function): instrumented parts, innermost wins
    ("coherentize.generation", "generate"),
    ("coherentize.generation", "generate_greedy"),
    ("coherentize.evaluate.jailbreak", "refusal_margins"),
    ("coherentize.evaluate.scoring", "openings_logprob"),
    ("coherentize.evaluate.scoring", "continuation_logprobs"),
    ("coherentize.evaluate.scoring", "last_token_hidden"),
    ("coherentize.evaluate.scoring", "mc_choice"),
    ("coherentize.evaluate.scoring", "text_token_logprobs"),
    ("coherentize.evaluate.scoring", "sequence_logprob"),
    ("coherentize.evaluate.coherence", "output_divergence_for_clusters"),
    ("coherentize.evaluate.coherence", "activation_separation_for_clusters"),
    ("coherentize.evaluate.coherence", "shared_continuations"),
    ("coherentize.evaluate.coherence", "member_passes"),
]
SUITES = [
    ("coherentize.evaluate.jailbreak", "run_jailbreak", "jailbreak"),
    ("coherentize.evaluate.framed_benign", "run_framed_benign", "framed_benign"),
    ("coherentize.evaluate.overrefusal", "run_overrefusal", "overrefusal"),
    ("coherentize.evaluate.suite", "run_coherence", "coherence"),
    ("coherentize.evaluate.capability", "run_capability", "capability"),
    ("coherentize.evaluate.sycophancy", "run_sycophancy", "sycophancy"),
]


class Profiler:
    def __init__(self):
        self.stack: list[str] = []
        self.suite = "-"
        self.part_time = defaultdict(lambda: [0.0, 0.0, 0, 0.0])  # (suite, part) -> [wall, cpu, calls, cpu excl.]
        self.child_cpu: list[float] = []  # per open part: CPU time of the parts nested in it
        self.fwd = defaultdict(lambda: defaultdict(float))  # (suite, part) -> counters
        self.suite_time: dict[str, list[float]] = {}
        self.prompts = defaultdict(int)
        self._t = None

    def where(self) -> tuple[str, str]:
        return self.suite, self.stack[-1] if self.stack else "(suite body)"

    def wrap_part(self, mod, name):
        fn = getattr(mod, name)

        def wrapped(*a, **k):
            self.stack.append(name)
            self.child_cpu.append(0.0)
            key = (self.suite, name)
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.stack.pop()
                cpu = time.process_time() - c0
                children = self.child_cpu.pop()
                if self.child_cpu:
                    self.child_cpu[-1] += cpu
                t = self.part_time[key]
                t[0] += time.perf_counter() - w0
                t[1] += cpu
                t[2] += 1
                t[3] += cpu - children
                if name in ("generate", "generate_greedy") and len(a) >= 3 and not self.stack:
                    self.prompts[self.suite] += len(a[2])

        wrapped.__wrapped__ = fn
        setattr(mod, name, wrapped)

    def wrap_suite(self, mod, name, label):
        fn = getattr(mod, name)

        def wrapped(*a, **k):
            self.suite = label
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.suite_time[label] = [time.perf_counter() - w0, time.process_time() - c0]
                self.suite = "-"

        setattr(mod, name, wrapped)

    def hook(self, model, pad_id: int):
        import torch

        self.pad_id = pad_id
        def pre(module, args, kwargs):
            self._t = time.process_time()

        def post(module, args, kwargs, out):
            dt = time.process_time() - self._t
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            c = self.fwd[self.where()]
            if ids is None:
                return
            rows, q = ids.shape[0], ids.shape[1]
            kind = "decode" if q == 1 else "prefill"
            packed = isinstance(kwargs.get("logits_to_keep"), torch.Tensor)  # a prefill's packed pass (4-d mask too)
            if mask is not None and mask.dim() == 4 and not packed:  # a tree or chain pass on a prefill's cache
                c["tree_s"] += dt
                c["tree_calls"] += 1
                return
            c[f"{kind}_s"] += dt
            c[f"{kind}_calls"] += 1
            if kind == "prefill":
                # padded tokens among the new ones: the mask's last q columns (packed: the pad token's columns)
                if packed:
                    c["real_tokens"] += float((ids != self.pad_id).sum())
                elif mask is not None and mask.dim() == 2:
                    c["real_tokens"] += float(mask[:, -q:].sum())
                else:
                    c["real_tokens"] += rows * q
                c["all_tokens"] += rows * q
            else:
                c["decode_rows"] += rows

        return (model.register_forward_pre_hook(pre, with_kwargs=True),
                model.register_forward_hook(post, with_kwargs=True))


@contextmanager
def timed(label, out):
    w0, c0 = time.perf_counter(), time.process_time()
    yield
    out[label] = (time.perf_counter() - w0, time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--suites", default=None, help="comma-separated suites (default: the config's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an eval field, e.g. --set n_harmful=8")
    ap.add_argument("--config", help="read the eval section from this experiment config (default: the packaged one)")
    ap.add_argument("--preset", help="apply this `coherentize run` preset's eval settings first (e.g. quick)")
    ap.add_argument("--reference", action="store_true", help="also load and use the reference model (an arm's eval)")
    ap.add_argument("--adapter", help="a trained arm's LoRA folder (<out_dir>/stages/train/<key>/model): evaluate it on "
                                      "--model as the run's evaluation stage does, with the adapters-off reference")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()

    import importlib

    import torch

    torch.set_num_threads(args.threads)
    from coherentize.commands.run import default_config_path
    from coherentize.config import apply_overrides, from_dict, read_config_file
    from coherentize.evaluate.suite import EvalConfig, run_suite

    data = read_config_file(args.config or default_config_path())["eval"]
    sets = list(args.sets)
    if args.preset:
        from coherentize.commands.run import PRESETS

        sets = [x[len("eval."):] for x in PRESETS[args.preset] if x.startswith("eval.")] + sets
    ev = from_dict(EvalConfig, apply_overrides(data, sets), where="eval")
    if args.suites:
        ev.suites = args.suites.split(",")

    loads: dict = {}
    with timed("model load", loads):
        if args.model == "tiny":
            from coherentize.testing import tiny_model, tiny_tokenizer

            tok = tiny_tokenizer()
            model = tiny_model(tok, layers=4, hidden=64).eval()
        elif args.adapter:
            from pathlib import Path

            from coherentize.models import ModelConfig
            from coherentize.recipes.models import EvalModels

            models = EvalModels(ModelConfig(name_or_path=args.model, device="cpu"))
            model, tok = models.trained(Path(args.adapter))
        else:
            from coherentize.models import ModelConfig, load_model

            model, tok = load_model(ModelConfig(name_or_path=args.model, device="cpu"))
    ref = None
    if args.adapter:
        ref = models.original()[0]
    elif args.reference:
        with timed("reference load", loads):
            ref = model if args.model == "tiny" else load_model(ModelConfig(name_or_path=args.model, device="cpu"))[0]

    prof = Profiler()
    for m, f in PARTS:
        mod = importlib.import_module(m)
        if hasattr(mod, f):
            prof.wrap_part(mod, f)
    for m, f, label in SUITES:
        prof.wrap_suite(importlib.import_module(m), f, label)
    prof.hook(model, tok.pad_token_id)

    w0, c0 = time.perf_counter(), time.process_time()
    run_suite(model, tok, ev, reference_model=ref, quiet=True)
    total = (time.perf_counter() - w0, time.process_time() - c0)

    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"model={args.model} threads={args.threads} suites={ev.suites} n_harmful={ev.n_harmful} "
          f"families={len(ev.jailbreak_families) or 'all'} max_new_tokens={ev.max_new_tokens} "
          f"batch_size={ev.batch_size} load={load}")
    for k, (w, c) in loads.items():
        print(f"{k:<16} wall {w:6.1f} s  cpu {c:6.1f} s")
    print(f"{'run_suite':<16} wall {total[0]:6.1f} s  cpu {total[1]:6.1f} s")
    print()
    print(f"{'suite':<12} {'wall s':>7} {'cpu s':>7} {'generated':>9}")
    for s, (w, c) in prof.suite_time.items():
        print(f"{s:<12} {w:7.1f} {c:7.1f} {prof.prompts.get(s, 0):9d}")
    print()
    hdr = (f"{'suite':<12} {'part':<36} {'calls':>5} {'cpu s':>7} {'prefill':>8} {'decode':>8} {'tree':>6} "
           f"{'other':>7} {'fwd':>5} {'pad waste':>9}")
    print(hdr)
    keys = sorted(set(prof.part_time) | set(prof.fwd), key=lambda k: (list(prof.suite_time).index(k[0])
                                                                     if k[0] in prof.suite_time else 99, k[1]))
    for key in keys:
        suite, part = key
        wall, cpu, calls, excl = prof.part_time.get(key, [0.0, 0.0, 0, 0.0])
        c = prof.fwd.get(key, {})
        # forwards are attributed to the innermost part; "other" is the part's own CPU time (parts nested in it
        # excluded) minus its forwards: Python, tokenisation, cache copies, the judge
        fwd_s = c.get("prefill_s", 0.0) + c.get("decode_s", 0.0) + c.get("tree_s", 0.0)
        other = excl - fwd_s
        waste = 1 - c["real_tokens"] / c["all_tokens"] if c.get("all_tokens") else 0.0
        n_fwd = int(c.get("prefill_calls", 0) + c.get("decode_calls", 0) + c.get("tree_calls", 0))
        print(f"{suite:<12} {part:<36} {calls:5d} {cpu:7.1f} {c.get('prefill_s', 0):8.1f} {c.get('decode_s', 0):8.1f} "
              f"{c.get('tree_s', 0):6.1f} {other:7.1f} {n_fwd:5d} {waste:9.0%}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
