"""Byte-reproducible tar members (fixed mtime, owner and mode) and tars of JSON rows."""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from biomedica_hf.io.atomic import atomic_open

TAR_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z: fixed so that tars are reproducible
END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)   # the two zero blocks that end an archive
#: trailing spaces (at least) that every sample's ``json`` member carries, then up to whole 512-byte blocks, so
#: that fields added later (concept labels) are written in place: same member size, so every offset stays valid
JSON_ROOM = 1024


def compact_json(record: Any) -> bytes:
    """The JSON encoding of every ``json`` member (UTF-8, no spaces)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def room_json(record: dict) -> bytes:
    """A sample's ``json`` member: compact JSON, then spaces (:data:`JSON_ROOM`, up to whole tar blocks)."""
    data = compact_json(record)
    return data + b" " * (JSON_ROOM + (-(len(data) + JSON_ROOM)) % tarfile.BLOCKSIZE)


def refill_json(record: dict, size: int) -> bytes | None:
    """``record`` as a ``json`` member of exactly ``size`` bytes (compact JSON, then spaces), or None when it does
    not fit."""
    data = compact_json(record)
    return data + b" " * (size - len(data)) if len(data) <= size else None


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


def member_spans(data: bytes) -> list[tuple[str, int, int]]:
    """``(name, start of its data, size)`` of each regular member of ``data``, whole tar members (a sample's byte
    range, or the members from some header on): where a member's bytes lie, to rewrite them in place."""
    if len(data) % tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"{len(data)} bytes are not whole 512-byte tar blocks")
    with tarfile.open(fileobj=io.BytesIO(bytes(data) + END_OF_ARCHIVE), mode="r:") as tar:
        spans = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    for name, start, size in spans:
        if start + size > len(data):
            raise tarfile.ReadError(f"member {name!r} runs past the end of the range")
    return spans


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
            data = compact_json(record)
            tar.addfile(tarinfo(f"{key}.json", len(data)), io.BytesIO(data))
            n += 1
    return n
