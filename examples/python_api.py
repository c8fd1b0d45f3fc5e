import sys

import coherentize as ch
from peft import LoraConfig, get_peft_model

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"  # packaged name, folder, .gguf or hub id
model, tok = ch.load_model(ch.ModelConfig(name_or_path=name), for_training=True)
chat = tok.chat_template is not None

# 1. clusters: shipped benign prompts, each with rule-based variations (instruction wrapper, typos, opinion cue)
prompts = ch.load_prompt_set("benign", "train")[:8]
clusters = ch.build_clusters(prompts, ch.families_by_name(["wrapper", "typos", "opinion_cue"]), seed=0)

# 2. a datasets.Dataset of examples: every member is trained towards the model's own answer to the anchor
answers = ch.generate(model, tok, [c.anchor for c in clusters], chat, max_new_tokens=24)
train = ch.examples_dataset(clusters, {c.id: a for c, a in zip(clusters, answers)}, tok)

# 3. LoRA + ConsistencyTrainer: output consistency (JS to the anchor's distribution) plus ACT on the middle layer
model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
args = ch.ConsistencyConfig(output_dir="runs/python_api", max_steps=10, per_device_train_batch_size=4,
                            learning_rate=5e-4, act_weight=0.5)
trainer = ch.ConsistencyTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                                data_collator=ch.ConsistencyCollator(tok.pad_token_id))
trainer.train()

# 4. evaluate probes never trained on: held-out jailbreak families and over-refusal (each with n and a 95% CI)
cfg = ch.EvalConfig(suites=["jailbreak", "overrefusal"], n_harmful=8, n_overrefusal=8, jailbreak_sources=["project"])
results = ch.run_suite(model, tok, cfg)
ch.write_results(results, "runs/python_api/eval")  # results.json + records.csv (redacted excerpts)
print(results["suites"]["overrefusal"]["refusal_rate"])
