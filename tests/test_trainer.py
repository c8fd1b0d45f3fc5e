"""The trainer on tiny models: components equal an unpadded brute force; training moves every trainable
parameter and lowers the consistency loss (LoRA and full); resume reproduces an uninterrupted run."""

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from coherentize.chat import encode
from coherentize.clusters import Cluster, Variation
from coherentize.collate import ConsistencyCollator, build_examples, shared_suffix_len
from coherentize.recipes.train_job import LoraSettings, apply_lora
from coherentize.testing import tiny_model
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer, consistency_components

CLUSTERS = [
    Cluster(
        f"c{i}",
        f"What is {i} plus {i}?",
        [
            Variation(f"Q: what is {i} plus {i}? A:", "qa"),
            Variation(f"Please answer the question: what is {i} plus {i}?", "wrapper"),
            Variation(f"I think the answer is {i}. What is {i} plus {i}?", "opinion_cue"),
        ],
    )
    for i in range(8)
]
RESPONSES = {c.id: "The answer is " + "four " * (1 + int(c.id[1:]) % 3) for c in CLUSTERS}


def examples(tok, k=4):
    return build_examples(CLUSTERS, RESPONSES, tok, chat=True, members_per_cluster=k, seed=0)


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, disable_tqdm=True, per_device_train_batch_size=4,
                seed=0, data_seed=0, learning_rate=5e-3, max_steps=8)
    base.update(kw)
    return ConsistencyConfig(**base)


def unpadded(model, ids):
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0], out.hidden_states


def test_components_equal_brute_force_on_unpadded_sequences(tiny_tok, tiny_lm, tmp_path):
    exs = examples(tiny_tok)[:3]
    batch = ConsistencyCollator(tiny_tok.pad_token_id)(exs)
    layer = 1
    c = cfg(tmp_path, target_model="current", leash_weight=0.0, act_weight=1.0, bct_weight=1.0,
            act_layers=[layer], act_sites=["last_prompt", "prompt_suffix", "response"], act_metric="l2")
    tiny_lm.eval()
    with torch.no_grad():
        got = consistency_components(tiny_lm, None, batch, c, [layer], {"output": 1, "bct": 1, "act": 1}, tiny_tok.pad_token_id)
        js, ce, act = [], [], []
        for ex in exs:
            y = ex.response_ids
            la, ha = unpadded(tiny_lm, ex.anchor_ids + y)
            pa = len(ex.anchor_ids)
            for v in ex.variant_ids:
                lv, hv = unpadded(tiny_lm, v + y)
                pv = len(v)
                for t in range(len(y)):  # logits at position p+t-1 predict response token t
                    lpa, lpv = F.log_softmax(la[pa + t - 1], -1), F.log_softmax(lv[pv + t - 1], -1)
                    m = (lpa.exp() + lpv.exp()) / 2
                    js.append(0.5 * (lpa.exp() * (lpa - m.log())).sum() + 0.5 * (lpv.exp() * (lpv - m.log())).sum())
                    ce.append(-lpv[y[t]])
                s = shared_suffix_len(v, ex.anchor_ids)
                sites = {pv - 1} | {pv - 1 - i for i in range(s)} | {pv + t for t in range(len(y))}
                for site in sorted(sites):
                    offset = site - (pv + len(y))  # negative offset from the end, the same in the anchor
                    act.append((hv[layer][0, site] - ha[layer][0, pa + len(y) + offset]).pow(2).sum())
    assert got["output"].item() == pytest.approx(torch.stack(js).mean().item(), rel=1e-4, abs=1e-7)
    assert got["bct"].item() == pytest.approx(torch.stack(ce).mean().item(), rel=1e-4)
    assert got["act"].item() == pytest.approx(torch.stack(act).mean().item(), rel=1e-4)


def test_identical_members_have_zero_consistency_loss(tiny_tok, tiny_lm, tmp_path):
    same = [Cluster("s", "What is 2 plus 2?", [Variation("What is 2 plus 2?", "copy")] * 3)]
    exs = build_examples(same, {"s": "Four."}, tiny_tok, chat=True)
    batch = ConsistencyCollator(tiny_tok.pad_token_id)(exs)
    c = cfg(tmp_path, target_model="current", leash_weight=0.0, act_weight=1.0, act_layers=[1, 2], act_metric="l2")
    with torch.no_grad():
        got = consistency_components(tiny_lm.eval(), None, batch, c, [1, 2], {"output": 1, "act": 1}, tiny_tok.pad_token_id)
    assert got["output"].item() < 1e-6 and got["act"].item() < 1e-6


