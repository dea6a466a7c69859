"""End-to-end builds on the real fixture corpus: ledger accounting, resume, SIGKILL, loaders."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.ingest.parse import ParseError, parse_jats
from biomedica_hf.ingest.pipeline import BuildConfig, build, shard_paths
from biomedica_hf.ingest.timings import WORK_STAGES
from biomedica_hf.layout import folder_files
from biomedica_hf.schema import SUBSETS, webdataset_features

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("progress", False)
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, **kw)


def _outputs(out: Path) -> dict[str, bytes]:
    """Every dataset file (not work files) by relative path; the shards' stats without their timings."""
    return {p.relative_to(out).as_posix(): _without_timings(p) if p.name.endswith("_stats.json") else p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and "_work" not in p.parts
            and p.name not in ("build_summary.json", "README.md")}  # these two name the command and date


def _without_timings(stats: Path) -> bytes:
    d = json.loads(stats.read_text())
    assert set(d.pop("timings")) == {*WORK_STAGES, "elapsed"}
    return json.dumps(d, sort_keys=True).encode()


@pytest.fixture(scope="module")
def corpus_build(tmp_path_factory, articles_dir):
    out = tmp_path_factory.mktemp("corpus")
    report = build(_cfg(articles_dir, out, workers=2, shard_max_samples=8))
    return out, report


def test_every_article_figure_and_file_is_accounted_for(corpus_build, articles_dir):
    out, report = corpus_build
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    keys = Counter((r["kind"], r["id"]) for r in ledger)
    assert all(n == 1 for n in keys.values())
    assert {r["state"] for r in ledger} <= {"kept", "skipped", "failed"}
    assert all(r["reason"] for r in ledger if r["state"] != "kept")

    # every file of every article folder has exactly one fate
    file_ids = {r["id"] for r in ledger if r["kind"] == "file"}
    article_dirs = sorted(d for d in articles_dir.iterdir() if d.is_dir())
    n_files = 0
    for d in article_dirs:
        for f in d.rglob("*"):
            if f.is_file():
                n_files += 1
                assert any(i.endswith("/" + f.relative_to(d).as_posix()) for i in file_ids), f
    # every figure panel the parser sees (computed independently here) has one ledger row
    expected_panels = 0
    for d in article_dirs:
        for xml in sorted([*d.glob("*.xml"), *d.glob("*.nxml")]):
            try:
                parsed = parse_jats(xml)
            except ParseError:
                continue
            expected_panels += sum(max(1, len(f.graphics)) for a in parsed for f in a.figures)
    figure_rows = [r for r in ledger if r["kind"] == "figure"]
    assert len(figure_rows) == expected_panels
    # one article per folder
    article_rows = [r for r in ledger if r["kind"] == "article"]
    assert len(article_rows) == len(article_dirs) > 60
    # what is kept is exactly what is in the shards
    kept = {r["id"] for r in figure_rows if r["state"] == "kept"}
    in_shards = set()
    for subset in SUBSETS:
        for tar in shard_paths(out, subset):
            in_shards.update(pq.read_table(tar.with_suffix(".parquet")).column("key").to_pylist())
    assert kept == in_shards
    assert sum(report.samples_per_subset.values()) == len(kept) > 20


def test_real_messiness_outcomes(corpus_build):
    out, _ = corpus_build
    ledger = {(r["kind"], r["id"]): r for r in pq.read_table(out / "ledger.parquet").to_pylist()}
    idx = {}
    for subset in SUBSETS:
        for tar in shard_paths(out, subset):
            for row in pq.read_table(tar.with_suffix(".parquet")).to_pylist():
                idx[row["key"]] = row
    # full image preferred over the .gif thumbnail, original JPEG bytes kept
    s = idx["PMC7112410_gr1_lrg"]
    assert (s["image_file"], s["image_ext"], s["reencoded"]) == ("gr1_lrg.jpg", "jpg", False)
    assert ledger[("file", "PMC7112410/gr1_lrg.gif")]["reason"] == "alternate_rendition"
    assert ledger[("file", "PMC7112410/package/PMC7112410.tar.gz")]["state"] == "skipped"
    # a figure that exists only as GIF is converted to PNG
    gif_only = [r for k, r in idx.items() if k.startswith("PMC10802347") and r["image_format"] == "GIF"]
    assert gif_only
    assert all(r["image_ext"] == "png" and r["reencoded"] for r in gif_only)
    assert idx[gif_only[0]["key"]]["subset"] == "noncommercial"
    # two graphics in one figure: two samples, marked as panels of one figure
    panels = sorted((r["panel_index"], r["panel_count"], r["figure_id"]) for k, r in idx.items()
                    if k.startswith("PMC7159286_gr3"))
    assert [p[:2] for p in panels] == [(0, 2), (1, 2)]
    assert panels[0][2] == panels[1][2]
    # TIFF without extension in the href
    assert idx["eLife_19405_elife-19405-fig1"]["image_format"] == "TIFF"
    # XML-only articles: figures failed with a reason, never silently dropped
    missing = [r for (k, _), r in ledger.items() if k == "figure" and r["reason"] == "image_missing"]
    assert len(missing) > 100
    # a non-JATS XML beside the article is a skipped file
    assert ledger[("file", "eLife_32671_texture/manifest.xml")]["reason"] == "not_jats"
    # the article table has one row per article with licence subsets
    arts = pq.read_table(out / "articles.parquet").to_pylist()
    by = {a["pmcid"]: a for a in arts}
    assert by["PMC10802347"]["subset"] == "noncommercial"
    assert by["PMC10400000"]["subset"] == "commercial"
    assert by["PMC10400000"]["full_text"]


