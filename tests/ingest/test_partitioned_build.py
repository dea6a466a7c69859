"""The partitioned build (issue: the whole of PMC-OA): stable partitions and splits, updates that add,
re-version, retract and withdraw articles without rewriting untouched shards, exact duplicates across
partitions, fault isolation, dead workers, and one build per folder."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.ingest.partition import (
    FINE_BUCKETS,
    Layout,
    PartitionId,
    bucket_of,
    choose_layout,
    split_of,
    split_ranges,
)
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.layout import folder_files

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "biomedica"
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_article, synth_corpus  # noqa: E402  (the real PMC10802347 nXML, new ids)
from support.images import jpeg_copy


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("partition_target", 8)
    kw.setdefault("split_fractions", (0.6, 0.2, 0.2))
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       shard_max_samples=12, **kw)


def _build(cfg: BuildConfig):
    """What ``biomedica build`` does: the build, then the card (its configs are what datasets reads)."""
    from biomedica_hf.dataset.card import write_card

    report = build(cfg)
    write_card(cfg.out)
    return report


def _shard_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for s in ("commercial", "noncommercial", "other")
            for p in folder_files(out / s, "*.tar")}


# ----------------------------------------------------------------------------- partitions and splits
def test_partition_assignment_is_deterministic_and_stable():
    ids = [f"PMC{n}" for n in range(1_000_000, 1_020_000)]
    # the documented hash, recomputed independently
    for pmcid in ids[:50]:
        assert bucket_of(pmcid) == int.from_bytes(hashlib.sha256(pmcid.encode()).digest()[:8], "big") % FINE_BUCKETS
    assert bucket_of(" pmc1000000 ") == bucket_of("PMC1000000")
    counts = [0] * FINE_BUCKETS
    for p in ids:
        counts[bucket_of(p)] += 1
    layout = choose_layout(0, counts, (0.98, 0.01, 0.01), target=1000)
    assert layout.partitions["train"] == 20
    assert layout.partitions["validation"] == 1
    again = Layout.from_json(json.loads(json.dumps(layout.to_json())))
    pids = [layout.partition_of_bucket(bucket_of(p)) for p in ids]
    assert pids == [again.partition_of_bucket(bucket_of(p)) for p in ids]
    for pid in layout.all_partitions():       # buckets_of is the inverse of partition_of_bucket
        assert all(layout.partition_of_bucket(b) == pid for b in layout.buckets_of(pid))
    assert sum(len(layout.buckets_of(p)) for p in layout.all_partitions()) == FINE_BUCKETS
    sizes = {}
    for pid in pids:
        sizes[pid] = sizes.get(pid, 0) + 1
    train = [n for pid, n in sizes.items() if pid.split == "train"]
    assert max(train) < 1.3 * min(train)      # partitions are balanced by the hash
    splits = [split_of(p) for p in ids]
    assert 0.97 < splits.count("train") / len(ids) < 0.99
    assert 0.005 < splits.count("test") / len(ids) < 0.015
    assert split_ranges((0.98, 0.01, 0.01))["test"][1] == FINE_BUCKETS
    assert PartitionId.parse("s003-validation-p00012") == PartitionId(3, "validation", 12)
    with pytest.raises(ValueError):
        split_ranges((0.5, 0.2, 0.2))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    inp = tmp_path_factory.mktemp("synth")
    synth_corpus(inp, 40, start=95_100_000)
    return inp


def test_partitions_splits_and_configs(corpus, tmp_path):
    import datasets

    out = tmp_path / "ds"
    report = _build(_cfg(corpus, out))
    assert report.samples_per_subset["noncommercial"] == 160
    index = pq.read_table(out / "figures.parquet").to_pylist()
    assert len(index) == 160
    for row in index:                           # the split of every sample is its article's split
        assert row["split"] == split_of(row["pmcid"], (0.6, 0.2, 0.2))
        assert f"-{row['split']}-" in row["shard"]
    by_article = {}
    for row in index:
        by_article.setdefault(row["pmcid"], set()).add(row["shard"].split("-p")[0])
    assert all(len(v) == 1 for v in by_article.values())
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["snapshots"][0]["added"] == 40
    assert summary["partitioning"]["fine_buckets"] == FINE_BUCKETS
    parts = {r["shard"].split("-p")[1][:5] for r in index}
    assert len(parts) > 2, "several partitions"
    names = [p.name for p in folder_files(out / "noncommercial", "*.tar")]
    assert len(names) == len(set(names))
    assert all("." not in n[:-4] for n in names)
    # the card declares the splits of every subset config
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    for split in sorted({r["split"] for r in index}):
        assert f"split: {split}" in header
        assert f"noncommercial/**/noncommercial-{split}-*.tar" in header
    for split in ("train", "test"):
        want = sorted(r["key"] for r in index if r["split"] == split)
        ds = datasets.load_dataset(str(out), "noncommercial", split=split, streaming=True)
        assert sorted(ex["__key__"] for ex in ds) == want


def _update_input(src: Path, dest: Path) -> dict:
    """A newer listing: 3 new articles, one re-versioned (new images), one retracted, one withdrawn."""
    shutil.copytree(src, dest)
    folders = sorted(p.name for p in dest.iterdir())
    re_v, retract, withdraw = folders[3], folders[7], folders[11]
    num = int(re_v.split(".")[0][3:])
    shutil.rmtree(dest / re_v)
    synth_article(dest, num, version=2, image_seed=777_000)
    rnum = int(retract.split(".")[0][3:])
    synth_article(dest, rnum, version=1, retracted=True)
    shutil.rmtree(dest / withdraw)
    for n in range(95_200_000, 95_200_003):
        synth_article(dest, n)
    return {"reversioned": f"PMC{num}", "retracted": f"PMC{rnum}", "withdrawn": withdraw.split(".")[0],
            "added": [f"PMC{n}" for n in range(95_200_000, 95_200_003)]}


def test_a_small_listing_plans_in_memory_exactly_as_one_spilled_to_bucket_files(corpus, tmp_path, monkeypatch):
    """The listing spool keeps a listing smaller than its buffer in memory (no bucket file written or read back);
    one spilled to the bucket files, 3 rows at a time, plans the same snapshots: a build, then an update with new,
    re-versioned, retracted and withdrawn articles (the update's delta spool too), and writes the same shards."""
    from biomedica_hf.ingest.partition import ListingSpool

    made: list[ListingSpool] = []
    real_finish = ListingSpool.finish

    def finish(self):
        real_finish(self)
        made.append(self)
        files = sorted(p.name for p in self.folder.iterdir())
        assert (files != []) == (self.flush_lines == 3), files     # spilled, or nothing on disk at all

    monkeypatch.setattr(ListingSpool, "finish", finish)
    newer = tmp_path / "newer"
    _update_input(corpus, newer)
    results, default = [], ListingSpool.__init__.__defaults__[0]
    for flush_lines in (default, 3):
        monkeypatch.setattr(ListingSpool.__init__, "__defaults__", (flush_lines,))
        out = tmp_path / f"ds{flush_lines}"
        build(_cfg(corpus, out))
        report = build(_cfg(newer, out))
        assert report.changes == {"added": 3, "replaced": 1, "retracted": 1, "withdrawn": 1}
        layouts = [json.loads((out / "_work" / "snapshots" / f"s{k:03d}" / "layout.json").read_text())
                   for k in (0, 1)]
        results.append(([(x["manifests"], x["partitions"], x["articles"]) for x in layouts], _shard_files(out)))
    assert len(made) == 6 and {s.flush_lines for s in made} == {3, default}
    assert results[0] == results[1]
    assert sum(len(m) for m, _, _ in results[0][0]) > 4


def test_update_adds_reversions_retracts_and_withdraws(corpus, tmp_path):
    import datasets

    from biomedica_hf import load_biomedica

    out = tmp_path / "ds"
    _build(_cfg(corpus, out))
    before = _shard_files(out)
    old_index = pq.read_table(out / "figures.parquet").to_pylist()
    newer = tmp_path / "newer"
    change = _update_input(corpus, newer)
    report = _build(_cfg(newer, out))
    assert report.snapshot == 1
    assert report.changes == {"added": 3, "replaced": 1, "retracted": 1, "withdrawn": 1}
    after = _shard_files(out)
    # untouched shards are byte-identical; every written shard is a new file (never rewritten in place)
    for name, data in after.items():
        if name in before:
            assert before[name] == data, f"{name} was rewritten in place"
    new_names = set(after) - set(before)
    assert new_names
    assert all("-s001-" in n or n.endswith("-r001.tar") for n in new_names)
    gone = {change["retracted"], change["withdrawn"]}
    touched = {r["shard"] for r in old_index if r["pmcid"] in gone | {change["reversioned"]}}
    assert touched and not (touched & set(after)), "shards holding removed samples were replaced"
    assert len(set(before) - set(after)) == len(touched)
    index = pq.read_table(out / "figures.parquet").to_pylist()
    pmcids = {r["pmcid"] for r in index}
    assert not (gone & pmcids)
    assert set(change["added"]) <= pmcids
    rev = [r for r in index if r["pmcid"] == change["reversioned"]]
    old_rev = {r["sha256"] for r in old_index if r["pmcid"] == change["reversioned"]}
    assert len(rev) == 4 and not ({r["sha256"] for r in rev} & old_rev), "only the new version's images"
    assert len({r["key"] for r in index}) == len(index)
    assert all(r["split"] == split_of(r["pmcid"], (0.6, 0.2, 0.2)) for r in index)   # splits did not move
    # neither the configs nor the loader yield removed samples
    keys = set()
    for split in ("train", "validation", "test"):
        try:
            keys |= {ex["__key__"] for ex in datasets.load_dataset(str(out), "noncommercial", split=split,
                                                                    streaming=True)}
        except ValueError:
            pass
    assert keys == {r["key"] for r in index}
    loaded = {ex["key"] for ex in load_biomedica(str(out), subset="noncommercial", decode=False)}
    assert loaded == keys
    articles = set(pq.read_table(out / "articles.parquet", columns=["pmcid"])["pmcid"].to_pylist())
    assert not (gone & articles)
    assert change["reversioned"] in articles
    assert len(articles) == 40 + 3 - 2
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    reasons = {(r["pmcid"], r["reason"]) for r in ledger if r["kind"] == "article"}
    assert {(change["retracted"], "retracted"), (change["withdrawn"], "withdrawn"),
            (change["reversioned"], "superseded"), (change["reversioned"], "has_samples")} <= reasons
    ids = [(r["kind"], r["id"]) for r in ledger]
    assert len(ids) == len(set(ids)), "every item has exactly one fate"
    history = json.loads((out / "build_summary.json").read_text())["snapshots"]
    assert [h["snapshot"] for h in history] == [0, 1]
    assert history[1]["added"] == 3
    # a rerun with the same listing changes nothing
    again = build(_cfg(newer, out))
    assert again.changes == {"up to date": 1}
    assert _shard_files(out) == after


def test_exact_duplicates_across_partitions_keep_the_most_permissive(tmp_path):
    inp = tmp_path / "in"
    synth_corpus(inp, 30, start=95_300_000)
    # the same four images in a commercial article and a noncommercial one (far apart in hash space)
    synth_article(inp, 95_399_001, image_seed=4242, commercial=True)
    synth_article(inp, 95_399_002, image_seed=4242)
    out = tmp_path / "ds"
    report = build(_cfg(inp, out, split_fractions=(1.0, 0.0, 0.0)))
    assert report.n_duplicates == 4
    index = pq.read_table(out / "figures.parquet").to_pylist()
    kept = [r for r in index if r["pmcid"] in ("PMC95399001", "PMC95399002")]
    assert {r["pmcid"] for r in kept} == {"PMC95399001"}
    assert all(r["subset"] == "commercial" for r in kept)
    assert all(r["also_in"] == ["PMC95399002"] for r in kept)
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    dups = [r for r in ledger if r["reason"] == "duplicate_image"]
    assert len(dups) == 4
    assert all(r["pmcid"] == "PMC95399002" for r in dups)
    d = pq.read_table(out / "duplicates.parquet").to_pylist()
    assert len(d) == 4
    assert all(r["pmcids"] == ["PMC95399002"] for r in d)


# ------------------------------------------------------------------------------------ faults
def test_hostile_names_and_malformed_metadata_leave_the_others_written(tmp_path):
    inp = tmp_path / "in"
    synth_corpus(inp, 6, start=95_400_000)
    bad = synth_article(inp, 95_400_100)
    (bad / "PMC95400100.1.json").write_text('{"license_code": null, "media_urls": null, "is_retracted": null}')
    weird = synth_article(inp, 95_400_101)
    os.rename(weird / "nihpp-2023.12.31.573776v1-f0001.jpg", os.path.join(os.fsencode(weird), b"caf\xe9.jpg"))
    out = tmp_path / "ds"
    r = subprocess.run([str(BIN), "build", "--input", str(inp), "--out", str(out), "--no-progress", "--workers", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    index = pq.read_table(out / "figures.parquet").to_pylist()
    assert {f"PMC{n}" for n in range(95_400_000, 95_400_006)} <= {x["pmcid"] for x in index}
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    for pmcid in ("PMC95400100", "PMC95400101"):
        assert [x for x in ledger if x["kind"] == "article" and x["pmcid"] == pmcid], f"{pmcid} is accounted for"


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def test_killed_worker_partition_is_retried(corpus, tmp_path):
    args = ["build", "--input", str(corpus), "--no-progress", "--workers", "2", "--partition-size", "8",
            "--splits", "60/20/20", "--shard-samples", "12"]
    ref = tmp_path / "ref"
    assert subprocess.run([str(BIN), *args, "--out", str(ref)], capture_output=True).returncode == 0
    out = tmp_path / "killed"
    p = subprocess.Popen([str(BIN), *args, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = None
    t0 = time.time()
    while killed is None and time.time() - t0 < 120 and p.poll() is None:
        logs = list((out / "_work" / "stage").glob("*/log.jsonl")) if (out / "_work" / "stage").is_dir() else []
        kids = _children(p.pid)
        if logs and kids:
            killed = kids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    _, err = p.communicate(timeout=300)
    assert killed is not None, "no worker was seen while staging"
    assert p.returncode == 0, err.decode()[-2000:]
    assert _shard_files(out) == _shard_files(ref)
    assert pq.read_table(out / "figures.parquet") == pq.read_table(ref / "figures.parquet")


def test_a_second_build_into_the_same_folder_is_refused(corpus, tmp_path):
    out = tmp_path / "ds"
    args = [str(BIN), "build", "--input", str(corpus), "--no-progress", "--workers", "1", "--out", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = out / "_work" / "ingest.lock"
    t0 = time.time()
    while not (lock.exists() and lock.read_text().strip()) and time.time() - t0 < 60:
        time.sleep(0.01)
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"pid {first.pid}" in second.stderr
    assert "another build is running" in second.stderr
    assert first.wait(timeout=300) == 0
    # a stale lock (its holder is gone) is taken over
    lock.write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "2020-01-01"}))
    third = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]


def test_killing_the_driver_leaves_no_orphan_workers(corpus, tmp_path):
    import psutil

    out = tmp_path / "ds"
    p = subprocess.Popen([str(BIN), "build", "--input", str(corpus), "--no-progress", "--workers", "2",
                          "--partition-size", "8", "--splits", "60/20/20", "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    t0 = time.time()
    while len(kids) < 2 and time.time() - t0 < 120 and p.poll() is None:
        kids = _children(p.pid)
        time.sleep(0.01)
    assert kids, "the pool's workers were seen"
    os.kill(p.pid, signal.SIGKILL)           # the driver only, not its process group
    p.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(psutil.pid_exists(k) and psutil.Process(k).status() != "zombie"
                                         for k in kids):
        time.sleep(0.1)
    alive = [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != "zombie"]
    assert not alive, f"orphan workers {alive}"
    # and the next build takes over the dead driver's lock and finishes
    r = subprocess.run([str(BIN), "build", "--input", str(corpus), "--no-progress", "--workers", "2",
                        "--partition-size", "8", "--splits", "60/20/20", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _real_figures(n: int = 4) -> list[bytes]:
    """Real fixture figure JPEGs (distinct figures of one article)."""
    src = sorted((REPO.parent / "shared" / "fixtures" / "pmc" / "articles" / "PMC7159286").glob("*.jpg"))
    if len(src) < n:
        src = sorted((REPO / "biomedica_hf" / "sample_data" / "articles" / "PMC10802347").glob("*.jpg")) * n
    return [p.read_bytes() for p in src[:n]]


def _put_figures(folder: Path, figures: list[bytes]) -> None:
    for i, data in enumerate(figures, 1):
        (folder / f"nihpp-2023.12.31.573776v1-f000{i}.jpg").write_bytes(data)


@pytest.mark.parametrize("near_dedup", [False, True])
def test_near_duplicate_copies_are_grouped_across_partitions(tmp_path, near_dedup):
    figs = _real_figures()
    inp = tmp_path / "in"
    synth_corpus(inp, 12, start=95_500_000)                       # distinct noise figures
    _put_figures(synth_article(inp, 95_599_001, commercial=True), figs)                      # the originals
    _put_figures(synth_article(inp, 95_599_002), [jpeg_copy(d, 0.75, 70) for d in figs])        # re-encoded, resized
    _put_figures(synth_article(inp, 95_599_003), [jpeg_copy(d, 1.5, 90) for d in figs])         # upscaled copies
    out = tmp_path / "ds"
    build(_cfg(inp, out, split_fractions=(1.0, 0.0, 0.0), near_dedup=near_dedup))
    index = {r["key"]: r for r in pq.read_table(out / "figures.parquet").to_pylist()}
    assert all(r["phash"] and len(r["phash"]) == 64 for r in index.values())
    originals = sorted(k for k in index if k.startswith("PMC95599001"))
    assert len(originals) == 4
    assert all(index[k]["near_dup_of"] is None for k in originals)
    distinct = [r for k, r in index.items() if not k.startswith("PMC955990")]
    assert len(distinct) == 48
    assert all(r["near_dup_of"] is None for r in distinct)   # noise figures stay apart
    copies = [k for k in index if k.startswith(("PMC95599002", "PMC95599003"))]
    near = {r["key"]: r for r in pq.read_table(out / "near_duplicates.parquet").to_pylist()}
    if near_dedup:
        assert copies == []
        assert len(near) == 0
        ledger = pq.read_table(out / "ledger.parquet").to_pylist()
        dropped = [r for r in ledger if r["reason"] == "near_duplicate_image"]
        assert len(dropped) == 8
        assert {r["pmcid"] for r in dropped} == {"PMC95599002", "PMC95599003"}
        assert all(sorted(index[k]["also_in"]) == ["PMC95599002", "PMC95599003"] for k in originals)
    else:
        assert len(copies) == 8
        for k in copies:   # each copy points at the original of its figure (same figure number)
            assert index[k]["near_dup_of"] == k.replace(k[:11], "PMC95599001"), (k, index[k]["near_dup_of"])
            assert near[k]["distance"] <= 20
