"""Writing files: the one atomic write (a unique temporary name in the target's folder, then os.replace, so a reader
never sees half a file and two writers never share a temporary name), and the checks of an output path made before
any work starts (one CoherentizeError naming the flag or field, instead of a traceback at the end). Reading: the one
reader of a CSV file whose header is a known set of columns (``csv_rows``)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str = "utf-8", newline: str | None = None):
    """Open a file to write that appears at path, whole, only when the block ends without an error: the text goes to a
    temporary file of a unique name in path's folder (so parallel jobs or processes writing the same path never
    share one), then os.replace puts it in place; on an error the temporary file is removed and path is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_name(path), suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode a plain open would give it
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding, newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write data (text or bytes) to path atomically (see atomic_open); returns the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", encoding) as f:
        f.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int | None = 2, **kwargs) -> Path:
    """obj as JSON at path, atomically (default=str for paths and other plain values)."""
    return atomic_write(path, json.dumps(obj, indent=indent, default=str, **kwargs))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True):
    """Build a folder that appears at path, whole, when the block ends: yields a fresh temporary folder of a unique
    name beside path, renamed to path at the end. replace=True: an existing path is replaced; False: a path that
    another process finished meanwhile is kept and this build dropped (both built the same content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_name(path), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        for attempt in range(3):
            if path.exists() and replace:
                shutil.rmtree(path, ignore_errors=True)
            try:
                os.replace(tmp, path)
                break
            except OSError:  # another process's folder landed at path first
                if not path.is_dir() or (replace and attempt == 2):
                    raise
                if not replace:
                    break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def csv_rows(path: str | os.PathLike, fields: Sequence[str], extra: str = "", what: str = "file"):
    """(line number, row) of each row of the CSV file at path, a row as {column: value}. The header must be exactly
    fields; with extra (the other columns allowed, in words: "judge:<name>"), it must hold every one of fields, in
    any order, and may hold other columns besides. A missing file or another header is one CoherentizeError naming
    the file (what: the kind of file, for the not-found message); the line number is the file's line on which the row
    ends, for the caller's own errors about a value."""
    path = Path(path)
    if not path.is_file():
        raise CoherentizeError(f"{path}: {what} not found.")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        found = list(reader.fieldnames or ())
        missing = [k for k in fields if k not in found]
        if extra and missing:
            raise CoherentizeError(f"{path}: columns {missing} missing (expected {list(fields)} + {extra}; found "
                                   f"{found}).")
        if not extra and found != list(fields):
            raise CoherentizeError(f"{path}: columns {found}, expected {list(fields)}.")
        for row in reader:
            yield reader.line_num, row
