"""residual.capture: index l is the residual stream after block l for every l, the last block included (transformers'
output_hidden_states puts the final norm's output at the last index instead)."""

import pytest
import torch

from coherentize import residual
from coherentize.testing import tiny_model


def _block_outputs(model, ids):
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for b in model.model.layers]
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return outs


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_every_index_is_the_residual_stream_after_its_block(tiny_tok, architecture):
    model = tiny_model(tiny_tok, layers=3, architecture=architecture).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        blocks = _block_outputs(model, ids)
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        n_hooks = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in model.model.layers]
        with residual.capture(model, [0, 1, 2, 3, -1], last=4) as got:
            model(input_ids=ids)
    torch.testing.assert_close(got[0], hs[0][:, -4:])  # the embeddings
    for l in (1, 2, 3):
        torch.testing.assert_close(got[l], blocks[l - 1][:, -4:])
    torch.testing.assert_close(got[-1], got[3])
    # transformers' last index is after the final norm: not the residual stream.
    assert not torch.allclose(hs[3], blocks[2])
    torch.testing.assert_close(hs[3], model.model.norm(blocks[2]))
    assert [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in model.model.layers] == n_hooks  # removed


def test_out_of_range_layer_is_an_error(tiny_tok):
    with pytest.raises(ValueError, match="out of range"):
        residual.resolve_layer(4, 3)
    assert residual.resolve_layer(-1, 3) == 3 and residual.resolve_layer(-4, 3) == 0


def test_capture_through_peft(tiny_tok):
    from coherentize.recipes.train_job import LoraSettings, apply_lora

    model = apply_lora(tiny_model(tiny_tok), LoraSettings(r=2, alpha=4))
    with torch.no_grad(), residual.capture(model, [2]) as got:
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert got[2].shape == (1, 3, model.config.hidden_size)
