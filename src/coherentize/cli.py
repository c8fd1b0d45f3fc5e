"""The ``coherentize`` command: ``train``, ``augment``, ``mine``, ``eval``, ``export``, ``run``, ``report``.

Each subcommand lives in ``coherentize/commands/<name>.py`` with ``add_arguments(parser)`` and ``main(args)``.
A CoherentizeError (a user mistake) prints one line and exits 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from coherentize.errors import CoherentizeError

SUBCOMMANDS = {
    "train": "coherentize.commands.train",
    "augment": "coherentize.commands.augment",
    "mine": "coherentize.commands.mine",
    "eval": "coherentize.commands.eval",
    "export": "coherentize.commands.export",
    "run": "coherentize.commands.run",
    "report": "coherentize.commands.report",
}


def build_parser() -> argparse.ArgumentParser:
    from coherentize import __version__

    parser = argparse.ArgumentParser(prog="coherentize", description="Consistency training for language models.")
    parser.add_argument("--version", action="version", version=f"coherentize {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0].replace("%", "%%"), description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args._main(args)
    except CoherentizeError as e:
        print(f"coherentize {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coherentize {args.command}: interrupted; finished work is kept and a re-run resumes.", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
