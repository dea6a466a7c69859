"""Byte-reproducible tar members (fixed mtime, owner and mode) and tars of JSON rows."""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

from biomedica_hf.io.atomic import atomic_open

TAR_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z: fixed so that tars are reproducible


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def member_bytes(name: str, data: bytes) -> bytes:
    """One member as raw tar bytes, exactly as ``tarfile`` writes :func:`tarinfo` members in PAX format (header,
    data padded to whole blocks): for tars assembled from byte ranges."""
    header = tarinfo(name, len(data)).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def end_of_archive(offset: int) -> bytes:
    """The zero blocks that end a tar whose members end at ``offset``: two blocks, padded to a whole
    record as ``tarfile`` writes them."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return b"\0" * (2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE)


def write_json_tar(path: Path, records: Iterable[tuple[str, dict]]) -> int:
    """A WebDataset tar of ``<key>.json`` members (tables that ``datasets`` must load as a config)."""
    n = 0
    with atomic_open(path) as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, record in records:
            data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
            tar.addfile(tarinfo(f"{key}.json", len(data)), io.BytesIO(data))
            n += 1
    return n
