"""``load_biomedica`` on a real build of the fixture corpus (many small shards, all three subsets)."""
from __future__ import annotations

import json
import re
import shutil
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node

from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.dataset.loader import EXTRA_COLUMNS, ShardRanges, dataset_file_url, load_biomedica, split_units
from biomedica_hf.io import ranges as remote
from biomedica_hf.layout import folder_files
from biomedica_hf.schema import SUBSETS


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """Tests start outside torchrun: no inherited WORLD_SIZE changes the units."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, articles_dir) -> tuple[Path, list[dict]]:
    """The fixture corpus built with 4 samples per shard, and its index rows."""
    out = tmp_path_factory.mktemp("loader_ds")
    build(BuildConfig(out=out, source="local", source_opts={"path": str(articles_dir)}, shard_max_samples=4,
                      progress=False))
    rows = pq.read_table(out / "figures.parquet").to_pylist()
    assert len({r["shard"] for r in rows}) >= 5
    assert {r["subset"] for r in rows} == set(SUBSETS)
    return out, rows


def _keys(ds) -> list[str]:
    return [ex["key"] for ex in ds]


def _index_keys(rows: list[dict], pred) -> list[str]:
    return sorted(r["key"] for r in rows if pred(r))


def _first_shard(out: Path, subset: str) -> Path:
    """The first shard (sorted) of a subset folder: ``other/other-train-s000-p00000-000.tar``."""
    tars = folder_files(out / subset, "*.tar")      # flat or in sub-folders (layout.shard_dirs)
    assert tars, f"no shard in {out / subset}"
    return tars[0]


def _tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every shard (``<subset>/*.tar``), read with tarfile: key -> {ext: bytes}."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in [t for s in SUBSETS for t in folder_files(out / s, "*.tar")]:
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


class _Recorder:
    """Records every real read of the range reader on local files: the files opened and (url, position, length)."""

    def __init__(self, monkeypatch) -> None:
        self.opened, self.reads = [], []
        real_init, real_fetch = remote.LocalFile.__init__, remote.LocalFile.fetch
        rec = self

        def init(source, path, *args):
            rec.opened.append(path)
            real_init(source, path, *args)

        def fetch(source, start, end):
            data = real_fetch(source, start, end)
            rec.reads.append((source.url, start, len(data)))
            return data

        monkeypatch.setattr(remote.LocalFile, "__init__", init)
        monkeypatch.setattr(remote.LocalFile, "fetch", fetch)


# ---------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("subset", [*SUBSETS, "all", ["commercial", "other"]])
def test_counts_per_subset_equal_the_index(built, subset):
    out, rows = built
    wanted = set(SUBSETS) if subset == "all" else {subset} if isinstance(subset, str) else set(subset)
    ds = load_biomedica(out, subset=subset, decode=False)
    assert isinstance(ds, IterableDataset)
    keys = _keys(ds)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == _index_keys(rows, lambda r: r["subset"] in wanted)


def test_filters_give_exactly_the_index_selection(built):
    out, rows = built
    years = sorted({r["year"] for r in rows if r["year"] is not None})
    lo, hi = years[0], years[len(years) // 2]
    licenses = sorted({r["license_code"] for r in rows})[:2]
    median = sorted(r["caption_chars"] for r in rows)[len(rows) // 2]
    cases = [
        ({"licenses": licenses[0]}, lambda r: r["license_code"] == licenses[0]),
        ({"licenses": licenses}, lambda r: r["license_code"] in licenses),
        ({"years": lo}, lambda r: r["year"] == lo),
        ({"years": [lo, hi]}, lambda r: r["year"] in (lo, hi)),
        ({"years": (lo, hi)}, lambda r: r["year"] is not None and lo <= r["year"] <= hi),
        ({"years": (hi, None)}, lambda r: r["year"] is not None and r["year"] >= hi),
        ({"min_caption_chars": median}, lambda r: r["caption_chars"] >= median),
        ({"years": (lo, None), "min_caption_chars": median, "licenses": licenses},
         lambda r: r["year"] is not None and r["year"] >= lo and r["caption_chars"] >= median
         and r["license_code"] in licenses),
    ]
    for kwargs, pred in cases:
        expected = _index_keys(rows, pred)
        assert expected and len(expected) < len(rows), kwargs
        assert sorted(_keys(load_biomedica(out, subset="all", decode=False, **kwargs))) == expected, kwargs


def test_samples_equal_tar_members_byte_for_byte(built):
    out, rows = built
    members = _tar_samples(out)
    by_key = {r["key"]: r for r in rows}
    seen = set()
    for ex in load_biomedica(out, subset="all", decode=False):
        m = members[ex["key"]]
        ext = next(e for e in m if e not in ("txt", "json"))
        # the path: the member's name under its shard's path (see the working-directory test)
        assert ex["image"] == {"bytes": m[ext], "path": f"{out / by_key[ex['key']]['shard']}/{ex['key']}.{ext}"}
        assert ex["caption"] == m["txt"].decode()
        sample_json = json.loads(m["json"])
        assert sample_json["split"] == by_key[ex["key"]]["split"]   # the JSON and the index agree
        # metadata: the tar's JSON, plus the index-only columns of the row (near_dup_of, ...)
        index_cols = {c: by_key[ex["key"]][c] for c in EXTRA_COLUMNS if c in by_key[ex["key"]]}
        assert "near_dup_of" in index_cols
        assert ex["metadata"] == {**sample_json, **index_cols}
        seen.add(ex["key"])
    assert seen == set(members) == {r["key"] for r in rows}


def test_decoded_images_and_map_style_dataset(built, tmp_path):
    out, rows = built
    ds = load_biomedica(out, subset="other", streaming=False, cache_dir=str(tmp_path))
    assert isinstance(ds, Dataset)
    assert sorted(ds["key"]) == _index_keys(rows, lambda r: r["subset"] == "other")
    for ex in ds:
        assert ex["image"].size == (ex["metadata"]["width"], ex["metadata"]["height"])


def test_shards_without_wanted_samples_are_never_opened(built, monkeypatch):
    out, rows = built
    lic = Counter(r["license_code"] for r in rows).most_common()[-1][0]
    wanted = [r for r in rows if r["license_code"] == lic]
    ds = load_biomedica(out, subset="all", licenses=lic, decode=False)
    rec = _Recorder(monkeypatch)
    keys = _keys(ds)
    assert sorted(keys) == sorted(r["key"] for r in wanted)
    wanted_shards = {str(out / r["shard"]) for r in wanted}
    assert len(wanted_shards) < len({r["shard"] for r in rows})
    assert sorted(rec.opened) == sorted(wanted_shards)
    # every byte read belongs to a wanted sample: unwanted samples are neither read nor decoded
    spans = {(str(out / r["shard"]), r["tar_offset"], r["tar_offset"] + r["tar_size"]) for r in wanted}
    read_bytes = 0
    for url, pos, n in rec.reads:
        covered = sorted((a, b) for u, a, b in spans if u == url and a < pos + n and b > pos)
        assert covered
        assert covered[0][0] == pos
        assert covered[-1][1] == pos + n
        assert sum(b - a for a, b in covered) == n              # no gap: no unwanted byte in the read
        read_bytes += n
    assert read_bytes == sum(r["tar_size"] for r in wanted)


def test_contiguous_samples_are_read_in_one_read(built, monkeypatch):
    out, rows = built
    rec = _Recorder(monkeypatch)
    assert len(_keys(load_biomedica(out, subset="all", decode=False))) == len(rows)
    assert len(rec.reads) == len(rec.opened) == len({r["shard"] for r in rows})


@pytest.mark.parametrize("streaming", [True, False])
def test_no_match_warns_and_is_empty(built, streaming, tmp_path):
    out, _ = built
    with pytest.warns(UserWarning, match="no sample"):
        ds = load_biomedica(out, subset="all", years=1800, streaming=streaming,
                            **({} if streaming else {"cache_dir": str(tmp_path)}))
    assert _keys(ds) == []


# ---------------------------------------------------------------------------------- concepts
@pytest.fixture(scope="module")
def with_concepts(built, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A copy of the dataset whose index has ``concepts`` / ``local_concepts`` assigned here."""
    out, _ = built
    copy = tmp_path_factory.mktemp("concepts") / "ds"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_work"))
    table = pq.read_table(copy / "figures.parquet")
    global_ = [[["microscopy"], ["chart", "plot"], []][i % 3] for i in range(table.num_rows)]
    local = [["fluorescence"] if i % 4 == 0 else [] for i in range(table.num_rows)]
    table = table.append_column("concepts", pa.array(global_, pa.list_(pa.string())))
    table = table.append_column("local_concepts", pa.array(local, pa.list_(pa.string())))
    pq.write_table(table, copy / "figures.parquet")
    return copy, table.to_pylist()


