"""Atomic writes: a file or a whole directory appears complete under its final name, or not at all.

Every file difflab writes (model directories, classifier directories, caches, figures, configs,
tables) goes through here. The recipe is the classic one: write under a temporary name in the same
folder, flush and ``fsync`` the bytes, ``os.replace`` onto the final name (atomic on POSIX and
Windows within one file system), then ``fsync`` the folder so the rename itself survives a power
cut.

A directory cannot be replaced by one rename when it already exists, so :func:`directory` moves the
old one aside to ``.old-NAME`` first and renames the new one in; between the two renames ``NAME`` is
missing and :func:`recover` puts the complete old one back. Temporary folders are ``.tmp-NAME-*``;
readers never look at them.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_bytes", "write_text", "write_with", "directory", "recover", "remove_temporaries", "old_path",
           "removed_on_error", "TMP_PREFIX"]

TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _tmp_name(path: Path) -> Path:
    return path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"


def old_path(path) -> Path:
    """Where :func:`directory` parks the previous version of ``path`` during its swap."""
    path = Path(path)
    return path.parent / f".old-{path.name}"


def write_with(path, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace the file ``path`` with what ``write(file)`` writes, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path, data: bytes) -> Path:
    """Create or replace the file ``path`` with ``data``, atomically."""
    return write_with(path, lambda f: f.write(data))


def write_text(path, text: str) -> Path:
    """Create or replace the file ``path`` with ``text`` (UTF-8), atomically."""
    return write_bytes(path, text.encode())


@contextlib.contextmanager
def directory(path, *, replace: bool = True) -> Iterator[Path]:
    """Build the directory ``path`` in a temporary sibling and swap it in when the block succeeds.

    Yields the temporary folder; write plain files into it. On success every file in it is
    fsynced and it becomes ``path``: an existing ``path`` is replaced (``replace=True``) or, with
    ``replace=False``, kept and the new copy discarded (a cache filled by two processes at once).
    On an exception the temporary folder is removed and ``path`` is left as it was. The folder is
    created with the process's umask, like any other (not owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.mkdir()
    old = old_path(path)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        _fsync_dir(tmp)
        if path.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover(path) -> bool:
    """Undo a crash between the two renames of :func:`directory`: ``path`` missing, the complete
    previous version in ``.old-NAME``. Returns whether it put one back."""
    path, old = Path(path), old_path(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        return True
    return False


def remove_temporaries(folder) -> None:
    """Delete the half-written ``.tmp-*`` entries a crashed writer left in ``folder``."""
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _disposable(folder: Path, ignore) -> bool:
    """Whether ``folder`` holds nothing a user could want: folders, temporaries, names in ``ignore``."""
    return all(p.is_dir() or p.name in ignore or p.name.startswith(TMP_PREFIX) for p in folder.rglob("*"))


@contextlib.contextmanager
def removed_on_error(folder, ignore=(".lock",)):
    """Run the block; if it fails, remove the output ``folder`` (and the parents made for it) when
    this call created it and it holds nothing of value (only folders, temporaries and the files named
    in ``ignore``, by default a training run's lock), so a refused command leaves no half-made run."""
    folder = Path(folder).absolute()
    created = next((p for p in (*reversed(folder.parents), folder) if not p.exists()), None)
    try:
        yield
    except BaseException:
        if created is not None and created.is_dir() and _disposable(created, ignore):
            shutil.rmtree(created, ignore_errors=True)
        raise
