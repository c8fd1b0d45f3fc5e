"""The models a recipe uses, beside loading them (coherentize.models): the layer count read from a model's config
file before any weights load (so a bad layer index fails first), and the evaluation stages' models (EvalModels: one
base model, each arm's adapter switched on in turn, the reference as the same model with its adapters off)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from coherentize.models import PACKAGED_MODELS, ModelConfig, cache_dir


def layer_count(cfg: ModelConfig) -> int | None:
    """num_hidden_layers from the model's config alone (a config.json, or a GGUF's metadata), without loading weights;
    None when it cannot be read cheaply (a hub id not in the cache while offline, an unreadable file): the load that
    follows then reports the model's own error."""
    from transformers import AutoConfig

    src = cfg.name_or_path
    try:
        if src in PACKAGED_MODELS:
            folder = cache_dir() / "models" / src
            if (folder / "config.json").is_file():
                config = AutoConfig.from_pretrained(folder)
            else:
                gguf = PACKAGED_MODELS[src]()
                config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        elif src.endswith(".gguf") or cfg.gguf_file:
            p = Path(src)
            folder, name = (p.parent, p.name) if src.endswith(".gguf") else (p, cfg.gguf_file)
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
        else:
            hub = {"revision": cfg.revision} if cfg.revision else {}
            config = AutoConfig.from_pretrained(str(Path(src).expanduser()) if Path(src).expanduser().exists() else src,
                                                trust_remote_code=cfg.trust_remote_code, **hub)
    except Exception:  # noqa: BLE001 - any failure here is reported by the model load itself
        return None
    n = getattr(config, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


class AdaptersOff:
    """A PeftModel seen with its adapters disabled: the base model's function without a second copy in memory
    (peft's LoRA layers return exactly base_layer(x) while disabled)."""

    def __init__(self, peft_model):
        self._peft = peft_model

    def __call__(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._peft, name)


class EvalModels:
    """The models of the evaluation stages, loaded once per process: the base model (the organism), each LoRA arm's
    adapter loaded onto it and switched on in turn (the previous one dropped), and as the reference for capability
    KL the same model with its adapters disabled. An arm that trained every weight loads its own folder."""

    def __init__(self, model_cfg: ModelConfig):
        self.model_cfg = model_cfg
        self._base = self._tok = self._peft = self._active = None
        self._n = 0

    def _load_base(self):
        if self._base is None:
            from coherentize.models import load_model

            self._base, self._tok = load_model(self.model_cfg)
        return self._base, self._tok

    def original(self):
        """(model, tokenizer) computing the base model's function."""
        base, tok = self._load_base()
        return (AdaptersOff(self._peft) if self._peft is not None else base), tok

    def trained(self, model_dir: Path):
        """(model, tokenizer) of a trained arm from its saved model folder (adapter or full weights)."""
        if not (model_dir / "adapter_config.json").is_file():
            from coherentize.models import load_model

            return load_model(dataclasses.replace(self.model_cfg, name_or_path=str(model_dir), gguf_file=None))
        from peft import PeftModel

        base, tok = self._load_base()
        self._n += 1
        name = f"arm{self._n}"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(base, str(model_dir), adapter_name=name).eval()
        else:
            self._peft.load_adapter(str(model_dir), adapter_name=name)
            self._peft.set_adapter(name)
            self._peft.delete_adapter(self._active)
            self._peft.eval()
        self._active = name
        return self._peft, tok
