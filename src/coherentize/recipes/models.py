"""The models a recipe uses, beside loading them (coherentize.models): the layer count read from a model's config
file before any weights load (so a bad layer index fails first)."""

from __future__ import annotations

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