@torch.no_grad()
def consistency_on(model, tok, exs, c, reference=None):
    batch = ConsistencyCollator(tok.pad_token_id)(exs)
    parts = consistency_components(model.eval(), reference, batch, c, [1], {"output": 1.0, "act": 1.0}, tok.pad_token_id)
    return parts["output"].item() + parts["act"].item()


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_training_moves_every_trainable_parameter_and_lowers_consistency(tiny_tok, tmp_path, mode):
    model = tiny_model(tiny_tok, seed=1)
    if mode == "lora":
        model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        # Fresh LoRA B matrices are zero; a nonzero init lets every adapter matrix receive gradient from step 1.
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    exs = examples(tiny_tok)
    c = cfg(tmp_path, act_weight=1.0, act_layers=[1], act_metric="l2_normalized", leash_weight=0.05,
            learning_rate=2e-2 if mode == "lora" else 3e-3, max_steps=12)
    measure = cfg(tmp_path, target_model="current", leash_weight=0.0, act_weight=1.0, act_layers=[1], act_metric="l2_normalized")
    before_loss = consistency_on(model, tiny_tok, exs, measure)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and (mode == "full") == (len(trainable) == len(list(model.parameters())))
    trainer = ConsistencyTrainer(model=model, args=c, train_dataset=exs, data_collator=ConsistencyCollator(tiny_tok.pad_token_id),
                                 processing_class=tiny_tok)
    trainer.train()
    unchanged = [n for n, p in trainer.model.named_parameters() if n in trainable and torch.equal(p, trainable[n])]
    assert not unchanged, f"parameters that did not move: {unchanged[:5]}"
    after_loss = consistency_on(trainer.model, tiny_tok, exs, measure)
    assert after_loss < 0.8 * before_loss, (before_loss, after_loss)
    logged = [h for h in trainer.state.log_history if "loss/output" in h]
    assert logged and all({"loss/act", "loss/leash", "loss/act/layer1"} <= set(h) for h in logged)
    if mode == "full":
        # The frozen reference copy did not move.
        assert all(torch.equal(p, trainable[n]) for n, p in trainer.ref_model.named_parameters())