def test_duplicate_images_kept_once_with_articles_listed(tmp_path, articles_dir):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copytree(articles_dir / "eLife_39122_subarticles", inp / "eLife_39122_subarticles")
    shutil.copytree(articles_dir / "eLife_39122_subarticles", inp / "eLife_39122_copy")
    out = tmp_path / "out"
    report = build(_cfg(inp, out))
    assert report.n_duplicates == 2
    rows = [r for t in shard_paths(out, "other") for r in pq.read_table(t.with_suffix(".parquet")).to_pylist()]
    assert len(rows) == 2
    assert all(r["also_in"] == ["eLife_39122_subarticles"] for r in rows)
    dups = pq.read_table(out / "duplicates.parquet").to_pylist()
    assert sorted(d["key"] for d in dups) == sorted(r["key"] for r in rows)
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    assert sum(r["reason"] == "duplicate_image" for r in ledger) == 2


def test_rerun_resumes_and_changes_nothing(tmp_path):
    from biomedica_hf.cli import SAMPLE_DIR

    out = tmp_path / "out"
    first = build(_cfg(SAMPLE_DIR / "articles", out))
    before = _outputs(out)
    second = build(_cfg(SAMPLE_DIR / "articles", out))
    assert second.n_resumed == first.n_listed
    assert second.n_staged_now == 0
    assert second.shards_written == 0
    assert second.shards_skipped == first.shards_written
    assert _outputs(out) == before


