"""Encoder specs, an image-only DINOv2 index, and reuse of the concept stage's DATASET/embeddings/."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from support.models import save_tiny_dinov2
from test_search_support import dataset, image_bytes

from biomedica_hf.search.encoders import load_encoders

IMAGE_SIZE = 56


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A random 2-layer DINOv2 (with registers) + image processor saved like a real checkpoint."""
    return save_tiny_dinov2(tmp_path_factory.mktemp("search-dinov2"), IMAGE_SIZE)


@pytest.mark.parametrize("spec,message", [
    ("nonsense-model", "unknown encoder"),
    ("text=minilm,sound=x", "bad encoder spec part"),
    ("image=minilm", "not an image encoder"),
])
def test_bad_specs_are_explained(spec, message):
    with pytest.raises(ValueError, match=message):
        load_encoders(spec)


def test_concept_embedder_and_search_share_one_clip_spec(tmp_path_factory, tmp_path):
    """`biomedica embed --model SPEC` takes the CLIP grammar of `biomedica eval` and `biomedica index`: the
    concept stage's vectors are the search encoder's image vectors of the fitted (white-padded) images."""
    from test_search_support import tiny_clip_dir

    from biomedica_hf.clip.pixels import prepare_image
    from biomedica_hf.concepts.embed import embed_dataset, iter_embeddings, read_info

    ds = tmp_path / "ds"
    shutil.copytree(dataset(tmp_path_factory), ds, ignore=shutil.ignore_patterns("_work"))
    spec = f"clip:local-dir:{tiny_clip_dir(tmp_path_factory)}"
    embed_dataset(ds, model=spec, image_size=IMAGE_SIZE, progress=False, device="cpu")
    assert read_info(ds)["model"] == spec
    assert read_info(ds)["dim"] == 64
    encoder = load_encoders(spec).image
    rows = {r["key"]: r for r in pq.read_table(ds / "figures.parquet").to_pylist()}
    n = 0
    for _, keys, emb in iter_embeddings(ds):
        mine = encoder.encode_images([prepare_image(image_bytes(ds, rows[k]), IMAGE_SIZE) for k in keys])
        assert np.allclose(np.asarray(emb), mine, atol=1e-5)
        n += len(keys)
    assert n == len(rows) == 23


def test_dinov2_index_reuses_concept_embeddings(tmp_path_factory, tmp_path, tiny_dinov2):
    from biomedica_hf.concepts.embed import embed_dataset, iter_embeddings
    from biomedica_hf.search.build import IndexConfig, build_search_index
    from biomedica_hf.search.engine import SearchEngine

    ds = tmp_path / "ds"
    shutil.copytree(dataset(tmp_path_factory), ds, ignore=shutil.ignore_patterns("_work"))
    embed_dataset(ds, model=str(tiny_dinov2), image_size=IMAGE_SIZE, progress=False, device="cpu")
    spec = f"image=hf:{tiny_dinov2}?image_size={IMAGE_SIZE}"
    idx = build_search_index(ds, tmp_path / "idx", IndexConfig(encoder=spec, progress=False))
    manifest = json.loads((idx / "index.json").read_text())
    assert manifest["encoder"]["image_embeddings_reused_from"] == str(ds / "embeddings")
    assert manifest["encoder"]["text"] is None
    assert set(manifest["dense"]) == {"image"}
    # the index holds exactly the concept stage's vectors, in meta.parquet order
    concept = {k: v for _, keys, emb in iter_embeddings(ds) for k, v in zip(keys, np.asarray(emb))}
    keys = pq.read_table(idx / "meta.parquet")["key"].to_pylist()
    ours = np.concatenate([np.load(p) for p in sorted((idx / "embeddings" / "image").glob("*.npy"))])
    assert np.allclose(ours, np.stack([concept[k] for k in keys]), atol=1e-6)
    # and queries are encoded the same way: every figure's image finds itself
    eng = SearchEngine(idx, threads=1)
    assert eng.available_sources() == ["bm25", "image"]
    rows = pq.read_table(ds / "figures.parquet").to_pylist()
    for r in rows[:8]:
        res = eng.search(image=image_bytes(ds, r), limit=1)
        assert res.hits[0]["key"] == r["key"]
    assert eng.search("coronavirus").sources == ["bm25"]  # image-only encoder: text goes to BM25 alone
    # without --reuse, the same vectors are computed from the shards
    again = build_search_index(ds, tmp_path / "idx2", IndexConfig(encoder=spec, progress=False, reuse_embeddings=False))
    assert json.loads((again / "index.json").read_text())["encoder"]["image_embeddings_reused_from"] is None
    theirs = np.concatenate([np.load(p) for p in sorted((again / "embeddings" / "image").glob("*.npy"))])
    assert np.allclose(theirs, ours, atol=1e-5)
