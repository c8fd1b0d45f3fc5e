import pytest

from coherentize.config import load_config
from coherentize.errors import CoherentizeError
from coherentize.recipes.train_job import TrainJob


def test_yaml_and_overrides_fill_typed_sections(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name_or_path: /some/folder\ntrain:\n  learning_rate: 1.0e-3\n  act_layers: [3, 5]\n")
    job = load_config(TrainJob, p, ["train.learning_rate=1e-4", "lora.r=4", "train.act_weight=0.5", "data.split=null"])
    assert job.model.name_or_path == "/some/folder"
    assert job.train.learning_rate == pytest.approx(1e-4)  # '1e-4' is a string to YAML; coerced to float
    assert job.train.act_layers == [3, 5] and job.lora.r == 4 and job.train.act_weight == 0.5
    assert job.data.split is None


def test_toml_is_accepted(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[train]\nmax_steps = 3\n[lora]\nenabled = false\n')
    job = load_config(TrainJob, p)
    assert job.train.max_steps == 3 and job.lora.enabled is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.learnig_rate=1e-4"], "config.train: unknown field 'learnig_rate'. Valid fields:"),
        (["lora.rank=4"], "config.lora: unknown field 'rank'"),
        (["nonsense.x=1"], "config: unknown field 'nonsense'"),
        (["lora.r=four"], "config.lora.r: expected an integer"),
        (["lora.enabled=maybe"], "config.lora.enabled: expected true or false"),
        (["train.output_divergence=kl"], "output_divergence='kl' is not one of"),
        (["train.output_weight=0"], "set at least one of output_weight, bct_weight, act_weight"),
        (["train.act_sites=[middle]"], "act_sites"),
        (["train"], "expected section.field=value"),
    ],
)
def test_bad_fields_give_one_clear_error_naming_the_field(overrides, message):
    with pytest.raises(CoherentizeError) as e:
        load_config(TrainJob, None, overrides)
    assert message in str(e.value)


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(CoherentizeError) as e:
        load_config(TrainJob, None, ["data.trian_file=x"])
    assert "train_file" in str(e.value) and "eval_split" in str(e.value)


def test_bad_file(tmp_path):
    with pytest.raises(CoherentizeError, match="config file not found"):
        load_config(TrainJob, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(CoherentizeError, match="not valid YAML"):
        load_config(TrainJob, bad)


def test_field_docs_cover_own_and_inherited_fields_and_describe_groups_them():
    import dataclasses

    from coherentize.config import all_field_docs, describe_fields

    @dataclasses.dataclass
    class Base:
        a: int = 1
        b: str = dataclasses.field(default="x", metadata={"help": "Help of b. More detail here."})

    @dataclasses.dataclass
    class Child(Base):
        """A child section."""

        c: float = 0.5
        """The doc of c."""

    @dataclasses.dataclass
    class Job:
        child: Child = dataclasses.field(default_factory=Child)
        """The child section."""
        flag: bool = False
        """A top-level flag."""

    assert all_field_docs(Child) == {"a": "", "b": "Help of b.", "c": "The doc of c."}
    text = describe_fields(Job).splitlines()
    assert text[0] == "[child] Child: The child section."
    assert [l.split()[0] for l in text[1:4]] == ["child.c", "child.a", "child.b"]  # own fields first
    assert text[1].split() == ["child.c", "=", "0.5", "The", "doc", "of", "c."]
    assert text[-2:] == ["[top level] Job", f"{'  flag = False':<48} A top-level flag."]
