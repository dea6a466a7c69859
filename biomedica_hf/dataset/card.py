"""The dataset card: ``README.md`` with the YAML Hugging Face reads (``configs:``, ``dataset_info``
features, licence, task categories, size category, tags) and a body generated from the real
statistics of the folder, with PNG plots in ``card/``. The template is ``biomedica_hf/templates/dataset_card.md.j2``
(also at ``dataset_card/README.md.j2``). Other packages add sections, configs and plots through
:mod:`biomedica_hf.hooks` (concept labels: ``biomedica_hf.concepts.hooks``; duplicates and contamination:
``biomedica_hf.neardup.card``); this module never imports them, and a section that fails is an error naming it.

No loading script: the folder is data + YAML, which ``datasets >= 4`` loads directly::

    load_dataset(DIR, "commercial", streaming=True)   # WebDataset shards
    load_dataset(DIR, "articles")                       # articles.parquet
    load_dataset(DIR, "figures")                        # figures.parquet (the per-sample index)
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf import __version__, hooks, templates
from biomedica_hf.dataset.tables import table_config_columns, write_table_configs
from biomedica_hf.errors import BiomedicaError
from biomedica_hf.executors import frozen_heap
from biomedica_hf.io.atomic import atomic_write_bytes
from biomedica_hf.io.sizes import human_size
from biomedica_hf.io.tars import read_members
from biomedica_hf.layout import (
    ARTICLES_TABLE,
    BUILD_SUMMARY,
    CARD,
    CARD_DIR,
    FIGURES_INDEX,
    STATS_SUFFIX,
    TABLE_CONFIGS,
    data_files_glob,
    folder_files,
)
from biomedica_hf.schema import ARTICLE_FIELDS, SAMPLE_FIELDS, SUBSETS

TOP_JOURNALS = 20
MAX_SHARD_ROWS = 50
TASK_CATEGORIES = ["image-to-text", "zero-shot-image-classification", "image-feature-extraction",
                   "image-text-to-text"]
TAGS = ["biology", "medical", "biomedical", "pubmed", "pmc", "scientific-figures", "image-text", "webdataset"]


def size_category(n: int) -> str:
    """Hugging Face's size_categories bucket for n samples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((label for bound, label in bounds if n < bound), "1B<n<10B")


SPLIT_ORDER = ("train", "validation", "test")


def subsets_present(out: Path) -> list[str]:
    return [s for s in SUBSETS if folder_files(Path(out) / s, "*.tar")]


def splits_present(out: Path, subset: str) -> list[str]:
    """Splits that have shards in a subset folder (names ``<subset>-<split>-...tar``, flat or in its ``sNNN/gNNN``
    sub-folders); a folder of older, split-less shards counts as ``train``."""
    found = set()
    for p in folder_files(Path(out) / subset, "*.tar"):
        parts = p.stem.split("-")
        found.add(parts[1] if len(parts) > 2 and parts[0] == subset and parts[1] in SPLIT_ORDER else "")
    return [s for s in SPLIT_ORDER if s in found] + ([""] if "" in found else [])


def _split_files(out: Path, subsets: list[str]) -> list[dict]:
    by_split: dict[str, list[str]] = {}
    for s in subsets:
        for split in splits_present(out, s):
            glob = data_files_glob(s, f"{s}-{split}-*.tar" if split else "*.tar")   # flat and sub-folders
            by_split.setdefault(split or "train", []).append(glob)
    return [{"split": sp, "path": paths[0] if len(paths) == 1 else paths}
            for sp in SPLIT_ORDER for paths in [by_split.get(sp)] if paths]


def card_configs(out: Path, extra: list[dict] | None = None) -> list[dict]:
    """``configs:`` entries: one per subset (commercial is the default), ``all``, the tables, extras."""
    present = subsets_present(out)
    configs = [{"config_name": s, "data_files": _split_files(out, [s]),
                **({"default": True} if s == "commercial" else {})} for s in present]
    if present and "commercial" not in present:
        configs[0]["default"] = True
    if present:
        configs.append({"config_name": "all", "data_files": _split_files(out, present)})
    for table in TABLE_CONFIGS:  # WebDataset-of-JSON copies of the Parquet tables (see index.py)
        configs.append({"config_name": table, "data_files": [{"split": "train", "path": f"{table}/*.tar"}]})
    return configs + list(extra or [])


