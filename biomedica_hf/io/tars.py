"""The one tar reader and writer of the dataset's shards: byte-reproducible members (fixed mtime, owner and mode),
tars of JSON rows, and reading members from their headers, whole files or byte ranges.

Reading (every reader of a shard asks here: the loader, ``biomedica verify``, the concept and panel stages, the card,
eval's config scanner):

* :func:`scan_headers` walks a tar's 512-byte headers through any ``read(offset, size)`` (a local file, a byte
  range, a remote file) and says where each member's header and data are, where the archive ends and what is
  wrong with it (bad checksum, a member that is not a regular file, cut short, data after the end);
* :func:`tar_members` / :func:`read_members`: a whole local tar's regular members (``pax`` / GNU headers handled
  by ``tarfile``);
* :func:`range_members` / :func:`member_spans`: the members of a byte range of whole members (a sample, as the
  index's ``tar_offset`` / ``tar_size`` say), without copying their data (the loader's hot path).
"""
from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomedica_hf.io import plainjson
from biomedica_hf.io.atomic import atomic_open

TAR_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z: fixed so that tars are reproducible
END_OF_ARCHIVE = b"\0" * (2 * tarfile.BLOCKSIZE)   # the two zero blocks that end an archive
#: trailing spaces (at least) that every sample's ``json`` member carries, then up to whole 512-byte blocks, so
#: that fields added later (concept labels) are written in place: same member size, so every offset stays valid
JSON_ROOM = 1024


def compact_json(record: Any) -> bytes:
    """The JSON encoding of every ``json`` member (UTF-8, no spaces): :func:`biomedica_hf.io.plainjson.compact`."""
    return plainjson.compact(record)


def room_json(record: dict) -> bytes:
    """A sample's ``json`` member: compact JSON, then spaces (:data:`JSON_ROOM`, up to whole tar blocks). The record
    holds the schema's sample fields (no floats), so orjson writes it (:mod:`biomedica_hf.io.plainjson`: the same
    bytes as :func:`compact_json`)."""
    data = plainjson.dumps(record)
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


def _tarfile_header(name: str, size: int) -> bytes:
    return tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


_TEMPLATE = _tarfile_header("", 0)           # the fixed fields (mode, owner, mtime, type, magic) in place
_FIXED_SUM = sum(_TEMPLATE[100:124]) + sum(_TEMPLATE[136:148]) + sum(_TEMPLATE[156:]) + 8 * 0x20


def member_header(name: str, size: int) -> bytes:
    """The header block(s) ``tarfile`` writes for a :func:`tarinfo` member in PAX format.

    A name of at most 100 ASCII characters and a size below 8 GiB need no PAX record: ``tarfile`` then writes one
    ustar block, which is spliced here from a template (name, size, checksum; ~13x faster than ``TarInfo.tobuf``, a
    shard writes three headers a sample); any other member is left to ``tarfile``. Byte-identical either way
    (tests/io/test_io.py)."""
    if len(name) <= 100 and name.isascii() and 0 <= size < 0o77777777777 + 1:
        raw = name.encode("ascii")
        size_field = b"%011o\0" % size
        chksum = _FIXED_SUM + sum(raw) + sum(size_field)
        return b"".join((raw, b"\0" * (100 - len(raw)), _TEMPLATE[100:124], size_field, _TEMPLATE[136:148],
                         b"%06o\0 " % chksum, _TEMPLATE[156:]))
    return _tarfile_header(name, size)


def member_bytes(name: str, data: bytes) -> bytes:
    """One member as raw tar bytes, exactly as ``tarfile`` writes :func:`tarinfo` members in PAX format (header,
    data padded to whole blocks): for tars assembled from byte ranges."""
    return member_header(name, len(data)) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


