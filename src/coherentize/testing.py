"""Tiny models and tokenizers built from a config in-process (no downloads), for tests and CPU benchmarks; and
`ServerProcess`, a server run as a child process that says how it died."""

from __future__ import annotations

import functools
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

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


def describe_exit(returncode: int) -> str:
    """A process's exit status in words: "SIGSEGV (exit -11)" for a signal (Popen's negative code), "exit 139
    (128 + SIGSEGV, as a shell reports it)", "exit 3"."""
    if returncode < 0:
        try:
            return f"{signal.Signals(-returncode).name} (exit {returncode})"
        except ValueError:
            return f"signal {-returncode} (exit {returncode})"
    if returncode > 128:
        try:
            return f"exit {returncode} (128 + {signal.Signals(returncode - 128).name}, as a shell reports it)"
        except ValueError:
            pass
    return f"exit {returncode}"


class ServerDied(RuntimeError):
    """A `ServerProcess` exited (or never became ready); the message names its exit status and ends with its log."""


class ServerProcess:
    """A server run as a child process, its stdout and stderr in one log file, that says how it died (the name in its
    messages: `name`, else the MODULE of `python -m MODULE`, else the program's):

        server = ServerProcess([sys.executable, "-X", "faulthandler", "-m", "llama_cpp.server", ...], log_path)
        server.wait_ready("http://127.0.0.1:PORT/v1/models", timeout_s=90)  # ServerDied: it exited or never answered
        server.death()   # None while it runs, else "llama_cpp.server (pid 7) died: SIGSEGV (exit -11)" + the log's tail
        server.stop()    # killed on purpose: death() stays None

    A server that dies makes its clients fail far from the cause ("Connection refused"); `death()` is the cause.
    `python -X faulthandler` makes a Python server write its stack to the log when it crashes in native code."""

    def __init__(self, argv: list[str], log_path: str | Path, name: str | None = None, env: dict | None = None,
                 tail_lines: int = 40):
        self.argv = [str(a) for a in argv]
        module = self.argv[self.argv.index("-m") + 1] if "-m" in self.argv[:-1] else None  # python -m MODULE
        self.name = name or module or Path(self.argv[0]).name
        self.log_path = Path(log_path)
        self.tail_lines = tail_lines
        self._stopped = False
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int | None = None) -> str:
        """The last `lines` lines of the log (default `tail_lines`)."""
        text = self.log_path.read_bytes().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-(lines or self.tail_lines):])

    def _report(self, what: str) -> str:
        return (f"{self.name} (pid {self.pid}) {what}\n--- last {self.tail_lines} lines of {self.log_path} ---\n"
                f"{self.log_tail()}\n--- end of the server's log ---")

    def death(self, wait_s: float = 0.0) -> str | None:
        """None while the server runs (or after `stop`); once it has exited, what it died of and its log's tail.
        `wait_s`: how long to give a server that is dying (a client can see its socket close just before it exits)."""
        if self._stopped:
            return None
        try:
            code = self.proc.wait(timeout=wait_s) if wait_s > 0 else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        return None if code is None else self._report(f"died: {describe_exit(code)}")

    def check_alive(self, wait_s: float = 0.0) -> None:
        """Raise `ServerDied` if the server has exited."""
        if (death := self.death(wait_s)) is not None:
            raise ServerDied(death)

    def wait_ready(self, url: str, timeout_s: float = 90.0, poll_s: float = 0.3) -> None:
        """Poll `url` until it answers 200; `ServerDied` as soon as the server exits, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerDied(self._report(f"did not answer {url} within {timeout_s:g} s"))
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Kill the server on purpose (from then on `death()` is None) and close its log."""
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=timeout_s)
        self._log.close()
