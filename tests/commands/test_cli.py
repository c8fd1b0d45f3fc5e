import pytest

from coherentize.cli import SUBCOMMANDS, main


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS])
def test_help_of_every_command_renders(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: coherentize")
    if len(argv) == 2:
        assert argv[0] in out