@pytest.mark.parametrize("kwargs, pred", [
    ({"concepts": ["plot"]}, lambda r: "plot" in r["concepts"]),
    ({"concepts": "fluorescence"}, lambda r: "fluorescence" in r["local_concepts"]),
    ({"concepts": ["microscopy", "fluorescence"]},
     lambda r: "microscopy" in r["concepts"] or "fluorescence" in r["local_concepts"]),
    ({"exclude_concepts": ["microscopy"]}, lambda r: "microscopy" not in r["concepts"]),
    ({"concepts": ["chart", "microscopy"], "exclude_concepts": "fluorescence"},
     lambda r: bool({"chart", "microscopy"} & set(r["concepts"])) and "fluorescence" not in r["local_concepts"]),
])
def test_concept_filters(with_concepts, kwargs, pred):
    copy, rows = with_concepts
    expected = _index_keys(rows, pred)
    assert expected
    assert len(expected) < len(rows)
    assert sorted(_keys(load_biomedica(copy, subset="all", decode=False, **kwargs))) == expected


def test_concepts_without_the_column_is_a_clear_error(built):
    out, _ = built
    with pytest.raises(ValueError, match="no `concepts` column"):
        load_biomedica(out, subset="all", concepts=["microscopy"])
    with pytest.raises(ValueError, match="no `concepts` column"):
        load_biomedica(out, subset="all", exclude_concepts="microscopy")


