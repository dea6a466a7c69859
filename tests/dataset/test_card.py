"""The Hub dataset folder: card YAML, configs loadable with `datasets.load_dataset`, statistics, plots."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.dataset.card import collect_stats, size_category
from biomedica_hf.layout import folder_files
from biomedica_hf.schema import SAMPLE_FIELDS, SUBSETS

BIN = Path(sys.executable).parent / "biomedica"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, articles_dir):
    out = tmp_path_factory.mktemp("hub")
    build(BuildConfig(out=out, source="local", source_opts={"path": str(articles_dir)}, shard_max_samples=4,
                      progress=False))
    r = subprocess.run([str(BIN), "card", "--out", str(out), "--repo-id", "biomedica/test"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    return out


def _front_matter(out: Path) -> dict:
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_yaml_front_matter(folder):
    meta = _front_matter(folder)
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {*SUBSETS, "all", "articles", "figures"}
    assert configs["commercial"]["default"] is True
    assert sum(bool(c.get("default")) for c in configs.values()) == 1
    # one data-files entry per split that has shards (the sample's six articles all hash into train)
    splits = sorted({p.name.split("-")[1] for p in folder_files(folder / "other", "*.tar")})
    # recursive patterns: the shards are in sub-folders (other/s000/g000/), a flat folder matches them too
    assert configs["other"]["data_files"] == [{"split": sp, "path": f"other/**/other-{sp}-*.tar"}
                                              for sp in ("train", "validation", "test") if sp in splits]
    assert {d["split"] for d in configs["all"]["data_files"]} == {d["split"] for c in SUBSETS
                                                                  for d in configs[c]["data_files"]}
    assert meta["size_categories"] == ["n<1K"]
    assert "image-to-text" in meta["task_categories"]
    assert meta["license"] == "other"
    assert meta["pretty_name"]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    json_feature = next(f for f in infos["commercial"]["features"] if f["name"] == "json")
    assert [f["name"] for f in json_feature["struct"]] == [n for n, _, _ in SAMPLE_FIELDS]
    assert not (folder / "README.md").read_text().count("loading script")


def test_every_config_loads_with_datasets(folder):
    index = pq.read_table(folder / "figures.parquet").to_pylist()
    per_subset = Counter(r["subset"] for r in index)
    for subset in SUBSETS:
        ds = datasets.load_dataset(str(folder), subset, split="train", streaming=True)
        rows = list(ds)
        assert len(rows) == per_subset[subset] > 0
        assert all(r["json"]["subset"] == subset for r in rows)
        assert all((r["jpg"] or r["png"]).size == (r["json"]["width"], r["json"]["height"]) for r in rows)
    assert ds.n_shards == len(folder_files(folder / subset, "*.tar")) > 0
    default = datasets.load_dataset(str(folder), split="train", streaming=True)
    assert {r["json"]["subset"] for r in default} == {"commercial"}
    everything = datasets.load_dataset(str(folder), "all", split="train", streaming=True)
    assert sorted(r["__key__"] for r in everything) == sorted(r["key"] for r in index)
    articles = datasets.load_dataset(str(folder), "articles", split="train")
    table = pq.read_table(folder / "articles.parquet")
    assert articles.num_rows == table.num_rows
    assert sorted(a["pmcid"] for a in articles["json"]) == sorted(table["pmcid"].to_pylist())
    figures = datasets.load_dataset(str(folder), "figures", split="train")
    assert sorted(f["key"] for f in figures["json"]) == sorted(r["key"] for r in index)
    assert {"shard", "tar_offset", "sha256", "caption_chars"} <= set(figures.features["json"])


def test_card_statistics_match_the_folder(folder):
    stats = collect_stats(folder)
    index = pq.read_table(folder / "figures.parquet").to_pylist()
    assert stats["total_samples"] == len(index)
    assert {s["name"]: s["samples"] for s in stats["subsets"]} == dict(Counter(r["subset"] for r in index))
    assert sum(y["n"] for y in stats["years"]) == len(index)
    assert stats["journals"][0] == {"name": "Lancet (London, England)", "n": 10}
    assert {(x["code"], x["subset"]) for x in stats["licenses"]} >= {("CC BY", "commercial"),
                                                                      ("CC BY-NC-ND", "noncommercial")}
    assert len(stats["shards"]) == sum(len(folder_files(folder / s, "*.tar")) for s in SUBSETS)
    card = (folder / "README.md").read_text()
    assert "| `commercial` | 2 |" in card
    assert "biomedica/test" in card
    for shard in stats["shards"]:
        assert f"`{shard['name']}`" in card
    tars = folder_files(folder / "other", "*.tar")
    sizes = json.loads((tars[0].parent / "sizes.json").read_text())
    assert sum(sizes[t.name] for t in tars) == Counter(r["subset"] for r in index)["other"]
    # how converted images were encoded (a format choice of the build: issue 28)
    assert "lossless PNGs: the Up filter on every row, deflated with zlib's RLE strategy" in card


def test_plots_are_real_pngs(folder):
    for name in ("subsets", "years", "journals", "licenses"):
        path = folder / "card" / f"{name}.png"
        assert f"card/{name}.png" in (folder / "README.md").read_text()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.width > 300
            assert im.height > 150
            assert len(im.convert("L").getcolors(256) or []) > 10   # not a blank canvas


def test_card_is_reproducible(folder):
    before = (folder / "README.md").read_bytes()
    r = subprocess.run([str(BIN), "card", "--out", str(folder), "--repo-id", "biomedica/test"], capture_output=True,
                       check=False)
    assert r.returncode == 0
    assert (folder / "README.md").read_bytes() == before


def test_plots_drawn_by_two_processes_are_the_same_files(folder, tmp_path):
    """``write_card(workers=2)`` (what `biomedica build --workers 2` runs) draws the plots in forked processes while
    it writes the table configs and the text: every file it writes is byte for byte what one process writes."""
    import shutil

    from biomedica_hf.dataset.card import write_card

    def card_files(out: Path) -> dict[str, bytes]:
        found = [out / "README.md", *out.glob("card/*.png"), *out.glob("articles/*.tar"), *out.glob("figures/*.tar")]
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(found)}

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for p in [copy / "README.md", *copy.glob("card/*.png")]:
        p.unlink()
    write_card(copy, repo_id="biomedica/test", workers=2)
    two = card_files(copy)
    write_card(copy, repo_id="biomedica/test", workers=1)
    assert card_files(copy) == two
    assert len([n for n in two if n.endswith(".png")]) == 4
    assert two == card_files(folder)


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 24_076_288)] == ["n<1K", "n<1K", "1K<n<10K", "10M<n<100M"]


def test_card_provenance_follows_the_source_and_links_no_placeholder(folder, tmp_path):
    """The fixture folder is a --source local build: the card must not claim the Cloud Service or md5 checks."""
    import shutil

    from biomedica_hf.dataset.card import render_card

    card = (folder / "README.md").read_text()
    assert json.loads((folder / "build_summary.json").read_text())["source"] == "local"
    assert "https://github.com/)" not in card
    assert "](https://github.com)" not in card
    assert "PMC Cloud Service" not in card
    assert "md5" not in card
    assert "read from a local folder of PMC articles" in card
    assert "obtained from local copies of PMC Open Access articles" in card
    # the same folder, as if built from the Cloud Service: now it says so
    cloud = tmp_path / "cloud"
    shutil.copytree(folder, cloud, ignore=shutil.ignore_patterns("_work"))
    summary = json.loads((cloud / "build_summary.json").read_text())
    (cloud / "build_summary.json").write_text(json.dumps({**summary, "source": "cloud"}))
    text = render_card(cloud, "biomedica/test")
    assert "accessed from the PMC Cloud Service" in text
    assert "fetch (md5-verified)" in text
    assert "local copies" not in text


def test_count_plots_have_integer_ticks():
    from biomedica_hf.dataset.card import bar_figure

    for horizontal in (False, True):
        fig = bar_figure(["commercial", "noncommercial", "other"], [1, 2, 1], "Samples per subset", horizontal)
        ax = fig.axes[0]
        ticks = [t for t in (ax.get_xticks() if horizontal else ax.get_yticks()) if 0 <= t <= 2]
        assert len(ticks) >= 2, ticks
        assert all(float(t).is_integer() for t in ticks), ticks


def test_higher_layers_add_to_the_card_through_hooks(folder, tmp_path):
    """Sections, configs and files of a higher layer come through biomedica_hf.hooks (as concepts' do): a section
    after the statistics, configs before the caller's (a caller's config of the same name is dropped), files written
    before the card; without providers the card is the one `biomedica card` wrote."""
    import shutil

    from biomedica_hf import hooks
    from biomedica_hf.dataset.card import write_card

    out = tmp_path / "ds"
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("_work"))
    hook_config = {"config_name": "picked", "data_files": [{"split": "train", "path": "commercial/**/*.tar"}]}

    def section(d):
        return f"## Picked\n\n{len(folder_files(Path(d) / 'commercial', '*.tar'))} shards picked."

    def configs(d):
        return [hook_config]

    def files(d):
        (Path(d) / "card" / "picked.txt").write_text("written before the card")

    providers = ((hooks.CARD_SECTIONS, section), (hooks.CARD_CONFIGS, configs), (hooks.CARD_FILES, files))
    for group, fn in providers:
        hooks.register(group, fn)
    try:
        mine = {"config_name": "mine", "data_files": [{"split": "train", "path": "other/*.tar"}]}
        clash = {"config_name": "picked", "data_files": [{"split": "train", "path": "other/*.tar"}]}
        text = write_card(out, "biomedica/test", extra_configs=[clash, mine]).read_text()
    finally:
        for group, fn in providers:
            hooks.unregister(group, fn)
    meta = yaml.safe_load(text.split("---\n")[1])
    names = [c["config_name"] for c in meta["configs"]]
    assert names[-2:] == ["picked", "mine"]
    assert names.count("picked") == 1
    assert next(c for c in meta["configs"] if c["config_name"] == "picked")["data_files"] == hook_config["data_files"]
    n = len(folder_files(out / "commercial", "*.tar"))
    assert n > 0
    assert f"## Picked\n\n{n} shards picked.\n\n## Sample schema" in text
    assert text.index("### Shards") < text.index("## Picked")
    assert (out / "card" / "picked.txt").is_file()
    assert write_card(out, "biomedica/test").read_bytes() == (folder / "README.md").read_bytes()


def test_card_takes_the_dataset_as_a_positional_argument_like_its_siblings(folder, tmp_path):
    """Issue 27: `biomedica card DIR`, like verify / push / embed; `--out DIR` stays as the older spelling."""
    readme = folder / "README.md"
    before = readme.read_text()
    readme.unlink()
    r = subprocess.run([str(BIN), "card", str(folder), "--repo-id", "biomedica/test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert readme.read_text() == before                                   # the same card as `card --out DIR`
    same = subprocess.run([str(BIN), "card", str(folder), "--out", str(folder), "--repo-id", "biomedica/test"],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    other = tmp_path / "other"
    other.mkdir()
    both = subprocess.run([str(BIN), "card", str(folder), "--out", str(other)], capture_output=True, text=True)
    assert both.returncode == 2
    assert "two dataset folders" in both.stderr
    none = subprocess.run([str(BIN), "card"], capture_output=True, text=True)
    assert none.returncode == 2
    assert "biomedica card DATASET" in none.stderr


def test_the_duplicates_section_comes_through_the_hooks(folder):
    """Issue 29: neardup's section is a provider of hooks.CARD_QUALITY_SECTIONS (built in: no package metadata
    needed), not an import of the card; it sits after the index description, before "How it was built"."""
    from biomedica_hf import hooks
    from biomedica_hf.neardup.card import card_section

    assert card_section in hooks.providers(hooks.CARD_QUALITY_SECTIONS)
    text = (folder / "README.md").read_text()
    section = card_section(folder)
    assert section.startswith("## Duplicates and evaluation contamination\n")
    assert f"{section}\n## How it was built" in text


def test_a_failing_card_section_is_reported_not_dropped(folder, tmp_path):
    """A section whose provider fails (here: an unreadable contamination report, then a plugin that raises) stops
    the card with a one-line error naming the provider and the file; the card already there is left as it was."""
    import shutil

    from biomedica_hf import hooks
    from biomedica_hf.dataset.card import CardSectionError, write_card

    out = tmp_path / "ds"
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("_work"))
    before = (out / "README.md").read_bytes()
    report = out / "decontamination" / "report.json"
    report.parent.mkdir()
    report.write_text('{"tasks": ')                                   # cut short
    with pytest.raises(CardSectionError) as err:
        write_card(out, "biomedica/test")
    assert "biomedica_hf.neardup.card.card_section" in str(err.value)
    assert str(report) in str(err.value)
    assert (out / "README.md").read_bytes() == before
    r = subprocess.run([str(BIN), "card", str(out), "--repo-id", "biomedica/test"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert "Error: the card section of biomedica_hf.neardup.card.card_section failed" in r.stderr
    assert "Traceback" not in r.stderr

    report.unlink()

    def broken(d):
        raise KeyError("no such column")

    hooks.register(hooks.CARD_SECTIONS, broken)
    try:
        with pytest.raises(CardSectionError, match="broken failed on .*KeyError: 'no such column'"):
            write_card(out, "biomedica/test")
    finally:
        hooks.unregister(hooks.CARD_SECTIONS, broken)
    assert (out / "README.md").read_bytes() == before
    assert write_card(out, "biomedica/test").read_bytes() == before


def _yaml_header_by_datasets(out: Path, stats: dict, extra_configs: list[dict] | None = None) -> str:
    """The card's YAML as it was written through ``datasets`` (Features, DatasetInfosDict) before the card wrote
    the features itself: the reference the card's own translation must equal byte for byte."""
    import tarfile

    from datasets import Features, Value
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCardData

    from biomedica_hf.dataset.card import TAGS, TASK_CATEGORIES, card_configs
    from biomedica_hf.dataset.tables import table_config_columns
    from biomedica_hf.layout import FIGURES_INDEX, TABLE_CONFIGS
    from biomedica_hf.schema import webdataset_features

    def json_extra(patterns):
        extra = []
        for tar in (t for pattern in patterns for t in sorted(Path(out).glob(pattern))):
            with tarfile.open(tar) as tf:
                member = next((m for m in tf if m.name.endswith(".json")), None)
                meta = json.loads(tf.extractfile(member).read()) if member is not None else {}
            extra += [k for k in meta if k not in {n for n, _, _ in SAMPLE_FIELDS} and k not in extra]
        if not extra or not (Path(out) / FIGURES_INDEX).exists():
            return {}
        typed = Features.from_arrow_schema(pq.read_schema(Path(out) / FIGURES_INDEX))
        return {k: typed[k] for k in extra if k in typed}

    def features_for(config):
        name = config["config_name"]
        if name in TABLE_CONFIGS:
            row = Features.from_arrow_schema(pq.read_schema(Path(out) / TABLE_CONFIGS[name][0]))
            return Features({"__key__": Value("string"), "__url__": Value("string"),
                             "json": {c: row[c] for c in table_config_columns(out, name)}})
        paths = config["data_files"][0]["path"]
        paths = [paths] if isinstance(paths, str) else list(paths)
        if all(str(p).endswith(".tar") for p in paths):
            return webdataset_features(json_extra=json_extra(paths), labels=False)
        return None

    configs = card_configs(out, extra_configs)
    own = {c["config_name"]: c["features"] for c in configs if "features" in c}
    configs = [{k: v for k, v in c.items() if k != "features"} for c in configs]
    data = DatasetCardData(
        pretty_name=stats["pretty_name"], license="other", license_name="pmc-open-access-subset",
        license_link="https://pmc.ncbi.nlm.nih.gov/tools/openftlist/",
        task_categories=TASK_CATEGORIES, size_categories=[size_category(stats["total_samples"])],
        language=["en"], tags=TAGS, configs=configs,
    )
    infos = {}
    for c in configs:
        feats = own.get(c["config_name"]) or features_for(c)
        if feats is not None:
            infos[c["config_name"]] = DatasetInfo(features=feats, config_name=c["config_name"])
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data.to_yaml()


