"""A few consistency steps under torch FSDP2 (fully_shard per decoder layer, gloo on CPU), or in one process;
full fine-tuning with a frozen reference copy sharded the same way (used by tests/test_distributed.py).

    python tests/fsdp2_train.py OUT --world 1      # one process, the whole batch
    python tests/fsdp2_train.py OUT --world 2      # two processes (spawned here), half the batch each

Every rank writes OUT/rank{r}.json: its per-step losses (averaged over ranks) and final weights (full tensors).
The Trainer is not used: accelerate enables FSDP only on accelerators (on CPU it falls back to DDP), so this drives
trainer.consistency_components, the optimizer and the gradient averaging of fully_shard directly.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from distributed_train import examples  # noqa: E402

from coherentize.collate import ConsistencyCollator  # noqa: E402
from coherentize.testing import tiny_model, tiny_tokenizer  # noqa: E402
from coherentize.trainer import ConsistencyConfig, consistency_components  # noqa: E402

WEIGHTS = {"output": 1.0, "act": 1.0, "leash": 0.1}


def shard(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def run(rank: int, world: int, out: Path, steps: int, batch: int, port: int) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0, layers=2, hidden=32)
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    if world > 1:
        model, ref = shard(model), shard(ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = ConsistencyConfig(output_dir=str(out / "unused"), output_divergence="forward_kl", act_weight=1.0,
                            act_layers=[1], leash_weight=0.1, leash_fraction=1.0, use_cpu=True, report_to="none")
    data = examples(steps * batch, len(tok), (3, 12))
    collate = ConsistencyCollator(tok.pad_token_id)
    per_rank = batch // world
    losses = []

    @contextlib.contextmanager
    def reference():
        yield ref

    for s in range(steps):
        chunk = data[s * batch + rank * per_rank : s * batch + (rank + 1) * per_rank]
        parts = consistency_components(model.train(), reference, collate(chunk), cfg, [1], WEIGHTS, tok.pad_token_id)
        loss = sum(WEIGHTS[k] * parts[k] for k in WEIGHTS)
        loss.backward()  # fully_shard averages the gradients over ranks
        opt.step()
        opt.zero_grad()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(value.item())
    full = lambda w: w.full_tensor() if hasattr(w, "full_tensor") else w  # noqa: E731
    weights = {n: full(w.detach()).flatten().tolist() for n, w in model.named_parameters()}
    ref_weights = {n: full(w.detach()).flatten().tolist() for n, w in ref.named_parameters()}
    (out / f"rank{rank}.json").write_text(json.dumps({"losses": losses, "weights": weights, "ref": ref_weights,
                                                      "sharded": type(model).__name__}))
    if world > 1:
        dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--port", type=int, default=29531)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.world == 1:
        run(0, 1, out, a.steps, a.batch, a.port)
    else:
        torch.multiprocessing.spawn(run, args=(a.world, out, a.steps, a.batch, a.port), nprocs=a.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