# ---------------------------------------------------------------------------------- locations
def test_dataset_file_url_local_and_hub(tmp_path):
    assert dataset_file_url(tmp_path, "other/000001.tar") == str(tmp_path.resolve() / "other" / "000001.tar")
    assert dataset_file_url(str(tmp_path), "figures.parquet") == str(tmp_path.resolve() / "figures.parquet")
    with pytest.raises(ValueError, match="local folder"):
        dataset_file_url(tmp_path, "figures.parquet", revision="v1")
    assert dataset_file_url("org/biomedica", "figures.parquet") == "hf://datasets/org/biomedica@main/figures.parquet"
    assert (dataset_file_url("org/biomedica", "commercial/000000.tar", revision="v1.0")
            == "hf://datasets/org/biomedica@v1.0/commercial/000000.tar")
    assert (dataset_file_url("org/biomedica", "figures.parquet", revision="refs/pr/3")
            == "hf://datasets/org/biomedica@refs%2Fpr%2F3/figures.parquet")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        dataset_file_url(str(tmp_path / "missing"), "figures.parquet")


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no figures\.parquet.*biomedica build"):
        load_biomedica(tmp_path)


# ---------------------------------------------------------------------------------- distribution
def test_split_units_makes_the_count_divisible_and_keeps_order():
    units = [ShardRanges("a", np.array([[0, 10], [10, 10], [20, 5], [40, 5], [45, 5]])),
             ShardRanges("b", np.array([[0, 7]])), ShardRanges("c", np.array([[0, 3], [3, 3]]))]
    split = split_units(units, 4)
    assert len(split) == 4
    assert all(len(u.ranges) for u in split)
    for url in "abc":
        parts = [u.ranges for u in split if u.url == url]
        orig = next(u.ranges for u in units if u.url == url)
        assert np.array_equal(np.concatenate(parts), orig)
    assert [len(u.ranges) for u in split] == [3, 2, 1, 2]
    assert split_units(units, 3) is units                     # already divisible
    assert split_units(units, 16) is units                    # 8 samples cannot make 16 units


def test_units_divisible_by_ranks_times_workers(built, monkeypatch):
    out, rows = built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_biomedica(out, subset="all", world_size=2, num_workers=2, decode=False)
        assert ds.num_shards % 4 == 0
        assert sorted(_keys(ds)) == sorted(r["key"] for r in rows)
        n_commercial = sum(r["subset"] == "commercial" for r in rows)
        assert load_biomedica(out, world_size=n_commercial).num_shards == n_commercial
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert load_biomedica(out, subset="other").num_shards % 2 == 0
    with pytest.warns(UserWarning, match=r"cannot be made a multiple of world_size x num_workers.*every rank read all"):
        load_biomedica(out, world_size=n_commercial + 1)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.warns(UserWarning, match="some stay idle"):
        load_biomedica(out, num_workers=n_commercial + 1)


def test_split_dataset_by_node_partitions(built):
    out, rows = built
    ds = load_biomedica(out, subset="all", world_size=2, decode=False).shuffle(seed=3, buffer_size=5)
    parts = [_keys(split_dataset_by_node(ds, rank=r, world_size=2)) for r in range(2)]
    assert all(parts)
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(r["key"] for r in rows)
    assert split_dataset_by_node(ds, rank=0, world_size=2).num_shards == ds.num_shards // 2