# --------------------------------------------------------------------------- features YAML
# The ``dataset_info`` features are written from the folder's Arrow schemas and the sample schema by the small
# translator below, in exactly the YAML ``datasets`` writes (``Features._to_yaml_list``; tests/dataset/test_card.py
# compares the two on real folders): importing ``datasets`` only for this cost a build about a CPU second.
# A type the translator does not know is translated by ``datasets`` itself (imported then).

#: Arrow types -> the ``dtype`` ``datasets`` gives them (``Value``)
_ARROW_DTYPES = {
    pa.null(): "null", pa.bool_(): "bool", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32",
    pa.int64(): "int64", pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
    pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64", pa.string(): "string",
    pa.large_string(): "large_string", pa.binary(): "binary", pa.large_binary(): "large_binary",
    pa.date32(): "date32", pa.date64(): "date64",
}


def _list_yaml(kind: str, inner: dict) -> dict:
    """``datasets``' short forms: ``list: string`` for a list of a plain value, ``list: [fields]`` of a struct."""
    if list(inner) in (["dtype"], ["struct"]):
        return {kind: next(iter(inner.values()))}
    return {kind: inner}


def _arrow_yaml(t: pa.DataType) -> dict:
    """One Arrow type as ``datasets`` writes its feature in the card's YAML (without the ``name``)."""
    if t in _ARROW_DTYPES:
        return {"dtype": _ARROW_DTYPES[t]}
    if pa.types.is_timestamp(t):
        return {"dtype": f"timestamp[{t.unit}" + (f", tz={t.tz}" if t.tz else "") + "]"}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _list_yaml("list" if pa.types.is_list(t) else "large_list", _arrow_yaml(t.value_type))
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_arrow_yaml(f.type)} for f in t]}
    from datasets import Features   # anything rarer: datasets' own translation

    return {k: v for k, v in Features.from_arrow_schema(pa.schema([("x", t)]))._to_yaml_list()[0].items()
            if k != "name"}


def _schema_yaml(schema: pa.Schema) -> dict[str, dict]:
    """Field name -> feature YAML of a Parquet/Arrow schema (``datasets``' ``Features.from_arrow_schema``)."""
    if schema.metadata and b"huggingface" in schema.metadata:   # features stored by datasets: its own reading
        from datasets import Features

        return {f.pop("name"): f for f in Features.from_arrow_schema(schema)._to_yaml_list()}
    return {f.name: _arrow_yaml(f.type) for f in schema}


def _type_name_yaml(name: str) -> dict:
    """A schema type name (``int32``, ``list<string>``; :func:`biomedica_hf.schema.hf_value`) as feature YAML."""
    if name.startswith("list<") and name.endswith(">"):
        return _list_yaml("list", _type_name_yaml(name[5:-1]))
    return {"dtype": name}


def _struct_yaml(fields: dict[str, dict]) -> list[dict]:
    return [{"name": n, **f} for n, f in fields.items()]


def _features_for(config: dict, out: Path) -> list[dict] | None:
    """The features YAML of one config (what :func:`biomedica_hf.schema.webdataset_features` declares for shard
    configs, the table's columns for the table configs), None when it has none."""
    name = config["config_name"]
    key_url = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    if name in TABLE_CONFIGS:
        row = _schema_yaml(pq.read_schema(Path(out) / TABLE_CONFIGS[name][0]))
        return key_url + [{"name": "json", "struct": _struct_yaml(
            {c: row[c] for c in table_config_columns(out, name)})}]
    paths = config["data_files"][0]["path"]
    paths = [paths] if isinstance(paths, str) else list(paths)
    if all(str(p).endswith(".tar") for p in paths):       # what the shards hold (webdataset_features, no labels)
        fields = {n: _type_name_yaml(t) for n, t, _ in SAMPLE_FIELDS}
        return key_url + [{"name": "jpg", "dtype": "image"}, {"name": "png", "dtype": "image"},
                          {"name": "txt", "dtype": "string"},
                          {"name": "json", "struct": _struct_yaml({**fields, **_json_extra(out, paths)})}]
    return None


