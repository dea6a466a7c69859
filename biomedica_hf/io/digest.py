"""SHA-256 of a file, read in 1 MiB blocks (the one home of this loop: build state seals, Hub upload checks)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of the file at ``path`` (``hashlib.file_digest`` needs Python 3.11; this package allows 3.10)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["file_sha256"]