def _collate(batch: list[dict]) -> list[str]:
    return [ex["key"] for ex in batch]


def test_dataloader_two_workers_yields_every_sample_once(built):
    from torch.utils.data import DataLoader

    out, rows = built
    ds = load_biomedica(out, subset="all", num_workers=2, decode=False)
    keys = [ex["key"] for ex in DataLoader(ds, num_workers=2, batch_size=None)]
    assert Counter(keys) == Counter(r["key"] for r in rows)
    decoded = load_biomedica(out, subset="other", num_workers=2)
    batches = list(DataLoader(decoded, num_workers=2, batch_size=3, collate_fn=_collate))
    assert sorted(k for b in batches for k in b) == _index_keys(rows, lambda r: r["subset"] == "other")


def test_shuffle_is_a_seeded_permutation(built):
    out, rows = built
    ds = load_biomedica(out, subset="all", decode=False)
    a, b = _keys(ds.shuffle(seed=1, buffer_size=6)), _keys(ds.shuffle(seed=1, buffer_size=6))
    assert a == b
    assert a != _keys(ds)
    assert sorted(a) == sorted(r["key"] for r in rows)


@pytest.mark.parametrize("k", [1, 4, 9, 22])
def test_state_dict_resumes_with_exactly_the_remaining_samples(built, k):
    out, _ = built
    full = _keys(load_biomedica(out, subset="all", decode=False))
    ds = load_biomedica(out, subset="all", decode=False)
    head = []
    for ex in ds:
        head.append(ex["key"])
        if len(head) == k:
            state = ds.state_dict()
            break
    resumed = load_biomedica(out, subset="all", decode=False)
    resumed.load_state_dict(json.loads(json.dumps(state)))   # a checkpoint survives serialisation
    assert head + _keys(resumed) == full


def test_the_stream_is_what_from_generator_would_build(built):
    """The loader builds its IterableDataset without ``from_generator`` (whose config id pickles and hashes every
    unit): the same shards, features, rows, split among ranks the same way, and the same resume state."""
    from biomedica_hf.dataset.loader import generate_samples

    out, _ = built
    ds = load_biomedica(out, subset="all", decode=False, world_size=2)
    ref = IterableDataset.from_generator(generate_samples, features=ds.features, gen_kwargs=ds._ex_iterable.kwargs)
    assert ds.n_shards == ref.n_shards > 1
    assert ds.features == ref.features
    assert ds.split == ref.split
    assert [r["key"] for r in ds] == [r["key"] for r in ref]
    for rank in range(2):
        assert _keys(split_dataset_by_node(ds, rank, 2)) == _keys(split_dataset_by_node(ref, rank, 2))
    states = []
    for d in (ds, ref):
        it = iter(d)
        for _ in range(3):
            next(it)
        states.append(d.state_dict())
    assert states[0] == states[1]


def test_a_file_named_like_a_sample_in_the_working_directory_is_not_read(built, tmp_path, monkeypatch):
    """``datasets.Image`` replaces an image's bytes by the file at its ``path`` when that file exists: the path is
    ``<shard>/<member>`` (below a tar file: never a file), so a stray ``<key>.png`` in the working directory is
    not read instead of the shard's bytes."""
    out, _ = built
    first = next(iter(load_biomedica(out, subset="all", decode=False)))
    name = first["image"]["path"].rsplit("/", 1)
    assert name[0].endswith(".tar")
    assert (out / Path(name[0]).relative_to(out)).is_file()
    monkeypatch.chdir(tmp_path)
    (tmp_path / name[1]).write_bytes(b"a stray file, not the figure")
    again = next(iter(load_biomedica(out, subset="all", decode=False)))
    assert again["image"]["bytes"] == first["image"]["bytes"]
    assert len(first["image"]["bytes"]) > 1000
    decoded = next(iter(load_biomedica(out, subset="all", decode_threads=0)))   # PIL from the shard bytes
    assert decoded["image"].size[0] > 0


def test_stale_index_is_a_clear_error(built, tmp_path):
    out, _ = built
    copy = tmp_path / "ds"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_work"))
    table = pq.read_table(copy / "figures.parquet")
    shifted = pc.add(table["tar_offset"], 512)
    pq.write_table(table.set_column(table.schema.get_field_index("tar_offset"), "tar_offset", shifted),
                   copy / "figures.parquet")
    with pytest.raises(ValueError, match="index is stale"):
        _keys(load_biomedica(copy, subset="all", decode=False))