def _json_extra(out: Path, patterns: list[str]) -> dict[str, dict]:
    """Fields that a config's samples carry beyond the schema's (labels: the concept configs' copies, and licence
    shards that labelling wrote them into), typed like the same columns of ``figures.parquet`` (feature YAML).

    Every shard's first sample is read (a shard's samples all have the same fields), and the union is declared:
    ``datasets`` fills a declared field a shard lacks with null, but refuses a row with an undeclared one, so a
    folder whose update added unlabelled shards beside labelled ones still loads."""
    known = {n for n, _, _ in SAMPLE_FIELDS}
    extra: list[str] = []
    for tar in (t for pattern in patterns for t in sorted(Path(out).glob(pattern))):
        first = next(read_members(tar, lambda name: name.endswith(".json")), None)    # io.tars: headers only
        meta = json.loads(first[1]) if first is not None else {}
        extra += [k for k in meta if k not in known and k not in extra]
    if not extra or not (Path(out) / FIGURES_INDEX).exists():
        return {}
    typed = _schema_yaml(pq.read_schema(Path(out) / FIGURES_INDEX))
    return {k: typed[k] for k in extra if k in typed}


def _dataset_info(features: dict[str, list[dict]]) -> dict | list | None:
    """``dataset_info`` as ``datasets``' ``DatasetInfosDict.to_dataset_card_data`` writes it: one config a mapping,
    several a list sorted by name."""
    if not features:
        return None
    if len(features) == 1:
        name, feats = next(iter(features.items()))
        return {"features": feats} if name == "default" else {"config_name": name, "features": feats}
    return [{"config_name": n, "features": features[n]} for n in sorted(features)]


def _png_encoding(media: dict) -> str:
    """How the build deflated converted PNGs (``build_summary.json`` ``media``); "" when not recorded."""
    if "png_compress_level" not in media:
        return ""
    strategy = media.get("png_strategy", "default")
    if strategy == "up-rle":
        return "the Up filter on every row, deflated with zlib's RLE strategy"
    if strategy == "up-igzip":
        return "the Up filter on every row, deflated by ISA-L's igzip at level 2"
    if strategy == "paeth-rle":
        return "libpng with the Paeth filter on every row and zlib's RLE strategy"
    if strategy == "rle":
        return "deflate with zlib's RLE strategy"
    return f"zlib level {media['png_compress_level']}" + (f", strategy {strategy}" if strategy != "default" else "")


def yaml_header(out: Path, stats: dict, extra_configs: list[dict] | None = None) -> str:
    """The YAML front matter (without the ``---`` fences)."""
    from huggingface_hub import DatasetCardData

    configs = card_configs(out, extra_configs)
    # a config may bring its own features (panel configs: their json is not a sample's); not part of the YAML entry
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
        name = c["config_name"]
        feats = own[name]._to_yaml_list() if own.get(name) else _features_for(c, out)   # own: datasets Features
        if feats is not None:
            infos[name] = feats
    info = _dataset_info(infos)
    if info is not None:
        data["dataset_info"] = info
    return data.to_yaml()