def _run_cli(args, **kw):
    return subprocess.Popen([str(BIN / "biomedica"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _kill_when(proc, cond, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError


def test_sigkill_and_rerun_gives_identical_shards(tmp_path, articles_dir):
    args = ["build", "--input", str(articles_dir), "--workers", "1", "--shard-samples", "6", "--no-progress",
            "--partition-size", "15", "--splits", "80/10/10"]
    ref = tmp_path / "ref"
    assert subprocess.run([str(BIN / "biomedica"), *args, "--out", str(ref)], capture_output=True).returncode == 0

    out = tmp_path / "killed"
    stage = out / "_work" / "stage"

    def staged_articles() -> int:
        return sum(len(p.read_bytes().splitlines()) for p in stage.glob("*/log.jsonl")) if stage.is_dir() else 0

    # 1st kill: in the middle of a partition, while its articles are being staged
    p = _run_cli([*args, "--out", str(out)])
    assert _kill_when(p, lambda: staged_articles() >= 20)
    assert not (out / "ledger.parquet").exists()
    # 2nd kill: while shards are being written
    p = _run_cli([*args, "--out", str(out)])
    _kill_when(p, lambda: any(out.glob("*/*_stats.json")))  # may finish first on a fast machine
    # rerun to completion
    done = subprocess.run([str(BIN / "biomedica"), *args, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed" in done.stdout
    assert _outputs(out) == _outputs(ref)
    assert not list(out.rglob(".*.tmp-*"))


def test_loads_with_datasets_and_webdataset(corpus_build):
    import datasets
    import webdataset as wds

    out, report = corpus_build
    for subset in SUBSETS:
        tars = [str(p) for p in shard_paths(out, subset)]
        for t in tars:   # the sizes.json beside each shard (open_clip reads the first shard's) lists every shard
            sizes = json.loads((Path(t).parent / "sizes.json").read_text())
            assert sum(sizes[Path(u).name] for u in tars) == report.samples_per_subset[subset]
            assert sum(sizes.values()) == sum(report.samples_per_subset.values())
        ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", streaming=True,
                                   features=webdataset_features())
        n = 0
        for ex in ds:
            image = ex["jpg"] if ex["jpg"] is not None else ex["png"]
            assert image.size == (ex["json"]["width"], ex["json"]["height"])
            assert ex["txt"] == ex["json"]["caption"]
            assert ex["__key__"] == ex["json"]["key"]
            assert "." not in ex["__key__"]
            n += 1
        assert n == report.samples_per_subset[subset]
        m = 0
        for sample in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
            image = sample.get("jpg") or sample.get("png")
            assert image.size == (sample["json"]["width"], sample["json"]["height"])
            m += 1
        assert m == n


def test_cli_build_sample_and_inspect(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([str(BIN / "biomedica"), "build", "--sample", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Ledger" in r.stdout
    assert str(out.resolve()) in r.stdout
    summary = json.loads((out / "build_summary.json").read_text())
    assert all(summary["samples"][s] > 0 for s in SUBSETS)
    r = subprocess.run([str(BIN / "biomedica"), "inspect", str(REPO / "biomedica_hf/sample_data/articles/eLife_19405/elife-19405.xml"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["articles"]
    bad = subprocess.run([str(BIN / "biomedica"), "build", "--source", "cloud", "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--pmcids" in bad.stderr


def test_timings_in_shard_stats_and_build_summary(corpus_build):
    """Every shard's stats have its articles' share of the work stages and its own write; the summary has the
    driver's stages, the work totals and the elapsed seconds; the shards add up to no more than the totals."""
    out, report = corpus_build
    stats = [json.loads(p.read_text()) for s in SUBSETS for p in folder_files(out / s, "*_stats.json")]
    assert len(stats) > 3
    for st in stats:
        t = st["timings"]
        assert set(t) == {*WORK_STAGES, "elapsed"}
        assert all(v >= 0 and round(v, 3) == v for v in t.values())
        assert abs(t["elapsed"] - sum(t[s] for s in WORK_STAGES)) < 0.004
        assert t["media"] > 0       # every shard holds decoded images (a parse share can round to 0.000 s)
    assert all(sum(st["timings"][stage] for st in stats) > 0 for stage in ("parse", "media", "stage_write"))
    summary = json.loads((out / "build_summary.json").read_text())
    timings = summary["timings"]
    assert {"list", "stage", "dedup", "near_duplicates", "write", "remove", "tables", "index"} <= set(timings["stages"])
    assert set(timings["work"]) == set(WORK_STAGES)
    assert timings["work"]["fetch"] > 0
    for stage in WORK_STAGES:       # articles without samples count in the totals only
        assert sum(st["timings"][stage] for st in stats) <= timings["work"][stage] + 0.001 * len(stats)
    # the articles' media seconds of a build with samples in every shard are mostly in the shards
    assert sum(st["timings"]["media"] for st in stats) > 0.5 * timings["work"]["media"]
    driver = sum(v["seconds"] for v in timings["stages"].values())
    assert driver - 0.01 <= timings["elapsed_seconds"] <= report.elapsed_s + 0.01
    assert summary["snapshots"][-1]["elapsed_seconds"] == timings["elapsed_seconds"]


def test_shards_are_written_in_hub_scale_sub_folders(corpus_build):
    """Each shard's three files are in ``layout.shard_folder`` (``<subset>/sNNN/gNNN/``), none flat in the subset
    folder; every sub-folder has its sizes.json listing every shard of the dataset; the index's ``shard`` column is
    the tar's path relative to the dataset folder."""
    import pyarrow.parquet as pq

    from biomedica_hf.layout import PARTITIONS_PER_FOLDER, shard_dirs, shard_folder, sizes_dirs

    out, report = corpus_build
    tars = [p for s in SUBSETS for p in shard_paths(out, s)]
    assert len(tars) > 3
    for s in SUBSETS:
        assert not list((out / s).glob("*.tar"))
        assert not list((out / s).glob("*.json"))   # nothing flat
        assert [d.relative_to(out).as_posix() for d in shard_dirs(out / s)][1:] == [f"{s}/s000/g000"]
    for tar in tars:
        subset, split, snap, part, _ = tar.stem.split("-")
        assert split in ("train", "validation", "test")
        assert int(part[1:]) < PARTITIONS_PER_FOLDER
        assert tar.parent == out / shard_folder(subset, int(snap[1:]), int(part[1:]))
        assert tar.with_suffix(".parquet").is_file()
        assert (tar.parent / f"{tar.stem}_stats.json").is_file()
    assert sorted(sizes_dirs(out)) == sorted({t.parent for t in tars})
    every = {t.name for t in tars}
    for d in sizes_dirs(out):
        assert set(json.loads((d / "sizes.json").read_text())) == every
    index = pq.read_table(out / "figures.parquet", columns=["shard"])["shard"].to_pylist()
    assert set(index) == {t.relative_to(out).as_posix() for t in tars}
    summary = json.loads((out / "build_summary.json").read_text())
    assert {n for names in summary["shards"].values() for n in names} == every