# ---------------------------------------------------------------------------------- index columns and hooks
#: The index columns added after the first release: an index written before them has none of them.
NEWER_INDEX_COLUMNS = ("split", "near_dup_of", "caption_dup_of")


@pytest.fixture(scope="module")
def older(built, tmp_path_factory) -> Path:
    """A copy whose index is as an older build wrote it: no split, near_dup_of or caption_dup_of column."""
    out, _ = built
    copy = tmp_path_factory.mktemp("older") / "ds"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_work"))
    table = pq.read_table(copy / "figures.parquet")
    assert set(NEWER_INDEX_COLUMNS) <= set(table.column_names)   # the build writes them
    pq.write_table(table.drop_columns(list(NEWER_INDEX_COLUMNS)), copy / "figures.parquet")
    return copy


@pytest.fixture(scope="module")
def annotated(built, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A copy whose index has concepts, and split / near_dup_of columns (replacing the build's) with every
    split and some near-duplicates represented."""
    out, _ = built
    copy = tmp_path_factory.mktemp("annotated") / "ds"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_work"))
    table = pq.read_table(copy / "figures.parquet")
    table = table.drop_columns([c for c in ("split", "near_dup_of") if c in table.column_names])
    n = table.num_rows
    keys = table["key"].to_pylist()
    table = table.append_column("concepts", pa.array([[["Microscopy"], ["Plots and Charts"], []][i % 3]
                                                      for i in range(n)], pa.list_(pa.string())))
    table = table.append_column("local_concepts", pa.array([["Fluorescence"] if i % 4 == 0 else []
                                                            for i in range(n)], pa.list_(pa.string())))
    table = table.append_column("split", pa.array([("train", "validation", "test")[i % 3] for i in range(n)]))
    table = table.append_column("near_dup_of", pa.array([keys[0] if i % 5 == 4 else None for i in range(n)],
                                                        pa.string()))
    pq.write_table(table, copy / "figures.parquet")
    return copy, table.to_pylist()


def test_rows_carry_the_index_columns_in_metadata(annotated):
    copy, rows = annotated
    by_key = {r["key"]: r for r in rows}
    ds = load_biomedica(copy, subset="all", decode=False, concepts=["Microscopy"])
    got = list(ds)
    assert sorted(ex["key"] for ex in got) == _index_keys(rows, lambda r: "Microscopy" in r["concepts"])
    for ex in got:
        for col in ("concepts", "local_concepts", "split", "near_dup_of"):
            assert ex["metadata"][col] == by_key[ex["key"]][col], col
    assert ds.features["metadata"]["concepts"].feature.dtype == "string"


def test_rows_of_an_older_index_have_no_extra_columns(older, built):
    ex = next(iter(load_biomedica(older, subset="all", decode=False)))
    assert not {"concepts", "local_concepts", "near_dup_of", "caption_dup_of"} & set(ex["metadata"])
    # split is also a field of the sample's JSON: it comes from the tar, as the build wrote it
    assert ex["metadata"]["split"] == next(r["split"] for r in built[1] if r["key"] == ex["key"])


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_split_filters_on_the_index(annotated, split):
    copy, rows = annotated
    keys = _keys(load_biomedica(copy, subset="all", decode=False, split=split))
    assert sorted(keys) == _index_keys(rows, lambda r: r["split"] == split)
    assert keys


def test_split_errors(annotated, older):
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'validation', 'test'\]"):
        load_biomedica(annotated[0], split="dev")
    with pytest.raises(ValueError, match="no `split` column.*no train/validation/test splits"):
        load_biomedica(older, split="train")


def test_split_of_the_build_is_the_index_column(built):
    out, rows = built
    for split in {r["split"] for r in rows}:
        assert sorted(_keys(load_biomedica(out, subset="all", decode=False, split=split))) == \
            _index_keys(rows, lambda r, s=split: r["split"] == s)


def test_exclude_from_keys_txt_parquet_and_json(annotated, tmp_path):
    copy, rows = annotated
    drop = sorted(r["key"] for r in rows)[::3]
    expected = _index_keys(rows, lambda r: r["key"] not in drop)
    (tmp_path / "keys.txt").write_text("\n".join(drop) + "\n\n")
    pq.write_table(pa.table({"key": drop, "other": list(range(len(drop)))}), tmp_path / "keys.parquet")
    (tmp_path / "keys.json").write_text(json.dumps([{"key": k} for k in drop]))
    for exclude in (drop, set(drop), tmp_path / "keys.txt", str(tmp_path / "keys.parquet"), tmp_path / "keys.json"):
        assert sorted(_keys(load_biomedica(copy, subset="all", decode=False, exclude=exclude))) == expected, exclude
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_biomedica(copy, exclude=tmp_path / "nope.txt")
    pq.write_table(pa.table({"id": drop}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no `key` column"):
        load_biomedica(copy, exclude=tmp_path / "bad.parquet")


def test_near_duplicates_drop(annotated, built, older):
    copy, rows = annotated
    kept = _keys(load_biomedica(copy, subset="all", decode=False, near_duplicates="drop"))
    assert sorted(kept) == _index_keys(rows, lambda r: r["near_dup_of"] is None)
    assert len(kept) < len(rows)
    assert len(_keys(load_biomedica(copy, subset="all", decode=False, near_duplicates="keep"))) == len(rows)
    out, built_rows = built   # the build's own near_dup_of column
    assert sorted(_keys(load_biomedica(out, subset="all", decode=False, near_duplicates="drop"))) == \
        _index_keys(built_rows, lambda r: r["near_dup_of"] is None)
    with pytest.raises(ValueError, match="no `near_dup_of` column"):
        load_biomedica(older, near_duplicates="drop")
    with pytest.raises(ValueError, match="near_duplicates must be one of"):
        load_biomedica(copy, near_duplicates="yes")


# ---------------------------------------------------------------------------------- one Selection
def test_a_selection_selects_what_the_same_keywords_select(annotated, tmp_path):
    """Issue 29: the filters are one ``Selection``; ``load_biomedica(selection=)`` and the keywords agree."""
    from biomedica_hf.filters import Selection

    copy, rows = annotated
    years = sorted({r["year"] for r in rows if r["year"] is not None})
    drop = sorted(r["key"] for r in rows)[::4]
    (tmp_path / "keys.txt").write_text("\n".join(drop))
    cases = [
        ({"subset": "all", "concepts": "microscopy", "split": "train"},
         lambda r: "Microscopy" in r["concepts"] and r["split"] == "train"),
        ({"subset": ["commercial", "other"], "exclude_concepts": ["Plots and Charts"], "near_duplicates": "drop"},
         lambda r: r["subset"] != "noncommercial" and "Plots and Charts" not in r["concepts"]
         and r["near_dup_of"] is None),
        ({"subset": "all", "years": (years[0], years[len(years) // 2]), "exclude": tmp_path / "keys.txt"},
         lambda r: r["year"] is not None and years[0] <= r["year"] <= years[len(years) // 2]
         and r["key"] not in drop),
    ]
    for kw, pred in cases:
        want = _index_keys(rows, pred)
        assert want, kw                                    # the case selects something, and not everything
        assert len(want) < len(rows), kw
        by_selection = sorted(_keys(load_biomedica(copy, decode=False, selection=Selection(**kw))))
        assert by_selection == want, kw
        assert sorted(_keys(load_biomedica(copy, decode=False, **kw))) == want, kw


def test_selection_or_keywords_not_both(annotated):
    from biomedica_hf.filters import Selection

    copy, _ = annotated
    with pytest.raises(TypeError, match=r"either selection= or the filter keywords.*\['licenses'\]"):
        load_biomedica(copy, licenses="CC BY", selection=Selection(subset="all"))
    # a keyword left at its default is no conflict
    assert len(_keys(load_biomedica(copy, subset="commercial", decode=False, selection=Selection(subset="all")))) \
        == len(_keys(load_biomedica(copy, subset="all", decode=False)))


def test_a_selection_is_checked_when_made():
    import biomedica_hf
    from biomedica_hf.filters import Selection, YearRange

    assert biomedica_hf.Selection is Selection                  # the public name, beside load_biomedica

    with pytest.raises(ValueError, match=r"subset must be 'all' or among"):
        Selection(subset="comercial")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'validation', 'test'\]"):
        Selection(split="dev")
    with pytest.raises(ValueError, match="near_duplicates must be one of"):
        Selection(near_duplicates="yes")
    with pytest.raises(ValueError, match="at least one bound"):
        Selection(years=(None, None))
    with pytest.raises(ValueError, match="min_caption_chars must be a non-negative integer"):
        Selection(min_caption_chars=-1)
    with pytest.raises(TypeError, match="not bytes"):
        Selection(exclude=b"PMC1")
    # a (min, max) tuple is a range, a list is any of those years, and stays so through replace()
    assert Selection(years=(2019, None)).years == YearRange(2019, None)
    listed = Selection(years=[2019, 2021])
    assert listed.replace(split="test").years == frozenset({2019, 2021})
    assert Selection(subset=["other", "commercial"]).subsets == ("other", "commercial")
    assert Selection(subset="all").every_subset
    assert Selection(subset="all", years=[2021, 2019], exclude=["b", "a"]).describe() == \
        "subset='all', years=[2019, 2021], exclude='...'"
    with pytest.raises(ValueError, match="cannot be a \\(min, max\\) range"):
        _ = listed.year_bounds
    with pytest.raises(TypeError, match="years must be a year, a list of years"):
        Selection(years=["2019"])


# ---------------------------------------------------------------------------------- validation
def test_licence_codes_are_case_insensitive_and_unknown_ones_raise(built):
    out, rows = built
    lic = min({r["license_code"] for r in rows})
    assert sorted(_keys(load_biomedica(out, subset="all", decode=False, licenses=lic.lower()))) == \
        _index_keys(rows, lambda r: r["license_code"] == lic)
    with pytest.raises(ValueError, match=r"unknown licence code\(s\) \['CC-BY-4'\].*the index has \[") as exc:
        load_biomedica(out, licenses=["CC-BY-4", lic])
    assert all(repr(v) in str(exc.value) for v in {r["license_code"] for r in rows})


def test_unknown_concepts_and_subsets_raise_with_the_valid_values(annotated):
    copy, _ = annotated
    with pytest.raises(ValueError, match=r"unknown concept\(s\) \['Microscpy'\].*'Fluorescence', 'Microscopy', "
                                         r"'Plots and Charts'"):
        load_biomedica(copy, concepts=["Microscpy"])
    with pytest.raises(ValueError, match=r"unknown concept"):
        load_biomedica(copy, exclude_concepts="Nope")
    with pytest.raises(ValueError, match=r"subset must be 'all' or among \['commercial', 'noncommercial', 'other'\]"):
        load_biomedica(copy, subset="comercial")


def test_valid_but_absent_filter_values_select_nothing_and_name_what_the_build_has(annotated):
    """Issue 27: a licence code or concept of the vocabulary that this build lacks is no error (the README's own
    `licenses=["CC BY", "CC0"]` on a build without CC0); a misspelt one is, naming the closest valid values."""
    from biomedica_hf import hooks
    from biomedica_hf.dataset.loader import NoMatchWarning
    from biomedica_hf.filters import LICENSE_CODES

    copy, rows = annotated
    have = sorted({r["license_code"] for r in rows})
    absent = next(c for c in LICENSE_CODES if c not in have)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _keys(load_biomedica(copy, subset="all", decode=False, licenses=absent.lower())) == []
        mixed = sorted(_keys(load_biomedica(copy, subset="all", decode=False, licenses=[have[0], absent])))
    msgs = [str(w.message) for w in caught if issubclass(w.category, NoMatchWarning)]
    assert len(msgs) == 1
    assert f"licence code {absent!r} not in this build, which has {have}" in msgs[0]
    assert mixed == _index_keys(rows, lambda r: r["license_code"] == have[0])   # no warning: it selected some
    concepts = {"Microscopy", "Plots and Charts", "Fluorescence"}
    missing = sorted(hooks.concept_names() - concepts)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _keys(load_biomedica(copy, subset="all", decode=False, concepts=[missing])) == []
        kept = sorted(_keys(load_biomedica(copy, subset="all", decode=False, exclude_concepts=missing)))
    msgs = [str(w.message) for w in caught if issubclass(w.category, NoMatchWarning)]
    assert len(msgs) == 1
    assert f"concept {missing!r} not in this build" in msgs[0]
    assert "'Microscopy'" in msgs[0]
    assert kept == sorted(r["key"] for r in rows)
    # case-insensitive, like the licence codes and the search API
    assert sorted(_keys(load_biomedica(copy, subset="all", decode=False, concepts="plots AND charts"))) == \
        _index_keys(rows, lambda r: "Plots and Charts" in r["concepts"])
    with pytest.raises(ValueError, match=r"'CC-BY-4': did you mean 'CC BY'"):
        load_biomedica(copy, licenses="CC-BY-4")
    with pytest.raises(ValueError, match=r"'Microscpy': did you mean 'Microscopy'"):
        load_biomedica(copy, concepts="Microscpy")


def _no_match_call(out):
    return load_biomedica(out, subset="all", years=1800)   # the line the warning must point at


def test_no_match_warns_on_every_call_at_the_callers_line(built):
    import inspect

    from biomedica_hf.dataset.loader import NoMatchWarning

    out, _ = built
    line = inspect.getsourcelines(_no_match_call)[1] + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            _no_match_call(out)
    hits = [w for w in caught if issubclass(w.category, NoMatchWarning)]
    assert len(hits) == 3
    assert all(w.filename == __file__ and w.lineno == line for w in hits)
    assert "years=1800" in str(hits[0].message)


def test_help_shows_the_real_signature():
    import inspect

    import biomedica_hf
    from biomedica_hf import load_biomedica as top

    assert top is load_biomedica
    assert biomedica_hf.load_biomedica is load_biomedica
    params = inspect.signature(biomedica_hf.load_biomedica).parameters
    assert {"subset", "concepts", "licenses", "split", "exclude", "near_duplicates", "verify"} <= set(params)
    assert "Hub dataset repo id" in biomedica_hf.load_biomedica.__doc__


# ---------------------------------------------------------------------------------- integrity
def _copy(out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(out, tmp_path / "ds", ignore=shutil.ignore_patterns("_work")))


@pytest.mark.parametrize("bad", ["../../outside.tar", "/etc/passwd", "commercial/../../x.tar",
                                 "hf://datasets/evil/repo@main/x.tar", "other@evil/x.tar", "C:\\x.tar"])
def test_shard_paths_must_stay_inside_the_dataset(built, tmp_path, bad):
    copy = _copy(built[0], tmp_path)
    (tmp_path / "outside.tar").write_bytes(_first_shard(copy, "other").read_bytes())
    table = pq.read_table(copy / "figures.parquet")
    col = table.schema.get_field_index("shard")
    table = table.set_column(col, "shard", pa.array([bad] + table["shard"].to_pylist()[1:]))
    pq.write_table(table, copy / "figures.parquet")
    with pytest.raises(ValueError, match="not a relative path inside the dataset"):
        load_biomedica(copy, subset="all")


def test_symlinked_subset_folder_is_followed(built, tmp_path):
    """Links the folder's owner made (a subset on another disk) are followed; only the index's paths are checked."""
    out, rows = built
    view = tmp_path / "view"
    view.mkdir()
    for sub in SUBSETS:
        (view / sub).symlink_to(out / sub, target_is_directory=True)
    shutil.copy(out / "figures.parquet", view / "figures.parquet")
    assert sorted(_keys(load_biomedica(view, subset="all", decode=False))) == sorted(r["key"] for r in rows)


def test_verify_catches_flipped_image_bytes(built, tmp_path):
    out, rows = built
    copy = _copy(out, tmp_path)
    row = next(r for r in rows if r["subset"] == "other")
    tar = copy / row["shard"]
    data = bytearray(tar.read_bytes())
    pos = row["image_offset"] + row["image_size"] // 2
    data[pos] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert len(_keys(load_biomedica(copy, subset="other", decode=False))) >= 1   # unverified: not noticed
    with pytest.raises(ValueError, match=rf"sample {row['key']} .*sha256.*corrupted"):
        _keys(load_biomedica(copy, subset="other", decode=False, verify=True))
    assert sorted(_keys(load_biomedica(out, subset="all", decode=False, verify=True))) == \
        sorted(r["key"] for r in rows)


def test_missing_or_truncated_shard_raises(built, tmp_path):
    from biomedica_hf.io.ranges import ShardTruncatedError

    copy = _copy(built[0], tmp_path)
    tar = _first_shard(copy, "other")
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardTruncatedError, match="truncated"):
        _keys(load_biomedica(copy, subset="other", decode=False))
    tar.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tar.relative_to(copy).as_posix()}: shard listed in the index is missing")):
        _keys(load_biomedica(copy, subset="other", decode=False))


@pytest.mark.parametrize("threads", [0, 4])
def test_state_dict_resume_with_threaded_decoding(built, threads):
    out, _ = built
    full = [ex["key"] for ex in load_biomedica(out, subset="all", decode_threads=threads)]
    ds = load_biomedica(out, subset="all", decode_threads=threads)
    head = []
    for ex in ds:
        assert ex["image"].size == (ex["metadata"]["width"], ex["metadata"]["height"])
        head.append(ex["key"])
        if len(head) == 7:
            state = json.loads(json.dumps(ds.state_dict()))
            break
    resumed = load_biomedica(out, subset="all", decode_threads=threads)
    resumed.load_state_dict(state)
    assert head + [ex["key"] for ex in resumed] == full