def collect_stats(out: Path) -> dict[str, Any]:
    """Everything the card says, from the files of the folder (never from memory of the build)."""
    out = Path(out)
    summary = json.loads((out / BUILD_SUMMARY).read_text()) if (out / BUILD_SUMMARY).exists() else {}
    schema_names = pq.read_schema(out / FIGURES_INDEX).names
    concepts_col = "concepts" in schema_names
    cols = ["pmcid", "subset", "license_code", "year"] + (["concepts"] if concepts_col else [])
    years: Counter = Counter()
    licenses: Counter = Counter()
    concepts: Counter = Counter()
    pmcids_with_samples = 0
    for batch in pq.ParquetFile(out / FIGURES_INDEX).iter_batches(batch_size=200_000, columns=cols):
        t = pa.Table.from_batches([batch])      # streamed: the index is never held whole
        for row in t.group_by("year").aggregate([("pmcid", "count")]).to_pylist():
            years[row["year"]] += row["pmcid_count"]
        for row in t.group_by(["license_code", "subset"]).aggregate([("pmcid", "count")]).to_pylist():
            licenses[(row["license_code"], row["subset"])] += row["pmcid_count"]
        if concepts_col:
            flat = pc.list_flatten(t["concepts"])
            for v in pc.value_counts(flat).to_pylist():
                concepts[v["values"]] += v["counts"]
    journals: Counter = Counter()
    n_articles = 0
    for batch in pq.ParquetFile(out / ARTICLES_TABLE).iter_batches(batch_size=200_000,
                                                                      columns=["journal", "n_samples"]):
        t = pa.Table.from_batches([batch])
        n_articles += t.num_rows
        has = t.filter(pc.greater(pc.fill_null(t["n_samples"], 0), 0))
        pmcids_with_samples += has.num_rows
        for row in has.group_by("journal").aggregate([("n_samples", "sum")]).to_pylist():
            journals[row["journal"] or "(unknown)"] += row["n_samples_sum"]

    subsets, shards = [], []
    for s in subsets_present(out):
        st = [json.loads(p.read_text()) for p in folder_files(out / s, f"*{STATS_SUFFIX}")]
        size = sum(x["tar_bytes"] for x in st)
        subsets.append({"name": s, "samples": sum(x["count"] for x in st), "shards": len(st), "bytes": size,
                        "size": human_size(size)})
        shards += [{"name": x["shard"], "count": x["count"], "bytes": x["tar_bytes"]} for x in st]

    ledger = summary.get("ledger", {})
    total = sum(s["samples"] for s in subsets)
    return {
        "pretty_name": "BIOMEDICA (biomedica-hf build)",
        "version": summary.get("version", __version__),
        "command": summary.get("command") or "biomedica build",
        "source": summary.get("source", "?"),
        "seed": summary.get("seed", 0),
        "shard_max_samples": summary.get("shard_max_samples", 10_000),
        "png_encoding": _png_encoding(summary.get("media") or {}),
        "built": _dt.datetime.fromtimestamp((out / BUILD_SUMMARY).stat().st_mtime, _dt.timezone.utc)
                 .strftime("%Y-%m-%d") if summary else "?",
        "subsets": subsets,
        "total_samples": total,
        "total_shards": sum(s["shards"] for s in subsets),
        "total_size": human_size(sum(s["bytes"] for s in subsets)),
        "n_articles": n_articles,
        "n_articles_with_samples": pmcids_with_samples,
        "n_duplicates": summary.get("duplicates_removed", 0),
        "n_near_duplicates": summary.get("near_duplicates_removed", 0),
        "years": [{"year": y if y is not None else "unknown", "n": n}
                  for y, n in sorted(years.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))],
        "licenses": [{"code": c, "subset": s, "n": n} for (c, s), n in licenses.most_common()],
        "journals": [{"name": j, "n": n} for j, n in journals.most_common(TOP_JOURNALS)],
        "concepts": [{"name": c, "n": n} for c, n in concepts.most_common()],
        "shards": shards[:MAX_SHARD_ROWS],
        "shards_more": max(0, len(shards) - MAX_SHARD_ROWS),
        "ledger": [{"kind": k, **v} for k, v in ledger.items()],
    }


def bar_figure(labels: list, values: list, title: str, horizontal: bool = False):
    """A matplotlib bar chart of sample counts: whole-number ticks on the count axis."""
    from matplotlib.figure import Figure     # no pyplot: no figure manager, no GUI backend (0.1 s less import)
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, max(2.5, 0.28 * len(labels) + 1)) if horizontal else (7, 3.2), dpi=110)
    ax = fig.subplots()
    if horizontal:
        ax.barh([str(x) for x in labels][::-1], values[::-1], color="#3b7dd8")
        ax.set_xlabel("samples")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.bar([str(x) for x in labels], values, color="#3b7dd8")
        ax.set_ylabel("samples")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(labels) > 12:
            ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