class TarWriter:
    """A tar written member after member into ``fh`` (a binary file at its start): the bytes
    ``tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT)`` writes for :func:`tarinfo` members, without
    its per-member copy through a file object in 16 KiB pieces and its list of every member (~40 % of the time of
    writing a shard's small members). ``offset``: where the next member's header starts."""

    def __init__(self, fh) -> None:
        self.fh, self.offset = fh, 0

    def add(self, name: str, data: bytes) -> int:
        """Append member ``name``; returns where its data starts."""
        header = member_header(name, len(data))
        self.fh.write(header)
        self.fh.write(data)
        pad = -len(data) % tarfile.BLOCKSIZE
        if pad:
            self.fh.write(b"\0" * pad)
        start = self.offset + len(header)
        self.offset = start + len(data) + pad
        return start

    def close(self) -> None:
        """The end-of-archive blocks, padded to a whole record, as ``TarFile.close`` writes them."""
        self.fh.write(end_of_archive(self.offset))


# ------------------------------------------------------------------------------------ reading
ZERO_BLOCK = b"\0" * tarfile.BLOCKSIZE


@dataclass(frozen=True)
class TarMember:
    """One member of a tar: its name, where its header and its data start, its size."""

    name: str
    header: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        """Where the next header starts (the data padded to whole blocks)."""
        return self.offset + -(-self.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


@dataclass
class TarScan:
    """What :func:`scan_headers` found: the members, where the archive's members end, and a problem (or None)."""

    members: list[TarMember] = field(default_factory=list)
    end: int = 0
    problem: str | None = None


def _octal(value: bytes) -> int:
    value = value.rstrip(b"\0 ").lstrip(b" ")
    return int(value, 8) if value else 0


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def scan_headers(read: Callable[[int, int], bytes], size: int, start: int = 0) -> TarScan:
    """Walk the headers of the tar whose bytes ``read(offset, n)`` gives (``size`` bytes in all) from ``start``:
    every member's :class:`TarMember`, the end of the last one, and the first structural problem: a bad header
    checksum, a member that is not a regular file (the shards hold only regular files in ustar headers), a member
    cut short, data after the end-of-archive blocks, or no end-of-archive blocks."""
    scan, pos = TarScan(), start
    while pos + tarfile.BLOCKSIZE <= size:
        header = read(pos, tarfile.BLOCKSIZE)
        if header == ZERO_BLOCK:
            rest = read(pos + tarfile.BLOCKSIZE, min(size - pos - tarfile.BLOCKSIZE, 1 << 20))
            scan.end = pos
            scan.problem = None if not rest.strip(b"\0") else f"data after the end-of-archive marker at {pos}"
            return scan
        if sum(header[:148]) + 8 * 32 + sum(header[156:]) != _octal(header[148:156]):
            scan.end, scan.problem = pos, f"bad tar header checksum at byte {pos}"
            return scan
        if header[156:157] not in (b"0", b"\0"):
            scan.end, scan.problem = pos, f"member at byte {pos} is not a regular file (type {header[156:157]!r})"
            return scan
        member = TarMember(_ustar_name(header), pos, pos + tarfile.BLOCKSIZE, _octal(header[124:136]))
        scan.members.append(member)
        pos = member.end
    scan.end = pos
    scan.problem = (f"truncated: the last member runs to byte {pos} of a {size}-byte file" if pos > size
                    else "no end-of-archive marker (truncated?)")
    return scan


def scan_file(path: str | os.PathLike) -> TarScan:
    """:func:`scan_headers` of a local tar (its headers only are read)."""
    from biomedica_hf.io.ranges import LocalFile

    with LocalFile(path) as f:
        return scan_headers(f.read, f.size)


def tar_members(path: str | os.PathLike) -> list[TarMember]:
    """The regular members of a whole local tar, from its headers (``tarfile`` reads one with ``pax`` / GNU
    headers); raises ``tarfile.ReadError`` for a damaged one."""
    scan = scan_file(path)
    if scan.problem and "not a regular file" in scan.problem:
        with tarfile.open(path, "r:") as tar:
            return [TarMember(m.name, m.offset, m.offset_data, m.size) for m in tar if m.isfile()]
    if scan.problem:
        raise tarfile.ReadError(f"{path}: {scan.problem}")
    return scan.members


def read_members(path: str | os.PathLike, wanted: Callable[[str], bool]) -> Iterator[tuple[TarMember, bytes]]:
    """``(member, data)`` of the regular members of a local tar whose name ``wanted`` accepts, in tar order, lazily:
    headers are read one by one as the caller goes on (reading a shard's first ``json`` reads two or three
    headers), the data of wanted members by byte range; from a ``pax`` / GNU header on ``tarfile`` reads the rest."""
    from biomedica_hf.io.ranges import LocalFile

    with LocalFile(path) as f:
        pos = 0
        while pos + tarfile.BLOCKSIZE <= f.size:
            header = f.read(pos, tarfile.BLOCKSIZE)
            if header == ZERO_BLOCK:
                return
            if header[156:157] not in (b"0", b"\0") or header[257:262] != b"ustar":
                with tarfile.open(path, "r:") as tar:
                    for m in tar:
                        if m.offset >= pos and m.isfile() and wanted(m.name):
                            yield TarMember(m.name, m.offset, m.offset_data, m.size), tar.extractfile(m).read()
                return
            member = TarMember(_ustar_name(header), pos, pos + tarfile.BLOCKSIZE, _octal(header[124:136]))
            if wanted(member.name):
                yield member, f.read(member.offset, member.size)
            pos = member.end


def range_spans(data: bytes | memoryview) -> Iterator[tuple[str, int, int]]:
    """``(name, start of its data, size)`` of each regular member of a byte range of whole tar members (a sample's
    ``tar_offset`` / ``tar_size``): ustar headers are parsed here, from a ``pax`` / GNU header on ``tarfile`` reads
    the rest. Stops at an all-zero block; raises ``tarfile.ReadError`` for a member that runs past the range."""
    data = memoryview(data)
    pos, n = 0, len(data)
    while pos + tarfile.BLOCKSIZE <= n:
        header = bytes(data[pos:pos + tarfile.BLOCKSIZE])
        if header == ZERO_BLOCK:
            return
        if header[156:157] not in (b"0", b"\0") or header[257:262] != b"ustar":
            with tarfile.open(fileobj=io.BytesIO(bytes(data[pos:]) + END_OF_ARCHIVE), mode="r:") as tar:
                spans = [(m.name, pos + m.offset_data, m.size) for m in tar if m.isfile()]
            for name, start, size in spans:
                if start + size > n:
                    raise tarfile.ReadError(f"member {name!r} runs past the end of the range")
            yield from spans
            return
        name = header[:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        size = _octal(header[124:136])
        start = pos + tarfile.BLOCKSIZE
        if start + size > n:
            raise tarfile.ReadError(f"member {name!r} runs past the end of the range")
        yield (f"{prefix}/{name}" if prefix else name), start, size
        pos = start + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def range_members(data: bytes | memoryview) -> list[tuple[str, memoryview]]:
    """``(name, data)`` of the regular members of a byte range of whole tar members (:func:`range_spans`), views
    into ``data`` (no copy): the loader's hot path."""
    view = memoryview(data)
    return [(name, view[start:start + size]) for name, start, size in range_spans(view)]


def member_spans(data: bytes) -> list[tuple[str, int, int]]:
    """``(name, start of its data, size)`` of each regular member of ``data``, whole tar members (a sample's byte
    range, or the members from some header on): where a member's bytes lie, to rewrite them in place."""
    if len(data) % tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"{len(data)} bytes are not whole 512-byte tar blocks")
    return list(range_spans(data))


def end_of_archive(offset: int) -> bytes:
    """The zero blocks that end a tar whose members end at ``offset``: two blocks, padded to a whole
    record as ``tarfile`` writes them."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return b"\0" * (2 * tarfile.BLOCKSIZE + (-end) % tarfile.RECORDSIZE)


def write_json_tar(path: Path, records: Iterable[tuple[str, dict]],
                   encode: Callable[[Any], bytes] = compact_json) -> int:
    """A WebDataset tar of ``<key>.json`` members (tables that ``datasets`` must load as a config); ``encode``:
    :func:`compact_json`, or ``plainjson.dumps`` (the same bytes) for rows known to hold no floats."""
    n = 0
    with atomic_open(path) as fh:
        tar = TarWriter(fh)
        for key, record in records:
            tar.add(f"{key}.json", encode(record))
            n += 1
        tar.close()
    return n
