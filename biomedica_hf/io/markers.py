"""Completion markers: a small JSON file, written atomically and last, that says a piece of work is done and
what it was done for (a digest of its input, the settings that made it).

Every resumable stage keeps its pieces' state this way; only the file name differs, and it is data
(old folders keep resuming):

* shards (``ingest/shards.py``, concept subsets): ``<stem>_stats.json`` (:data:`STATS`);
* concept embeddings: ``NNNNNN_done.json`` (:data:`DONE`);
* search embedding chunks: ``NNNNNN.done.json`` (:data:`CHUNK_DONE`);
* a staged partition: ``_work/stage/<pid>/staged.json`` (:data:`STAGED`, a fixed name in the piece's folder).

A piece is done when its marker exists, its files exist and the marker records the expected values
(:func:`is_done`); a piece being redone loses its marker first (:func:`clear_marker`), so a crash in
between never leaves a marker over half-written files.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from biomedica_hf.io.atomic import atomic_write_json

STATS = "_stats.json"
DONE = "_done.json"
CHUNK_DONE = ".done.json"
STAGED = "staged.json"


def marker_path(piece: Path, suffix: str) -> Path:
    """The marker of the piece whose files share the stem ``piece`` (``a/000001`` + ``_done.json``)."""
    piece = Path(piece)
    return piece.with_name(piece.name + suffix)


def piece_stem(marker: Path | str, suffix: str) -> str:
    """The piece's file name stem from its marker's name (the inverse of :func:`marker_path`)."""
    name = Path(marker).name
    if not name.endswith(suffix):
        raise ValueError(f"{marker} is not a {suffix} marker")
    return name[:-len(suffix)]


def write_marker(path: Path, info: Mapping[str, Any]) -> None:
    """Write the marker (atomically); call it after every file of the piece is in place."""
    atomic_write_json(path, dict(info))


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's record; None when it is missing, unreadable or not a JSON object."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_done(path: Path, expect: Mapping[str, Any] | None = None, files: Iterable[Path] = ()) -> bool:
    """True when the marker exists, each of ``files`` exists, and the marker records every value of ``expect``
    (a digest, a fingerprint)."""
    if not all(Path(f).exists() for f in files):
        return False
    info = read_marker(path)
    return info is not None and all(info.get(k) == v for k, v in (expect or {}).items())


def clear_marker(path: Path) -> None:
    """Remove the marker before a piece is redone (or deleted): a half-rewritten piece is never "done"."""
    Path(path).unlink(missing_ok=True)
