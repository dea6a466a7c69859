"""Plan (dedup + shuffled shards) and shard writer, on real fixture images."""
from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import pyarrow.parquet as pq
import pytest

from biomedica_hf.plan import PlannedSample, assign_shards, make_plan
from biomedica_hf.schema import ImageRecord, Sample
from biomedica_hf.writer import shard_done, shard_files, write_shard


def _ps(key, subset="commercial", sha=None, size=100, pmcid=None):
    return PlannedSample(key, pmcid or key.split("_")[0], subset, sha or hashlib.sha256(key.encode()).hexdigest(),
                         size, key.split("_")[0])


def test_dedup_keeps_most_permissive_subset_and_lists_articles():
    samples = [_ps("PMC2_a", "noncommercial", "h1"), _ps("PMC1_a", "other", "h1"), _ps("PMC3_a", "commercial", "h1"),
               _ps("PMC4_a", "commercial", "h2")]
    plan = make_plan(samples, seed=1)
    kept = [k for s in plan.shards for k in s.keys]
    assert sorted(kept) == ["PMC3_a", "PMC4_a"]
    assert plan.duplicates == {"PMC1_a": "PMC3_a", "PMC2_a": "PMC3_a"}
    assert plan.duplicate_groups["PMC3_a"][0] == "PMC3"
    assert set(plan.duplicate_groups["PMC3_a"]) == {"PMC1", "PMC2", "PMC3"}
    shard = next(s for s in plan.shards if "PMC3_a" in s.keys)
    assert sorted(shard.also_in["PMC3_a"]) == ["PMC1", "PMC2"]


def test_plan_is_independent_of_input_order_and_shuffles():
    samples = [_ps(f"PMC{i:03d}_f") for i in range(200)]
    a = make_plan(samples, max_samples=30, seed=7)
    shuffled = samples[:]
    random.Random(3).shuffle(shuffled)
    b = make_plan(shuffled, max_samples=30, seed=7)
    assert [s.keys for s in a.shards] == [s.keys for s in b.shards]
    assert [s.digest for s in a.shards] == [s.digest for s in b.shards]
    assert [len(s.keys) for s in a.shards] == [30] * 6 + [20]
    flat = [k for s in a.shards for k in s.keys]
    assert flat != sorted(flat)                      # shuffled at write time
    assert make_plan(samples, max_samples=30, seed=8).shards[0].keys != a.shards[0].keys


def test_byte_budget_and_oversized_sample():
    samples = [_ps("PMC1_a", size=60), _ps("PMC2_a", size=60), _ps("PMC3_a", size=500), _ps("PMC4_a", size=10)]
    shards = assign_shards(samples, max_samples=100, max_bytes=100, seed=0)["commercial"]
    assert sorted(k.key for s in shards for k in s) == ["PMC1_a", "PMC2_a", "PMC3_a", "PMC4_a"]
    for s in shards:
        assert sum(x.size for x in s) <= 100 or len(s) == 1


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="not unique"):
        make_plan([_ps("PMC1_a", sha="x"), _ps("PMC1_a", sha="y")])


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
    stats = write_shard(tmp_path / "a", "other", 0, samples, "d1")
    write_shard(tmp_path / "b", "other", 0, samples, "d1")
    tar_a, pq_a, stats_a = shard_files(tmp_path / "a", "other", 0)
    tar_b, _, _ = shard_files(tmp_path / "b", "other", 0)
    assert tar_a.read_bytes() == tar_b.read_bytes()
    assert stats["count"] == 3 and json.loads(stats_a.read_text())["digest"] == "d1"
    assert shard_done(tmp_path / "a", "other", 0, "d1") and not shard_done(tmp_path / "a", "other", 0, "d2")
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
