"""A model behind an OpenAI-compatible server (vLLM, llama.cpp's server, an API), for the generation probes.

    coherentize eval --server http://127.0.0.1:8000/v1 --model NAME --suite jailbreak,overrefusal --out results/

Only answers are available from a server (no logits, no activations), so a served model runs the probes that judge
generated text: jailbreak (without the refusal margin) and over-refusal. Requests go through the one server client
(server.py: API key from a named environment variable, retries honouring Retry-After, bounded concurrency), greedy
(temperature 0). The server applies its own chat template: prompts are sent as chat messages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from coherentize.chat import Prompt, to_messages
from coherentize.server import ChatClient, ServerConfig

SERVED_SUITES = ("jailbreak", "overrefusal")
"""The probes a served model can run (they judge generated text only)."""


@dataclass
class ServedModel:
    """Stands in for (model) in the generation calls: generation.generate sends its prompts here."""

    server: ServerConfig

    def complete_prompts(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[str]:
        """Greedy answers to the prompts, in order."""
        client = ChatClient(replace(self.server, max_tokens=max_new_tokens, temperature=0.0), purpose="eval server")
        return client.complete_many([to_messages(p) for p in prompts])
