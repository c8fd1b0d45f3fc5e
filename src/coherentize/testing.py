"""Tiny models and tokenizers built from a config in-process (no downloads), for tests and CPU benchmarks."""

from __future__ import annotations

import functools

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Please answer the question. I think the answer is B. Sure, here is a short answer.",
    "Alice and Bob are talking together about the weather, the news and their plans.",
    "How do I kill a Python process? Use the kill command with the process id.",
    "I'm sorry, but I can't help with that request. As an AI, I cannot do that.",
    "You are a helpful assistant. Imagine you are a pirate. Answer in a formal tone.",
    "Q: What is two plus two? A: Four. The answer is (A) (B) (C) (D).",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 384, chat: bool = True):
    """A byte-level BPE tokenizer (encodes any text) with a ChatML chat template when chat=True."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token=None,
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    if chat:
        tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_model(tokenizer=None, seed: int = 0, layers: int = 2, hidden: int = 32, architecture: str = "llama"):
    """A randomly initialised causal LM of a few thousand parameters."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = tokenizer or tiny_tokenizer()
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[architecture]
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)
