"""``biomedica panels DIR``: every figure of a built dataset folder split into panels, resumable per shard.

One task per source shard (``<subset>/<stem>.tar`` of the build), run by ``biomedica_hf.executors`` (local processes
or Ray). A task reads its shard's Parquet rows, each image by byte range, finds the panels
(:func:`biomedica_hf.panels.figure.find_panels`) and their subcaptions, and writes::

    DIR/panels/<subset>/<stem>.parquet            one row per panel (PANEL_SCHEMA), tar order
    DIR/<subset>-panels/sNNN/gNNN/<subset>-panels-<rest>.tar  the crops as WebDataset samples (.jpg|png, .txt, .json)
    DIR/panels/<subset>/<stem>_done.json          written last: the shard's completion marker

``<rest>`` is the source shard's name after ``<subset>-`` (``train-s000-p00017-000``), so a panel shard never mixes
licences and its split shows in its name like the build's; ``sNNN/gNNN`` is the source shard's group
(``layout.shard_group``: a panel shard sits in the same group as its source, so no folder outgrows the source's;
flat for a source of the flat layout). The marker records a digest of the source shard's
build digest and the settings (labels, detector, version): a rerun skips done shards, splits new or rebuilt ones,
and deletes the files of shards that are gone (an update removed their parents). Then:

* ``DIR/panels.parquet``: every shard's panel rows, in ``layout.shard_tables`` order;
* ``figures.parquet`` is rebuilt (``ingest.figures.build_figures_index``): the ``image_panel_count`` column comes
  from :mod:`biomedica_hf.panels.hooks` (null for samples of shards not split yet);
* ``sizes.json`` in every directory of ``DIR/<subset>-panels/`` that holds tars (open_clip's sample counts: each
  lists every shard of its config, since open_clip reads the first shard's directory only).

Crops: a JPEG parent's crop is JPEG at quality 95 (4:4:4) with the parent's ICC profile; a PNG parent's is PNG
(ICC kept). The crop's ``txt`` is the panel's caption: shared part + subcaption + footer (the whole caption for a
single-panel figure or when nothing could be aligned). A figure that cannot be decoded gives no panels and is
listed in the marker and the report (``figures_failed``) with its reason; the other figures of its shard are split.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.io.atomic import atomic_open, atomic_write_json, write_table
from biomedica_hf.io.markers import DONE, clear_marker, is_done, marker_path, read_marker, write_marker
from biomedica_hf.io.ranges import LocalFile, ShardTruncatedError
from biomedica_hf.io.tars import END_OF_ARCHIVE, compact_json, member_bytes
from biomedica_hf.layout import (
    PANEL_CONFIG_SUFFIX,
    PANELS_DIR,
    PANELS_INDEX,
    SIZES,
    folder_files,
    in_group,
    panel_config,
    shard_dirs,
    shard_group,
    shard_paths,
    shard_tables,
    table_shard,
)

log = logging.getLogger(__name__)

INDEX_COLUMN = "image_panel_count"   # the figures.parquet column panels add (through panels/hooks.py)
VERSION = 1                      # bump when a change to the splitting should redo every shard
JPEG_QUALITY = 95
DETECTOR_BATCH = 8               # images per detector call
ROW_COLUMNS = ["key", "pmcid", "figure_id", "caption", "subset", "license_code", "split", "year", "shard",
               "tar_offset", "image_offset", "image_size", "image_ext"]
PANEL_SCHEMA = pa.schema([
    ("key", pa.string()), ("parent_key", pa.string()), ("pmcid", pa.string()), ("figure_id", pa.string()),
    ("subset", pa.string()), ("license_code", pa.string()), ("split", pa.string()), ("year", pa.int32()),
    ("source_shard", pa.string()), ("panel_index", pa.int32()), ("panel_count", pa.int32()),
    ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),
    ("parent_width", pa.int32()), ("parent_height", pa.int32()),
    ("label", pa.string()), ("label_score", pa.float32()), ("caption_label", pa.string()),
    ("subcaption", pa.string()), ("shared", pa.string()), ("caption", pa.string()), ("family", pa.string()),
    ("method", pa.string()), ("confidence", pa.float32()), ("score", pa.float32()),
    ("image_ext", pa.string()), ("shard", pa.string()), ("tar_offset", pa.int64()), ("tar_size", pa.int64()),
])
# the json member of a panel sample (the card declares these features)
JSON_FIELDS = ("parent_key", "pmcid", "figure_id", "subset", "license_code", "split", "year", "panel_index",
               "panel_count", "bbox", "label", "label_score", "caption_label", "subcaption", "shared", "method",
               "confidence", "score")


def source_stem(shard: str) -> str:
    """``commercial/commercial-train-s000-p00000-000.tar`` -> ``commercial/commercial-train-s000-p00000-000``."""
    return shard.removesuffix(".tar")


def panel_files(out: Path, shard: str) -> tuple[Path, Path, Path]:
    """(panel parquet, panel tar, marker) of a source shard (flat ``commercial/<stem>.tar`` or in its sub-folder
    ``commercial/s000/g000/<stem>.tar``): the panel tar goes into the source's group of the config folder
    (``commercial-panels/s000/g000/``); shard names are unique, so the local parquet and marker go flat by base
    name."""
    stem = source_stem(shard)
    subset, name = stem.split("/", 1)[0], stem.rsplit("/", 1)[-1]
    rest = name[len(subset) + 1:] if name.startswith(f"{subset}-") else name
    base = Path(out) / PANELS_DIR / subset / name
    tar = Path(out) / panel_config(subset) / in_group(shard_group(shard), f"{panel_config(subset)}-{rest}.tar")
    return base.with_suffix(".parquet"), tar, marker_path(base, DONE)


def _settings(labels: bool, detector: str | None) -> dict[str, Any]:
    return {"version": VERSION, "labels": bool(labels), "detector": detector}


def _digest(build_digest: Any, settings: dict[str, Any]) -> str:
    return hashlib.sha256(f"{build_digest}\n{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()


def encode_crop(image, bbox: tuple[int, int, int, int], ext: str) -> bytes:
    """The crop of ``image`` as ``ext`` ("jpg": quality 95, 4:4:4; "png"), keeping the ICC profile."""
    crop = image.crop(tuple(bbox))
    icc = image.info.get("icc_profile")
    buf = io.BytesIO()
    if ext == "jpg":
        if crop.mode not in ("RGB", "L", "CMYK"):
            crop = crop.convert("RGB")
        crop.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0, **({"icc_profile": icc} if icc else {}))
    else:
        if crop.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):
            crop = crop.convert("RGBA" if "A" in crop.mode else "RGB")
        crop.save(buf, "PNG", **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


_detectors: dict[str, Any] = {}


def _get_detector(spec: str | None):
    if not spec:
        return None
    if spec not in _detectors:
        from biomedica_hf.panels.detector import load_detector

        _detectors[spec] = load_detector(spec)
    return _detectors[spec]


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def _results(src: LocalFile, rows: list[dict[str, Any]], labels: bool, detector: str | None,
             batch: int = DETECTOR_BATCH):
    """``(row, image, split_figure result, error)`` per row, in order. With a detector, images are decoded
    ``batch`` at a time and detected in one call. A figure that fails gives its error (the others go on); a cut
    shard (``ShardTruncatedError``) stops the shard."""
    from PIL import Image

    from biomedica_hf.panels.figure import figure_result, find_panels, panels_from_boxes

    det = _get_detector(detector)
    size = max(1, batch) if det is not None else 1
    for start in range(0, len(rows), size):
        decoded = []
        for row in rows[start:start + size]:
            try:
                img = Image.open(io.BytesIO(src.read(int(row["image_offset"]), int(row["image_size"]))))
                img.load()
                decoded.append((row, img, None))
            except ShardTruncatedError:
                raise
            except Exception as e:  # noqa: BLE001 - undecodable image: reported, the shard goes on
                decoded.append((row, None, _error(e)))
        good = [img for _, img, err in decoded if err is None]
        boxes = iter(det.detect(good)) if det is not None and good else iter(())
        for row, img, err in decoded:
            if err is not None:
                yield row, None, None, err
                continue
            found = next(boxes) if det is not None else None
            try:
                panels = panels_from_boxes(img, found, labels=labels) if det is not None else \
                    find_panels(img, labels=labels, caption=row.get("caption"))
                yield row, img, figure_result(img.size, panels, row.get("caption")), None
            except Exception as e:  # noqa: BLE001
                yield row, None, None, _error(e)


def split_shard(out: Path, table_path: Path, labels: bool = True, detector: str | None = None,
                force: bool = False) -> dict[str, Any]:
    """Split one source shard (module doc); returns ``{"shard", "figures", "panels", "state", "methods",
    "figures_failed"}`` with state ``split``, ``kept`` (done for these settings) or ``failed`` (the shard could
    not be read; ``error`` says why; nothing was written)."""
    out = Path(out)
    names = pq.read_schema(table_path).names
    table = pq.read_table(table_path, columns=[c for c in ROW_COLUMNS if c in names])
    rows = table.sort_by("tar_offset").to_pylist() if "tar_offset" in names else table.to_pylist()
    if not rows:
        return {"shard": str(table_path), "figures": 0, "panels": 0, "state": "empty", "methods": {},
                "figures_failed": []}
    shard = rows[0]["shard"]
    parquet, tar, marker = panel_files(out, shard)
    build = read_marker(shard_paths(out, source_stem(shard))[2]) or {}
    settings = _settings(labels, detector)
    digest = _digest(build.get("digest"), settings)
    info = {"shard": shard, "figures": len(rows)}
    if not force and is_done(marker, {"digest": digest}, files=[parquet, tar]):
        done = read_marker(marker) or {}
        return {**info, "panels": done.get("panels", 0), "state": "kept", "methods": done.get("methods", {}),
                "figures_failed": done.get("figures_failed", [])}
    clear_marker(marker)
    panel_rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    methods: dict[str, int] = {}
    try:
        src = LocalFile(out / shard)
    except OSError as e:
        log.warning("%s: not split: %s", shard, e)
        return {**info, "panels": 0, "state": "failed", "error": _error(e), "methods": {},
                "figures_failed": []}
    tar.parent.mkdir(parents=True, exist_ok=True)
    with src, atomic_open(tar) as fh:
        pos = 0
        for row, img, result, err in _results(src, rows, labels, detector):
            if err is None:
                try:
                    ext = "png" if row.get("image_ext") == "png" else "jpg"
                    crops = [encode_crop(img, tuple(p["bbox"]), ext) for p in result["panels"]]
                except Exception as e:  # noqa: BLE001 - a crop that cannot be encoded: the figure is reported
                    err = _error(e)
            if err is not None:
                failed.append({"key": row["key"], "error": err})
                log.warning("%s: %s not split: %s", shard, row["key"], err)
                continue
            n = len(result["panels"])
            for i, (p, crop) in enumerate(zip(result["panels"], crops)):
                key = f"{row['key']}_p{i:02d}"
                meta = {"parent_key": row["key"], "pmcid": row.get("pmcid"), "figure_id": row.get("figure_id"),
                        "subset": row.get("subset"), "license_code": row.get("license_code"),
                        "split": row.get("split"), "year": row.get("year"), "panel_index": i, "panel_count": n,
                        "bbox": p["bbox"], "label": p["label"], "label_score": p["label_score"],
                        "caption_label": p["caption_label"], "subcaption": p["subcaption"],
                        "shared": result["shared"], "method": p["method"], "confidence": p["confidence"],
                        "score": p["score"]}
                sample = (member_bytes(f"{key}.{ext}", crop) + member_bytes(f"{key}.txt", p["caption"].encode())
                          + member_bytes(f"{key}.json", compact_json(meta)))
                fh.write(sample)
                methods[p["method"]] = methods.get(p["method"], 0) + 1
                x0, y0, x1, y1 = p["bbox"]
                panel_rows.append({
                    "key": key, "parent_key": row["key"], "pmcid": row.get("pmcid"), "figure_id": row.get("figure_id"),
                    "subset": row.get("subset"), "license_code": row.get("license_code"), "split": row.get("split"),
                    "year": row.get("year"), "source_shard": shard, "panel_index": i, "panel_count": n,
                    "x0": x0, "y0": y0, "x1": x1, "y1": y1, "parent_width": result["width"],
                    "parent_height": result["height"], "label": p["label"], "label_score": p["label_score"],
                    "caption_label": p["caption_label"], "subcaption": p["subcaption"], "shared": result["shared"],
                    "caption": p["caption"], "family": result["family"], "method": p["method"],
                    "confidence": p["confidence"], "score": p["score"], "image_ext": ext,
                    "shard": tar.relative_to(out).as_posix(), "tar_offset": pos, "tar_size": len(sample)})
                pos += len(sample)
        fh.write(END_OF_ARCHIVE)
    write_table(parquet, pa.Table.from_pylist(panel_rows, schema=PANEL_SCHEMA))
    write_marker(marker, {"shard": shard, "digest": digest, "settings": settings, "figures": len(rows),
                          "panels": len(panel_rows), "methods": methods, "figures_failed": failed})
    return {**info, "panels": len(panel_rows), "state": "split", "methods": methods, "figures_failed": failed}


def _task(task: tuple[str, str, bool, str | None, bool]) -> dict[str, Any]:
    out, table, labels, detector, force = task
    try:
        return split_shard(Path(out), Path(table), labels, detector, force)
    except (OSError, ValueError) as e:     # a missing or cut shard: reported, the other shards go on
        return {"shard": str(table), "figures": 0, "panels": 0, "state": "failed", "error": _error(e),
                "methods": {}, "figures_failed": []}


def remove_stale(out: Path) -> int:
    """Delete the panel files of source shards that are no longer in the folder; returns how many shards."""
    out = Path(out)
    live = set()
    for p in shard_tables(out):
        shard = table_shard(out, p)
        live.update(str(f) for f in panel_files(out, shard))
    removed = 0
    root = out / PANELS_DIR
    for done in sorted(root.glob(f"*/*{DONE}")) + sorted(root.glob("*/*.parquet")):
        if str(done) not in live and done.exists():
            stem = done.name[:-len(DONE)] if done.name.endswith(DONE) else done.stem
            subset = done.parent.name
            parquet, tar, marker = panel_files(out, f"{subset}/{stem}.tar")
            for f in (marker, parquet, tar):          # marker first: never a marker over missing files
                f.unlink(missing_ok=True)
            removed += 1
    for folder in out.glob(f"*{PANEL_CONFIG_SUFFIX}"):
        for t in folder_files(folder, "*.tar"):      # flat (written before the sub-folders) and in sub-folders
            if str(t) not in live:
                t.unlink()
    return removed


def write_panels_index(out: Path) -> Path:
    """``DIR/panels.parquet``: the per-shard panel tables of the shards present, in shard order (atomic)."""
    from biomedica_hf.io.atomic import atomic_path

    out = Path(out)
    path = out / PANELS_INDEX
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, PANEL_SCHEMA, compression="zstd")
        try:
            for p in shard_tables(out):
                parquet, _, marker = panel_files(out, table_shard(out, p))
                if parquet.exists() and marker.exists():
                    writer.write_table(pq.read_table(parquet, schema=PANEL_SCHEMA))
        finally:
            writer.close()
    return path


def _count_by_subset(out: Path) -> dict[str, int]:
    subsets = pq.read_table(Path(out) / PANELS_INDEX, columns=["subset"])["subset"].to_pylist()
    return {s: subsets.count(s) for s in dict.fromkeys(subsets)}


def _sizes(out: Path) -> dict[str, int]:
    """Write each panel config's ``sizes.json`` (``{shard base name: panels}``, every shard of the config) into
    every directory of it that holds tars; drop the ``sizes.json`` of directories left without tars and config
    folders left empty; returns the panels per config."""
    counts: dict[str, dict[str, int]] = {}
    t = pq.read_table(Path(out) / PANELS_INDEX, columns=["subset", "shard"])
    for subset, shard in zip(t["subset"].to_pylist(), t["shard"].to_pylist()):
        by_shard = counts.setdefault(subset, {})
        name = shard.rsplit("/", 1)[-1]
        by_shard[name] = by_shard.get(name, 0) + 1
    totals = {}
    for subset, by_shard in counts.items():
        by_shard = dict(sorted(by_shard.items()))
        for d in shard_dirs(Path(out) / panel_config(subset)):
            if any(d.glob("*.tar")):
                atomic_write_json(d / SIZES, by_shard)
        totals[panel_config(subset)] = sum(by_shard.values())
    for folder in Path(out).glob(f"*{PANEL_CONFIG_SUFFIX}"):
        for d in reversed(shard_dirs(folder)):
            if not any(d.glob("*.tar")):
                (d / SIZES).unlink(missing_ok=True)
                for p in (d, d.parent):
                    if p != folder and p.is_dir() and not any(p.iterdir()):
                        p.rmdir()
        if folder.name not in totals and not folder_files(folder, "*.tar"):
            shutil.rmtree(folder, ignore_errors=True)
    return totals


def panel_dataset(dataset_dir: str | Path, *, workers: int = 1, executor: str = "local", address: str | None = None,
                  force: bool = False, labels: bool = True, detector: str | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Split every shard of a built folder (module doc); returns counts: figures, panels, shards split / kept /
    removed, methods, the panel configs with their sizes, failed shards and figures."""
    from tqdm.auto import tqdm

    from biomedica_hf.executors import make_executor
    from biomedica_hf.ingest.figures import build_figures_index

    out = Path(dataset_dir)   # the panels' hooks are registered: importing this module ran biomedica_hf.panels
    if not shard_tables(out):
        raise FileNotFoundError(f"{out}: no shard tables (<subset>/*.parquet): build the folder first")
    removed = remove_stale(out)
    tasks = [(str(out), str(p), labels, detector, force) for p in shard_tables(out)]
    report: dict[str, Any] = {"figures": 0, "panels": 0, "split": 0, "kept": 0, "removed": removed, "methods": {},
                              "failed": [], "figures_failed": []}
    results = make_executor(executor, workers=max(1, workers), address=address).closing_map(_task, tasks)
    for r in tqdm(results, total=len(tasks), desc="panels", unit="shard", disable=not progress):
        if r["state"] == "failed":
            report["failed"].append({"shard": r["shard"], "error": r["error"]})
            continue
        report[r["state"]] = report.get(r["state"], 0) + 1
        report["figures"] += r["figures"]
        report["panels"] += r["panels"]
        report["figures_failed"] += r["figures_failed"]
        for m, n in r["methods"].items():
            report["methods"][m] = report["methods"].get(m, 0) + n
    from biomedica_hf.layout import FIGURES_INDEX

    unchanged = (not report["split"] and not removed and (out / PANELS_INDEX).exists()
                 and INDEX_COLUMN in pq.read_schema(out / FIGURES_INDEX).names)
    if unchanged:              # a rerun over done shards writes nothing
        report["configs"] = {panel_config(s): n for s, n in _count_by_subset(out).items()}
    else:
        write_panels_index(out)
        report["configs"] = _sizes(out)
        build_figures_index(out)
        atomic_write_json(out / PANELS_DIR / "summary.json", {k: v for k, v in report.items()})
    log.info("panels: %d panels from %d figures; %s", report["panels"], report["figures"], report["methods"])
    return report


__all__ = ["JSON_FIELDS", "PANEL_SCHEMA", "encode_crop",
           "panel_dataset", "panel_files", "remove_stale", "split_shard", "write_panels_index"]
