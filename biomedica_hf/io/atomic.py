"""Atomic writes: every file of the project is written to a temporary name beside it and renamed into place.

A crash leaves either the old file or the new one, never half of one; stray temporaries (``.<name>.tmp-<pid>``,
:data:`TEMP_GLOB`) are removed on failure, and :func:`remove_temporaries` drops those a killed run left.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TEMP_GLOB = ".*.tmp-*"   # the temporaries of atomic_path (a killed run's are never complete)


def temp_path(path: Path) -> Path:
    """The temporary name beside ``path`` that :func:`atomic_path` writes to."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeepOld(Exception):
    """Raise inside an :func:`atomic_path` / :func:`atomic_open` block to keep the old file (the writer found
    nothing to change): the temporary is dropped and the block ends without an error."""


@contextlib.contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success (after an
    ``fsync`` of its bytes when asked). On failure (or :class:`KeepOld`) the temporary is removed and
    ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        try:
            yield tmp
        except KeepOld:
            return
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", fsync: bool = False, **kwargs) -> Iterator[IO]:
    """An open file for a streaming writer; it becomes ``path`` only when the block ends without error."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def move_into_place(src: Path, dest: Path) -> None:
    """Rename a complete file (a verified download, a staged table) onto ``dest`` in one step."""
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_tree(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything under it the modes a plain ``mkdir`` / ``open`` gives under the umask
    (0755 / 0644 under umask 022): writers that create 0700 folders (``tempfile.mkdtemp``) or 0600 files
    (safetensors) would otherwise leave an exported model unreadable by the other users of a shared machine."""
    mask = current_umask()
    root = Path(folder)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def remove_temporaries(folder: Path) -> int:
    """Delete the temporaries (:data:`TEMP_GLOB`) a killed run left below ``folder``; returns how many."""
    n = 0
    for p in Path(folder).rglob(TEMP_GLOB):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode())


def write_table(path: Path, table: pa.Table, **kwargs) -> None:
    """Atomic Parquet write of an Arrow table (zstd unless ``compression=`` says otherwise)."""
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema, row_group_size: int | None = None) -> None:
    write_table(path, pa.Table.from_pylist(rows, schema=schema), row_group_size=row_group_size)


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (``np.save(path)`` would append ``.npy`` to a temporary name; a file object does not)."""
    with atomic_open(path) as fh:
        np.save(fh, array, allow_pickle=False)
