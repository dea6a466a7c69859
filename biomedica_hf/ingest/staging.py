"""Staging of one partition (``_work/stage/<pid>/``): what its articles produced, before dedup and writing.

* ``images.bin``  per finished article, the processed image bytes of its samples back to back, then its
  record (article rows with the full text, sample metadata with the offsets of their images, ledger
  rows) as zstd-compressed JSON: staging costs about what the output will, not 4x for the text;
* ``log.jsonl``   one small line per finished article: where its record is, the end offset of
  ``images.bin`` after it and its seconds per stage (:mod:`biomedica_hf.ingest.timings`; kept out of
  ``images.bin`` so that the staged bytes do not depend on them);
* ``starts.txt``  one line per article *started*: an article started twice without finishing killed its
  worker twice (OOM, SIGKILL), and is then ledgered instead of tried again;
* ``staged.json`` written last (a sealed record, :mod:`biomedica_hf.ingest.state`): the partition is staged.

A partition staged in **slices** (the last ones of a small build, :func:`biomedica_hf.ingest.pipeline.stage_units`)
has one such folder per slice of its manifest (``<pid>~<start>-<end>``); once all are staged, their units are
copied into the partition's folder in manifest order as they are (:meth:`PartitionStage.append_staging`: a log line
then carries ``shift``, how far the unit's images moved), and the partition is sealed as if one task had staged it.

A killed partition resumes after its last finished article (``images.bin`` is cut back to that
article's end offset), so a resumed partition stages exactly the bytes of an uninterrupted one.

The staging proves itself: each log line carries its own seal and the sha256 of its record in
``images.bin``, and every image its CRC-32 (checked when the shard is written: the image's sha256, which the output
carries, would cost 6-10x more to check again; a staging of older code, without CRC-32s, is checked by sha256). A torn *last* line is
what a kill leaves and is dropped; anything else that does not check (a cut or flipped line, a record or
image whose bytes changed, ``images.bin`` shorter than the log says) raises
:class:`~biomedica_hf.ingest.state.StateError`, and the build redoes the partition from its inputs.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from biomedica_hf.ingest.article import PackageResult
from biomedica_hf.ingest.state import StateError, file_seal, matches, read_sealed, write_sealed
from biomedica_hf.io import plainjson
from biomedica_hf.io.digest import crc32
from biomedica_hf.io.markers import STAGED
from biomedica_hf.io.ranges import LocalFile
from biomedica_hf.schema import ImageRecord, Sample, flat_dict


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
    """A staged record as JSON: orjson for plain data (the build's records: ~8x faster than ``json`` on their
    article text); anything else as before, other types as ``str()``, undecodable names cleaned."""
    try:
        return plainjson.dumps(obj)
    except (TypeError, UnicodeEncodeError):
        pass
    try:
        return json.dumps(obj, ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        return json.dumps(_clean(obj), ensure_ascii=False, default=str).encode()


def _copy_range(src: int, dst: int, n: int, at: int) -> None:
    """Bytes ``[0, n)`` of file ``src`` to offset ``at`` of file ``dst`` (the kernel's ``copy_file_range``; a plain
    read and write where the file system or the platform has none)."""
    done = 0
    try:
        while done < n:
            k = os.copy_file_range(src, dst, n - done, done, at + done)
            if k == 0:
                raise StateError(f"a slice's staging is {done} bytes, its log says {n}: cut")
            done += k
        return
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < n:
        chunk = os.pread(src, min(n - done, 1 << 24), done)
        if not chunk:
            raise StateError(f"a slice's staging is {done} bytes, its log says {n}: cut")
        os.pwrite(dst, chunk, at + done)
        done += len(chunk)


def _line_body(d: dict) -> bytes:
    return json.dumps({k: v for k, v in d.items() if k != "seal"}, sort_keys=True).encode()


class PartitionStage:
    """Append-only writer/reader of one partition's staging folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.bin = self.folder / "images.bin"
        self.log = self.folder / "log.jsonl"
        self.starts = self.folder / "starts.txt"
        self.marker = self.folder / STAGED

    # ---------------------------------------------------------------- state
    def is_staged(self, manifest_digest: str | None = None) -> bool:
        """A valid (sealed) marker, for the given manifest when one is given, over the log it sealed."""
        info = read_sealed(self.marker)
        return (info is not None and (manifest_digest is None or info.get("manifest") == manifest_digest)
                and ("log" not in info or matches(self.log, info["log"])))

    def staged_info(self) -> dict:
        """What :meth:`mark_staged` recorded (``{}`` while the partition is not staged or its marker is bad)."""
        return read_sealed(self.marker) or {}

    def _lines(self, repair: bool) -> list[dict]:
        """The log's entries, each checked; a torn last line is dropped (and cut off the file with ``repair``)."""
        if not self.log.exists():
            return []
        out, good, prev_end = [], 0, 0
        with open(self.log, "rb") as fh:
            data = fh.read()
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break                                   # torn by a kill: that article is redone
            try:
                d = json.loads(raw)
                seal = d.pop("seal")
                ok = hashlib.sha256(_line_body(d)).hexdigest() == seal
                off, size, _ = d["record"]
                ok = ok and prev_end <= off and off + size == d["bin_end"]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise StateError(f"{self.log}: line {len(out) + 1} is damaged ({type(e).__name__})") from None
            if not ok:
                raise StateError(f"{self.log}: line {len(out) + 1} does not match its seal")
            prev_end = d["bin_end"]
            out.append(d)
            good += len(raw)
        if repair and good != len(data):
            with open(self.log, "r+b") as fh:
                fh.truncate(good)
        size = self.bin.stat().st_size if self.bin.exists() else 0
        if prev_end > size:
            raise StateError(f"{self.bin} is {size} bytes but its log says {prev_end}: cut")
        return out

    def finished(self) -> tuple[set[str], int]:
        """Ids of finished units and the end offset of the last one (0 when none).

        A torn last line (killed mid-write) is dropped from the log; a damaged one raises StateError."""
        lines = self._lines(repair=True)
        return {d["ref_id"] for d in lines}, (lines[-1]["bin_end"] if lines else 0)

    def start_counts(self) -> Counter:
        if not self.starts.exists():
            return Counter()
        # advisory (give-up bookkeeping), never trusted for output: a damaged line counts for no article
        text = self.starts.read_bytes().decode("utf-8", errors="replace")
        return Counter(line.strip() for line in text.splitlines() if line.strip())

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
                image = {k: v for k, v in flat_dict(s.image).items() if k != "data"}
                samples.append({"key": s.key, "caption": s.caption, "meta": s.meta, "image": image,
                                "offset": offset + n, "length": len(s.image.data), "crc32": crc32(s.image.data)})
                n += len(s.image.data)
            record = _dumps({"articles": result.articles, "samples": samples,
                             "ledger": [e.as_dict() for e in result.ledger]})
            blob = pa.compress(record, codec="zstd", asbytes=True)
            rec_offset = offset + n
            fh.write(blob)
            end = fh.tell()
        timings = {**result.timings, "stage_write": result.timings.get("stage_write", 0.0) + time.perf_counter() - t0}
        entry = {"ref_id": result.ref_id, "record": [rec_offset, len(blob), len(record)], "bin_end": end,
                 "sha": hashlib.sha256(blob).hexdigest(), "timings": {k: round(v, 6) for k, v in timings.items()}}
        entry["seal"] = hashlib.sha256(_line_body(entry)).hexdigest()
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        return n

    def append_staging(self, other: "PartitionStage", move: bool = False) -> int:
        """Append every finished unit of ``other`` (a slice of this partition), in order, as its bytes are: its
        ``images.bin`` up to its last unit copied in one range (``copy_file_range``: in the kernel), or with
        ``move`` into an empty staging, moved (renamed: ``other`` is spent), each record checked against its sha256
        first, each log line saying how far its unit's images moved (``shift``, which :meth:`units` adds to their
        offsets), so that nothing is decoded or compressed again. Returns the bytes appended."""
        lines = other._lines(repair=False)
        if not lines:
            return 0
        end = lines[-1]["bin_end"]
        with open(other.bin, "rb") as src, open(self.bin, "r+b") as dst:
            for d in lines:
                off, size, _ = d["record"]
                if hashlib.sha256(os.pread(src.fileno(), size, off)).hexdigest() != d["sha"]:
                    raise StateError(f"{other.bin}: the record of {d['ref_id']} at {off} is cut or damaged")
            base = os.fstat(dst.fileno()).st_size
            if not (move and base == 0):
                _copy_range(src.fileno(), dst.fileno(), end, base)
        if move and base == 0:
            os.replace(other.bin, self.bin)
            os.truncate(self.bin, end)                  # (anything after its last unit: a kill's, not staged)
        with open(self.log, "a", encoding="utf-8") as log:
            for d in lines:
                off, size, raw = d["record"]
                entry = {"ref_id": d["ref_id"], "record": [off + base, size, raw], "bin_end": d["bin_end"] + base,
                         "sha": d["sha"], "timings": d.get("timings", {})}
                if base + d.get("shift", 0):
                    entry["shift"] = base + d.get("shift", 0)
                entry["seal"] = hashlib.sha256(_line_body(entry)).hexdigest()
                log.write(json.dumps(entry) + "\n")
        return end

    def mark_staged(self, info: dict) -> None:
        """Seal the staging: the marker records ``info`` and the log's length and sha256."""
        write_sealed(self.marker, {**info, "log": file_seal(self.log) if self.log.exists() else [0, ""]})

    # ---------------------------------------------------------------- reading
    def units(self) -> Iterator[dict]:
        """Finished units in order: ``ref_id``, ``articles``, ``samples``, ``ledger``, ``timings``."""
        lines = self._lines(repair=False)
        if not lines:
            return
        try:
            data = LocalFile(self.bin, "staging file")
        except OSError as e:
            raise StateError(f"{self.bin}: {e}") from None
        with data:
            for d in lines:
                off, size, raw = d["record"]
                try:
                    blob = data.read(off, size)
                    if hashlib.sha256(blob).hexdigest() != d["sha"]:
                        raise ValueError("sha256 differs")
                    rec = plainjson.loads(pa.decompress(blob, decompressed_size=raw, codec="zstd", asbytes=True))
                except (OSError, ValueError, pa.ArrowException) as e:
                    raise StateError(f"{self.bin}: the record of {d['ref_id']} at {off} is damaged ({e})") from None
                shift = d.get("shift", 0)
                if shift:                                # a unit copied from a slice (append_staging)
                    for s in rec["samples"]:
                        s["offset"] += shift
                yield {"ref_id": d["ref_id"], **rec, "timings": d.get("timings", {})}

    def read_samples(self, rows: list[dict]) -> Iterator[Sample]:
        """Samples for staged sample rows, in the given order, one image in memory at a time; each image's
        bytes are checked against the sha256 recorded when it was staged (StateError when they differ)."""
        with LocalFile(self.bin, "staging file") as fh:
            for s in rows:
                try:
                    data = fh.read(s["offset"], s["length"])
                except OSError as e:
                    raise StateError(f"{self.bin}: image of {s['key']} unreadable ({e})") from None
                if "crc32" in s:         # (a staging of older code has none: its images are checked by sha256)
                    if crc32(data) != s["crc32"]:
                        raise StateError(f"{self.bin}: the staged image of {s['key']} changed since it was staged "
                                         f"(CRC-32 differs)")
                elif hashlib.sha256(data).hexdigest() != s["image"]["sha256"]:
                    raise StateError(f"{self.bin}: the staged image of {s['key']} changed since it was staged "
                                     f"(sha256 differs)")
                image = ImageRecord(data=data, **s["image"])
                yield Sample(s["key"], image, s["caption"], dict(s["meta"]))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["PartitionStage"]
