"""Concept annotation on a real built folder: embed -> resume -> cluster -> sheets -> label -> subsets -> card.

A tiny random DINOv2-with-registers (saved with ``save_pretrained`` + a locally built
``BitImageProcessor``) goes through the same ``from_pretrained`` path as the real checkpoint.
"""
from __future__ import annotations

import hashlib
import html.parser
import io
import json
import shutil
import sys
import tarfile
import tracemalloc
from collections import Counter
from pathlib import Path

import click
import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.models import save_tiny_dinov2
from support.paths import SHARED
from PIL import Image

from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.clip.backbones import embed_images, load_image_model
from biomedica_hf.clip.device import pick_device
from biomedica_hf.clip.pixels import prepare_image
from biomedica_hf.concepts.cli import COMMANDS
from biomedica_hf.concepts.cluster import fit_clusters, iter_batches, load_cluster_model
from biomedica_hf.concepts.embed import read_info, shard_outputs
from biomedica_hf.concepts.label import AnnotationError, apply_labels, labels_extra_columns, read_annotation, validate
from biomedica_hf.concepts.sheets import COLUMNS, PAD, THUMB
from biomedica_hf.concepts.subsets import balanced_mask, build_concept_subsets, filtered_mask
from biomedica_hf.concepts.vocab import load_vocabulary
from biomedica_hf.io.atomic import save_npy, write_table
from biomedica_hf.io.tars import member_spans
from biomedica_hf.layout import folder_files, shard_group, sizes_dirs
from biomedica_hf.schema import SUBSETS

IMAGE_SIZE = 56
CLI = click.Group("biomedica", commands={c.name: c for c in COMMANDS})


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(CLI, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """One BLAS / OpenMP thread: on a shared 2-core machine OpenBLAS threads that wait for busy cores
    made the small SVDs of IncrementalPCA 15x slower (17 s instead of 1 s for the streaming test)."""
    # load the BLAS / OpenMP libraries first: threadpool_limits only limits those already loaded
    import sklearn.cluster
    import sklearn.decomposition  # noqa: F401
    import torch  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"), IMAGE_SIZE)


@pytest.fixture(scope="module")
def ds(tmp_path_factory, articles_dir) -> Path:
    out = tmp_path_factory.mktemp("concepts") / "ds"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(articles_dir)}, shard_max_samples=4,
                      progress=False))
    return out


@pytest.fixture(scope="module")
def embedded(ds, tiny_model) -> Path:
    run_cli("embed", ds, "--model", tiny_model, "--batch", 3, "--device", "auto", "--image-size", IMAGE_SIZE,
            "--no-progress")
    return ds


@pytest.fixture(scope="module")
def clustered(embedded) -> Path:
    out = run_cli("cluster", embedded, "--pca", 8, "--k", 4, "--no-progress")
    assert "k=4" in out
    return embedded


@pytest.fixture(scope="module")
def annotations(clustered, tmp_path_factory) -> list[Path]:
    """Three annotators, real taxonomy labels: agreement, a 2-1 disagreement, a 1-1 tie, no majority."""
    a = {"0": {"panel_type": "multiple", "panel_subtype": "multiple panels: images & plots",
               "global_class": ["Plots and Charts"], "local_class": ["bar plot"]},
         "1": {"panel_type": "single", "panel_subtype": "single panel", "global_class": ["Microscopy"],
               "local_class": ["light microscopy"]},
         "2": {"panel_type": "single", "panel_subtype": "single panel", "global_class": ["Clinical Imaging"],
               "local_class": ["x-ray radiography"]},
         "3": {"panel_type": "single", "panel_subtype": "single panel", "global_class": ["Illustrative Diagrams"],
               "local_class": ["flowchart"]}}
    b = json.loads(json.dumps(a))
    b["0"]["local_class"] = ["line plot"]
    b["2"].update(panel_type="multiple", panel_subtype="multiple panels: images",
                  global_class=["Clinical Imaging", "Microscopy"])
    b["3"]["local_class"] = ["diagram"]
    c = json.loads(json.dumps(a))
    c["0"] = {"panel_type": "single", "panel_subtype": "single panel", "global_class": ["Tables"],
              "local_class": ["table"]}
    c["2"] = {"panel_type": "", "panel_subtype": "", "global_class": [], "local_class": []}   # not labelled
    c["3"]["local_class"] = ["flow diagram"]
    folder = tmp_path_factory.mktemp("annotations")
    paths = []
    for name, data in (("alice", a), ("bob", b), ("carol", c)):
        paths.append(folder / f"{name}.json")
        paths[-1].write_text(json.dumps(data, indent=1))
    return paths


EXPECTED = {  # the vote for the annotations above
    0: ("multiple", ["Plots and Charts"], []),
    1: ("single", ["Microscopy"], ["light microscopy"]),
    2: ("single", ["Clinical Imaging"], ["x-ray radiography"]),
    3: ("single", ["Illustrative Diagrams"], []),
}


@pytest.fixture(scope="module")
def labelled(clustered, annotations) -> tuple[Path, dict]:
    run_cli("label", clustered, "--annotations", *annotations, "--no-subsets", "--no-card")
    return clustered, json.loads((clustered / "concepts" / "label_report.json").read_text())


# ---------------------------------------------------------------------------------------- embed
def _samples_in(tar: Path) -> int:
    with tarfile.open(tar) as tf:
        return len(tf.getmembers()) // 3


def _tar_member(tar: Path, name: str) -> bytes:
    with tarfile.open(tar) as tf:
        return tf.extractfile(name).read()


