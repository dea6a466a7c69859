"""``io.sparse_parquet``: a Hub Parquet file's filter columns fetched into a sparse local copy, on the loopback Hub.

The file is shaped like a figures index (many row groups, a few small filter columns and a large text column); the
server counts every request and byte it sends."""
from __future__ import annotations

import random
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.hub_server import HubServer, loopback_only, point_libraries_at

from biomedica_hf.io.sparse_parquet import SparseParquet, _missing, column_chunk_ranges

REPO = "bmd-lab/index"
URL = f"hf://datasets/{REPO}@main/figures.parquet"


def _index(n: int, seed: int) -> pa.Table:
    rnd = random.Random(seed)
    return pa.table({
        "key": [f"PMC{i:07d}_f{i % 7}" for i in range(n)],
        "subset": [rnd.choice(["commercial", "noncommercial", "other"]) for _ in range(n)],
        "year": [rnd.randint(1990, 2025) for _ in range(n)],
        "concepts": [[rnd.choice(["Microscopy", "MRI", "Plots and Charts"])] for _ in range(n)],
        "caption": ["".join(rnd.choices(string.ascii_letters + " ", k=900)) for _ in range(n)],   # the bulk
        "tar_offset": list(range(0, n * 1024, 1024)),
    })


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    folder = tmp_path / "repo"
    folder.mkdir()
    pq.write_table(_index(20_000, 0), folder / "figures.parquet", row_group_size=4_000, compression="zstd")
    with HubServer({REPO: folder}) as server:
        loopback_only(monkeypatch)
        point_libraries_at(server.url, monkeypatch, tmp_path / "hub_cache")
        server.folder = folder
        yield server


def test_only_the_asked_columns_travel_and_read_back_exactly(hub, tmp_path):
    size = (hub.folder / "figures.parquet").stat().st_size
    sparse = SparseParquet(URL, tmp_path / "cache")
    assert sparse.schema.names == ["key", "subset", "year", "concepts", "caption", "tar_offset"]
    hub.requests.clear()
    hub.bytes_sent = 0
    path = sparse.ensure(["key", "subset", "year", "concepts", "tar_offset"])
    want = pq.read_table(hub.folder / "figures.parquet", columns=["key", "subset", "year", "concepts", "tar_offset"])
    assert pq.read_table(path, columns=want.column_names).equals(want)
    assert hub.bytes_sent < 0.25 * size, (hub.bytes_sent, size)            # the captions never travelled
    assert path.stat().st_blocks * 512 < 0.5 * size                        # holes take no disk
    # 5 row groups x 5 columns, coalesced where chunks touch; many requests in flight, none repeated
    assert 1 <= hub.requests["resolve"] <= 25

    hub.requests.clear()
    again = SparseParquet(URL, tmp_path / "cache")
    assert again.ensure(["key", "year"]) == path
    assert hub.requests["resolve"] == 1
    assert [e["method"] for e in hub.log[-1:]] == ["HEAD"]   # metadata only

    more = again.ensure(["caption"])                                       # a column asked later is fetched then
    assert pq.read_table(more, columns=["caption"]).equals(pq.read_table(hub.folder / "figures.parquet",
                                                                         columns=["caption"]))


def test_a_new_commit_is_a_new_copy(hub, tmp_path):
    first = SparseParquet(URL, tmp_path / "cache").ensure(["key", "year"])
    pq.write_table(_index(9_000, 1), hub.folder / "figures.parquet", row_group_size=4_000)
    hub.new_commit()
    second = SparseParquet(URL, tmp_path / "cache").ensure(["key", "year"])
    assert second != first
    assert pq.read_table(second, columns=["year"]).equals(pq.read_table(hub.folder / "figures.parquet",
                                                                        columns=["year"]))


def test_chunk_ranges_and_missing_parts(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_index(1_000, 2), path, row_group_size=300)
    md = pq.read_metadata(path)
    ranges = column_chunk_ranges(md, {"year"})
    assert len(ranges) == md.num_row_groups == 4
    assert all(b - a == md.row_group(i).column(2).total_compressed_size for i, (a, b) in enumerate(ranges))
    assert _missing([(0, 10), (20, 30)], [[5, 25]]) == [(0, 5), (25, 30)]
    assert _missing([(0, 10)], [[0, 10]]) == []
    assert _missing([(0, 10)], []) == [(0, 10)]
