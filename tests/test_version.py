"""The top-level command: --version, and a fast `import coherentize`."""

import subprocess
import sys

import pytest

import coherentize
from coherentize.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"coherentize {coherentize.__version__}"


def test_version_matches_the_installed_metadata():
    from importlib.metadata import version

    assert version("coherentize") == coherentize.__version__
