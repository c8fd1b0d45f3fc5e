"""Two evaluations one after another on all cores vs two at once in processes of their own (``jobs: 2``).

    python benchmarks/parallel_jobs.py                                   # default config's eval, packaged model
    python benchmarks/parallel_jobs.py --config configs/paraphrase_only.yaml --model ORGANISM_DIR

``coherentize run`` with ``jobs: N`` runs the baseline and each arm-seed's training and evaluation as jobs, N at a
time, each in a spawned process with cores / N torch threads (recipes/jobs.run_in_processes). This prints the wall
time of the same two evaluations (``run_suite`` with the config's ``eval`` section, the model as its own reference)
run (a) one after another in one process with every core's thread, and (b) at once in two spawned processes with
half the threads each, and the throughput ratio. Small decode batches and Python overhead use two threads poorly,
which is what two one-thread processes win back; memory bandwidth is what they share.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time


def _evaluate(model_name: str, config: str | None, threads: int) -> tuple[float, dict]:
    import torch

    torch.set_num_threads(threads)
    from coherentize.commands.run import default_config_path
    from coherentize.config import from_dict, read_config_file
    from coherentize.evaluate.suite import EvalConfig, run_suite
    from coherentize.models import ModelConfig, load_model

    ev = from_dict(EvalConfig, read_config_file(config or default_config_path())["eval"], where="eval")
    if model_name == "tiny":
        from coherentize.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(tok, layers=4, hidden=64).eval()
    else:
        model, tok = load_model(ModelConfig(name_or_path=model_name, device="cpu"))
    t = time.perf_counter()
    res = run_suite(model, tok, ev, reference_model=model, quiet=True)
    return time.perf_counter() - t, res["per_item"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model load_model reads, or 'tiny'")
    ap.add_argument("--config", help="take the eval section from this experiment config (default: the packaged one)")
    ap.add_argument("--cores", type=int, default=None, help="default: the cores `coherentize run` counts")
    args = ap.parse_args()

    if args.cores is None:
        from coherentize.recipes.jobs import cpu_cores

        args.cores = cpu_cores()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:  # (a) in a fresh process too, so both sides pay the same imports and loads
        t0 = time.perf_counter()
        seq = [pool.apply(_evaluate, (args.model, args.config, args.cores)) for _ in range(2)]
        wall_seq = time.perf_counter() - t0
        pool.close()
        pool.join()
    with ctx.Pool(2) as pool:
        t0 = time.perf_counter()
        par = pool.starmap(_evaluate, [(args.model, args.config, max(1, args.cores // 2))] * 2)
        wall_par = time.perf_counter() - t0
        pool.close()
        pool.join()
    a, b = seq[0][1], par[0][1]
    values = [(x, b[m][k]) for m in a for k, x in a[m].items()]
    differ = sum(abs(x - y) > 1e-4 * max(1.0, abs(x)) for x, y in values)
    print(f"model={args.model} config={args.config or 'default'} cores={args.cores}")
    print(f"(a) one after another, {args.cores} threads: {wall_seq:6.1f} s wall "
          f"(evaluations {seq[0][0]:.1f} + {seq[1][0]:.1f} s)")
    print(f"(b) two at once, {max(1, args.cores // 2)} thread(s) each:   {wall_par:6.1f} s wall "
          f"(evaluations {par[0][0]:.1f}, {par[1][0]:.1f} s)")
    print(f"throughput (b)/(a): {wall_seq / wall_par:.2f}x; per-item values differing by more than 1e-4 "
          f"(relative): {differ} of {len(values)} (threads change float rounding only)")


if __name__ == "__main__":
    main()