# What the card says about where the articles came from, per ``build_summary.json``'s ``source``.
PROVENANCE = {
    "cloud": {"pipeline": "list (PMC Cloud Service metadata) → fetch (md5-verified)",
              "access": "accessed from the PMC Cloud Service (AWS Open Data, `pmc-oa-opendata`)"},
    "legacy": {"pipeline": "list (`oa_file_list.csv`) → fetch from a mirror of PMC's legacy OA layout "
                           "(`oa_package/`)",
               "access": "obtained from a mirror of the PMC OA Subset's legacy package layout"},
    "local": {"pipeline": "read from a local folder of PMC articles (packages or extracted files; not "
                          "checksummed against PMC)",
              "access": "obtained from local copies of PMC Open Access articles"},
}
PROVENANCE_UNKNOWN = {"pipeline": "read PMC articles (source not recorded)",
                      "access": "obtained from the PMC Open Access Subset"}


def provenance(source: str | None) -> dict[str, str]:
    """The card's pipeline and data-access sentences for a build ``source`` (cloud / legacy / local)."""
    return PROVENANCE.get(source or "", PROVENANCE_UNKNOWN)


def project_url() -> str | None:
    """The project's home page from the installed package metadata (``[project.urls]``), or None."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        meta = metadata("biomedica-hf")
    except PackageNotFoundError:
        return None
    urls = [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    urls += [meta.get("Home-page") or ""]
    return next((u for u in urls if u.startswith("http") and u.rstrip("/") not in (
        "https://github.com", "http://github.com")), None)


def _plot_specs(stats: dict) -> list[tuple]:
    """(file name, labels, values, title, horizontal) of each of the card's plots."""
    return [
        ("subsets", [s["name"] for s in stats["subsets"]], [s["samples"] for s in stats["subsets"]],
         "Samples per subset", False),
        ("years", [y["year"] for y in stats["years"]], [y["n"] for y in stats["years"]],
         "Samples per publication year", False),
        ("journals", [j["name"][:45] for j in stats["journals"]], [j["n"] for j in stats["journals"]],
         f"Top {len(stats['journals'])} journals", True),
        ("licenses", [f"{x['code']} ({x['subset']})" for x in stats["licenses"]],
         [x["n"] for x in stats["licenses"]], "Samples per licence", True),
    ]


def _draw(folder: Path, name: str, labels: list, values: list, title: str, horizontal: bool) -> Path:
    import io

    fig = bar_figure(labels, values, title, horizontal)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = folder / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


