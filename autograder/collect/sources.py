"""What a folder or a zip archive of submissions holds, read as data and never followed.

:func:`folder_entries` (a context manager) and :func:`zip_entries` list every entry of a source as an
:class:`Entry`: its path inside the source, its kind and, for a regular file, a way to read it within
:class:`Limits`. Nothing here writes a file.

- A folder is walked through file descriptors, one name at a time with ``O_NOFOLLOW``: a symbolic link is listed
  as a link and never opened, a file is checked to be the same regular file once it is open, and reading stops
  one byte past the limit, whatever the file's size claims.
- A zip member is refused when its path is absolute or climbs out (``..``), when it is a link, a device or
  encrypted, when its data overlaps another member's (a "better zip bomb"), and while inflating, when it passes
  the size limit, the compression-ratio limit or the archive's total. Sizes are measured on the inflated bytes:
  the declared sizes can lie.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

CHUNK = 2**20
MAX_DEPTH = 8  # folders below the source's top; deeper ones are not listed
RATIO_FLOOR = 2**20  # members inflating to less than this are too small to be bombs: no ratio check


class Refused(Exception):
    """A file that is not collected; its message says why, in words for the instructor and the student."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what is read from a source.

    Attributes:
        notebook_bytes: largest file read, in bytes (default 50 MiB).
        ratio: largest inflated / compressed size of an archive member past 1 MiB (default 100).
        total_bytes: largest sum of inflated bytes read from one archive (default 10 GiB).
    """

    notebook_bytes: int = 50 * 2**20
    ratio: float = 100.0
    total_bytes: int = 10 * 2**30

    def __post_init__(self):
        if self.notebook_bytes < 1 or self.ratio < 1 or self.total_bytes < 1:
            raise ValueError(f"limits must be positive: notebook size {self.notebook_bytes!r} bytes, ratio "
                             f"{self.ratio!r}, total {self.total_bytes!r} bytes")


@dataclass
class Entry:
    """One entry of a source.

    Attributes:
        parts: its path inside the source, one name per level (never ``..``, never empty).
        kind: ``"file"``, ``"folder"``, ``"link"``, ``"special"`` (device, pipe, socket) or ``"unsafe"`` (an archive
            member whose path is absolute or climbs out; ``parts`` is then its path without those steps).
        mtime: its modification time, seconds since the epoch.
        inode: ``(device, inode, links)`` of a folder's file, for the hard-link check; None in an archive.
    """

    parts: tuple[str, ...]
    kind: str
    mtime: float = 0.0
    inode: tuple[int, int, int] | None = None
    reader: Callable[[], bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.parts[-1]

    def read(self) -> bytes:
        """The file's bytes; :class:`Refused` when it passes a limit or is not what it was when listed."""
        if self.reader is None:
            raise Refused("it is not a regular file")
        return self.reader()


def _mib(count: float) -> str:
    return f"{count / 2**20:.3g} MiB"


# --- folders --------------------------------------------------------------------------------------------------

@contextmanager
def folder_entries(root: Path, limits: Limits) -> Iterator[list[Entry]]:
    """Every entry below ``root`` (a folder), links and special files included but never followed; their files can
    be read while the block runs."""
    entries: list[Entry] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _walk(root_fd, (), entries, root_fd, limits)
        yield entries
    finally:
        os.close(root_fd)


def _walk(folder_fd: int, parts: tuple[str, ...], entries: list[Entry], root_fd: int, limits: Limits) -> None:
    with os.scandir(folder_fd) as listing:
        names = sorted(entry.name for entry in listing)
    for name in names:
        try:
            info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except OSError:
            continue  # gone since it was listed
        path = (*parts, name)
        if stat.S_ISLNK(info.st_mode):
            entries.append(Entry(path, "link", info.st_mtime))
        elif stat.S_ISDIR(info.st_mode):
            entries.append(Entry(path, "folder", info.st_mtime))
            if len(path) <= MAX_DEPTH:
                _descend(folder_fd, path, entries, root_fd, limits)
        elif stat.S_ISREG(info.st_mode):
            identity = (info.st_dev, info.st_ino, info.st_nlink)
            entries.append(Entry(path, "file", info.st_mtime, identity,
                                 lambda p=path, i=identity: _read_beneath(root_fd, p, i, limits.notebook_bytes)))
        else:
            entries.append(Entry(path, "special", info.st_mtime))


