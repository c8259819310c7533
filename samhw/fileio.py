"""Writing files safely: every file samhw writes goes through :func:`atomic_path` or :func:`atomic_write`.

A file is written under a temporary name beside it, ``<name>.<pid>.tmp``, synced and renamed, so a
killed run leaves no half file under a real name; a failed write removes its temporary at once.
A disk that is full or read-only, or a folder that cannot be written, raises :class:`StorageError`,
whose message names the file and the fix (the CLI prints it as one ``error:`` line). Torch-free.
"""
from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["StorageError", "storage_errors", "atomic_path", "atomic_write", "atomic_write_text",
           "temporary_path", "sweep_temporaries"]

#: errno values that mean "this disk or folder cannot take the file": how they are said, and the fix.
_FULL = "free space there or choose another folder"
_STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", _FULL),
    errno.EDQUOT: ("disk quota exceeded", _FULL),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a writable folder"),
    errno.EPERM: ("permission denied", "choose a writable folder"),
}


class StorageError(Exception):
    """A file could not be written: its disk is full or read-only, or its folder is not writable.

    ``path`` is the file (or folder) that failed; the message names its folder and the fix.
    """

    def __init__(self, message: str, path: str):
        super().__init__(message, path)
        self.path = path

    def __str__(self) -> str:
        return self.args[0]


@contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError of a full, read-only or unwritable disk raised inside into a :class:`StorageError`
    naming ``path`` (a write on an open file reports no file name of its own); other errors pass."""
    try:
        yield
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            raise
        reason, fix = _STORAGE_ERRNOS[err.errno]
        path = Path(path)
        raise StorageError(f"cannot write {path.name} in {path.parent} ({reason}): {fix}", str(path)) from err


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name this process writes ``path`` under: ``<name>.<pid>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path`` through (for writers that want a file name): on success it is
    synced (``sync``) and renamed to ``path``; on any failure, interruption included, it is removed.
    Parent folders are created. OSErrors of a full or read-only disk become :class:`StorageError`."""
    path = Path(path)
    tmp = temporary_path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            if sync:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], sync: bool = True) -> None:
    """Write ``path`` atomically: ``write(handle)`` on a binary handle of its temporary (see :func:`atomic_path`)."""
    with atomic_path(path, sync=False) as tmp, open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, sync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()), sync)


def _writer_alive(tmp: Path) -> bool:
    """Whether the process named in ``<name>.<pid>.tmp`` still runs on this machine."""
    pid = tmp.suffixes[-2][1:] if len(tmp.suffixes) >= 2 else ""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def sweep_temporaries(folder: str | os.PathLike, pattern: str = "*.tmp", dead_after_s: float = 60,
                      age_s: float = 3600) -> int:
    """Remove temporaries under ``folder`` (``pattern``, a glob) left by killed writers: those older than
    ``dead_after_s`` whose process is gone, and any older than ``age_s``. Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for tmp in folder.glob(pattern):
        try:
            age = now - tmp.stat().st_mtime
            if age > age_s or (age > dead_after_s and not _writer_alive(tmp)):
                tmp.unlink()
                removed += 1
        except OSError:
            continue
    return removed
