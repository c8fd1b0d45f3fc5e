"""The residual stream, read with forward hooks on the decoder layers: one meaning for every layer index.

Index l means the residual stream after block l: l = 1..n_layers is the output of decoder layer l (the last one
included, BEFORE the model's final norm), l = 0 the input of block 1 (the embeddings), and a negative l counts from
the end (-1 = after the last block = n_layers). transformers' ``output_hidden_states`` differs at the last index: it
returns the final norm's output there (``last_hidden_state``), so its ``hidden_states[n_layers]`` is not a residual
stream. Hooks also keep only the chosen layers and only their last positions.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import extract_model_from_parallel


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, through DDP/DeepSpeed/FSDP wrappers and PEFT."""
    base = extract_model_from_parallel(model)
    if hasattr(base, "get_base_model"):  # peft
        base = base.get_base_model()
    return base.get_decoder().layers


def resolve_layer(layer: int, n_layers: int) -> int:
    """A layer index in 0..n_layers (see the module docstring); ValueError when out of range."""
    if not -n_layers - 1 <= layer <= n_layers:
        raise ValueError(f"layer {layer} out of range for a model of {n_layers} layers (use 1..{n_layers}, 0 for the "
                         f"embeddings, or -1..-{n_layers} from the end)")
    return layer % (n_layers + 1)


def resolve_layers(layers: list[int] | None, n_layers: int, where: str = "train.act_layers") -> list[int]:
    """The layers a loss or measurement reads: `layers` as given, or the middle layer when None or empty (the one
    place this default is filled); a layer out of range is one CoherentizeError naming `where`."""
    from coherentize.errors import CoherentizeError

    chosen = list(layers) if layers else [n_layers // 2]
    for layer in chosen:
        try:
            resolve_layer(layer, n_layers)
        except (ValueError, TypeError) as e:
            raise CoherentizeError(f"{where}: {e}.") from None
    return chosen


@contextlib.contextmanager
def capture(model, layers: list[int], last: int | None = None):
    """Record the residual stream after each chosen block during the forward passes run inside the block.

    Yields a dict filled as the model runs: layer -> (R, T', H), T' = the last `last` positions (all when None),
    keyed by the indices as given. The hooks are removed on exit (so recomputation under gradient checkpointing
    does not record again).
    """
    blocks = decoder_layers(model)
    n = len(blocks)
    out: dict[int, torch.Tensor] = {}
    cut = (lambda h: h[:, -last:]) if last else (lambda h: h)  # noqa: E731
    handles = []

    def first(tensor_or_tuple):
        return tensor_or_tuple[0] if isinstance(tensor_or_tuple, tuple) else tensor_or_tuple

    for layer in layers:
        i = resolve_layer(layer, n)
        if i == 0:  # the input of block 1
            def pre(_m, args, kwargs, layer=layer):
                out[layer] = cut(args[0] if args else kwargs["hidden_states"])
            handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(_m, _args, output, layer=layer):
                out[layer] = cut(first(output))
            handles.append(blocks[i - 1].register_forward_hook(post))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