class StopAt(TrainerCallback):
    """Ends training after a given step, as a kill would (the checkpoint of that step is already saved)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


def lora_trainer(tok, tmp_path, out, max_steps, **kw):
    torch.manual_seed(0)
    model = apply_lora(tiny_model(tok, seed=2), LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    c = cfg(tmp_path, output_dir=str(out), max_steps=max_steps, bct_weight=0.5, act_weight=1.0, act_layers=[1],
            save_strategy="steps", save_steps=2, **kw)
    return ConsistencyTrainer(model=model, args=c, train_dataset=examples(tok), data_collator=ConsistencyCollator(tok.pad_token_id),
                              processing_class=tok)


def test_resume_from_checkpoint_gives_the_same_final_weights(tiny_tok, tmp_path):
    straight = lora_trainer(tiny_tok, tmp_path, tmp_path / "a", 6)
    straight.train()
    interrupted = lora_trainer(tiny_tok, tmp_path, tmp_path / "b", 6)
    interrupted.add_callback(StopAt(4))
    interrupted.train()
    assert (tmp_path / "b" / "checkpoint-4").is_dir()
    resumed = lora_trainer(tiny_tok, tmp_path, tmp_path / "b", 6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    a = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6)
    # And the run really trained past the checkpoint: weights at step 4 differ from the final ones.
    assert any(not torch.allclose(p, a[n]) for n, p in interrupted.model.named_parameters() if p.requires_grad)


def test_default_batches_hold_examples_of_similar_length(tiny_tok, tmp_path):
    """Short prompts beside long wrapped ones: by default each batch holds examples of similar length (little
    padding), every example once per epoch; train_sampling_strategy random mixes them."""
    wrap = "Imagine you are a pirate in a story, and answer in a formal tone. " * 6
    clusters = [Cluster(f"c{i}", f"What is {i} plus {i}?",
                        [Variation((wrap if i % 2 else "") + f"Q: what is {i} plus {i}?", "v")]) for i in range(16)]
    exs = build_examples(clusters, {c.id: "The answer is four." for c in clusters}, tiny_tok, chat=True, seed=0)

    def epoch(**kw):
        trainer = ConsistencyTrainer(model=tiny_model(tiny_tok), args=cfg(tmp_path, **kw), train_dataset=exs,
                                     data_collator=ConsistencyCollator(tiny_tok.pad_token_id),
                                     processing_class=tiny_tok)
        masks = [b["variant_attention_mask"] for b in trainer.get_train_dataloader()]
        real = sum(int(m.sum()) for m in masks)
        return sum(m.shape[0] for m in masks), real, 1 - real / sum(m.numel() for m in masks)

    rows, real, padding = epoch()
    assert ConsistencyConfig(output_dir=str(tmp_path)).train_sampling_strategy == "group_by_length"
    assert (rows, real) == (16, sum(len(ex.variant_ids[0]) + len(ex.response_ids) for ex in exs))
    rows_r, real_r, padding_r = epoch(train_sampling_strategy="random")
    assert (rows_r, real_r) == (rows, real)
    assert padding < 0.1 < padding_r
    # evaluation keeps its order (Trainer's own group_by_length sampler would look for an input_ids column)
    trainer = ConsistencyTrainer(model=tiny_model(tiny_tok), args=cfg(tmp_path, per_device_eval_batch_size=16),
                                 eval_dataset=exs, data_collator=ConsistencyCollator(tiny_tok.pad_token_id),
                                 processing_class=tiny_tok)
    (batch,) = list(trainer.get_eval_dataloader())
    assert torch.equal(batch["variant_input_ids"], ConsistencyCollator(tiny_tok.pad_token_id)(exs)["variant_input_ids"])


def test_lora_reference_is_the_model_with_adapters_disabled(tiny_tok, tmp_path):
    base = tiny_model(tiny_tok, seed=3)
    with torch.no_grad():
        ref_logits = base(input_ids=torch.tensor([[5, 6, 7]])).logits
    model = apply_lora(base, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    trainer = ConsistencyTrainer(model=model, args=cfg(tmp_path), train_dataset=examples(tiny_tok),
                                 data_collator=ConsistencyCollator(tiny_tok.pad_token_id), processing_class=tiny_tok)
    assert trainer.ref_model is None  # no second copy in memory
    with torch.no_grad(), trainer.original_model(trainer.model) as original:
        torch.testing.assert_close(original(input_ids=torch.tensor([[5, 6, 7]])).logits, ref_logits)
    with torch.no_grad():
        assert not torch.allclose(trainer.model(input_ids=torch.tensor([[5, 6, 7]])).logits, ref_logits)


def test_examples_split_large_clusters_and_truncate_prompts_from_the_left(tiny_tok):
    exs = build_examples(CLUSTERS[:1], RESPONSES, tiny_tok, chat=True, members_per_cluster=2, max_prompt_length=6)
    assert len(exs) == 3 and all(len(e.variant_ids) == 1 for e in exs)
    full = encode(tiny_tok, CLUSTERS[0].anchor, True)
    assert exs[0].anchor_ids == full[-6:]
    with pytest.raises(ValueError):
        build_examples(CLUSTERS[:1], RESPONSES, tiny_tok, chat=True, members_per_cluster=1)


class PoisonAt(TrainerCallback):
    """Sets one trainable weight to NaN at the start of a given step, so that step's loss is NaN."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_tok, tmp_path):
    from safetensors.torch import load_file

    from coherentize.errors import CoherentizeError

    out = tmp_path / "nan"
    trainer = lora_trainer(tiny_tok, tmp_path, out, 6)
    trainer.args.save_steps = 1
    trainer.add_callback(PoisonAt(3))
    with pytest.raises(CoherentizeError, match=r"the loss is nan at step 3 .*checkpoint-2") as err:
        trainer.train()  # a CoherentizeError: the CLI prints its one line and exits 2
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    saved = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert saved and all(torch.isfinite(t).all() for t in saved.values())


@pytest.mark.parametrize("lora", [True, False])
def test_bf16_mixed_precision_autocasts_every_pass_and_keeps_float32_weights(tiny_tok, tiny_lm, tmp_path, lora):
    """bf16=True (precision bf16-mixed): the trained pass and the theta0 pass (adapters off / the frozen copy) both
    compute in bfloat16, the trained weights stay float32 and move, and the loss is float32."""
    model = apply_lora(tiny_lm, LoraSettings(r=4, target_modules=["q_proj", "v_proj"])) if lora else tiny_lm
    seen = []
    for m in tiny_lm.modules():  # the frozen copy (full fine-tuning) is a deep copy: it carries the hooks too
        if type(m) is torch.nn.Linear:
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    trainer = ConsistencyTrainer(
        model=model, args=cfg(tmp_path, bf16=True, max_steps=2, leash_weight=0.1, target_model="original"),
        train_dataset=examples(tiny_tok), data_collator=ConsistencyCollator(tiny_tok.pad_token_id),
        processing_class=tiny_tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for _, p in trained)
    assert all(not torch.equal(p, before[n]) for n, p in trained)
    ref = trainer.ref_model
    assert lora or (ref is not None and next(ref.parameters()).dtype == torch.float32)
