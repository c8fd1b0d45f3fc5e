"""The ``coherentize`` command: ``train``, ``augment``, ``mine``, ``eval``, ``export``, ``run``, ``report``, ``audit``.

Each subcommand lives in ``coherentize/commands/<name>.py`` with ``add_arguments(parser)`` and ``main(args)``.
A CoherentizeError (a user mistake) prints one line and exits 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from coherentize.commands import audit, augment, export, mine, report, run, train
from coherentize.commands import eval as eval_command
from coherentize.errors import CoherentizeError

SUBCOMMANDS = {"train": train, "augment": augment, "mine": mine, "eval": eval_command, "export": export, "run": run,
               "report": report, "audit": audit}
"""Each subcommand's module (flags in add_arguments, one library call in main); imported here, the heavy libraries
only inside main."""


def build_parser() -> argparse.ArgumentParser:
    from coherentize import __version__

    parser = argparse.ArgumentParser(prog="coherentize", description="Consistency training for language models.")
    parser.add_argument("--version", action="version", version=f"coherentize {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0].replace("%", "%%"), description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


MAX_ERROR_CHARS = 600


def one_line(message: str) -> str:
    """An error as one line of readable length: newlines folded, and a message that echoes a long user value (a whole
    template, a file's content) cut in the middle, keeping its start (the file and field) and its end (what to do)."""
    message = " ".join(message.split("\n"))
    if len(message) <= MAX_ERROR_CHARS:
        return message
    half = MAX_ERROR_CHARS // 2
    return f"{message[:half]} [... {len(message) - 2 * half} characters ...] {message[-half:]}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args._main(args)
    except CoherentizeError as e:
        print(f"coherentize {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coherentize {args.command}: interrupted; finished work is kept and a re-run resumes.", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
