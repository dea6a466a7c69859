"""Exact-duplicate decisions, shard cutting and the shard writer (write / revise), on real fixture images."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.ingest.dedup import HASH_SCHEMA, PUBLISHED, decide, decide_bucket, decisions_for, write_hash_rows
from biomedica_hf.ingest.task import cut_shards as _cut
from biomedica_hf.ingest.shards import revise_shard, shard_done, write_shard
from biomedica_hf.layout import shard_paths
from biomedica_hf.schema import ImageRecord, Sample


def _h(key, subset="commercial", sha=None, pid="s000-train-p00000"):
    return {"key": key, "sha256": sha or hashlib.sha256(key.encode()).hexdigest(), "subset": subset,
            "pmcid": key.split("_")[0], "pid": pid}


def test_dedup_keeps_most_permissive_subset_and_lists_articles():
    rows = [_h("PMC2_a", "noncommercial", "a1"), _h("PMC1_a", "other", "a1"), _h("PMC3_a", "commercial", "a1"),
            _h("PMC4_a", "commercial", "b2")]
    out = decide_bucket(pa.Table.from_pylist(rows, schema=HASH_SCHEMA))
    dropped = {r["key"]: r["canonical"] for r in out if r["canonical"]}
    assert dropped == {"PMC1_a": "PMC3_a", "PMC2_a": "PMC3_a"}
    kept = [r for r in out if r["canonical"] is None]
    assert [r["key"] for r in kept] == ["PMC3_a"]
    assert sorted(kept[0]["also_in"]) == ["PMC1", "PMC2"]


def test_published_samples_win_and_decisions_are_order_independent(tmp_path):
    rows = [_h("PMC9_a", "commercial", "c3", pid="s001-train-p00000"),
            _h("PMC8_a", "other", "c3", pid=PUBLISHED + "other/other-train-s000-p00000-000.tar")]
    out = decide_bucket(pa.Table.from_pylist(rows, schema=HASH_SCHEMA))
    assert {r["key"]: r["canonical"] for r in out} == {"PMC8_a": None, "PMC9_a": "PMC8_a"}
    # bucketed on disk: same decisions whatever the partition order, one bucket in memory at a time
    many = [_h(f"PMC{i}_x", "commercial", f"{i % 50:08x}" + "0" * 56, pid=f"s000-train-p{i % 7:05d}")
            for i in range(700)]
    for order, folder in ((many, tmp_path / "a"), (many[::-1], tmp_path / "b")):
        for pid in sorted({r["pid"] for r in order}):
            write_hash_rows(folder / "h", pid, [r for r in order if r["pid"] == pid], 4)
        assert decide(folder / "h", 4, folder / "d.parquet") == 700 - 50
    assert pq.read_table(tmp_path / "a" / "d.parquet").sort_by("key") == \
        pq.read_table(tmp_path / "b" / "d.parquet").sort_by("key")
    drop, also = decisions_for(tmp_path / "a" / "d.parquet", "s000-train-p00003")
    assert drop
    assert all(k not in also for k in drop)


def test_shards_respect_both_budgets_and_oversized_samples():
    def s(key, n):
        return {"key": key, "length": n, "caption": ""}
    cut = list(_cut([s("a", 60), s("b", 60), s("c", 5000), s("d", 10)], max_samples=100, max_bytes=4200))
    assert [[x["key"] for x in c] for c in cut] == [["a"], ["b"], ["c"], ["d"]]
    assert [len(c) for c in _cut([s(str(i), 1) for i in range(25)], 10, 10**9)] == [10, 10, 5]


def _real_samples(articles_dir, n=3):
    files = sorted((articles_dir / "PMC7159286").glob("*.jpg"))[:n]
    out = []
    for f in files:
        data = f.read_bytes()
        from PIL import Image

        im = Image.open(io.BytesIO(data))
        rec = ImageRecord(data, "jpg", im.width, im.height, "JPEG", im.mode, hashlib.sha256(data).hexdigest(), False,
                          f.name)
        key = f"PMC7159286_{f.stem}"
        out.append(Sample(key, rec, f"Caption of {f.stem} with ünïcode", {"key": key, "pmcid": "PMC7159286",
                                                                        "caption": f"Caption of {f.stem}"}))
    return out


def test_write_shard_offsets_reproducible_and_marker(tmp_path, articles_dir):
    samples = _real_samples(articles_dir)
    name = "other/other-train-s000-p00000-000"
    stats = write_shard(tmp_path / "a", name, samples, "d1")
    write_shard(tmp_path / "b", name, samples, "d1")
    tar_a, pq_a, stats_a = shard_paths(tmp_path / "a", name)
    tar_b, _, _ = shard_paths(tmp_path / "b", name)
    assert tar_a.read_bytes() == tar_b.read_bytes()
    assert stats["count"] == 3
    assert json.loads(stats_a.read_text())["digest"] == "d1"
    assert shard_done(tmp_path / "a", name, "d1")
    assert not shard_done(tmp_path / "a", name, "d2")
    rows = pq.read_table(pq_a).to_pylist()
    raw = tar_a.read_bytes()
    for row, s in zip(rows, samples):
        assert raw[row["image_offset"]:row["image_offset"] + row["image_size"]] == s.image.data
        # the sample's byte range is a valid tar stream of exactly its three members
        chunk = raw[row["tar_offset"]:row["tar_offset"] + row["tar_size"]] + b"\0" * 1024
        with tarfile.open(fileobj=io.BytesIO(chunk)) as t:
            assert t.getnames() == [f"{s.key}.jpg", f"{s.key}.txt", f"{s.key}.json"]
            assert t.extractfile(f"{s.key}.txt").read().decode() == s.caption
    assert not list((tmp_path / "a" / "other").glob(".*tmp*"))


def test_revise_shard_drops_samples_and_keeps_the_rest_bit_identical(tmp_path, articles_dir):
    samples = _real_samples(articles_dir)
    old, new = "other/other-train-s000-p00000-000", "other/other-train-s000-p00000-000-r001"
    write_shard(tmp_path, old, samples, "d1")
    before = {r["key"]: r for r in pq.read_table(shard_paths(tmp_path, old)[1]).to_pylist()}
    raw_old = shard_paths(tmp_path, old)[0].read_bytes()
    stats = revise_shard(tmp_path, old, new, {samples[1].key}, "d2")
    # the old files stay: the update retires them only once the new shards and the index are in place
    assert all(p.read_bytes() for p in shard_paths(tmp_path, old))
    assert shard_paths(tmp_path, old)[0].read_bytes() == raw_old
    tar, parquet, _ = shard_paths(tmp_path, new)
    raw = tar.read_bytes()
    rows = pq.read_table(parquet).to_pylist()
    assert stats["count"] == 2
    assert [r["key"] for r in rows] == [samples[0].key, samples[2].key]
    for r in rows:
        b = before[r["key"]]
        assert raw[r["tar_offset"]:r["tar_offset"] + r["tar_size"]] == raw_old[b["tar_offset"]:b["tar_offset"] + b["tar_size"]]
        assert r["shard"] == f"{new}.tar"
    with tarfile.open(tar) as t:                 # a valid tar that tarfile reads to the end
        assert len(t.getnames()) == 6
        assert t.extractfile(f"{samples[2].key}.jpg").read() == samples[2].image.data
    assert len(raw) % tarfile.RECORDSIZE == 0


def test_shard_timings_are_in_the_stats_only(tmp_path, articles_dir):
    """Timings go to ``_stats.json`` (work stages given, the write measured, ``elapsed`` their sum) and never
    into the tar or the Parquet; a revised shard keeps the kept samples' share and times its own copy."""
    samples = _real_samples(articles_dir)
    name = "other/other-train-s000-p00000-000"
    given = {"fetch": 0.3, "parse": 0.15, "media": 1.2, "stage_write": 0.0304}
    stats = write_shard(tmp_path / "a", name, samples, "d1", timings=given)
    plain = write_shard(tmp_path / "b", name, samples, "d1")
    tar_a, pq_a, stats_a = shard_paths(tmp_path / "a", name)
    tar_b, pq_b, _ = shard_paths(tmp_path / "b", name)
    assert tar_a.read_bytes() == tar_b.read_bytes()
    assert pq.read_table(pq_a).equals(pq.read_table(pq_b))
    t = json.loads(stats_a.read_text())["timings"]
    assert t == stats["timings"]
    assert "timings" not in plain
    assert set(t) == {"fetch", "parse", "media", "stage_write", "shard_write", "elapsed"}
    assert {k: t[k] for k in given} == {"fetch": 0.3, "parse": 0.15, "media": 1.2, "stage_write": 0.03}
    assert 0 < t["shard_write"] < 60
    assert abs(t["elapsed"] - sum(given.values()) - t["shard_write"]) < 0.002
    revised = revise_shard(tmp_path / "a", name, name + "-r001", {samples[1].key}, "d2")["timings"]
    assert {k: revised[k] for k in given} == {"fetch": 0.2, "parse": 0.1, "media": 0.8, "stage_write": 0.02}
    assert set(revised) == set(t)
    assert abs(revised["elapsed"] - 1.12 - revised["shard_write"]) < 0.002
