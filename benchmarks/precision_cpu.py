"""float32 vs bfloat16 on this CPU, in one run on the same items: evaluation throughput and label agreement, greedy
output agreement, a training step's time, and the losses of a few training steps.

    OMP_NUM_THREADS=1 python benchmarks/precision_cpu.py                          # packaged SmolLM2-135M-Instruct
    OMP_NUM_THREADS=1 python benchmarks/precision_cpu.py --model tiny --set n_harmful=4 --steps 2   # seconds
    OMP_NUM_THREADS=2 python benchmarks/precision_cpu.py --threads 2 --model ORGANISM_DIR
    OMP_NUM_THREADS=1 python benchmarks/precision_cpu.py --previous --steps 0   # also the previous evaluation path

Parts (each in both precisions, float32 first):
1. evaluation: ``run_suite`` with the ``eval`` section of the packaged default.yaml (``--set`` overrides), the weights
   loaded as ``model.precision: float32`` and ``bf16-mixed`` load them for evaluation (float32 / bfloat16); wall and
   process CPU time per run; agreement of the judged labels (jailbreak, over-refusal) item by item, with a Wilson 95%
   interval, and the suites' headline figures side by side;
2. greedy answers to --n-greedy benign prompts (--greedy-tokens tokens): share identical, and the mean token at which
   the two first differ;
3. training: ``--steps`` ConsistencyTrainer steps (LoRA, output-KL + ACT, leash) on random-token clusters, float32 vs
   bf16 autocast over float32 master weights (the Trainer's ``bf16`` flag, what ``model.precision: bf16-mixed``
   sets): CPU time per step and the logged losses step by step.

With ``--previous``, part 1 runs the evaluation twice in each precision, through the previous path (three passes
over the coherence members, ``suite.FUSED_COHERENCE = False``; prefill tails always padded, ``generation.PACK =
False``) and the current one, and prints the four CPU times, the speed-ups (bfloat16-current vs float32-previous is
the issue's figure) and the label agreement of current vs previous in each precision; part 2 is skipped.

Whether bfloat16 is fast here depends on the processor: ``precision.cpu_has_bf16()`` (avx512_bf16 or AMX) is printed.
CPU time is the process's: with one torch thread it is what the work costs, whatever else runs on the machine.
A benchmark prints figures; no test asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import warnings


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def load(name: str, precision: str):
    import torch

    if name == "tiny":
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64).eval()
        return model.to(torch.bfloat16 if precision == "bf16-mixed" else torch.float32), tok
    from coherentize.models import ModelConfig, load_model

    return load_model(ModelConfig(name_or_path=name, device="cpu", precision=precision))


def headline(results: dict) -> dict[str, float]:
    """suite.metric -> value for the summary figures that are numbers with a mean (attack success, refusal rate...)."""
    out = {}
    for suite, summary in results["suites"].items():
        for key, value in summary.items():
            if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
                out[f"{suite}.{key}"] = value["mean"]
    return out


def evaluation(a, ev) -> None:
    from coherentize.chat import is_chat_model
    from coherentize.evaluate.suite import run_suite
    from coherentize.generation import generate
    from coherentize.variations.prompt_sets import load_prompt_set

    runs = {}
    for precision in ("float32", "bf16-mixed"):
        model, tok = load(a.model, precision)
        w0, c0 = time.perf_counter(), time.process_time()
        results = run_suite(model, tok, ev, quiet=True)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        prompts = [p.prompt for p in load_prompt_set("benign", "test")][: a.n_greedy]
        g0 = time.process_time()
        answers = generate(model, tok, prompts, is_chat_model(tok, "auto"), max_new_tokens=a.greedy_tokens)
        runs[precision] = dict(results=results, wall=wall, cpu=cpu, answers=answers, greedy_cpu=time.process_time() - g0,
                               ids=[tok(x, add_special_tokens=False)["input_ids"] for x in answers])
        del model
    f, b = runs["float32"], runs["bf16-mixed"]
    print(f"## evaluation ({', '.join(ev.suites)}; n_harmful={ev.n_harmful}, max_new_tokens={ev.max_new_tokens})")
    print(f"{'precision':<11} {'wall s':>7} {'cpu s':>7}   greedy cpu s")
    for name, r in runs.items():
        print(f"{name:<11} {r['wall']:7.1f} {r['cpu']:7.1f}   {r['greedy_cpu']:7.1f}")
    print(f"speed-up bf16 vs float32: x{f['cpu'] / b['cpu']:.2f} (CPU time), x{f['wall'] / b['wall']:.2f} (wall); "
          f"greedy x{f['greedy_cpu'] / b['greedy_cpu']:.2f}")
    lab = lambda r: {x["id"]: x["label"] for x in r["results"]["records"] if x.get("label")}  # noqa: E731
    lf, lb = lab(f), lab(b)
    common = sorted(set(lf) & set(lb))
    for suite in sorted({x["suite"] for x in f["results"]["records"] if x.get("label")}):
        ids = [x["id"] for x in f["results"]["records"] if x["suite"] == suite and x["id"] in lb and x.get("label")]
        k = sum(lf[i] == lb[i] for i in ids)
        lo, hi = wilson(k, len(ids))
        print(f"labels agree, {suite}: {k}/{len(ids)} = {k / max(len(ids), 1):.1%} [{lo:.1%}, {hi:.1%}]")
    k = sum(lf[i] == lb[i] for i in common)
    lo, hi = wilson(k, len(common))
    print(f"labels agree, all: {k}/{len(common)} = {k / max(len(common), 1):.1%} [{lo:.1%}, {hi:.1%}]")
    hf, hb = headline(f["results"]), headline(b["results"])
    for key in sorted(set(hf) & set(hb)):
        print(f"  {key:<44} float32 {hf[key]:8.4f}   bf16 {hb[key]:8.4f}")
    same = sum(x == y for x, y in zip(f["answers"], b["answers"]))
    first = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
             for x, y, tx, ty in zip(f["ids"], b["ids"], f["answers"], b["answers"]) if tx != ty]
    n = len(f["answers"])
    lo, hi = wilson(same, n)
    print(f"greedy answers identical: {same}/{n} = {same / max(n, 1):.1%} [{lo:.1%}, {hi:.1%}]; where they differ, "
          f"the first differing token (of the answer re-tokenised) is on average "
          f"{statistics.mean(first) if first else math.nan:.1f} (of up to {a.greedy_tokens} generated)")


@contextlib.contextmanager
def evaluation_path(previous: bool):
    """The previous evaluation path (unfused coherence passes, padded prefill tails) inside the block when asked."""
    from coherentize import generation
    from coherentize.evaluate import suite

    saved = suite.FUSED_COHERENCE, generation.PACK
    suite.FUSED_COHERENCE = generation.PACK = not previous
    try:
        yield
    finally:
        suite.FUSED_COHERENCE, generation.PACK = saved


def label_agreement(a: dict, b: dict) -> str:
    """Judged labels of two results on the same items, item by item: 'k/n = p% [Wilson 95%]'."""
    la = {x["id"]: x["label"] for x in a["records"] if x.get("label")}
    lb = {x["id"]: x["label"] for x in b["records"] if x.get("label")}
    common = sorted(set(la) & set(lb))
    k = sum(la[i] == lb[i] for i in common)
    lo, hi = wilson(k, len(common))
    return f"{k}/{len(common)} = {k / max(len(common), 1):.1%} [{lo:.1%}, {hi:.1%}]"


def evaluation_previous(a, ev) -> None:
    """float32 and bfloat16, each through the previous and the current evaluation path, on the same items."""
    from coherentize.evaluate.suite import run_suite

    runs = {}
    for precision in ("float32", "bf16-mixed"):
        model, tok = load(a.model, precision)
        for previous in (True, False):
            with evaluation_path(previous):
                w0, c0 = time.perf_counter(), time.process_time()
                results = run_suite(model, tok, ev, quiet=True)
                runs[precision, previous] = dict(results=results, wall=time.perf_counter() - w0,
                                                 cpu=time.process_time() - c0)
            print(f"  done: {precision} {'previous' if previous else 'current'} {runs[precision, previous]['cpu']:.1f} "
                  f"cpu s (load {os.getloadavg()[0]:.2f})", flush=True)
        del model
    print(f"## evaluation, previous vs current path ({', '.join(ev.suites)}; n_harmful={ev.n_harmful}, "
          f"max_new_tokens={ev.max_new_tokens})")
    print(f"{'precision':<11} {'path':<9} {'wall s':>7} {'cpu s':>7}")
    for (precision, previous), r in runs.items():
        print(f"{precision:<11} {'previous' if previous else 'current':<9} {r['wall']:7.1f} {r['cpu']:7.1f}")
    cpu = {k: r["cpu"] for k, r in runs.items()}
    f_old, f_new, b_old, b_new = (cpu["float32", True], cpu["float32", False], cpu["bf16-mixed", True],
                                  cpu["bf16-mixed", False])
    print(f"current vs previous path: float32 x{f_old / f_new:.2f}, bf16 x{b_old / b_new:.2f} (CPU time)")
    print(f"bf16 vs float32: previous path x{f_old / b_old:.2f}, current path x{f_new / b_new:.2f}")
    print(f"bf16-current vs float32-previous: x{f_old / b_new:.2f} (CPU time)")
    for precision in ("float32", "bf16-mixed"):
        print(f"labels agree, current vs previous path, {precision}: "
              f"{label_agreement(runs[precision, True]['results'], runs[precision, False]['results'])}")
    hp, hc = headline(runs["float32", True]["results"]), headline(runs["float32", False]["results"])
    for key in sorted(set(hp) & set(hc)):
        if abs(hp[key] - hc[key]) > 1e-4:
            print(f"  float32 {key:<44} previous {hp[key]:8.4f}   current {hc[key]:8.4f}")


def training(a) -> None:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step_ratio import make_examples

    from coherentize.collate import ConsistencyCollator
    from coherentize.recipes.train_job import LoraSettings, apply_lora
    from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer

    print(f"\n## training: {a.steps} steps, LoRA, output-KL + ACT + leash, {a.batch} clusters x 4 members, "
          f"{a.seq_len} tokens")
    logs = {}
    for precision in ("float32", "bf16-mixed"):
        model, tok = load(a.model, "float32")  # master weights are float32 in both
        model = apply_lora(model, LoraSettings(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        examples = make_examples(a.batch * a.steps, a.seq_len, 32, 16, 0.6, min(model.config.vocab_size, len(tok)))
        n = model.config.num_hidden_layers
        with tempfile.TemporaryDirectory() as tmp:
            args = ConsistencyConfig(output_dir=tmp, use_cpu=True, bf16=precision == "bf16-mixed", max_steps=a.steps,
                                     per_device_train_batch_size=a.batch, learning_rate=5e-4, act_weight=1.0,
                                     act_layers=[max(1, n // 2)], leash_weight=0.1, logging_steps=1, report_to="none",
                                     save_strategy="no", disable_tqdm=True, seed=0, data_seed=0,
                                     lr_scheduler_type="constant")
            trainer = ConsistencyTrainer(model=model, args=args, train_dataset=examples, processing_class=tok,
                                         data_collator=ConsistencyCollator(tok.pad_token_id))
            c0 = time.process_time()
            trainer.train()
            cpu = time.process_time() - c0
        logs[precision] = (cpu, [x["loss"] for x in trainer.state.log_history if "loss" in x])
        del trainer, model
    print(f"{'precision':<11} {'cpu s/step':>10}   loss by step")
    for name, (cpu, losses) in logs.items():
        print(f"{name:<11} {cpu / a.steps:10.2f}   " + " ".join(f"{x:.4f}" for x in losses))
    (cf, lf), (cb, lb) = logs["float32"], logs["bf16-mixed"]
    rel = [abs(x - y) / max(abs(x), 1e-8) for x, y in zip(lf, lb)]
    print(f"speed-up x{cf / cb:.2f}; loss relative difference per step: max {max(rel):.2%}, mean "
          f"{statistics.mean(rel):.2%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--suites", default="jailbreak,overrefusal,coherence,capability")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an eval field of default.yaml, e.g. --set n_harmful=8")
    ap.add_argument("--n-greedy", type=int, default=24)
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="training steps per precision (0: skip training)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=160)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--previous", action="store_true",
                    help="evaluation through the previous path too, in both precisions (no greedy part)")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(a.threads)
    from coherentize.commands.run import default_config_path
    from coherentize.config import apply_overrides, from_dict, read_config_file
    from coherentize.evaluate.suite import EvalConfig
    from coherentize.precision import cpu_has_bf16

    ev = from_dict(EvalConfig, apply_overrides(read_config_file(default_config_path())["eval"], a.sets), where="eval")
    ev.suites = a.suites.split(",")
    print(f"# model={a.model} threads={a.threads} cpu_has_bf16={cpu_has_bf16()} torch={torch.__version__} "
          f"load={os.getloadavg()[0]:.2f}")
    if a.previous:
        evaluation_previous(a, ev)
    else:
        evaluation(a, ev)
    if a.steps:
        training(a)
    print(f"# load avg at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
