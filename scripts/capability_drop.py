"""Did multiple-choice letter accuracy fall because a model lost the answer FORMAT or the KNOWLEDGE?

Scores the capability probe's questions three ways (evaluate/capability.py) on the organism (the experiment's
baseline) and on every trained arm found under a run folder, and prints the figures with n and 95% intervals and
the paired differences vs the baseline and vs the control (same seed):

- letter: accuracy of the option letter with the most probability as the response's opening (the suite's
  ``mc_accuracy``);
- format mass: P(the response opens with any option letter), mean over questions (bootstrap interval);
- cloze: accuracy of the option text most probable per character as the response to the bare question (no
  letters, no format to lose);
- letter = cloze: how often the letter chosen names the option the cloze score prefers (does the letter follow
  the model's knowledge?), and the letters chosen;
- letter, position prior removed: the letter argmax after subtracting each letter's mean log-probability over all
  questions (a model that prefers "C" whatever the question loses that preference; what is left is what the
  letters say about the question);
- the letter accuracy on the first n_mc questions of the run's own evaluation (the figure the report shows).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/capability_drop.py                 # runs/demo, every question
    OMP_NUM_THREADS=1 .venv/bin/python scripts/capability_drop.py runs/bct_jailbreak --original --json out.json

--original adds the model the organism was tuned from. Arms are loaded as the experiment's evaluation loads them
(recipes/models.EvalModels: each LoRA adapter on the organism in turn). Reads the run folder only; writes only
the --json file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MEASURES = [  # (per-item key, label)
    ("capability.mc_correct", "letter accuracy"),
    ("capability.mc_format_mass", "format mass (P any option letter)"),
    ("capability.mc_cloze_correct", "cloze accuracy"),
    ("letter_is_cloze", "letter = cloze choice"),
    ("letter_calibrated", "letter accuracy, position prior removed"),
]
RATES = {"capability.mc_correct", "capability.mc_cloze_correct", "letter_is_cloze", "letter_calibrated"}


def _model_config(run: Path):
    """(ModelConfig of the organism, ModelConfig it was tuned from, note) from the run's config and stages."""
    from coherentize.models import ModelConfig

    cfg = json.loads((run / "config.json").read_text())
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    base = ModelConfig(**{k: v for k, v in cfg["model"].items() if k in names})
    if not cfg.get("organism", {}).get("enabled", False):
        return base, None, "no organism: the arms were trained on the model itself"
    done = sorted(run.glob("stages/organism-*/done.json"))
    if not done:
        return base, None, "WARNING: no organism stage in the run; scoring the untuned model as the baseline"
    folder = json.loads(done[-1].read_text())["folder"]
    if not Path(folder).is_dir():
        return base, None, f"WARNING: organism folder {folder} is missing; scoring the untuned model as the baseline"
    return dataclasses.replace(base, name_or_path=folder, gguf_file=None), base, f"organism {folder}"


def _arms(run: Path) -> list[tuple[str, int, Path]]:
    """(arm, seed, model folder) of every finished training stage, control first."""
    out = []
    for d in sorted(run.glob("stages/train/*")):
        if (d / "done.json").is_file() and (d / "model").is_dir():
            name = d.name.rsplit("-", 1)[0]  # <arm>-seed<s>-<hash>
            arm, _, seed = name.rpartition("-seed")
            out.append((arm, int(seed), d / "model"))
    return sorted(out, key=lambda a: (a[0] != "control", a[0], a[1]))


def per_item(items, scores, n_boot):
    from coherentize.evaluate.capability import mc_summary

    summary, items_by_key, _ = mc_summary(items, scores, n_boot)
    items_by_key["letter_is_cloze"] = {it["id"]: float(l == c) for it, l, c in
                                       zip(items, scores["letter"], scores["cloze"]) if c is not None}
    items_by_key["letter_calibrated"] = {it["id"]: float(c == it["answer"]) for it, c in
                                         zip(items, calibrated_letters(scores["letter_logprobs"]))}
    return summary, items_by_key


