"""Prompts as the model sees them: raw text for base models, chat-template text for chat models.

A prompt is either a string or a list of chat messages ``[{"role": ..., "content": ...}]``. A string given to a chat
model becomes one user message; messages given to a base model are joined as plain text.
"""

from __future__ import annotations

from typing import Union

Prompt = Union[str, list[dict]]


def is_chat_model(tokenizer, mode: str = "auto") -> bool:
    """Whether prompts are rendered with the chat template. mode: 'auto' (if the tokenizer has one), 'chat', 'raw'."""
    if mode == "chat":
        return True
    if mode == "raw":
        return False
    return bool(getattr(tokenizer, "chat_template", None))


def to_messages(prompt: Prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prompt_text(prompt: Prompt) -> str:
    """The human-readable text of a prompt (messages joined), for embeddings, overlap checks and reports."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt)


def render(tokenizer, prompt: Prompt, chat: bool) -> str:
    """The exact string fed to the model before the response begins."""
    if not chat:
        return prompt_text(prompt)
    return tokenizer.apply_chat_template(to_messages(prompt), tokenize=False, add_generation_prompt=True)


def encode(tokenizer, prompt: Prompt, chat: bool) -> list[int]:
    """Token ids of the rendered prompt. Chat templates carry their own special tokens; raw text gets the
    tokenizer's usual ones (e.g. BOS)."""
    return tokenizer(render(tokenizer, prompt, chat), add_special_tokens=not chat)["input_ids"]
