"""The caption pass's MinHash work done per shard in the write phase (issue 28): every shard written leaves the band
keys of its captions in ``_work/captionkeys``; the pass groups them and gives what it gives computing them itself;
a missing or stale keys file is computed (and kept for the next update), an orphan removed. Real fixture articles."""
from __future__ import annotations

import pyarrow.parquet as pq

from biomedica_hf.ingest.duplicates import CAPTION_KEYS, caption_duplicates_pass, caption_keys_path
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.ingest.work import Work
from biomedica_hf.layout import shard_tables
from biomedica_hf.neardup import caption_near_duplicates
from biomedica_hf.neardup.captions import read_part_keys


def test_shards_carry_their_caption_keys_and_the_pass_uses_them(articles_dir, tmp_path):
    out = tmp_path / "ds"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(articles_dir)}, workers=1, progress=False,
                      shard_max_samples=8))
    work, tables = Work(out), shard_tables(out)
    assert len(tables) > 3
    for t in tables:       # written with the shard, matching it
        assert read_part_keys(t, caption_keys_path(work, t)) is not None, t
    published = pq.read_table(out / "caption_duplicates.parquet").to_pylist()
    assert published        # the fixtures have a real group (two panels of one figure, one caption)
    computed = [{"key": k, "caption_dup_of": v} for k, v in caption_near_duplicates(tables, tmp_path / "w")]
    assert published == computed

    # a keys file lost, one stale (another shard's), one orphan: the pass computes and keeps what it needs
    caption_keys_path(work, tables[0]).unlink()
    caption_keys_path(work, tables[2]).write_bytes(caption_keys_path(work, tables[1]).read_bytes())
    orphan = work.root / CAPTION_KEYS / "commercial" / "gone.npz"
    orphan.write_bytes(b"x")
    kept = caption_keys_path(work, tables[3]).stat().st_mtime_ns
    assert caption_duplicates_pass(work, out) == len(published)
    assert pq.read_table(out / "caption_duplicates.parquet").to_pylist() == published
    for t in tables:
        assert read_part_keys(t, caption_keys_path(work, t)) is not None, t
    assert caption_keys_path(work, tables[3]).stat().st_mtime_ns == kept     # a matching file is only read
    assert not orphan.exists()
