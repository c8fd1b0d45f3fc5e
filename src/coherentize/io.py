"""Writing files: the one atomic write (a unique temporary name in the target's folder, then os.replace, so a reader
never sees half a file and two writers never share a temporary name), and the checks of an output path made before
any work starts (one CoherentizeError naming the flag or field, instead of a traceback at the end)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from coherentize.errors import CoherentizeError


def _existing_parent(path: Path) -> Path:
    """The nearest ancestor of path that exists (path itself excluded)."""
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    return p


def _check_creatable(path: Path, what: str) -> None:
    """The folders up to path can be created and written: the nearest existing ancestor is a writable folder."""
    parent = _existing_parent(path)
    if not parent.is_dir():
        raise CoherentizeError(f"{what} {path}: {parent} is a file, not a folder; choose another path.")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".coherentize-probe-")
    except OSError as e:
        raise CoherentizeError(f"{what} {path}: cannot write in {parent} ({e.strerror or e}); choose another "
                               "path.") from None
    os.close(fd)
    os.unlink(probe)


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """An output folder: absent (it will be created) or an existing folder, in a place this process can write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CoherentizeError(f"{what} {path}: is a file; give a folder (it is created when missing).")
    _check_creatable(path / "x", what) if path.is_dir() else _check_creatable(path, what)
    return path


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """An output file: absent or a file (not a folder), in a folder this process can write."""
    path = Path(path)
    if path.is_dir():
        raise CoherentizeError(f"{what} {path}: is a folder; give a file name.")
    _check_creatable(path, what)
    return path
