import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from coherentize.cli import main


def test_export_a_folder_loads_with_plain_transformers(tiny_folder, tiny_lm, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_folder), "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_lm(ids).logits, atol=1e-5)


def test_export_merges_a_lora_adapter(tiny_folder, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a non-zero update, so merging changes the outputs
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    out = tmp_path / "merged"
    assert main(["export", "--model", str(adapter), "--base-model", str(tiny_folder), "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        want = peft_model(ids).logits
        assert torch.allclose(merged(ids).logits, want, atol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_folder)(ids).logits, want, atol=1e-3)
    assert not any(p.name.startswith("adapter") for p in out.iterdir())


def test_export_errors(tmp_path, tiny_folder, capsys):
    assert main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["export", "--model", str(tiny_folder), "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err
