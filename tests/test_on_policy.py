"""On-policy consistency (issue 12): rollouts sampled from the model under each variant, scored per token against
theta0 on the clean prompt, as the exact reverse KL or OPCT's importance-weighted sampled-token estimate.

The brute force runs every prompt + rollout unpadded, one at a time, and sums in float64 with plain torch; nothing in
it comes from the code under test except the sampled tokens themselves (fixed by the seed).
"""

import contextlib

import pytest
import torch

from coherentize import losses
from coherentize.clusters import Cluster, Variation
from coherentize.collate import ConsistencyCollator, build_examples
from coherentize.errors import CoherentizeError
from coherentize.generation import _eos_ids
from coherentize.recipes.train_job import LoraSettings, apply_lora
from coherentize.testing import tiny_model, tiny_tokenizer
from coherentize.trainer import (ConsistencyConfig, ConsistencyTrainer, consistency_components, on_policy_passes,
                                 rollout_seed, sample_rollouts)

QUESTIONS = ["What is the capital of France?", "What is two plus two?", "Why is the sky blue?"]
WRAP = "Please answer the question.\n\n"


def _clusters(chat):
    out = []
    for i, q in enumerate(QUESTIONS):
        vs = [Variation(WRAP + q, "wrapper"), Variation("Q: " + q + " A:", "qa")]
        if chat:
            vs.append(Variation([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": q}],
                                "persona"))
        out.append(Cluster(f"c{i}", q, vs))
    return out


def _batch(tok, chat):
    clusters = _clusters(chat)
    exs = build_examples(clusters, {c.id: "Paris." for c in clusters}, tok, chat, members_per_cluster=4)
    return exs, ConsistencyCollator(tok.pad_token_id)(exs)


def _boost_eos(model, eos_id, bias):
    """Raise the EOS logit of every forward by `bias`, so rollouts end at different lengths."""
    def hook(_m, _args, out):
        out = out.clone()
        out[..., eos_id] += bias
        return out
    return model.lm_head.register_forward_hook(hook)


def _models(tok, eos_bias=3.0):
    """theta (peaked: lm_head x4) and theta0 (flatter), so that KL(p || q) and KL(q || p) differ clearly."""
    model, ref = tiny_model(tok, seed=1).eval(), tiny_model(tok, seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
        ref.lm_head.weight.mul_(1.5)
    eos = tok.eos_token_id
    _boost_eos(model, eos, eos_bias)
    return model, ref


def _cfg(**kw):
    base = dict(output_dir="/tmp/unused", output_weight=0.0, leash_weight=0.0, on_policy_weight=1.0,
                on_policy_rollouts=2, on_policy_temperature=0.7, on_policy_max_new_tokens=10)
    base.update(kw)
    return ConsistencyConfig(**base)


def _fixed(ref):
    @contextlib.contextmanager
    def reference():
        yield ref
    return reference


def brute_force(model, ref, exs, rollouts, tau):
    """Per sampled token, from unpadded float64 forwards: the exact reverse KL, the swapped (forward) KL, the
    sampled-token term w * (log p(y) - log q(y)) and log mu(y)."""
    variants = [(v, ex.anchor_ids) for ex in exs for v in ex.variant_ids]  # the collator's variant order
    exact, swapped, sampled, log_mu = [], [], [], []
    for r in range(rollouts.tokens.shape[0]):
        n = int(rollouts.lengths[r])
        y = rollouts.tokens[r, -n:].tolist()
        vp, ap = variants[int(rollouts.variant[r])]
        s = model(input_ids=torch.tensor([vp + y])).logits[0].double()
        t = ref(input_ids=torch.tensor([ap + y])).logits[0].double()
        for i in range(n):
            zs, zt = s[len(vp) + i - 1], t[len(ap) + i - 1]  # the positions predicting y_i
            p, q = torch.softmax(zs, -1), torch.softmax(zt, -1)
            mu = torch.softmax(zs / tau, -1)
            exact.append((p * (p.log() - q.log())).sum())
            swapped.append((q * (q.log() - p.log())).sum())
            sampled.append(p[y[i]] / mu[y[i]] * (p[y[i]].log() - q[y[i]].log()))
            log_mu.append(mu[y[i]].log())
    mean = lambda xs: torch.stack(xs).mean().item()  # noqa: E731
    return {"exact": mean(exact), "swapped": mean(swapped), "sampled": mean(sampled), "log_mu": torch.stack(log_mu)}


@pytest.mark.parametrize("estimator", ["exact", "sampled"])
@pytest.mark.parametrize("chat", [True, False])
def test_on_policy_equals_brute_force_in_the_reverse_direction(chat, estimator):
    tok = tiny_tokenizer(chat=chat)
    exs, batch = _batch(tok, chat)
    model, ref = _models(tok)
    c = _cfg(on_policy_estimator=estimator)
    eos = _eos_ids(model, tok)
    assert eos == {tok.eos_token_id}
    with torch.no_grad():
        passes = on_policy_passes(model, _fixed(ref), batch, c, tok.pad_token_id, eos, seed=5)
        got = consistency_components(model, _fixed(ref), batch, c, [1], {"on_policy": 1.0}, tok.pad_token_id,
                                     eos=eos, seed=5)["on_policy"].item()
        ro = passes.rollouts
        # rollouts: n per variant, ending at their first EOS (kept) or at the token limit; uneven lengths
        V = batch["variant_input_ids"].shape[0]
        assert ro.variant.tolist() == [v for v in range(V) for _ in range(c.on_policy_rollouts)]
        lengths = ro.lengths.tolist()
        assert len(set(lengths)) > 1 and max(lengths) <= c.on_policy_max_new_tokens
        ended = 0
        for r, n in enumerate(lengths):
            y = ro.tokens[r, -n:].tolist()
            assert all(t not in eos for t in y[:-1])
            assert y[-1] in eos or n == c.on_policy_max_new_tokens
            ended += y[-1] in eos and n < c.on_policy_max_new_tokens
            assert (ro.tokens[r, : ro.tokens.shape[1] - n] == 0).all()
        assert ended > 0
        expect = brute_force(model, ref, exs, ro, c.on_policy_temperature)
    assert losses.on_policy_component(passes, estimator).item() == pytest.approx(got, rel=1e-6)
    assert got == pytest.approx(expect[estimator], rel=2e-4, abs=1e-6)
    mask = losses.tail_mask(ro.lengths, ro.tokens.shape[1])
    torch.testing.assert_close(ro.sample_logp[mask].double(), expect["log_mu"], rtol=1e-4, atol=1e-4)
    if estimator == "exact":
        # The direction: KL(p_theta || p_theta0), not KL(p_theta0 || p_theta), and the two differ clearly here.
        assert abs(expect["swapped"] - expect["exact"]) > 0.2 * expect["exact"]
        assert got != pytest.approx(expect["swapped"], rel=0.1)
    else:
        # At temperature 0.7 the importance weights are not 1: dropping them would give another number.
        assert abs(expect["sampled"] - expect["exact"]) > 1e-3


def test_rollouts_are_fixed_by_the_seed():
    tok = tiny_tokenizer(chat=True)
    _, batch = _batch(tok, True)
    model, ref = _models(tok)
    c = _cfg()
    eos = _eos_ids(model, tok)
    with torch.no_grad():
        a, b, other = (on_policy_passes(model, _fixed(ref), batch, c, tok.pad_token_id, eos, seed=s).rollouts
                       for s in (7, 7, 8))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.sample_logp, b.sample_logp)
    assert a.tokens.tolist() != other.tokens.tolist()
    assert rollout_seed(0, 0) != rollout_seed(0, 1) != rollout_seed(1, 0)
    assert rollout_seed(0, 3, rank=0) != rollout_seed(0, 3, rank=1)


def test_sampling_ends_each_row_at_its_first_eos_and_decoding_on_changes_nothing():
    tok = tiny_tokenizer(chat=True)
    model = tiny_model(tok, seed=2).eval()
    _boost_eos(model, tok.eos_token_id, 2.5)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    eos = {tok.eos_token_id}
    runs = []
    for stop_early in (True, False):
        gen = torch.Generator().manual_seed(3)
        runs.append(sample_rollouts(model, prompts, 3, 0.7, 12, eos, tok.pad_token_id, gen, stop_early))
    (ys, lps), (ys_on, lps_on) = runs
    assert len(ys) == 9 and ys == ys_on and lps == lps_on
    assert any(len(y) < 12 for y in ys) and any(len(y) > 1 for y in ys)
    for y, lp in zip(ys, lps):
        assert len(y) == len(lp) and all(t not in eos for t in y[:-1])
        assert y[-1] in eos or len(y) == 12
    assert model.training is False
    model.train()
    sample_rollouts(model, prompts, 1, 0.7, 3, eos, tok.pad_token_id, torch.Generator().manual_seed(0))
    assert model.training  # the mode is restored


def test_padding_columns_are_never_scored():
    """Rollouts of lengths 3, 1 and 2 in 3 columns: whatever stands in the padding columns (left of a rollout) does
    not change the loss, which is the mean over the 6 sampled tokens alone."""
    torch.manual_seed(0)
    R, L, V = 3, 3, 5
    lengths = torch.tensor([3, 1, 2])
    mask = losses.tail_mask(lengths, L)
    student, teacher = torch.randn(R, L, V), torch.randn(R, L, V)
    tokens = torch.randint(0, V, (R, L))
    slp = torch.log_softmax(student / 0.7, -1).gather(2, tokens[..., None]).squeeze(-1)
    for est in ("exact", "sampled"):
        p = losses.OnPolicyPass(student, teacher, losses.Rollouts(tokens, lengths, slp, torch.arange(R)))
        value = losses.on_policy_component(p, est).item()
        junk_s, junk_t, junk_y, junk_lp = student.clone(), teacher.clone(), tokens.clone(), slp.clone()
        junk_s[~mask], junk_t[~mask], junk_y[~mask], junk_lp[~mask] = 1e4, -1e4, 0, -50.0
        q = losses.OnPolicyPass(junk_s, junk_t, losses.Rollouts(junk_y, lengths, junk_lp, torch.arange(R)))
        assert losses.on_policy_component(q, est).item() == pytest.approx(value, rel=1e-6)
        terms = []
        for r in range(R):
            for j in range(L - int(lengths[r]), L):
                lp, lq = torch.log_softmax(student[r, j], -1), torch.log_softmax(teacher[r, j], -1)
                y = tokens[r, j]
                terms.append((lp.exp() * (lp - lq)).sum() if est == "exact"
                             else (lp[y] - slp[r, j]).exp() * (lp[y] - lq[y]))
        assert len(terms) == 6 and value == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_sampled_estimator_is_unbiased_for_the_reverse_kl_and_its_gradient():
    """On a 3-token vocabulary, enumerate every sample y ~ mu (the policy at temperature 0.7): the expectation of the
    sampled form's value is KL(p || q) and of its gradient is grad KL(p || q), the exact form's; KL(q || p) differs."""
    z = torch.tensor([[3.0, 0.0, -1.0]], dtype=torch.float64)
    zq = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    p, q = torch.softmax(z[0], -1), torch.softmax(zq[0], -1)
    kl_pq, kl_qp = (p * (p / q).log()).sum(), (q * (q / p).log()).sum()
    assert abs(kl_pq - kl_qp) > 0.3  # the two directions differ here (1.52 vs 2.00)

    def grad(fn):
        x = z.clone().requires_grad_(True)
        fn(x).backward()
        return x.grad[0]

    exact = grad(lambda x: losses.on_policy_divergence(x, zq, torch.tensor([0]), "exact"))
    assert losses.on_policy_divergence(z, zq, torch.tensor([0]), "exact").item() == pytest.approx(kl_pq.item())
    torch.testing.assert_close(exact, grad(lambda x: (torch.softmax(x[0], -1) * (torch.log_softmax(x[0], -1)
                                                                                 - q.log())).sum()))
    mu = torch.softmax(z[0] / 0.7, -1)
    value, g = 0.0, torch.zeros(3, dtype=torch.float64)
    for y in range(3):
        args = (zq, torch.tensor([y]), "sampled", mu[y].log().reshape(1))
        value += mu[y] * losses.on_policy_divergence(z, *args)
        g += mu[y] * grad(lambda x: losses.on_policy_divergence(x, *args))
    assert value.item() == pytest.approx(kl_pq.item(), rel=1e-5)
    torch.testing.assert_close(g, exact, rtol=1e-5, atol=1e-7)
    wrong = grad(lambda x: (q * (q.log() - torch.log_softmax(x[0], -1))).sum())  # grad KL(q || p)
    assert (g - wrong).abs().max() > 0.05


def test_on_policy_composes_with_the_leash_and_the_other_components():
    tok = tiny_tokenizer(chat=True)
    _, batch = _batch(tok, True)
    model, ref = _models(tok)
    eos = _eos_ids(model, tok)
    c = _cfg(output_weight=1.0, bct_weight=1.0, leash_weight=0.1, act_weight=1.0, act_layers=[1])
    everything = {"output": 1.0, "bct": 1.0, "act": 1.0, "leash": 0.1, "on_policy": 1.0}
    run = lambda w: consistency_components(model, _fixed(ref), batch, c, [1], w, tok.pad_token_id,  # noqa: E731
                                           eos=eos, seed=4)
    with torch.no_grad():
        full = run(everything)
        without = run({k: v for k, v in everything.items() if k != "on_policy"})
        alone = run({"on_policy": 1.0})
        with_leash = run({"on_policy": 1.0, "leash": 0.1})
    assert set(full) >= {"output", "bct", "act", "leash", "on_policy"} and "on_policy" not in without
    for k in without:
        assert full[k].item() == pytest.approx(without[k].item(), rel=1e-5), k
    assert set(alone) == {"on_policy"} and set(with_leash) == {"on_policy", "leash"}
    assert full["on_policy"].item() == pytest.approx(alone["on_policy"].item(), rel=1e-5)
    assert with_leash["leash"].item() == pytest.approx(full["leash"].item(), rel=1e-5)
    assert with_leash["on_policy"].item() == pytest.approx(alone["on_policy"].item(), rel=1e-5)


CLUSTERS = [
    Cluster(f"c{i}", f"What is {i} plus {i}?",
            [Variation(f"Q: what is {i} plus {i}? A:", "qa"),
             Variation(f"Please answer the question: what is {i} plus {i}?", "wrapper"),
             Variation(f"I think the answer is {i}. What is {i} plus {i}?", "opinion_cue")])
    for i in range(4)
]


def _divergence(model, reference, tok, exs, c, seeds=(11, 12, 13)):
    """The exact on-policy divergence of the model, in evaluation mode, averaged over a few fixed seeds."""
    batch = ConsistencyCollator(tok.pad_token_id)(exs)
    was = model.training
    model.eval()
    with torch.no_grad():
        vals = [consistency_components(model, reference, batch, c, [1], {"on_policy": 1.0}, tok.pad_token_id,
                                       eos=_eos_ids(model, tok), seed=s)["on_policy"].item() for s in seeds]
    model.train(was)
    return sum(vals) / len(vals)


LORA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("mode,estimator,lr,steps,rollouts,factor", [
    ("lora", "exact", 1e-2, 8, 2, 0.7),
    ("full", "exact", 1e-3, 8, 2, 0.7),
    ("lora", "sampled", 1e-2, 12, 8, 0.8),  # the sampled-token gradient is noisier: more rollouts, more steps
])
def test_training_moves_parameters_and_lowers_the_on_policy_divergence(tmp_path, mode, estimator, lr, steps, rollouts,
                                                                       factor):
    """Through ConsistencyTrainer.train with on-policy consistency alone: every trainable parameter moves and the
    exact on-policy divergence (measured on the model's own rollouts, fixed seeds) falls. Raw text, so that the clean
    and varied prompts end in different tokens; lm_head x10 so that the tiny model's divergence is well above noise."""
    tok = tiny_tokenizer(chat=False)
    model = tiny_model(tok, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    if mode == "lora":
        model = apply_lora(model, LoraSettings(r=8, alpha=16, target_modules=LORA_ALL))
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    exs = build_examples(CLUSTERS, {c.id: "Four." for c in CLUSTERS}, tok, chat=False, members_per_cluster=4)
    args = ConsistencyConfig(output_dir=str(tmp_path / "out"), use_cpu=True, disable_tqdm=True,
                             per_device_train_batch_size=2, seed=0, data_seed=0, max_steps=steps, learning_rate=lr,
                             output_weight=0.0, leash_weight=0.0, on_policy_weight=1.0, on_policy_rollouts=rollouts,
                             on_policy_max_new_tokens=8, on_policy_estimator=estimator)
    assert args.needs_reference
    measure = _cfg(on_policy_rollouts=2, on_policy_max_new_tokens=8)  # built first: TrainingArguments resets accelerate
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = ConsistencyTrainer(model=model, args=args, train_dataset=exs,
                                 data_collator=ConsistencyCollator(tok.pad_token_id), processing_class=tok)
    reference = lambda: trainer.original_model(trainer.model)  # noqa: E731
    before = _divergence(trainer.model, reference, tok, exs, measure)
    trainer.train()
    after = _divergence(trainer.model, reference, tok, exs, measure)
    unchanged = [n for n, p in trainer.model.named_parameters() if n in trainable and torch.equal(p, trainable[n])]
    assert not unchanged, f"parameters that did not move: {unchanged[:5]}"
    assert after < factor * before, (before, after)
    logged = [h for h in trainer.state.log_history if "loss/on_policy" in h]
    assert len(logged) == steps and "loss/output" not in logged[0]
    if mode == "full":  # theta0, the teacher, did not move
        assert all(torch.equal(p, trainable[n]) for n, p in trainer.ref_model.named_parameters())


def test_config_validation_names_the_field():
    with pytest.raises(CoherentizeError, match="on_policy_estimator"):
        _cfg(on_policy_estimator="reinforce")
    with pytest.raises(CoherentizeError, match="on_policy_rollouts"):
        _cfg(on_policy_rollouts=0)
    with pytest.raises(CoherentizeError, match="on_policy_max_new_tokens"):
        _cfg(on_policy_max_new_tokens=0)
    with pytest.raises(CoherentizeError, match="on_policy_temperature"):
        _cfg(on_policy_temperature=0.0)
    with pytest.raises(ValueError, match="on_policy_weight must be >= 0"):
        _cfg(on_policy_weight=-1.0)
    with pytest.raises(ValueError, match="at least one of"):
        _cfg(on_policy_weight=0.0)
    c = _cfg(target_model="current")  # on-policy alone is a valid objective, and it needs theta0
    assert c.needs_reference and c.on_policy_estimator == "exact"


def test_train_job_runs_the_on_policy_arm_from_a_config(tmp_path, tiny_tok):
    """`coherentize train`'s library call with on-policy alone (the experiment's on-policy arm): it trains and logs
    loss/on_policy; a wrong estimator is one CoherentizeError naming the field."""
    from coherentize.clusters import write_clusters
    from coherentize.config import apply_overrides, from_dict
    from coherentize.recipes.train_job import TrainJob, run_training

    folder = tmp_path / "tiny"
    tiny_model(tiny_tok, seed=4).save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    clusters = [Cluster(f"c{i}", f"Tell me about topic {i}.", [Variation(f"Q: topic {i}?", "qa")], [],
                        {"split": "train"}) for i in range(4)]
    write_clusters(tmp_path / "c.jsonl", clusters)

    def job(*extra):
        return from_dict(TrainJob, apply_overrides({}, [
            f"model.name_or_path={folder}", "model.device=cpu", f"data.train_file={tmp_path / 'c.jsonl'}",
            "data.response_max_new_tokens=4", f"train.output_dir={tmp_path / 'out'}", "train.max_steps=2",
            "train.disable_tqdm=true", "train.per_device_train_batch_size=2", "train.output_weight=0",
            "train.on_policy_weight=1", "train.on_policy_max_new_tokens=4", "lora.r=2", "lora.alpha=4", *extra]))

    metrics = run_training(job())
    logged = [h for h in metrics["train_log"] if "loss/on_policy" in h]
    assert len(logged) == 2 and all(h["loss/on_policy"] >= 0 for h in logged)
    with pytest.raises(CoherentizeError, match="on_policy_estimator"):
        job("train.on_policy_estimator=forward")
