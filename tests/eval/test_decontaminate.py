"""Decontamination and the card section on a folder built from the bundled real sample."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from biomedica_hf.eval.decontaminate import decontaminate
from biomedica_hf.eval.evalset import write_evalset
from biomedica_hf.eval.tasks.base import DataContext, ParquetSource, Task
from biomedica_hf.layout import folder_files
from biomedica_hf.neardup import DEFAULT_THRESHOLD, bytes_phash, card_section, card_stats
from biomedica_hf.schema import SUBSETS

REPO = Path(__file__).resolve().parents[2]
SHARED_EVAL = Path(os.environ.get("BIOMEDICA_SHARED", REPO.parent / "shared")) / "fixtures" / "eval"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "biomedica_hf.cli", *args], env=env, cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("neardup") / "ds"
    r = _cli("build", "--sample", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _sample_bytes(ds: Path, row: dict) -> bytes:
    with open(ds / row["shard"], "rb") as fh:
        fh.seek(row["image_offset"])
        return fh.read(row["image_size"])


def _reencode(data: bytes, scale: float, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def evalset(built, tmp_path_factory) -> dict:
    """Eval images: three training figures re-encoded and resized, plus distinct real images (BCCD, skimage)."""
    rows = sorted(pq.read_table(built / "figures.parquet").to_pylist(), key=lambda r: r["key"])
    shared = [rows[0], rows[len(rows) // 2], rows[-1]]
    images = [(f"copy_{i}", _reencode(_sample_bytes(built, r), (0.8, 1.3, 0.6)[i], (70, 90, 60)[i]))
              for i, r in enumerate(shared)]
    distinct = sorted((SHARED_EVAL / "skimage_biomed").glob("*.*")) + sorted((SHARED_EVAL / "bccd_cells").glob("*/*.*"))[:20]
    assert len(distinct) >= 10
    images += [(f"distinct_{p.stem}", p.read_bytes()) for p in distinct]
    root = tmp_path_factory.mktemp("evalset")
    parquet = write_evalset(({"image": data, "task": "shared", "options": ["a", "b"], "answer_idx": 0, "label": "a",
                              "image_id": name, "provenance_license": "test"} for name, data in images),
                            root / "zs" / "shared.parquet")
    pairs = root / "pairs.parquet"
    pq.write_table(pa.table({"image": [d for _, d in images], "caption": [n for n, _ in images],
                             "key": [n for n, _ in images]}), pairs)
    folder = root / "imagefolder"
    for name, data in images:
        (folder / "figure").mkdir(parents=True, exist_ok=True)
        (folder / "figure" / f"{name}.jpg").write_bytes(data)
    return {"keys": sorted(r["key"] for r in shared), "parquet": parquet, "pairs": pairs, "folder": folder,
            "n": len(images)}


def test_decontaminate_lists_exactly_the_shared_samples(built, evalset, tmp_path):
    task = Task(name="test/shared", domain="test", kind="zero-shot", source=ParquetSource(evalset["parquet"]))
    ctx = DataContext(cache_dir=tmp_path / "cache", allow_download=False)
    report = decontaminate(built, [task], tmp_path / "out", ctx=ctx)
    assert (tmp_path / "out" / "exclusions.txt").read_text().split() == evalset["keys"]
    t = report["tasks"]["test/shared"]
    assert (t["eval_images"], t["contaminated_eval_images"], t["matched_training_samples"]) == (evalset["n"], 3, 3)
    assert report["threshold"] == DEFAULT_THRESHOLD
    assert report["hash"] == "phash256-dct128"
    assert report["training_hashes_from"] == "figures.parquet phash"     # the build writes the hashes
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    assert sorted(p["eval_image"] for p in pairs) == ["copy_0", "copy_1", "copy_2"]
    assert all(p["distance"] <= DEFAULT_THRESHOLD for p in pairs)
    sheet = Image.open(tmp_path / "out" / "contact_sheet.png")
    assert sheet.format == "PNG"
    assert sheet.height >= 3 * 160


def test_cli_against_a_registry_spec_and_the_index_hashes(built, evalset, tmp_path):
    """The CLI through the registry (a retrieval spec of Parquet pairs) on the index's hashes (the shards are
    emptied: never read); then on an older folder whose index has no ``phash``: the shard images are hashed."""
    r = _cli("decontaminate", str(built), "--against", f"retrieval:{evalset['pairs']}", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "a" / "exclusions.txt").read_text().split() == evalset["keys"]
    assert "3 keys excluded" in r.stdout.replace(",", "")

    ds = tmp_path / "ds"
    shutil.copytree(built, ds, ignore=shutil.ignore_patterns("_work"))
    fig = pq.read_table(ds / "figures.parquet")
    assert fig["phash"].to_pylist() == [bytes_phash(_sample_bytes(ds, row)) for row in fig.to_pylist()]
    tars = [t for s in SUBSETS for t in folder_files(ds / s, "*.tar")]
    assert tars
    for tar in tars:                         # the shards are not read when the index has the hashes
        tar.write_bytes(b"")
    r = _cli("decontaminate", str(ds), "--against", f"retrieval:{evalset['pairs']}", "--threshold", "12")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (ds / "decontamination" / "exclusions.txt").read_text().split() == evalset["keys"]
    report = json.loads((ds / "decontamination" / "report.json").read_text())
    assert report["training_hashes_from"] == "figures.parquet phash"
    assert report["threshold"] == 12

    old = tmp_path / "old"
    shutil.copytree(built, old, ignore=shutil.ignore_patterns("_work"))
    pq.write_table(pq.read_table(old / "figures.parquet").drop_columns(["phash"]), old / "figures.parquet")
    r = _cli("decontaminate", str(old), "--against", f"retrieval:{evalset['pairs']}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (old / "decontamination" / "exclusions.txt").read_text().split() == evalset["keys"]
    assert json.loads((old / "decontamination" / "report.json").read_text())["training_hashes_from"] == "shard images"


def test_imagefolder_spec_when_the_registry_has_it(built, evalset, tmp_path):
    from biomedica_hf.eval.tasks.registry import resolve_tasks

    ctx = DataContext(cache_dir=tmp_path / "cache", allow_download=False)
    try:
        tasks = resolve_tasks(f"imagefolder:{evalset['folder']}", ctx)
    except KeyError:
        pytest.skip("the registry has no imagefolder: spec yet")
    decontaminate(built, tasks, tmp_path / "out", ctx=ctx)
    assert (tmp_path / "out" / "exclusions.txt").read_text().split() == evalset["keys"]


def test_card_section_reports_what_the_folder_has(built, evalset, tmp_path):
    ds = tmp_path / "ds"   # (earlier tests' reports, written to --out elsewhere, left the copy the card cites)
    shutil.copytree(built, ds, ignore=shutil.ignore_patterns("_work", "decontamination"))
    s = card_stats(ds)   # the build wrote near_dup_of (the sample has no copies) and no contamination report
    assert s["exact"] == {"groups": 0, "duplicates": 0}
    assert s["near"] == {"groups": 0, "duplicates": 0}
    assert s["contamination"] is None
    assert "no report yet" in card_section(ds)
    older = tmp_path / "older"
    shutil.copytree(ds, older)
    pq.write_table(pq.read_table(older / "figures.parquet").drop_columns(["near_dup_of"]), older / "figures.parquet")
    assert card_stats(older)["near"] is None
    assert "not computed for this folder (no `near_dup_of` column)" in card_section(older)

    fig = pq.read_table(ds / "figures.parquet")
    keys = sorted(fig["key"].to_pylist())
    near = {keys[1]: keys[0], keys[2]: keys[0], keys[5]: keys[4]}
    fig = fig.drop_columns(["near_dup_of"])
    pq.write_table(fig.append_column("near_dup_of", pa.array([near.get(k) for k in fig["key"].to_pylist()],
                                                             pa.string())), ds / "figures.parquet")
    task = Task(name="test/shared", domain="test", kind="zero-shot", source=ParquetSource(evalset["parquet"]))
    decontaminate(ds, [task], ctx=DataContext(cache_dir=tmp_path / "cache", allow_download=False))
    s = card_stats(ds)
    assert s["near"] == {"duplicates": 3, "groups": 2}
    assert s["contamination"]["tasks"]["test/shared"]["contaminated_eval_images"] == 3
    text = card_section(ds)
    assert f"3 samples ({100 * 3 / fig.num_rows:.2f}% of {fig.num_rows:,} samples) in 2 groups" in text
    assert f"| test/shared | {evalset['n']:,} | 3 |" in text


def test_a_folder_of_an_unknown_hash_definition_is_hashed_from_its_shard_images(built, evalset, tmp_path):
    """A folder whose build_summary.json names a definition this code does not compute (newer code): decontaminate
    recomputes the training hashes from the shard images with today's definition instead of comparing across
    definitions, says so, and finds the same samples."""
    old = tmp_path / "old"
    shutil.copytree(built, old, ignore=shutil.ignore_patterns("_work"))
    summary = json.loads((old / "build_summary.json").read_text())
    assert summary["phash"] == "phash256-dct128"
    summary["phash"] = "phash512-future"
    (old / "build_summary.json").write_text(json.dumps(summary))
    # the index's values of that other definition (here: every bit flipped)
    t = pq.read_table(old / "figures.parquet")
    flipped = [None if h is None else f"{int(h, 16) ^ (2**256 - 1):064x}" for h in t["phash"].to_pylist()]
    t = t.set_column(t.schema.get_field_index("phash"), "phash", pa.array(flipped, pa.string()))
    pq.write_table(t, old / "figures.parquet")
    task = Task(name="test/shared", domain="test", kind="zero-shot", source=ParquetSource(evalset["parquet"]))
    ctx = DataContext(cache_dir=tmp_path / "cache", allow_download=False)
    report = decontaminate(old, [task], tmp_path / "out", ctx=ctx)
    assert report["training_hashes_from"] == "shard images (figures.parquet's phash is phash512-future, unknown to this code)"
    assert report["hash"] == "phash256-dct128"
    assert (tmp_path / "out" / "exclusions.txt").read_text().split() == evalset["keys"]
    assert report["training_unhashed"] == 0


def test_a_legacy_folder_is_matched_with_its_own_phash_column(built, evalset, tmp_path):
    """A folder built by older code (build_summary.json without ``phash``: legacy phash256 values in its column,
    which are ``bytes_phash(image, LEGACY)`` of its images): the evaluation images are hashed with the legacy
    definition and the column is used as it is - the shards are not read at all (removed here) - and the same
    samples are found, at the legacy definition's distances."""
    from biomedica_hf.neardup.hashing import HASH_NAME, LEGACY_HASH_NAME, hex_distance

    old = tmp_path / "old"
    shutil.copytree(built, old, ignore=shutil.ignore_patterns("_work"))
    summary = json.loads((old / "build_summary.json").read_text())
    assert summary.pop("phash") == HASH_NAME
    (old / "build_summary.json").write_text(json.dumps(summary))
    t = pq.read_table(old / "figures.parquet")
    legacy = [bytes_phash(_sample_bytes(built, r), LEGACY_HASH_NAME) for r in t.to_pylist()]
    assert legacy != t["phash"].to_pylist()
    t = t.set_column(t.schema.get_field_index("phash"), "phash", pa.array(legacy, pa.string()))
    pq.write_table(t, old / "figures.parquet")
    column = dict(zip(t["key"].to_pylist(), legacy))
    shards = [p for s in SUBSETS for p in folder_files(old / s, "*.tar")]
    assert shards
    for p in shards:
        p.unlink()
    task = Task(name="test/shared", domain="test", kind="zero-shot", source=ParquetSource(evalset["parquet"]))
    ctx = DataContext(cache_dir=tmp_path / "cache", allow_download=False)
    report = decontaminate(old, [task], tmp_path / "out", ctx=ctx)
    assert report["hash"] == LEGACY_HASH_NAME
    assert report["training_hashes_from"] == "figures.parquet phash"
    assert report["training_unhashed"] == 0
    assert (tmp_path / "out" / "exclusions.txt").read_text().split() == evalset["keys"]
    images = dict(zip(*pq.read_table(evalset["pairs"], columns=["key", "image"]).to_pydict().values()))
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    assert pairs
    assert all(p["distance"] == hex_distance(bytes_phash(images[p["eval_image"]], LEGACY_HASH_NAME), column[p["key"]])
               for p in pairs)
    # today's definition on the evaluation side would have measured other distances
    assert any(p["distance"] != hex_distance(bytes_phash(images[p["eval_image"]]), column[p["key"]]) for p in pairs)
