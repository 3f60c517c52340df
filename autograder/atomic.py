"""Atomic file writes: a reader (an LMS upload, a student portal syncing feedback, a TA's spreadsheet) sees either
the old file or the whole new one, never half of it, and a crash while writing leaves the old file as it was."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then ``os.replace`` it onto ``path``.

    ``mode``: the file's permissions (default: the existing file's, else what ``open`` would give under the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else _default_mode()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8", mode: int | None = None) -> Path:
    """:func:`atomic_write_bytes` of ``text`` (no newline translation: write what ``text`` holds)."""
    return atomic_write_bytes(path, text.encode(encoding), mode)

