"""A local, sparse copy of a remote Parquet file holding only its footer and the column chunks asked for.

Filtering the figures index of a Hub dataset needs a few of its columns (subset, licence, year, split, concepts,
shard and byte offsets) and never its text (captions, reference paragraphs: most of its bytes; ~24 M rows for the
whole of PMC-OA). Scanning it through ``HfFileSystem`` costs one round trip per footer, row group and column chunk,
one after the other; downloading it whole costs its full size. Instead :class:`SparseParquet`:

1. asks the file's metadata once (``huggingface_hub.get_hf_file_metadata``: size, ETag, commit); a Hub URL is
   then read at that commit (``@<sha>``), so a commit pushed meanwhile cannot mix into the copy;
2. reads the footer with one suffix request (two if the footer is longer than the first read);
3. fetches the byte ranges of the wanted column chunks of every row group with the range reader
   (:func:`biomedica_hf.io.ranges.read_files`: coalesced, many requests in flight) and writes them at their own
   offsets into a local file of the remote file's size. The file system keeps the rest as holes, so the copy takes
   the disk space of what was fetched. Any Parquet reader then scans the local path for those columns.

The copy lives under ``cache_dir/<etag>.parquet`` with a ``.ranges.json`` manifest of the byte ranges present; a
later call fetches only the chunks still missing; a new commit of the file has a new ETag, hence a new copy. Ranks
of one machine share the copy (a file lock serialises the fetches). Reading a column that was not fetched would
read zeros: :meth:`SparseParquet.ensure` must name every column a scan reads (the loader does).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_hf.io.atomic import atomic_write_json
from biomedica_hf.io.ranges import HF_URL, ReadOptions, http_url, read_files

FOOTER_GUESS = 64 * 2**10   # the first suffix read: the footer of a file of a few thousand row groups fits


def _merge(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _missing(want: list[tuple[int, int]], have: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of ``want`` (sorted, merged) not covered by ``have`` (sorted, merged)."""
    out, j = [], 0
    for a, b in want:
        while j < len(have) and have[j][1] <= a:
            j += 1
        k, cur = j, a
        while k < len(have) and have[k][0] < b:
            if have[k][0] > cur:
                out.append((cur, have[k][0]))
            cur = max(cur, have[k][1])
            k += 1
        if cur < b:
            out.append((cur, b))
    return out


def column_chunk_ranges(metadata: Any, columns: set[str]) -> list[tuple[int, int]]:
    """``[start, end)`` of every column chunk of ``columns`` (top-level names; nested leaves included) in every
    row group of a ``pyarrow.parquet.FileMetaData``."""
    out = []
    for rg in range(metadata.num_row_groups):
        group = metadata.row_group(rg)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".", 1)[0] not in columns:
                continue
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
                start = min(start, chunk.dictionary_page_offset)
            out.append((int(start), int(start) + int(chunk.total_compressed_size)))
    return [tuple(r) for r in _merge([list(r) for r in out])]


class SparseParquet:
    """A sparse local copy of the remote Parquet file ``url`` (``hf://datasets/...`` or ``http(s)://``)."""

    def __init__(self, url: str, cache_dir: str | os.PathLike, token: str | bool | None = None,
                 options: ReadOptions | None = None) -> None:
        from huggingface_hub import get_hf_file_metadata

        self.url, self.token, self.options = url, token, options or ReadOptions()
        meta = get_hf_file_metadata(http_url(url), token=token)
        if meta.size is None or meta.etag is None:
            raise OSError(f"{url}: the server did not say the file's size and ETag; cannot cache it")
        self.size, self.etag, self.commit = int(meta.size), meta.etag, meta.commit_hash
        m = HF_URL.match(url)
        if m and self.commit:   # the bytes are fetched at the commit the metadata came from, not a moving branch
            self.url = f"hf://datasets/{m['repo']}@{self.commit}/{m['path']}"
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = "".join(ch if ch.isalnum() else "_" for ch in self.etag)
        self.path = folder / f"{name}.parquet"
        self.manifest = folder / f"{name}.ranges.json"
        self.lock_path = folder / f"{name}.lock"
        self._metadata = None

    # ------------------------------------------------------------------------------------ state
    def _have(self) -> list[list[int]]:
        try:
            info = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return []
        if info.get("size") != self.size or not self.path.exists() or self.path.stat().st_size != self.size:
            return []
        return _merge([list(r) for r in info.get("ranges", [])])

    def _fetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch ``ranges`` into the local copy (under the lock) and record them."""
        from filelock import FileLock

        with FileLock(str(self.lock_path)):
            have = self._have()
            todo = _missing(sorted(ranges), have)
            if not todo:
                return
            if not have:   # a new (or inconsistent) copy: a sparse file of the remote size
                with open(self.path, "wb") as fh:
                    fh.truncate(self.size)
            fd = os.open(self.path, os.O_WRONLY)
            try:
                spans = np.array([(a, b - a) for a, b in todo], dtype=np.int64)
                for _, i, data in read_files([(self.url, spans)], self.options, self.token):
                    os.pwrite(fd, data, int(spans[i, 0]))
                os.fsync(fd)
            finally:
                os.close(fd)
            atomic_write_json(self.manifest, {"url": self.url, "etag": self.etag, "size": self.size,
                                              "ranges": _merge(have + [list(r) for r in todo])})

    # ------------------------------------------------------------------------------------ API
    @property
    def metadata(self) -> Any:
        """The file's ``pyarrow.parquet.FileMetaData`` (fetches the footer on first use)."""
        if self._metadata is None:
            import pyarrow.parquet as pq

            tail = min(self.size, FOOTER_GUESS)
            self._fetch([(self.size - tail, self.size)])
            with open(self.path, "rb") as fh:
                fh.seek(self.size - 8)
                length, magic = struct.unpack("<I4s", fh.read(8))
            if magic != b"PAR1" or length + 8 > self.size:
                raise OSError(f"{self.url} is not a Parquet file (bad footer)")
            if length + 8 > tail:
                self._fetch([(self.size - length - 8, self.size)])
            self._metadata = pq.read_metadata(self.path)
        return self._metadata

    @property
    def schema(self) -> Any:
        return self.metadata.schema.to_arrow_schema()

    def ensure(self, columns: set[str] | list[str]) -> Path:
        """Fetch what is missing of ``columns``' chunks; returns the local path to scan for those columns."""
        self._fetch(column_chunk_ranges(self.metadata, set(columns)))
        return self.path