def test_embeddings_per_shard(embedded, tiny_model):
    index = pq.read_table(embedded / "figures.parquet").to_pylist()
    by_shard: dict[str, list[dict]] = {}
    for r in index:
        by_shard.setdefault(r["shard"], []).append(r)
    info = read_info(embedded)
    assert info["model"] == str(tiny_model)
    assert info["dim"] == 32
    assert info["samples"] == len(index)
    assert sorted(info["last_run"]["computed"]) == sorted(by_shard)
    assert info["last_run"]["device"] == "cpu"
    for shard, rows in by_shard.items():
        npy, keys_file, done = shard_outputs(embedded, shard)
        emb = np.load(npy)
        rows.sort(key=lambda r: r["tar_offset"])
        assert emb.dtype == np.float32
        assert emb.shape == (len(rows), 32)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
        assert pq.read_table(keys_file)["key"].to_pylist() == [r["key"] for r in rows]
        assert json.loads(done.read_text())["count"] == len(rows)
    # one sample recomputed independently: image bytes taken with tarfile, not with the byte offsets
    row = next(r for r in index if r["image_ext"] == "png")
    data = _tar_member(embedded / row["shard"], f"{row['key']}.png")
    model, processor, _ = load_image_model(str(tiny_model))
    expected = embed_images(model, processor, [prepare_image(data, IMAGE_SIZE)])[0]
    keys = pq.read_table(shard_outputs(embedded, row["shard"])[1])["key"].to_pylist()
    np.testing.assert_allclose(np.load(shard_outputs(embedded, row["shard"])[0])[keys.index(row["key"])], expected,
                               atol=1e-5)


def test_embed_resumes_only_the_unfinished_shard(embedded, tiny_model):
    shards = read_info(embedded)["last_run"]["computed"] + read_info(embedded)["last_run"]["skipped"]
    before = {s: (shard_outputs(embedded, s)[0].stat().st_mtime_ns, np.load(shard_outputs(embedded, s)[0]))
              for s in shards}
    victim = max(shards)
    shard_outputs(embedded, victim)[2].unlink()          # the completion marker
    run_cli("embed", embedded, "--model", tiny_model, "--image-size", IMAGE_SIZE, "--no-progress")
    run = read_info(embedded)["last_run"]
    assert run["computed"] == [victim]
    assert sorted(run["skipped"]) == sorted(set(shards) - {victim})
    for s in shards:
        mtime, emb = before[s]
        assert (shard_outputs(embedded, s)[0].stat().st_mtime_ns != mtime) == (s == victim)
        np.testing.assert_allclose(np.load(shard_outputs(embedded, s)[0]), emb, atol=1e-6)   # deterministic
    run_cli("embed", embedded, "--model", tiny_model, "--image-size", IMAGE_SIZE, "--no-progress")
    assert read_info(embedded)["last_run"]["computed"] == []   # everything done: nothing recomputed


def test_prepare_image_fits_and_flattens():
    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    wide = prepare_image(png(Image.new("RGB", (300, 100), (255, 0, 0))), 60, "pad")
    assert wide.size == (60, 60)
    assert wide.getpixel((30, 2)) == (255, 255, 255)
    assert wide.getpixel((30, 30)) == (255, 0, 0)
    assert prepare_image(png(Image.new("RGB", (300, 100), (255, 0, 0))), 60, "crop").getpixel((30, 2)) == (255, 0, 0)
    transparent = prepare_image(png(Image.new("RGBA", (80, 80), (0, 0, 0, 0))), 40)
    assert transparent.mode == "RGB"
    assert transparent.getpixel((20, 20)) == (255, 255, 255)
    deep = prepare_image(png(Image.fromarray(np.full((50, 50), 40000, np.uint16))), 40)
    assert deep.mode == "RGB"
    assert deep.size == (40, 40)
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match="fit"):
        prepare_image(png(Image.new("RGB", (8, 8))), 8, "stretch")


# ---------------------------------------------------------------------------------------- cluster
def test_clusters(clustered):
    model = load_cluster_model(clustered)
    clusters = pq.read_table(clustered / "concepts" / "clusters.parquet")
    index = pq.read_table(clustered / "figures.parquet", columns=["key", "shard"])
    assert sorted(clusters["key"].to_pylist()) == sorted(index["key"].to_pylist())
    assert clusters.schema.field("cluster").type == pa.int32()
    assert model.k == 4
    assert model.components.shape == (8, 32)
    assert model.centroids.shape == (4, 8)
    assert model.params["sizes"] == np.bincount(clusters["cluster"].to_numpy(), minlength=4).tolist()
    # the stored assignment is the model's own prediction from the embeddings
    for shard in set(index["shard"].to_pylist()):
        npy, keys_file, _ = shard_outputs(clustered, shard)
        labels, _ = model.predict(model.transform(np.load(npy)))
        got = dict(zip(clusters["key"].to_pylist(), clusters["cluster"].to_pylist()))
        assert [got[k] for k in pq.read_table(keys_file)["key"].to_pylist()] == labels.tolist()


# ---------------------------------------------------------------------------------------- sheets
class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]


