"""Staging of one partition (``_work/stage/<pid>/``): what its articles produced, before dedup and writing.

* ``images.bin``  per finished article, the processed image bytes of its samples back to back, then its
  record (article rows with the full text, sample metadata with the offsets of their images, ledger
  rows) as zstd-compressed JSON: staging costs about what the output will, not 4x for the text;
* ``log.jsonl``   one small line per finished article: where its record is, the end offset of
  ``images.bin`` after it and its seconds per stage (:mod:`biomedica_hf.build.timings`; kept out of
  ``images.bin`` so that the staged bytes do not depend on them);
* ``starts.txt``  one line per article *started*: an article started twice without finishing killed its
  worker twice (OOM, SIGKILL), and is then ledgered instead of tried again;
* ``staged.json`` written last: the partition is staged.

A killed partition resumes after its last finished article (``images.bin`` is cut back to that
article's end offset), so a resumed partition stages exactly the bytes of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from biomedica_hf.build.article import PackageResult
from biomedica_hf.io.markers import STAGED, is_done, read_marker, write_marker
from biomedica_hf.io.ranges import LocalFile
from biomedica_hf.schema import ImageRecord, Sample


def _clean(obj):
    """Strings that cannot be UTF-8 (file names undecodable in the file system's encoding arrive as
    lone surrogates) made visible and safe: ``caf\\xe9.jpg``."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {_clean(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _dumps(obj) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        return json.dumps(_clean(obj), ensure_ascii=False, default=str).encode()


class PartitionStage:
    """Append-only writer/reader of one partition's staging folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.bin = self.folder / "images.bin"
        self.log = self.folder / "log.jsonl"
        self.starts = self.folder / "starts.txt"
        self.marker = self.folder / STAGED

    # ---------------------------------------------------------------- state
    def is_staged(self) -> bool:
        return is_done(self.marker)

    def staged_info(self) -> dict:
        """What :meth:`mark_staged` recorded (``{}`` while the partition is not staged)."""
        return read_marker(self.marker) or {}

    def finished(self) -> tuple[set[str], int]:
        """Ids of finished units and the end offset of the last one (0 when none).

        A torn last line (killed mid-write) is dropped from the log."""
        done, end = set(), 0
        if not self.log.exists():
            return done, end
        good = 0
        with open(self.log, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                d = json.loads(raw)
                done.add(d["ref_id"])
                end = d["bin_end"]
                good += len(raw)
        if good != self.log.stat().st_size:
            with open(self.log, "r+b") as fh:
                fh.truncate(good)
        return done, end

    def start_counts(self) -> Counter:
        if not self.starts.exists():
            return Counter()
        return Counter(line.strip() for line in self.starts.read_text(encoding="utf-8").splitlines() if line.strip())

    def open(self) -> tuple[set[str], int]:
        """Prepare to append: cut ``images.bin`` back to the last finished unit."""
        self.folder.mkdir(parents=True, exist_ok=True)
        done, end = self.finished()
        with open(self.bin, "ab") as fh:
            fh.truncate(end)
        return done, end

    # ---------------------------------------------------------------- writing
    def mark_start(self, ref_id: str) -> None:
        with open(self.starts, "a", encoding="utf-8") as fh:
            fh.write(ref_id + "\n")
            fh.flush()

    def append(self, result: PackageResult) -> int:
        """Append one finished unit; returns the number of image bytes written.

        Not fsync'ed: a killed process loses nothing the kernel has; a crash of the machine is
        recovered by the torn-line check of :meth:`finished`."""
        t0 = time.perf_counter()
        samples = []
        with open(self.bin, "ab") as fh:
            offset = fh.tell()
            n = 0
            for s in result.samples:
                fh.write(s.image.data)
                image = {k: v for k, v in dataclasses.asdict(s.image).items() if k != "data"}
                samples.append({"key": s.key, "caption": s.caption, "meta": s.meta, "image": image,
                                "offset": offset + n, "length": len(s.image.data)})
                n += len(s.image.data)
            record = _dumps({"articles": result.articles, "samples": samples,
                             "ledger": [e.as_dict() for e in result.ledger]})
            blob = pa.compress(record, codec="zstd", asbytes=True)
            rec_offset = offset + n
            fh.write(blob)
            end = fh.tell()
        timings = {**result.timings, "stage_write": result.timings.get("stage_write", 0.0) + time.perf_counter() - t0}
        line = json.dumps({"ref_id": result.ref_id, "record": [rec_offset, len(blob), len(record)], "bin_end": end,
                           "timings": {k: round(v, 6) for k, v in timings.items()}})
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return n

    def mark_staged(self, info: dict) -> None:
        write_marker(self.marker, info)

    # ---------------------------------------------------------------- reading
    def units(self) -> Iterator[dict]:
        """Finished units in order: ``ref_id``, ``articles``, ``samples``, ``ledger``, ``timings``."""
        if not self.log.exists():
            return
        with open(self.log, encoding="utf-8") as fh, LocalFile(self.bin, "staging file") as data:
            for line in fh:
                if not line.strip():
                    continue
                d = json.loads(line)
                off, size, raw = d["record"]
                rec = json.loads(pa.decompress(data.read(off, size), decompressed_size=raw, codec="zstd",
                                               asbytes=True))
                yield {"ref_id": d["ref_id"], **rec, "timings": d.get("timings", {})}

    def read_samples(self, rows: list[dict]) -> Iterator[Sample]:
        """Samples for staged sample rows, in the given order, one image in memory at a time."""
        with LocalFile(self.bin, "staging file") as fh:
            for s in rows:
                image = ImageRecord(data=fh.read(s["offset"], s["length"]), **s["image"])
                yield Sample(s["key"], image, s["caption"], dict(s["meta"]))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["PartitionStage"]
