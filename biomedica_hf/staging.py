"""Work files of a build: one staged unit per listed article (``_work/staged/<id>.json`` + ``.bin``).

The ``.bin`` holds the processed image bytes back to back; the ``.json`` (written last, atomically)
holds articles, sample metadata with the offsets of their images, and ledger entries. A unit whose
``.json`` exists is finished, so a rerun skips it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Iterator

from .schema import ImageRecord, LedgerEntry, Sample
from .samples import PackageResult
from .writer import atomic_path, atomic_write_bytes

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def unit_stem(ref_id: str) -> str:
    return _UNSAFE.sub("_", ref_id).strip("._") or "unnamed"


def unit_paths(work: Path, ref_id: str) -> tuple[Path, Path]:
    stem = Path(work) / "staged" / unit_stem(ref_id)
    return stem.with_suffix(".json"), stem.with_suffix(".bin")


def is_staged(work: Path, ref_id: str) -> bool:
    return unit_paths(work, ref_id)[0].exists()


def write_unit(work: Path, result: PackageResult) -> Path:
    meta_path, bin_path = unit_paths(work, result.ref_id)
    samples, offset = [], 0
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as fh:
        for s in result.samples:
            fh.write(s.image.data)
            image = {k: v for k, v in dataclasses.asdict(s.image).items() if k != "data"}
            samples.append({"key": s.key, "caption": s.caption, "meta": s.meta,
                            "image": image, "offset": offset, "length": len(s.image.data)})
            offset += len(s.image.data)
    doc = {"ref_id": result.ref_id, "articles": result.articles, "samples": samples,
           "ledger": [e.as_dict() for e in result.ledger]}
    atomic_write_bytes(meta_path, json.dumps(doc, ensure_ascii=False).encode())
    return meta_path


def read_unit(meta_path: Path) -> dict:
    st = Path(meta_path).stat()
    return _read_unit(str(meta_path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _read_unit(path: str, mtime_ns: int, size: int) -> dict:  # stat in the key: no stale reads
    return json.loads(Path(path).read_text())


def unit_ledger(doc: dict) -> list[LedgerEntry]:
    return [LedgerEntry(**e) for e in doc["ledger"]]


def iter_samples(work: Path, keys: list[str], location: dict[str, str]) -> Iterator[Sample]:
    """Samples in the order of ``keys``, streaming: metadata of every unit is read once, and only
    one image is in memory at a time (a shard's images never are all at once)."""
    entries: dict[str, tuple[Path, dict]] = {}
    for ref_id in dict.fromkeys(location[k] for k in keys):
        meta_path, bin_path = unit_paths(work, ref_id)
        for s in read_unit(meta_path)["samples"]:
            entries[s["key"]] = (bin_path, s)
    handles: dict[Path, BinaryIO] = {}
    try:
        for key in keys:
            bin_path, s = entries[key]
            fh = handles.get(bin_path)
            if fh is None:
                if len(handles) >= 64:
                    handles.pop(next(iter(handles))).close()
                fh = handles[bin_path] = open(bin_path, "rb")
            fh.seek(s["offset"])
            image = ImageRecord(data=fh.read(s["length"]), **s["image"])
            yield Sample(key, image, s["caption"], dict(s["meta"]))
    finally:
        for fh in handles.values():
            fh.close()