class _Plots:
    """The card's plots, drawn by ``workers`` forked processes while the caller goes on (with ``workers`` > 1 on
    Linux: the build's last serial step, ~0.3-0.5 s of drawing), or drawn here and now (where ``fork`` is not the
    safe default). :meth:`wait` returns their paths."""

    def __init__(self, stats: dict, folder: Path, workers: int = 1):
        import multiprocessing as mp

        folder.mkdir(parents=True, exist_ok=True)
        specs = [(folder, *spec) for spec in _plot_specs(stats)]
        self.pool = self.pending = self.frozen = None
        self.paths: list[Path] = []
        if workers > 1 and sys.platform.startswith("linux"):     # fork (matplotlib imported once); macOS: here
            self.frozen = frozen_heap()         # the forks' collections leave the inherited objects alone
            self.frozen.__enter__()
            try:
                self.pool = mp.get_context("fork").Pool(min(workers, len(specs)))
                self.pending = self.pool.starmap_async(_draw, specs, chunksize=1)
            except BaseException:
                self._release()                 # no pool or frozen heap left behind
                raise
        else:
            self.paths = [_draw(*spec) for spec in specs]

    def _release(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        if self.frozen is not None:
            self.frozen.__exit__(None, None, None)
            self.frozen = None

    def wait(self) -> list[Path]:
        if self.pending is not None:
            try:
                self.paths = self.pending.get()
            finally:
                self.pending = None
                self._release()
        return self.paths


def make_plots(stats: dict, folder: Path, workers: int = 1) -> list[Path]:
    """PNG bar charts of the card's statistics, written atomically into ``folder`` (by ``workers`` processes)."""
    return _Plots(stats, folder, workers).wait()


def render_card(out: Path, repo_id: str | None = None, extra_configs: list[dict] | None = None,
                stats: dict[str, Any] | None = None) -> str:
    """The card's text; ``stats`` from :func:`collect_stats` when the caller already has them. Sections of higher
    layers (``hooks.CARD_SECTIONS``, e.g. concepts) come after the statistics."""
    stats = stats if stats is not None else collect_stats(out)
    return templates.render(
        templates.DATASET_CARD,
        **stats, sections=card_sections(hooks.CARD_SECTIONS, out),
        yaml=yaml_header(out, stats, extra_configs).strip(), repo=repo_id or "ORG/biomedica",
        config_names=[c["config_name"] for c in card_configs(out, extra_configs)],
        sample_fields=[{"name": n, "type": t, "doc": d} for n, t, d in SAMPLE_FIELDS],
        article_fields=[{"name": n} for n, _, _ in ARTICLE_FIELDS],
        provenance=provenance(stats.get("source")), project_url=project_url(),
        dedup_section="".join(card_sections(hooks.CARD_QUALITY_SECTIONS, out)), splits=_splits_text(out),
    )


class CardSectionError(BiomedicaError):
    """A section provider of the card (:mod:`biomedica_hf.hooks`) failed: the card is not written without it."""


def card_sections(group: str, out: Path) -> list[str]:
    """The Markdown sections of ``group``'s providers (``hooks.CARD_SECTIONS`` / ``CARD_QUALITY_SECTIONS``), empty
    ones left out. A provider that fails raises :class:`CardSectionError` naming it and the folder (a section is
    never dropped silently)."""
    found = []
    for fn in hooks.providers(group):
        try:
            section = fn(out)
        except Exception as exc:  # noqa: BLE001 - re-raised, naming the section and the folder
            raise CardSectionError(f"the card section of {fn.__module__}.{fn.__qualname__} failed on {out}: "
                                   f"{type(exc).__name__}: {exc}", "fix or remove the file it names, then run "
                                   "`biomedica card DATASET` again") from exc
        if section:
            found.append(section)
    return found


def _splits_text(out: Path) -> str:
    path = Path(out) / BUILD_SUMMARY
    fractions = json.loads(path.read_text()).get("splits", {}).get("fractions") if path.exists() else None
    return " / ".join(f"{100 * f:g}%" for f in fractions) if fractions else "not recorded"


def write_card(out: Path, repo_id: str | None = None, extra_configs: list[dict] | None = None,
               workers: int = 1) -> Path:
    """Write ``README.md`` and ``card/*.png`` into the dataset folder ``out``.

    Higher layers add configs, files and sections through :mod:`biomedica_hf.hooks` (``CARD_CONFIGS``,
    ``CARD_FILES``, ``CARD_SECTIONS``): concept annotation (``biomedica label``), when present, adds its subset
    configs, plots and section. Their configs come first; an ``extra_configs`` entry of the same name is dropped.
    ``workers`` > 1: the plots are drawn in that many forked processes while the table configs and the text are
    written (the same files; ``README.md`` last, once its plots are there).
    """
    out = Path(out)
    if not (out / FIGURES_INDEX).exists():
        raise FileNotFoundError(f"{out} has no {FIGURES_INDEX}: run `biomedica build` first")
    stats = collect_stats(out)
    plots = _Plots(stats, out / CARD_DIR, workers)
    try:
        write_table_configs(out)
        hook_configs = [c for configs in hooks.run(hooks.CARD_CONFIGS, out) for c in configs]
        names = {c["config_name"] for c in hook_configs}
        extra = hook_configs + [c for c in (extra_configs or []) if c["config_name"] not in names]
        hooks.run(hooks.CARD_FILES, out)
        text = render_card(out, repo_id, extra, stats)
    finally:
        plots.wait()
    path = out / CARD
    atomic_write_bytes(path, text.encode())
    return path


__all__ = [
    "CardSectionError",
    "card_configs",
    "card_sections",
    "collect_stats",
    "human_size",
    "make_plots",
    "render_card",
    "size_category",
    "write_card",
]