def test_annotation_sheets(clustered):
    out = run_cli("annotation-sheets", clustered, "--per-cluster", 5, "--no-progress")
    folder = clustered / "concepts" / "sheets"
    assert str(folder / "index.html") in out
    sizes = load_cluster_model(clustered).params["sizes"]
    for c, size in enumerate(sizes):
        png = folder / f"cluster_{c:04d}.png"
        assert png.exists() == (size > 0)
        if size:
            with Image.open(png) as img:
                img.load()
                shown = min(size, 5)
                assert img.format == "PNG"
                assert img.width == PAD + COLUMNS * (THUMB + PAD)
                rows = -(-shown // COLUMNS)
                assert THUMB * rows < img.height < (THUMB + 100) * rows + 80
    parser = _Links()
    parser.feed((folder / "index.html").read_text())
    assert {f"cluster_{c:04d}.png" for c, n in enumerate(sizes) if n} <= set(parser.links)
    assert all((folder / link).is_file() for link in parser.links)     # relative links resolve
    blank = json.loads((folder / "annotations_blank.json").read_text())
    assert blank == {str(c): {"panel_type": "", "panel_subtype": "", "global_class": [], "local_class": []}
                     for c in range(4)}
    shown = json.loads((folder / "sheets.json").read_text())["shown"]
    assert [len(shown[str(c)]) for c in range(4)] == [min(n, 5) for n in sizes]


# ---------------------------------------------------------------------------------------- label
def test_majority_vote_ties_and_disagreements(labelled, annotations):
    _, report = labelled
    for c, (panel, global_, local) in EXPECTED.items():
        got = report["clusters"][str(c)]
        assert (got["panel_type"], got["global_class"], got["local_class"]) == (panel, global_, local), c
    assert report["clusters"]["2"]["annotators"] == [str(annotations[0]), str(annotations[1])]
    ties = {(t["cluster"], t["field"]): t for t in report["ties"]}
    assert ties[(2, "panel_type")]["chosen"] == "single"            # 1-1: the first annotator's answer
    assert ties[(2, "global_class")]["candidates"] == ["Microscopy"]  # 1 of 2: not a majority
    disagreements = {(d["cluster"], d["field"]) for d in report["disagreements"]}
    assert {(0, "panel_type"), (0, "global_class"), (0, "local_class"), (2, "panel_type"),
            (3, "local_class")} <= disagreements
    assert (1, "global_class") not in disagreements
    assert (1, "panel_type") not in disagreements
    assert {(n["cluster"], n["field"]) for n in report["no_majority"]} == {(0, "local_class"), (3, "local_class")}


def test_unknown_label_names_cluster_and_file(labelled, annotations, tmp_path):
    ds, _ = labelled
    bad = json.loads(annotations[1].read_text())
    bad["2"]["global_class"] = ["Plots & Charts"]
    path = tmp_path / "dave.json"
    path.write_text(json.dumps(bad))
    before = (ds / "figures.parquet").stat().st_mtime_ns
    with pytest.raises(AnnotationError) as err:
        apply_labels(ds, [annotations[0], path])
    assert "dave.json: cluster 2" in str(err.value)
    assert "Plots & Charts" in str(err.value)
    bad["2"]["global_class"] = ["Clinical Imaging"]
    bad["7"] = {"panel_type": "single", "panel_subtype": "", "global_class": [], "local_class": []}
    path.write_text(json.dumps(bad))
    with pytest.raises(AnnotationError, match="dave.json: cluster 7: no such cluster"):
        apply_labels(ds, [path])
    result = CliRunner().invoke(CLI, ["label", str(ds), "--annotations", str(path)])
    assert result.exit_code != 0
    assert "cluster 7" in result.output
    assert (ds / "figures.parquet").stat().st_mtime_ns == before     # nothing written


def test_reference_cluster_labels_validate():
    ref = SHARED / "reference" / "biomedica-taxonomy" / "cluster_labels.json"
    if not ref.exists():
        pytest.skip("reference taxonomy not found")
    assert validate(read_annotation(ref), load_vocabulary(), k=2000, name=ref.name) == []
    shipped = load_vocabulary()
    assert "Plots and Charts" in shipped.global_concepts
    assert "bar plot" in shipped.local_concepts
    assert json.loads((ref.parent / "taxonomy_collapsed_and_filtered.json").read_text()) == shipped.taxonomy


def test_labels_land_in_the_index_and_labels_table(labelled):
    ds, _ = labelled
    cluster_of = dict(zip(*pq.read_table(ds / "concepts" / "clusters.parquet", columns=["key", "cluster"])
                          .to_pydict().values()))
    figures = pq.read_table(ds / "figures.parquet")
    schema = figures.schema
    assert schema.field("concepts").type == pa.list_(pa.string()) == schema.field("local_concepts").type
    assert schema.field("panel_type").type == pa.string()
    assert schema.field("cluster").type == pa.int32()
    assert schema.names[: len(schema.names) - 5] == [f.name for f in pq.read_schema(folder_files(ds / "other", "*.parquet")[0])
                                                     if f.name not in ("cluster", "panel_type", "panel_subtype",
                                                                       "concepts", "local_concepts")] + ["caption_chars", "near_dup_of", "caption_dup_of"]
    tables = [figures, pq.read_table(ds / "concepts" / "labels.parquet")]
    tables += [pq.read_table(p) for s in ("commercial", "noncommercial", "other") for p in folder_files(ds / s, "*.parquet")]
    assert sum(t.num_rows for t in tables[2:]) == figures.num_rows
    for table in tables:
        for r in table.select(["key", "cluster", "panel_type", "concepts", "local_concepts"]).to_pylist():
            panel, global_, local = EXPECTED[cluster_of[r["key"]]]
            assert (r["cluster"], r["panel_type"], r["concepts"], r["local_concepts"]) == \
                   (cluster_of[r["key"]], panel, global_, local)
    # the index hook: an index rebuilt by the build (which never imports concepts) gets the same columns back
    from biomedica_hf import hooks
    from biomedica_hf.ingest.figures import build_figures_index
    from biomedica_hf.concepts.hooks import index_columns

    assert index_columns in hooks.providers(hooks.INDEX_COLUMNS)        # registered by `import biomedica_hf.concepts`
    assert set(labels_extra_columns(ds)) == {"cluster", "panel_type", "panel_subtype", "concepts", "local_concepts"}
    build_figures_index(ds)
    assert pq.read_table(ds / "figures.parquet").equals(figures)
    build_figures_index(ds, extra_columns={})                            # no hook: the build's own columns only
    assert pq.read_schema(ds / "figures.parquet").names == schema.names[:-5]
    with pytest.raises(ValueError, match="has 1 rows"):                  # a misaligned column is refused
        build_figures_index(ds, extra_columns={"x": pa.array([1])})
    build_figures_index(ds)
    assert pq.read_table(ds / "figures.parquet").equals(figures)


def test_labels_survive_an_update_build(labelled, articles_dir, tmp_path):
    """A real update of a labelled folder (``retry_failed``: the articles with failures are staged again and
    ``figures.parquet`` is rebuilt by the build, which never imports concepts) keeps every sample's labels:
    the concepts' index hook gives them back (without it, this test fails)."""
    ds, _ = labelled
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    columns = ["key", "cluster", "panel_type", "concepts", "local_concepts"]
    before = pq.read_table(copy / "figures.parquet", columns=columns).sort_by("key")
    written = (copy / "figures.parquet").stat().st_mtime_ns
    report = build(BuildConfig(out=copy, source="local", source_opts={"path": str(articles_dir)}, shard_max_samples=4,
                               progress=False, retry_failed=True))
    assert report.snapshot == 1
    assert report.changes.get("retried", 0) > 0
    assert (copy / "figures.parquet").stat().st_mtime_ns != written        # the build wrote a new index
    assert pq.read_table(copy / "figures.parquet", columns=columns).sort_by("key").equals(before)
    # a shard an update writes later is never labelled: its json lacks the labels the older shards' json carries
    # (made here by writing one labelled shard's json members back without them, in place); the card declares
    # the union, so every licence config still loads (an undeclared field would be refused)
    from biomedica_hf.io.tars import refill_json

    config = max(("commercial", "noncommercial", "other"), key=lambda s: len(folder_files(copy / s, "*.tar")))
    last = min(folder_files(copy / config, "*.tar"))      # the first shard of a config with several
    assert len(folder_files(copy / config, "*.tar")) > 1
    with tarfile.open(last) as tf:
        spans = [(m.offset_data, m.size, json.loads(tf.extractfile(m).read())) for m in tf if m.name.endswith(".json")]
    with open(last, "r+b") as fh:
        for at, size, meta in spans:
            fh.seek(at)
            fh.write(refill_json({k: v for k, v in meta.items() if k not in ("panel_type", "concepts",
                                                                              "local_concepts")}, size))
    members = _shard_json(copy)
    assert {"concepts" in meta for meta, _ in members.values()} == {True, False}
    from biomedica_hf.dataset.card import write_card

    write_card(copy)
    labels = {r["key"]: r for r in pq.read_table(copy / "figures.parquet", columns=columns).to_pylist()}
    for config in ("commercial", "noncommercial", "other"):
        if not folder_files(copy / config, "*.tar"):
            continue
        for row in datasets.load_dataset(str(copy), config, split="train", streaming=True):
            stamped = "concepts" in members[row["__key__"]][0]
            assert row["json"]["concepts"] == (labels[row["__key__"]]["concepts"] if stamped else None)


def _shard_json(ds: Path) -> dict[str, tuple[dict, bytes]]:
    """key -> (its json member parsed, its raw bytes), read with tarfile from every licence shard."""
    out = {}
    for tar in sorted(p for s in ("commercial", "noncommercial", "other") for p in folder_files(ds / s, "*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    raw = tf.extractfile(m).read()
                    out[m.name.removesuffix(".json")] = (json.loads(raw), raw)
    return out


def _check_shards_carry(ds: Path) -> list[dict]:
    """Every licence-shard sample's json carries its index labels; offsets, sizes and image bytes are the index's."""
    figures = pq.read_table(ds / "figures.parquet").to_pylist()
    members = _shard_json(ds)
    assert sorted(members) == sorted(r["key"] for r in figures)
    for r in figures:
        meta, _ = members[r["key"]]
        assert (meta["panel_type"], meta["concepts"], meta["local_concepts"]) == \
               (r["panel_type"], r["concepts"], r["local_concepts"]), r["key"]
        assert meta["key"] == r["key"]
        assert meta["caption"] == r["caption"]
        assert meta["split"] == r["split"]
        with open(ds / r["shard"], "rb") as fh:
            fh.seek(r["image_offset"])
            assert hashlib.sha256(fh.read(r["image_size"])).hexdigest() == r["sha256"]
            fh.seek(r["tar_offset"])
            names = [n for n, _, _ in member_spans(fh.read(r["tar_size"]))]   # the range is the whole sample
        assert sorted(n.split(".", 1)[1] for n in names) == sorted(["json", "txt", r["image_ext"]])
        assert all(n.split(".", 1)[0] == r["key"] for n in names)
    return figures


def test_labels_are_written_into_the_licence_shards_in_place(labelled, annotations, tmp_path):
    """`biomedica label` writes each sample's labels into the json member of its licence shard, in the room the
    build left: same member size, so every offset of the index stays valid and the images are untouched; a
    relabel rewrites only what changed, a rerun nothing; the licence configs of the Hub layout show the labels."""
    ds, report = labelled
    assert report["shards_stamped"]["shards"].get("stamped", 0) > 0
    assert not report["shards_stamped"]["no_room"]
    _check_shards_carry(ds)
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    tars = sorted(p for s in ("commercial", "noncommercial", "other") for p in folder_files(copy / s, "*.tar"))
    sizes = {t: t.stat().st_size for t in tars}
    before = _shard_json(copy)
    # a second round of annotations changes cluster 1's local concept only
    changed = []
    for i, path in enumerate(annotations):
        data = json.loads(path.read_text())
        data["1"]["local_class"] = ["electron microscopy"]
        changed.append(tmp_path / f"again{i}.json")
        changed[-1].write_text(json.dumps(data))
    stamped = apply_labels(copy, changed)["shards_stamped"]
    figures = _check_shards_carry(copy)
    assert {t: t.stat().st_size for t in tars} == sizes
    in_cluster_1 = {r["key"] for r in figures if r["cluster"] == 1}
    after = _shard_json(copy)
    assert in_cluster_1
    assert {k for k in after if after[k][1] != before[k][1]} == in_cluster_1
    assert all(after[k][0]["local_concepts"] == ["electron microscopy"] for k in in_cluster_1)
    assert stamped["samples_written"] == len(in_cluster_1)
    assert stamped["shards"].get("kept", 0) > 0
    from biomedica_hf.concepts.stamp import stamp_labels, stamp_shard

    again = stamp_labels(copy)
    assert again["samples_written"] == 0
    assert set(again["shards"]) == {"kept"}
    from biomedica_hf.dataset.verify import verify_folder

    checked = verify_folder(copy, deep=True)          # every shard against its stats, sizes and the index
    assert checked.ok, checked.problems

    # the licence configs of the Hub layout carry the labels, typed like figures.parquet's columns
    from biomedica_hf.dataset.card import write_card

    write_card(copy)
    by_key = {r["key"]: r for r in figures}
    for config in sorted({r["subset"] for r in figures}):
        rows = list(datasets.load_dataset(str(copy), config, split="train", streaming=True))
        assert sorted(r["__key__"] for r in rows) == sorted(k for k, r in by_key.items() if r["subset"] == config)
        for r in rows:
            src = by_key[r["__key__"]]
            assert (r["json"]["panel_type"], r["json"]["concepts"], r["json"]["local_concepts"]) == \
                   (src["panel_type"], src["concepts"], src["local_concepts"])

    # a json member cut by a crash is rebuilt from the shard's Parquet row
    victim = figures[0]
    shard_parquet = (copy / victim["shard"]).with_suffix(".parquet")
    with open(copy / victim["shard"], "r+b") as fh:
        raw = after[victim["key"]][1]
        start = fh.read().index(raw)
        fh.seek(start)
        fh.write(b"\0" * 40)
    (copy / "concepts" / "stamped" / victim["shard"].replace(".tar", "_done.json")).unlink()
    assert stamp_shard(copy, shard_parquet)["state"] == "stamped"
    assert _shard_json(copy)[victim["key"]][0] == after[victim["key"]][0]

    # labels that do not fit the room: the shard is reported and left byte for byte as it was
    table = pq.read_table(shard_parquet)
    huge = [f"local concept {i:03d} with a long name" for i in range(60)]
    rows = table.to_pylist()
    rows[0]["local_concepts"] = huge
    write_table(shard_parquet, pa.Table.from_pylist(rows, schema=table.schema))
    whole = (copy / victim["shard"]).read_bytes()
    result = stamp_shard(copy, shard_parquet)
    assert result["state"] == "no_room"
    assert result["no_room"] == 1
    assert (copy / victim["shard"]).read_bytes() == whole

    # a shard cut short is reported with its reason and the others are still stamped: one bad shard, not the run
    rows[0]["local_concepts"] = ["electron microscopy"]
    write_table(shard_parquet, pa.Table.from_pylist(rows, schema=table.schema))
    cut = max(figures, key=lambda r: r["tar_offset"])
    with open(copy / cut["shard"], "r+b") as fh:
        fh.truncate(cut["tar_offset"] + 512)
    for marker in (copy / "concepts" / "stamped").rglob("*_done.json"):
        marker.unlink()
    report = stamp_labels(copy)
    assert [f["shard"] for f in report["failed"]] == [cut["shard"]]
    assert ("ShardTruncatedError" in \
        report["failed"][0]["error"])
    assert report["shards"]["failed"] == 1
    assert report["shards"]["stamped"] == len(tars) - 1


# ---------------------------------------------------------------------------------------- subsets
def test_concept_subsets_materialise_and_load(labelled):
    ds, _ = labelled
    out = run_cli("concept-subsets", ds, "--shard-samples", 2, "--cap", 2, "--no-card")
    assert "concept-filtered" in out
    configs = build_concept_subsets(ds, shard_samples=2, cap=2)          # resumable: same tars kept
    summary = json.loads((ds / "concepts" / "subsets.json").read_text())
    assert summary["concept-filtered"]["written"] == 0 < summary["concept-filtered"]["kept"]
    # one config per selection and licence subset: a config never mixes licences
    present = {n: [s for s in SUBSETS if any(r["subset"] == s for r in pq.read_table(
        ds / "concepts" / f"{n}.parquet").to_pylist())] for n in ("concept-filtered", "concept-balanced")}
    assert len(present["concept-filtered"]) >= 2
    assert [c["config_name"] for c in configs] == [f"{s}-{n}" for n in present for s in present[n]]
    first = present["concept-filtered"][0]
    rows0 = [r for r in pq.read_table(ds / "concepts" / "concept-filtered.parquet").to_pylist() if r["subset"] == first]
    splits = [sp for sp in ("train", "validation", "test") if any(r["split"] == sp for r in rows0)]
    assert configs[0]["data_files"] == [{"split": sp, "path": f"concept-filtered/**/concept-filtered-{first}-{sp}-*.tar"}
                                        for sp in splits]
    index = pq.read_table(ds / "figures.parquet").to_pylist()
    src = {r["key"]: r for r in index}
    want_filtered = [r["key"] for r in index if "Plots and Charts" not in r["concepts"]]
    assert 0 < len(want_filtered) < len(index)
    counts = Counter(c for r in index for c in r["concepts"])
    for name in ("concept-filtered", "concept-balanced"):
        selection = pq.read_table(ds / "concepts" / f"{name}.parquet").to_pylist()
        keys = [r["key"] for r in selection]
        if name == "concept-filtered":
            assert keys == want_filtered
        else:
            got = Counter(c for k in keys for c in src[k]["concepts"])
            assert all(got[c] == min(2, n) for c, n in counts.items()), (got, counts)
        tars = folder_files(ds / name, "*.tar")
        # each copy sits in the sNNN/gNNN group of the shards it was cut from (layout.shard_group), never flat here
        assert tars
        assert (all(shard_group(t.relative_to(ds).as_posix()) == shard_group(src[r["key"]]["shard"]) != ""
                            for t in tars for r in selection if (ds / name / r["out_shard"]) == t))
        assert not list((ds / name).glob("*.tar"))
        assert len(tars) == sum(-(-n // 2) for n in Counter((r["subset"], r["split"]) for r in selection).values())
        assert len({t.name for t in tars} & {p.name for d in ds.iterdir() if d.is_dir() and d.name != name
                                             for p in folder_files(d, "*.tar")}) == 0
        seen = []
        for tar in tars:
            subset, split = tar.name.removeprefix(f"{name}-").split("-")[:2]
            assert split in ("train", "validation", "test")
            with tarfile.open(tar) as tf:
                members = tf.getmembers()
                assert len(members) % 3 == 0
                assert 0 < len(members) <= 6
                for m in members:
                    key, ext = m.name.split(".", 1)
                    assert src[key]["subset"] == subset
                    assert src[key]["split"] == split
                    if ext in ("jpg", "png"):   # byte-identical to the source shard
                        with open(ds / src[key]["shard"], "rb") as fh:
                            fh.seek(src[key]["image_offset"])
                            assert tf.extractfile(m).read() == fh.read(src[key]["image_size"])
            import webdataset as wds

            samples = list(wds.WebDataset(str(tar), shardshuffle=False))
            assert all({"txt", "json"} <= set(s) and ({"jpg", "png"} & set(s)) for s in samples)
            seen += [s["__key__"] for s in samples]
        assert sorted(seen) == sorted(keys)
        sizes = json.loads((tars[0].parent / "sizes.json").read_text())   # every shard of the dataset, these too
        assert {t.name: sizes[t.name] for t in tars} == {t.name: _samples_in(t) for t in tars}
        assert {p.name for d in sizes_dirs(ds) for p in d.glob("*.tar")} <= set(sizes)
        assert {p.name for s in SUBSETS for p in folder_files(ds / s, "*.tar")} < set(sizes)
        for r in selection:   # out_offset: where the sample starts in its copy; its json carries its labels
            with tarfile.open(ds / name / r["out_shard"]) as tf:
                tf.fileobj.seek(r["out_offset"])
                first = tarfile.TarInfo.frombuf(tf.fileobj.read(512), tarfile.ENCODING, "surrogateescape")
                assert first.name.split(".", 1)[0] == r["key"]
                meta = json.loads(tf.extractfile(f"{r['key']}.json").read())
            assert meta["concepts"] == src[r["key"]]["concepts"] == r["concepts"]
            assert meta["local_concepts"] == src[r["key"]]["local_concepts"]
            assert meta["panel_type"] == src[r["key"]]["panel_type"]

    from biomedica_hf.dataset.card import write_card

    write_card(ds, extra_configs=configs)
    readme = (ds / "README.md").read_text()
    for name in ("concept-filtered", "concept-balanced"):
        rows = []
        for subset in present[name]:
            assert f"| `{subset}-{name}` |" in readme      # the card names each config's licences
            mine = [r for sp in ("train", "validation", "test")
                    for r in (datasets.load_dataset(str(ds), f"{subset}-{name}", split=sp, streaming=True)
                              if any(d["split"] == sp for c in configs if c["config_name"] == f"{subset}-{name}"
                                     for d in c["data_files"]) else [])]
            assert mine
            assert all(r["json"]["subset"] == subset for r in mine)
            rows += mine
        selection = pq.read_table(ds / "concepts" / f"{name}.parquet", columns=["key"])["key"].to_pylist()
        assert sorted(r["__key__"] for r in rows) == sorted(selection)
        first = rows[0]
        image = first["jpg"] if first["jpg"] is not None else first["png"]
        assert image.size[0] > 0
        assert first["json"]["key"] == first["__key__"]
        assert first["txt"]
        for r in rows:   # the Hub config shows the concepts each sample was selected by
            assert r["json"]["concepts"] == src[r["__key__"]]["concepts"]
            assert r["json"]["local_concepts"] == src[r["__key__"]]["local_concepts"]
        if name == "concept-filtered":
            assert all("Plots and Charts" not in r["json"]["concepts"] for r in rows)


def test_selection_rules():
    concepts = pa.array([["A"], ["A", "B"], ["B"], [], ["C"], ["A"], ["A"], ["B"]], pa.list_(pa.string()))
    keys = [f"k{i}" for i in range(8)]
    assert filtered_mask(concepts, ["A"]).tolist() == [False, False, True, True, True, False, False, True]
    assert filtered_mask(concepts, ["A"], keep_unlabelled=False).tolist()[3] is False
    picked = balanced_mask(concepts, keys, cap=2)
    assert picked[4]
    assert picked[[1, 2, 7]].sum() == 2                    # rare C kept, B capped at 2
    assert picked[[0, 1, 5, 6]].sum() == 2                               # A capped (incl. the shared row)
    assert (balanced_mask(concepts, keys, cap=2, seed=1) == balanced_mask(concepts, keys, cap=2, seed=1)).all()


def test_label_cli_builds_subsets_and_card(labelled, annotations):
    ds, _ = labelled
    out = run_cli("label", ds, "--annotations", *annotations, "--shard-samples", 3)
    assert "concept-balanced" in out
    assert "Dataset card" in out
    readme = (ds / "README.md").read_text()
    assert "config_name: commercial-concept-filtered" in readme
    assert "card/embeddings_2d.png" in readme
    assert "config_name: concept-filtered\n" not in readme
    for name in ("concepts_global", "concepts_local", "cluster_sizes", "embeddings_2d"):
        with Image.open(ds / "card" / f"{name}.png") as img:
            assert img.format == "PNG"
            assert img.width > 400
            assert img.height > 150


def test_cli_help_texts():
    for command, expected in (("embed", ("biomedica embed DIR [--model facebook/dinov2-with-registers-large] "
                                         "[--batch N] [--device auto]")),
                              ("cluster", "biomedica cluster DIR --pca 25 --k 2000"),
                              ("annotation-sheets", "biomedica annotation-sheets DIR --per-cluster 16"),
                              ("label", "biomedica label DIR --annotations a.json b.json c.json")):
        assert expected in run_cli(command, "--help")


# ---------------------------------------------------------------------------------------- streaming fit
def _synthetic_folder(root: Path, n_shards: int, per_shard: int, dim: int, seed: int = 0) -> np.ndarray:
    """A folder with only what clustering reads: per-shard index Parquet + embedding files. Returns
    the true blob of every row: 6 well separated blobs in an 8-dimensional subspace, plus noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 8)))[0].T
    centres = rng.normal(scale=4.0, size=(6, 8))
    truth = []
    for s in range(n_shards):
        shard = f"commercial/{s:06d}.tar"
        blob = rng.integers(0, 6, per_shard)
        x = (centres[blob] + rng.normal(scale=0.3, size=(per_shard, 8))) @ basis
        x += rng.normal(scale=0.01, size=x.shape)
        keys = [f"S{s}_{i}" for i in range(per_shard)]
        write_table(root / "commercial" / f"{s:06d}.parquet", pa.table({
            "key": keys, "shard": [shard] * per_shard, "tar_offset": np.arange(per_shard, dtype=np.int64) * 1024,
            "image_offset": np.zeros(per_shard, np.int64), "image_size": np.zeros(per_shard, np.int64)}))
        npy, keys_file, done = shard_outputs(root, shard)
        save_npy(npy, x.astype(np.float32))
        write_table(keys_file, pa.table({"key": keys}))
        done.write_text("{}")
        truth.append(blob)
    return np.concatenate(truth)


def test_streaming_fit_matches_one_shot_with_bounded_memory(tmp_path):
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    n_shards, per_shard, dim = 30, 2000, 128
    truth = _synthetic_folder(tmp_path, n_shards, per_shard, dim)
    data_bytes = n_shards * per_shard * dim * 4                  # 30.7 MB of embeddings
    tracemalloc.start()
    model = fit_clusters(tmp_path, pca_dims=8, k=6, batch_size=1000, seed=0, epochs=2, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < data_bytes / 4, f"peak {peak / 1e6:.1f} MB for {data_bytes / 1e6:.1f} MB of embeddings"

    x = np.concatenate([np.load(shard_outputs(tmp_path, f"commercial/{s:06d}.tar")[0]) for s in range(n_shards)])
    one_shot = PCA(n_components=8).fit(x)
    cosines = np.linalg.svd(model.components @ one_shot.components_.T, compute_uv=False)
    assert cosines.min() > 0.999                                  # same principal subspace
    np.testing.assert_allclose(model.mean, one_shot.mean_, atol=1e-5)
    got = pq.read_table(tmp_path / "concepts" / "clusters.parquet")["cluster"].to_numpy()
    assert adjusted_rand_score(truth, got) > 0.99
    full = KMeans(n_clusters=6, n_init=3, random_state=0).fit_predict(one_shot.transform(x))
    assert adjusted_rand_score(full, got) > 0.99

    again = fit_clusters(tmp_path, pca_dims=8, k=6, batch_size=1000, seed=0, epochs=2, progress=False)
    np.testing.assert_array_equal(again.centroids, model.centroids)   # deterministic for a seed

    tracemalloc.start()                                           # the same fit in one batch: memory ~ data
    fit_clusters(tmp_path, pca_dims=8, k=6, batch_size=n_shards * per_shard, seed=0, epochs=1, progress=False)
    _, one_batch_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert one_batch_peak > data_bytes > 4 * peak


def test_batches_and_clamping(tmp_path):
    arrays = [np.arange(i * 10, i * 10 + n, dtype=np.float32).reshape(-1, 1) for i, n in enumerate((3, 0, 7, 4))]
    batches = list(iter_batches(arrays, [0, 1, 2, 3], 4))
    assert [len(b) for b in batches] == [4, 4, 6]                 # the remainder joins the last batch
    assert np.concatenate(batches).ravel().tolist() == np.concatenate(arrays).ravel().tolist()
    assert [len(b) for b in iter_batches(arrays, [3], 10)] == [4]
    _synthetic_folder(tmp_path, 1, 5, 16)
    with pytest.warns(UserWarning, match="k=10 > 5 samples"):
        model = fit_clusters(tmp_path, pca_dims=3, k=10, progress=False)
    assert model.k == 5
    assert model.params["pca_dims"] == 3


@pytest.mark.slow
def test_labelled_folder_round_trips_through_the_loopback_hub(labelled, annotations, tmp_path, monkeypatch):
    """Push a labelled folder (licence shards with labels, concept configs per licence subset, card) to the loopback
    Hub, serve what the Hub received, and read every config of the card back with `datasets`: the same samples
    as the local folder. The concept configs' sizes.json and stats go up with their tars (they were left out)."""
    import importlib.util
    import shutil

    import datasets
    import yaml
    from support.hub_server import HubServer, loopback_only, point_libraries_at
    from huggingface_hub import HfApi, constants

    from biomedica_hf.dataset.hub import plan_upload, push_folder

    spec = importlib.util.spec_from_file_location("push_hub", Path(__file__).parents[1] / "dataset" / "test_hub.py")
    push_hub = importlib.util.module_from_spec(spec)
    sys.modules["push_hub"] = push_hub              # its dataclasses look their module up
    spec.loader.exec_module(push_hub)
    ds = Path(shutil.copytree(labelled[0], tmp_path / "ds", ignore=shutil.ignore_patterns("_work")))
    run_cli("label", ds, "--annotations", *annotations, "--shard-samples", 3)
    plan = plan_upload(ds)
    assert plan.ok, plan.problems
    for name in ("concept-filtered", "concept-balanced"):
        tars = [p.relative_to(ds).as_posix() for p in folder_files(ds / name, "*.tar")]
        assert tars
        assert all(f"{Path(t).parent.as_posix()}/sizes.json" in plan.paths for t in tars)
        assert all(f"{t.removesuffix('.tar')}_stats.json" in plan.paths for t in tars)
    hub = push_hub.FakeHub()
    hub.thread.start()
    loopback_only(monkeypatch)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with monkeypatch.context() as m:
            m.setattr(constants, "HF_HUB_OFFLINE", False)
            m.setattr(constants, "ENDPOINT", hub.url)
            push_folder(ds, "bmd/labelled", api=HfApi(endpoint=hub.url, token=push_hub.TOKEN))
        files = dict(hub.repos["bmd/labelled"].branches["main"])
        commits = [len(c["body"].splitlines()) - 1 for c in hub.calls("commit")]   # header + one line per file
    finally:
        hub.server.shutdown()
    assert commits
    assert max(commits) < 100
    assert sorted(files) == plan.paths
    mirror = tmp_path / "mirror"
    for rel, data in files.items():
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(data)
    configs = yaml.safe_load((ds / "README.md").read_text().split("---")[1])["configs"]
    names = [c["config_name"] for c in configs]
    assert {"commercial-concept-filtered", "articles", "figures", "all"} <= set(names)
    local = {}
    for c in configs:
        for f in c["data_files"]:
            rows = datasets.load_dataset(str(ds), c["config_name"], split=f["split"], streaming=True)
            local[(c["config_name"], f["split"])] = sorted(r["__key__"] for r in rows)
    with HubServer({"bmd/labelled": mirror}) as server:
        point_libraries_at(server.url, monkeypatch, tmp_path / "hub_cache")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        for (name, split), keys in local.items():
            rows = list(datasets.load_dataset("bmd/labelled", name, split=split, streaming=True))
            assert sorted(r["__key__"] for r in rows) == keys and keys, (name, split)
            if name.endswith(("concept-filtered", "concept-balanced")):
                subset = name.split("-", 1)[0]
                assert all(r["json"]["subset"] == subset and "concepts" in r["json"] for r in rows)


def test_copies_follow_their_source_groups_so_no_folder_outgrows_the_source():
    """At PMC scale (3,000 partitions of one snapshot: six ``sNNN/gNNN`` groups of 500, three splits, a
    few samples per source shard), every copy of a selection lies in its source shards' group and no directory of
    the selection holds more entries (tars, their stats, ``sizes.json``) than the source group it mirrors, nor
    more than the Hub's ~5,000."""
    from biomedica_hf.concepts.subsets import plan_shards
    from biomedica_hf.layout import shard_folder

    rows = []
    for partition in range(3_000):
        split = "test" if partition % 20 == 0 else "validation" if partition % 20 == 1 else "train"
        folder = shard_folder("commercial", 0, partition)
        shard = f"{folder}/commercial-{split}-s000-p{partition:05d}-000.tar"
        rows += [{"key": f"k{partition}_{i}", "subset": "commercial", "split": split, "shard": shard,
                  "tar_size": 4096} for i in range(7)]
    selection = pa.Table.from_pylist(rows)
    planned = plan_shards(selection, shard_samples=20, prefix="concept-filtered-").to_pylist()
    assert all(shard_group(r["out_shard"]) == shard_group(r["shard"]) for r in planned)
    source_dirs = Counter(r["shard"].rsplit("/", 1)[0] for r in {r["shard"]: r for r in planned}.values())
    copies = {r["out_shard"] for r in planned}
    copy_dirs = Counter(c.rsplit("/", 1)[0] for c in copies)
    assert len(source_dirs) == len(copy_dirs) == 6
    for group, n in copy_dirs.items():
        assert 2 * n + 1 <= 3 * source_dirs[f"commercial/{group}"] + 1 <= 5_000
    assert len({c.rsplit("/", 1)[-1] for c in copies}) == len(copies)      # base names unique (sizes.json)
    runs = Counter(r["out_shard"] for r in planned)
    assert max(runs.values()) == 20
    assert sum(runs.values()) == len(rows)


def test_rerun_over_flat_copies_of_before_leaves_no_stale_flat_copy(labelled, tmp_path):
    """Copies written flat (``concept-filtered/<name>.tar``, as before the sub-folders): a re-run writes them into
    their groups, removes every flat tar, stats and ``sizes.json``, and the folder verifies and plans its push."""
    from biomedica_hf.dataset.hub import plan_upload

    ds = Path(shutil.copytree(labelled[0], tmp_path / "ds", ignore=shutil.ignore_patterns("_work")))
    build_concept_subsets(ds, shard_samples=2)
    flat = []
    for name in ("concept-filtered", "concept-balanced"):
        for f in folder_files(ds / name, "*.tar") + folder_files(ds / name, "*_stats.json"):
            f.rename(ds / name / f.name)
            flat.append(ds / name / f.name)
        for d in sorted((ds / name).glob("s*/g*")):
            (d / "sizes.json").rename(ds / name / "sizes.json")
            d.rmdir()
            d.parent.rmdir()
    assert flat
    assert all(p.exists() for p in flat)
    build_concept_subsets(ds, shard_samples=2)
    for name in ("concept-filtered", "concept-balanced"):
        assert not [p.name for p in (ds / name).iterdir() if p.is_file()]          # nothing left flat
        tars = folder_files(ds / name, "*.tar")
        assert tars
        assert all(t.parent.relative_to(ds / name).as_posix() == "s000/g000" for t in tars)
        keys = pq.read_table(ds / "concepts" / f"{name}.parquet", columns=["key"])["key"].to_pylist()
        assert sorted(k for t in tars for k in _tar_keys(t)) == sorted(keys)
    configs = build_concept_subsets(ds, shard_samples=2)
    from biomedica_hf.dataset.card import write_card

    write_card(ds, extra_configs=configs)
    plan = plan_upload(ds)
    assert plan.ok, plan.problems
    assert all(p.relative_to(ds).as_posix() in plan.paths for n in ("concept-filtered", "concept-balanced")
               for p in folder_files(ds / n, "*"))
    from biomedica_hf.dataset.verify import verify_folder

    tar = folder_files(ds / "concept-filtered", "*.tar")[0]       # verify follows the copies into their sub-folders
    sizes = tar.parent / "sizes.json"
    sizes.rename(tar.parent / "sizes.json.bak")
    with open(tar, "r+b") as fh:
        fh.truncate(tar.stat().st_size - 2048)
    problems = verify_folder(ds).problems
    rel = tar.relative_to(ds).as_posix()
    assert any(p.startswith(f"{rel}: ") for p in problems), problems
    assert f"{tar.parent.relative_to(ds).as_posix()}/sizes.json is missing or unreadable" in problems


def _tar_keys(tar: Path) -> list[str]:
    with tarfile.open(tar) as tf:
        return [m.name.split(".", 1)[0] for m in tf.getmembers() if m.name.endswith(".json")]
