"""``load_biomedica("org/name")`` and ``datasets.load_dataset("org/name", config, streaming=True)`` against a
real loopback Hub (``tests/hub_server.py``) serving a real build of the fixture corpus."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support.hub_server import HubServer, loopback_only, point_libraries_at

from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.dataset.card import write_card
from biomedica_hf.dataset.loader import load_biomedica
from biomedica_hf.io.ranges import ReadOptions, ShardTruncatedError, plan_pieces, ramp_caps
from biomedica_hf.layout import folder_files
from biomedica_hf.schema import SUBSETS

REPO = "bmd-lab/biomedica"


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, articles_dir) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("hub_ds") / "ds"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(articles_dir)}, shard_max_samples=4,
                      progress=False))
    write_card(out, repo_id=REPO)      # `biomedica build` ends with this: the configs datasets reads
    return out, pq.read_table(out / "figures.parquet").to_pylist()


@pytest.fixture()
def hub(built, monkeypatch, tmp_path):
    """The loopback Hub serving the build as REPO (and a scratch copy as bmd-lab/scratch); nothing else reachable."""
    scratch = Path(shutil.copytree(built[0], tmp_path / "scratch", ignore=shutil.ignore_patterns("_work")))
    with HubServer({REPO: built[0], "bmd-lab/scratch": scratch}) as server:
        server.scratch = scratch
        loopback_only(monkeypatch)
        point_libraries_at(server.url, monkeypatch, tmp_path / "hub_cache")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        yield server


def _first_shard(out: Path, subset: str) -> Path:
    """The first shard (sorted) of a subset folder: ``other/other-train-s000-p00000-000.tar``."""
    tars = folder_files(out / subset, "*.tar")      # flat or in sub-folders (layout.shard_dirs)
    assert tars, f"no shard in {out / subset}"
    return tars[0]


def _local(out: Path, **kw) -> dict[str, dict]:
    return {ex["key"]: ex for ex in load_biomedica(out, decode=False, **kw)}


def _shard_bytes(server: HubServer) -> int:
    return sum(e["bytes"] for e in server.log if e["route"] == "resolve" and e["path"].endswith(".tar"))


def test_load_biomedica_from_the_hub_equals_the_local_folder(built, hub):
    out, rows = built
    remote = {ex["key"]: ex for ex in load_biomedica(REPO, subset="all", decode=False)}
    local = _local(out, subset="all")
    shard = {r["key"]: r["shard"] for r in rows}
    for key, ex in remote.items():      # the image path is the member under its shard: the Hub URL / the folder
        member = ex["image"]["path"].rsplit("/", 1)[1]
        assert ex["image"]["path"] == f"hf://datasets/{REPO}@{hub.commit}/{shard[key]}/{member}"   # pinned
        assert local[key]["image"]["path"] == f"{out / shard[key]}/{member}"
        ex["image"]["path"] = local[key]["image"]["path"]
    assert remote == local
    assert len(remote) == len(rows)
    tars = {e["path"].split(f"/resolve/{hub.commit}/")[1] for e in hub.log if e["route"] == "resolve"
            and e["path"].endswith(".tar")}
    assert tars == {r["shard"] for r in rows}
    assert all(e["status"] in (200, 206) for e in hub.log if e["route"] == "resolve")
    assert _shard_bytes(hub) == sum(r["tar_size"] for r in rows)   # every sample once, nothing else


def test_filtered_stream_transfers_only_the_wanted_bytes(built, hub):
    _, rows = built
    lic = min({r["license_code"] for r in rows})
    wanted = [r for r in rows if r["license_code"] == lic]
    exact = ReadOptions(gap_bytes=0)
    keys = sorted(ex["key"] for ex in load_biomedica(REPO, subset="all", licenses=lic, decode=False,
                                                     read_options=exact))
    assert keys == sorted(r["key"] for r in wanted)
    assert len(wanted) < len(rows)
    assert _shard_bytes(hub) == sum(r["tar_size"] for r in wanted)
    assert {e["path"].split(f"/resolve/{hub.commit}/")[1] for e in hub.log if e["path"].endswith(".tar")} == \
        {r["shard"] for r in wanted}
    for e in (e for e in hub.log if e["path"].endswith(".tar")):
        assert e["range"]
        assert e["status"] == 206        # range GETs only, never a whole file


def test_gap_reading_trades_bytes_for_requests(built, hub):
    """Every other sample wanted: gap 0 makes one request per sample, a large gap one per shard."""
    _, rows = built
    drop = [r["key"] for i, r in enumerate(sorted(rows, key=lambda r: (r["shard"], r["tar_offset"]))) if i % 2]
    counts = {}
    for gap in (0, 2**30):
        hub.reset_counters()
        load = load_biomedica(REPO, subset="all", decode=False, exclude=drop,
                              read_options=ReadOptions(gap_bytes=gap, piece_bytes=2**30))
        assert len(list(load)) == len(rows) - len(drop)
        counts[gap] = (sum(1 for e in hub.log if e["path"].endswith(".tar")), _shard_bytes(hub))
    n_shards = len({r["shard"] for r in rows if r["key"] not in drop})   # shards that still hold a wanted sample
    assert counts[2**30][0] == n_shards < counts[0][0]
    assert counts[0][1] == sum(r["tar_size"] for r in rows if r["key"] not in drop) < counts[2**30][1]


def test_plan_pieces():
    import numpy as np

    ranges = np.array([[0, 10], [10, 10], [25, 5], [100, 50], [150, 60]])
    assert plan_pieces(ranges, 0, 1000) == [(0, 20, 0, 2), (25, 30, 2, 3), (100, 210, 3, 5)]
    assert plan_pieces(ranges, 5, 1000) == [(0, 30, 0, 3), (100, 210, 3, 5)]
    assert plan_pieces(ranges, 100, 1000) == [(0, 210, 0, 5)]
    assert plan_pieces(ranges, 100, 60) == [(0, 30, 0, 3), (100, 150, 3, 4), (150, 210, 4, 5)]
    # graduated first pieces: at most 10, then 20 bytes, then piece_bytes; a range larger than its cap stays whole
    assert plan_pieces(ranges, 100, 1000, [10, 20]) == [(0, 10, 0, 1), (10, 30, 1, 3), (100, 210, 3, 5)]
    assert plan_pieces(ranges, 100, 1000, [10, 40, 40, 40]) == [(0, 10, 0, 1), (10, 30, 1, 3), (100, 150, 3, 4),
                                                                (150, 210, 4, 5)]
    assert ramp_caps(ReadOptions(piece_bytes=8, in_flight_bytes=32)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ramp_caps(ReadOptions(piece_bytes=64, in_flight_bytes=32)) == []      # one piece fills the window
    # no more caps than requests in flight: a piece per sample ramps over one window, not 2 x in_flight_bytes caps
    assert ramp_caps(ReadOptions(piece_bytes=8, in_flight_bytes=32, in_flight=4)) == [2, 4, 6, 8]
    assert ramp_caps(ReadOptions(piece_bytes=1, in_flight_bytes=64 * 2**20, in_flight=3)) == [1, 1, 1]
    assert ramp_caps(ReadOptions(piece_bytes=1, in_flight=1)) == []
    assert ReadOptions(latency=0.03, bandwidth=100e6, in_flight=4).gap_for(remote=True) == 750_000
    assert ReadOptions().gap_for(remote=False) == 0


def test_decoded_rows_from_the_hub_with_threads(built, hub):
    _, rows = built
    n = 0
    for ex in load_biomedica(REPO, subset="other", decode_threads=4):
        assert ex["image"].size == (ex["metadata"]["width"], ex["metadata"]["height"])
        n += 1
    assert n == sum(r["subset"] == "other" for r in rows)


def test_hub_dataloader_workers_and_resume(built, hub):
    import json

    from torch.utils.data import DataLoader

    _, rows = built
    ds = load_biomedica(REPO, subset="all", num_workers=2, decode=False)
    keys = [ex["key"] for ex in DataLoader(ds, num_workers=2, batch_size=None)]
    assert sorted(keys) == sorted(r["key"] for r in rows)
    full = [ex["key"] for ex in load_biomedica(REPO, subset="all", decode=False)]
    ds = load_biomedica(REPO, subset="all", decode=False)
    head = []
    for ex in ds:
        head.append(ex["key"])
        if len(head) == 5:
            state = json.loads(json.dumps(ds.state_dict()))
            break
    resumed = load_biomedica(REPO, subset="all", decode=False)
    resumed.load_state_dict(state)
    assert head + [ex["key"] for ex in resumed] == full


def test_hub_errors_are_clear(built, hub):
    from huggingface_hub import HfFileSystem

    scratch = hub.scratch
    original = (scratch / "figures.parquet").read_bytes()
    HfFileSystem.clear_instance_cache()
    table = pq.read_table(scratch / "figures.parquet")
    shards = table["shard"].to_pylist()
    table = table.set_column(table.schema.get_field_index("shard"), "shard",
                             pa.array(["../../outside.tar"] + shards[1:]))
    pq.write_table(table, scratch / "figures.parquet")
    hub.new_commit()                        # every change is a new commit (clients cache per commit)
    HfFileSystem.clear_instance_cache()
    with pytest.raises(ValueError, match="not a relative path inside the dataset"):
        load_biomedica("bmd-lab/scratch", subset="all")
    (scratch / "figures.parquet").write_bytes(original)
    _first_shard(scratch, "other").unlink()
    hub.new_commit()
    HfFileSystem.clear_instance_cache()
    with pytest.raises(FileNotFoundError, match="missing on the Hub"):
        list(load_biomedica("bmd-lab/scratch", subset="other", decode=False))
    tar = _first_shard(scratch, "commercial")
    tar.write_bytes(tar.read_bytes()[:1024])
    hub.new_commit()
    with pytest.raises(ShardTruncatedError, match="truncated"):
        list(load_biomedica("bmd-lab/scratch", subset="commercial", decode=False))
    with pytest.raises(FileNotFoundError):
        load_biomedica("bmd-lab/nope", subset="all")


@pytest.mark.parametrize("config", ["commercial", "other"])
def test_datasets_load_dataset_streams_the_configs(built, hub, config):
    from datasets import load_dataset

    _, rows = built
    ds = load_dataset(REPO, config, split="train", streaming=True)
    got = {ex["__key__"]: ex for ex in ds}
    assert sorted(got) == sorted(r["key"] for r in rows if r["subset"] == config)
    for ex in got.values():
        img = ex["jpg"] or ex["png"]
        assert img.size == (ex["json"]["width"], ex["json"]["height"])
    assert hub.requests["resolve"]
    assert not [e for e in hub.log if e["status"] >= 500]


def test_datasets_load_dataset_all_and_articles(built, hub):
    from datasets import load_dataset

    out, rows = built
    assert sorted(ex["__key__"] for ex in load_dataset(REPO, "all", split="train", streaming=True)) == \
        sorted(r["key"] for r in rows)
    arts = list(load_dataset(REPO, "articles", split="train", streaming=True))
    assert len(arts) == pq.read_metadata(out / "articles.parquet").num_rows > 0


def test_loopback_hub_resolve_semantics(built, hub):
    """What huggingface_hub relies on: Range forms, 206/416, ETag, X-Repo-Commit, HEAD without a body."""
    import hashlib

    import requests

    out, _ = built
    shard = _first_shard(out, "other")
    rel = shard.relative_to(out).as_posix()                 # other/s000/g000/<name>.tar
    data = shard.read_bytes()
    url = f"{hub.url}/datasets/{REPO}/resolve/main/{rel}"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert not head.content
    assert head.headers["X-Repo-Commit"] == hub.commit
    assert head.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'       # LFS-style: the sha256
    for rng, body in (("bytes=10-19", data[10:20]), ("bytes=100-", data[100:]), ("bytes=-7", data[-7:])):
        r = requests.get(url, headers={"Range": rng}, timeout=10)
        assert r.status_code == 206 and r.content == body, rng
        assert r.headers["Content-Range"].endswith(f"/{len(data)}")
    assert requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10).status_code == 416
    assert requests.get(f"{hub.url}/datasets/{REPO}/resolve/nope/{rel}", timeout=10).status_code == 404
    assert requests.get(f"{hub.url}/datasets/{REPO}/resolve/main/_work/x", timeout=10).status_code == 404
    assert hub.requests["resolve"] == 7
    assert hub.bytes_sent >= 10 + len(data) - 100 + 7


def test_loopback_hub_latency_and_bandwidth(built, hub):
    import time

    import requests

    url = f"{hub.url}/datasets/{REPO}/resolve/main/figures.parquet"
    hub.set_link(latency=0.05, bandwidth=2e6)
    t0 = time.perf_counter()
    r = requests.get(url, headers={"Range": "bytes=0-199999"}, timeout=30)
    dt = time.perf_counter() - t0
    assert r.status_code == 206
    assert len(r.content) == min(200_000, (built[0] / "figures.parquet").stat().st_size)
    assert dt >= 0.05 + len(r.content) / 2e6 * 0.9


def test_verify_on_the_hub(built, hub):
    _, rows = built
    assert sorted(ex["key"] for ex in load_biomedica(REPO, subset="all", decode=False, verify=True)) == \
        sorted(r["key"] for r in rows)


def test_stream_pins_the_commit_its_index_came_from(built, hub, tmp_path):
    """A new commit pushed mid-stream (an update that revised every shard: the old names are gone from ``main``):
    the reader finishes from the commit its index came from, ``resolve/<sha>`` for every shard."""
    out, rows = built
    old = hub.commit
    new = Path(shutil.copytree(out, tmp_path / "v2", ignore=shutil.ignore_patterns("_work")))
    for tar in [t for s in SUBSETS for t in folder_files(new / s, "*.tar")]:   # the update's revised shards:
        # new names, the old ones deleted
        tar.rename(tar.with_name(tar.stem + "-r001.tar"))
    one = ReadOptions(in_flight=1, gap_bytes=0, piece_bytes=1)      # one sample per request, nothing ahead
    stream = iter(load_biomedica(REPO, subset="all", decode=False, read_options=one))
    first = next(stream)
    assert hub.push(REPO, new) != old
    keys = [first["key"]] + [ex["key"] for ex in stream]
    assert sorted(keys) == sorted(r["key"] for r in rows)
    assert first["image"]["path"].startswith(f"hf://datasets/{REPO}@{old}/")
    tars = [e["path"] for e in hub.log if e["route"] == "resolve" and e["path"].endswith(".tar")]
    assert tars
    assert all(f"/resolve/{old}/" in p for p in tars)
    assert all(e["status"] in (200, 206) for e in hub.log if e["route"] == "resolve")
