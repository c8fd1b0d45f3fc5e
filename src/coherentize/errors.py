"""The one exception type for mistakes a user can make (bad file, bad config, missing model).

The CLI prints its message and exits non-zero without a traceback; anything else is a bug and keeps its traceback.
``read_text`` is the one place where a user's text file that is not UTF-8 becomes such an error.
"""

from __future__ import annotations

import os
from pathlib import Path


class CoherentizeError(Exception):
    """A user-facing error: the message names the file, line or field and says what to do."""


def not_utf8(path, lineno: int, e: UnicodeDecodeError) -> CoherentizeError:
    return CoherentizeError(f"{path}:{lineno}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r}); save the file "
                            "as UTF-8.")


def read_text(path: str | os.PathLike) -> str:
    """A user's text file; one that is not UTF-8 is one CoherentizeError naming the file and line."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, raw.count(b"\n", 0, e.start) + 1, e) from None