def calibrated_letters(letter_logprobs: list[list[float]]) -> list[str]:
    """Per item, the argmax letter of log P(letter) minus that letter's mean over the items with as many options
    (pure)."""
    from collections import defaultdict

    rows = defaultdict(list)
    for lp in letter_logprobs:
        rows[len(lp)].append(lp)
    prior = {k: [sum(col) / len(col) for col in zip(*v)] for k, v in rows.items()}
    out = []
    for lp in letter_logprobs:
        adj = [x - m for x, m in zip(lp, prior[len(lp)])]
        out.append("ABCDEFGH"[max(range(len(adj)), key=adj.__getitem__)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="runs/demo", help="an experiment's out_dir (default runs/demo)")
    ap.add_argument("--n-mc", type=int, default=0, help="the first N questions (0 = all)")
    ap.add_argument("--original", action="store_true", help="also score the model the organism was tuned from")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--json", help="write every figure and per-item score here")
    ap.add_argument("--top-tokens", type=int, default=0,
                    help="also print where the answer position's probability goes: each response-opening token's "
                         "mean probability over the questions (counted where it is in a question's top N)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from coherentize.chat import is_chat_model
    from coherentize.evaluate import stats
    from coherentize.evaluate.capability import mc_items, score_mc
    from coherentize.models import load_model
    from coherentize.recipes.models import EvalModels

    run = Path(a.run)
    organism, untuned, note = _model_config(run)
    run_n_mc = json.loads((run / "config.json").read_text()).get("eval", {}).get("n_mc")
    print(f"run {run}: {note}", file=sys.stderr)
    items = mc_items(a.n_mc or None)
    models = EvalModels(organism)
    jobs = [("baseline", 0, None)] + _arms(run)
    if a.original and untuned is not None:
        jobs.insert(0, ("untuned", 0, "untuned"))
    results: dict = {}
    for arm, seed, where in jobs:
        if where == "untuned":
            model, tok = load_model(untuned)
        elif where is None:
            model, tok = models.original()
        else:
            model, tok = models.trained(where)
        name = arm if where in (None, "untuned") else f"{arm} (seed {seed})"
        t0, c0 = time.perf_counter(), time.process_time()
        scores = score_mc(model, tok, items, is_chat_model(tok), a.batch_size)
        secs = (time.perf_counter() - t0, time.process_time() - c0)
        summary, by_key = per_item(items, scores, a.n_boot)
        results[name] = {"arm": arm, "seed": seed, "summary": summary, "per_item": by_key, "scores": scores,
                         "wall_s": secs[0], "cpu_s": secs[1]}
        print(f"  {name}: {len(items)} questions in {secs[0]:.1f} s wall, {secs[1]:.1f} s CPU", file=sys.stderr)
        if a.top_tokens:
            results[name]["top_tokens"] = top_tokens(model, tok, items, a.top_tokens, is_chat_model(tok))

    def value(key, r):
        return stats.summarize(list(r["per_item"][key].values()), a.n_boot, rate=key in RATES)

    def diff(key, before, after):
        return stats.paired_seeds([(before["per_item"][key], after["per_item"][key])], a.n_boot,
                                  rate=key in RATES)

    names = list(results)
    answers = ", ".join(f"{k} {v}" for k, v in sorted(_count(it["answer"] for it in items).items()))
    print(f"\n{len(items)} questions (answers {answers}); chance {results['baseline']['summary']['mc_chance']:.3f}"
          " (letter and cloze)\n")
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for key, label in MEASURES:
        print(f"| {label} | " + " | ".join(stats.fmt(value(key, results[n])) for n in names) + " |")
    print("| letters chosen | " + " | ".join(
        ", ".join(f"{k} {v}" for k, v in results[n]["summary"]["mc_letter_counts"].items()) for n in names) + " |")
    if run_n_mc and run_n_mc < len(items):
        first = [it["id"] for it in items[:run_n_mc]]
        print(f"| letter accuracy, first {run_n_mc} (the run's own evaluation) | " + " | ".join(
            stats.fmt(stats.summarize([results[n]["per_item"]["capability.mc_correct"][i] for i in first], rate=True))
            for n in names) + " |")

    comps = []
    for n in names:
        r = results[n]
        if n in ("baseline", "untuned"):
            continue
        comps.append((f"{n} - baseline", results["baseline"], r))
        ctrl = next((results[m] for m in names if results[m]["arm"] == "control" and results[m]["seed"] == r["seed"]),
                    None)
        if ctrl is not None and r["arm"] != "control":
            comps.append((f"{n} - control", ctrl, r))
    if "untuned" in results:
        comps.insert(0, ("baseline - untuned", results["untuned"], results["baseline"]))
    print("\n| paired difference | " + " | ".join(label for _, label in MEASURES) + " |")
    print("|---|" + "---|" * len(MEASURES))
    diffs = {}
    for label, before, after in comps:
        diffs[label] = {key: diff(key, before, after) for key, _ in MEASURES}
        print(f"| {label} | " + " | ".join(stats.fmt(diffs[label][key]) for key, _ in MEASURES) + " |")
    if a.top_tokens:
        print(f"\nFirst response token, mean probability over the {len(items)} questions (top {a.top_tokens} each):\n")
        for n in names:
            print(f"- {n}: " + ", ".join(f"{t!r} {p:.3f}" for t, p in results[n]["top_tokens"]))
    if a.json:
        Path(a.json).write_text(json.dumps({"run": str(run), "note": note, "n_questions": len(items),
                                            "models": results, "differences": diffs}, indent=1))
    return 0


def top_tokens(model, tok, items, k: int, chat: bool) -> list[tuple[str, float]]:
    """The 8 opening tokens with the most mean probability at the answer position over the lettered prompts."""
    from collections import Counter

    import torch

    from coherentize.chat import encode

    acc: Counter = Counter()
    for it in items:
        with torch.no_grad():
            logits = model(torch.tensor([encode(tok, it["prompt"], chat)], device=model.device)).logits[0, -1]
        v, i = torch.softmax(logits.float(), -1).topk(k)
        for p, t in zip(v.tolist(), i.tolist()):
            acc[tok.decode([t])] += p / len(items)
    return acc.most_common(8)


def _count(xs):
    from collections import Counter

    return Counter(xs)


if __name__ == "__main__":
    sys.exit(main())