def test_card_yaml_is_what_datasets_writes(folder, tmp_path):
    """The features YAML is written without importing ``datasets``: byte for byte what ``datasets`` wrote, on the
    built folder, with a labelled-like shard config (extra json fields typed from figures.parquet, Arrow types of
    every kind the translator knows and one it leaves to ``datasets``), a config bringing its own Features (as
    the panels' do), one config alone, and none."""
    import io
    import shutil
    import tarfile

    import pyarrow as pa

    from biomedica_hf.dataset.card import yaml_header
    from biomedica_hf.panels.hooks import panel_features

    stats = collect_stats(folder)
    assert yaml_header(folder, stats) == _yaml_header_by_datasets(folder, stats)

    out = tmp_path / "ds"
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("_work", "*.tar"))
    shutil.copytree(folder / "commercial", out / "commercial", dirs_exist_ok=True)
    figures = pq.read_table(out / "figures.parquet")
    n = figures.num_rows
    extra = {
        "panel_type": pa.array(["x"] * n), "concepts": pa.array([["a"]] * n, pa.list_(pa.string())),
        "score": pa.array([0.5] * n, pa.float64()), "f32": pa.array([0.5] * n, pa.float32()),
        "small": pa.array([1] * n, pa.int8()), "big": pa.array([1] * n, pa.uint64()),
        "when": pa.array([0] * n, pa.timestamp("ms", tz="UTC")), "day": pa.array([0] * n, pa.date32()),
        "blob": pa.array([b"x"] * n, pa.large_binary()), "flag": pa.array([True] * n),
        "nested": pa.array([[{"a": 1, "b": ["x"]}]] * n, pa.list_(pa.struct([("a", pa.int64()),
                                                                            ("b", pa.list_(pa.string()))]))),
        "lists": pa.array([[["x"]]] * n, pa.list_(pa.list_(pa.string()))),
        "long": pa.array([[1]] * n, pa.large_list(pa.int16())),
        "box": pa.array([{"g": True}] * n, pa.struct([("g", pa.bool_())])),
        "dict": pa.array(["x"] * n).dictionary_encode(),                    # left to datasets
        "fixed": pa.array([[1, 2]] * n, pa.list_(pa.int32(), 2)),            # left to datasets
    }
    for name, col in extra.items():
        figures = figures.append_column(name, col)
    pq.write_table(figures, out / "figures.parquet")
    (out / "labelled").mkdir()
    buf = io.BytesIO(json.dumps({"key": "k", **{k: None for k in extra}, "unknown_field": 1}).encode())
    with tarfile.open(out / "labelled" / "labelled-train-000.tar", "w") as tf:
        info = tarfile.TarInfo("k.json")
        info.size = len(buf.getvalue())
        tf.addfile(info, buf)
    configs = [{"config_name": "labelled", "data_files": [{"split": "train", "path": "labelled/*.tar"}]},
               {"config_name": "panels", "data_files": [{"split": "train", "path": "labelled/*.tar"}],
                "features": panel_features()},
               {"config_name": "plain", "data_files": [{"split": "train", "path": "labelled/*.json"}]}]
    stats = collect_stats(out)
    mine = yaml_header(out, stats, configs)
    assert mine == _yaml_header_by_datasets(out, stats, configs)
    assert "timestamp[ms, tz=UTC]" in mine
    assert "large_list: int16" in mine
    assert "unknown_field" not in mine
    # one config alone is written as a mapping ("default" without its name), none leaves dataset_info out
    from datasets import Features, Value
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCardData

    from biomedica_hf.dataset.card import _dataset_info
    feats = Features({"a": Value("string")})
    for names in (["one"], ["default"], [], ["b", "a"]):
        ref = DatasetCardData()
        DatasetInfosDict({n: DatasetInfo(features=feats, config_name=n) for n in names}).to_dataset_card_data(ref)
        info = _dataset_info({n: feats._to_yaml_list() for n in names})
        assert ref.to_dict().get("dataset_info") == info