def _descend(parent_fd: int, path: tuple[str, ...], entries: list[Entry], root_fd: int, limits: Limits) -> None:
    try:
        fd = os.open(path[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError:
        return  # unreadable, or replaced by a link since it was listed: its files are simply not listed
    try:
        _walk(fd, path, entries, root_fd, limits)
    finally:
        os.close(fd)


def _read_beneath(root_fd: int, parts: tuple[str, ...], identity: tuple[int, int, int], limit: int) -> bytes:
    """Open ``parts`` below ``root_fd`` one name at a time without following links, and read at most ``limit``."""
    fd = os.dup(root_fd)
    try:
        for name in parts[:-1]:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as error:
        raise Refused(f"it could not be opened ({error.strerror})") from None
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != identity[:2]:
            raise Refused("it changed while the submissions were read")
        if info.st_size > limit:
            raise Refused(f"it is {_mib(info.st_size)}, over the {_mib(limit)} limit (--max-notebook-mb)")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"it is over the {_mib(limit)} limit (--max-notebook-mb)")
    return data


# --- zip archives ---------------------------------------------------------------------------------------------

def zip_entries(archive: zipfile.ZipFile, limits: Limits) -> list[Entry]:
    """Every member of ``archive``, each file readable once within ``limits`` (the total shared by all)."""
    budget = {"left": limits.total_bytes}
    overlapping = _overlapping(archive.infolist())
    entries = []
    for info in archive.infolist():
        parts, safe = _member_parts(info.filename)
        if not parts:
            continue
        mtime = _zip_time(info)
        mode = info.external_attr >> 16
        if not safe:
            entries.append(Entry(parts, "unsafe", mtime))
        elif stat.S_ISLNK(mode):
            entries.append(Entry(parts, "link", mtime))
        elif info.is_dir():
            entries.append(Entry(parts, "folder", mtime))
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: the zip records permissions only
            entries.append(Entry(parts, "special", mtime))
        else:
            entries.append(Entry(parts, "file", mtime, None, lambda i=info: _inflate(
                archive, i, limits, budget, overlapping)))
    return entries


def _member_parts(name: str) -> tuple[tuple[str, ...], bool]:
    """The member's path as names (without a leading ``/``, a drive such as ``C:`` and any ``..``), and whether it
    stays inside the archive (not absolute, no ``..``)."""
    unified = name.replace("\\", "/")
    drive = len(unified) > 1 and unified[1] == ":" and unified[0].isalpha()
    if drive:
        unified = unified[2:]
    parts = [part for part in unified.split("/") if part not in ("", ".")]
    safe = not (drive or unified.startswith("/") or ".." in parts)
    return tuple(part for part in parts if part != ".."), safe


def _zip_time(info: zipfile.ZipInfo) -> float:
    try:
        return datetime(*info.date_time).timestamp()
    except ValueError:
        return 0.0


def _overlapping(infos: list[zipfile.ZipInfo]) -> set[int]:
    """The ids of members whose data begins inside an earlier member's data."""
    found, end = set(), -1
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < end:
            found.add(id(info))
        end = max(end, info.header_offset + 30 + len(info.filename.encode()) + info.compress_size)
    return found


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits, budget: dict,
             overlapping: set[int]) -> bytes:
    if id(info) in overlapping:
        raise Refused("it shares its data with another member of the archive (a zip bomb)")
    if info.flag_bits & 0x1:
        raise Refused("it is encrypted")
    limit = min(limits.notebook_bytes, budget["left"])
    chunks, size = [], 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(CHUNK):
                size += len(chunk)
                _check_inflated(size, info.compress_size, limit, limits, budget)
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as error:
        raise Refused(f"it could not be read from the archive ({error})") from None
    budget["left"] -= size
    return b"".join(chunks)


def _check_inflated(size: int, compressed: int, limit: int, limits: Limits, budget: dict) -> None:
    if size > limit:
        what = ("the archive's members together passed its limit" if limit < limits.notebook_bytes
                else f"it inflates past the {_mib(limits.notebook_bytes)} limit (--max-notebook-mb)")
        raise Refused(what)
    if size > RATIO_FLOOR and size > limits.ratio * max(compressed, 1):
        raise Refused(f"it inflates more than {limits.ratio:g} times its compressed size "
                      f"(--max-ratio), as a zip bomb does")
