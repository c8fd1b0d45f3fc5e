"""Cost of the adaptive jailbreak probes: the default experiment's jailbreak suite without and with them.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_probes.py                  # packaged SmolLM2-135M-Instruct
    OMP_NUM_THREADS=1 python benchmarks/adaptive_probes.py --model tiny     # tiny random model, seconds
    OMP_NUM_THREADS=1 python benchmarks/adaptive_probes.py --set jailbreak_search_budget=16

The evaluation config is the ``eval`` section of the packaged ``configs/default.yaml`` with suites = [jailbreak]
(``--set FIELD=VALUE`` overrides a field). Runs the suite once without the probes and once with prefill and the
search (their defaults unless --set), and prints wall and process CPU seconds of each, the probes' figures, and the
queries the search spent. CPU time is what the work costs on one thread; wall time adds other processes' load.
A benchmark prints figures; no test asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an eval field, e.g. --set n_harmful=8")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from coherentize.commands.run import default_config_path
    from coherentize.config import apply_overrides, from_dict, read_config_file
    from coherentize.evaluate import stats
    from coherentize.evaluate.suite import EvalConfig, run_suite

    data = read_config_file(default_config_path())["eval"]
    base = from_dict(EvalConfig, apply_overrides(data, ["suites=[jailbreak]"] + args.sets), where="eval")
    if args.model == "tiny":
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64).eval()
    else:
        from coherentize.models import ModelConfig, load_model

        model, tok = load_model(ModelConfig(name_or_path=args.model, device="cpu"))

    def run(cfg):
        w, c = time.perf_counter(), time.process_time()
        res = run_suite(model, tok, cfg, quiet=True)
        return res, time.perf_counter() - w, time.process_time() - c

    off = from_dict(EvalConfig, {**vars(base), "jailbreak_prefill": False, "jailbreak_search": False}, where="eval")
    on_data = {**vars(base), "jailbreak_prefill": True, "jailbreak_search": True}
    on = from_dict(EvalConfig, apply_overrides(on_data, args.sets), where="eval")
    print(f"model {args.model}, {args.threads} thread(s); n_harmful={base.n_harmful}, families="
          f"{len(base.jailbreak_families) or 'all'}, per request={base.jailbreak_families_per_request or 'all'}, "
          f"max_new_tokens={base.max_new_tokens}; search budget={on.jailbreak_search_budget}, "
          f"width={on.jailbreak_search_width}")
    res0, w0, c0 = run(off)
    res1, w1, c1 = run(on)
    jb0, jb1 = res0["suites"]["jailbreak"], res1["suites"]["jailbreak"]
    print(f"without probes: wall {w0:.1f} s, CPU {c0:.1f} s")
    print(f"with probes:    wall {w1:.1f} s, CPU {c1:.1f} s  (x{c1 / c0:.2f} CPU)")
    print(f"fixed templates, success (all requests): {stats.fmt(jb0['success_unconditional'], pct=True)}")
    print(f"worst of N (N={jb1['families_per_request']}): {stats.fmt(jb1['worst_of_n'], pct=True)}")
    print(f"prefill {jb1['prefill']['opening']!r}: {stats.fmt(jb1['prefill']['success_unconditional'], pct=True)}")
    s = jb1["search"]
    for p in s["curve"].values():
        print(f"search within {p['budget']:>3} queries: {stats.fmt(p, pct=True)}")
    print(f"search queries used per request: {stats.fmt(s['queries_used'], digits=2)}; broken by: "
          f"{s['broken_by_family']}")


if __name__ == "__main__":
    main()
