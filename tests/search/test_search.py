"""Search: index folder, resume, hybrid ranking, filters, pagination and the web API's 4xx answers.

Real components only: the fixture dataset built by the pipeline, a tiny random open_clip model (an
identical image gives an identical vector, so an image's nearest neighbour is itself), the real
pretrained MiniLM for captions, FAISS, bm25s, FastAPI's TestClient and `biomedica index` via click.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_search_support import clip_index, dataset, engine, hybrid_index, image_bytes, tiny_clip_dir

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from biomedica_hf.search.app import Limits, create_app  # noqa: E402
from biomedica_hf.search.bm25 import document_text  # noqa: E402
from biomedica_hf.search.build import IndexConfig, build_search_index  # noqa: E402
from biomedica_hf.search.dense import choose_params  # noqa: E402
from biomedica_hf.search.fusion import rrf  # noqa: E402
from biomedica_hf.search.meta import Filters  # noqa: E402

SMALL = Limits(max_upload_bytes=350_000, max_image_pixels=2_000_000, max_query_chars=200, max_limit=20, max_depth=60)


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    return pq.read_table(dataset(tmp_path_factory) / "figures.parquet").to_pylist()


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    return TestClient(create_app(engine(tmp_path_factory, "hybrid"), SMALL))


def _png(w: int, h: int, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------- pure parts
def test_rrf_k60_order_and_ties():
    fused = rrf({"bm25": [1, 2, 3], "text": [3, 1]})
    assert [d for d, _, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[0][2] == {"bm25": 1, "text": 2}
    assert [d for d, _, _ in rrf({"a": [5, 4], "b": [4, 5]})] == [4, 5]  # tie: same best rank -> smaller id


def test_index_type_follows_size_and_budget():
    assert choose_params(10_000, 512, 1 << 30).kind == "flat"
    p = choose_params(100_000, 512, 1 << 30)
    assert p.kind == "ivf_flat"
    assert p.nlist == 512
    assert p.train_size >= 39 * p.nlist
    p = choose_params(1_000_000, 384, 512 << 20)  # 1.5 GB of float32 > 512 MB: PQ
    assert p.kind == "ivf_pq"
    assert p.factory == f"IVF{p.nlist},PQ{p.m}x4fs"
    assert p.estimated_bytes <= 512 << 20
    assert p.refine
    assert 384 % p.m == 0
    assert p.nlist == 2048
    with pytest.raises(ValueError, match="budget"):
        choose_params(10_000_000, 384, 10 << 20)


# ------------------------------------------------------------------------------------- index folder
def test_index_folder_manifest_and_metadata(tmp_path_factory, rows):
    idx = clip_index(tmp_path_factory)
    m = json.loads((idx / "index.json").read_text())
    assert m["format"] == "biomedica-search-index"
    assert m["fusion"] == {"method": "rrf", "k": 60}
    assert m["versions"]["faiss-cpu"]
    assert m["versions"]["bm25s"]
    assert m["encoder"]["joint"] is True
    assert m["encoder"]["image"]["random_weights"] is True
    assert m["dataset"]["num_figures"] == len(rows) == 23
    assert set(m["dense"]) == {"image", "caption"}
    assert all(p["kind"] == "flat" for p in m["dense"].values())
    for name in ("image.faiss", "caption.faiss", "meta.parquet", "articles.parquet", "bm25/vocab.index.json",
                 "README.md"):
        assert (idx / name).exists(), name
    meta = pq.read_table(idx / "meta.parquet")
    assert meta["key"].to_pylist() == [r["key"] for r in rows]
    assert {"title", "journal", "concepts", "references", "shard", "image_offset"} <= set(meta.column_names)
    assert "full_text" not in pq.read_schema(idx / "articles.parquet").names
    assert len(list((idx / "embeddings" / "image").glob("*.done.json"))) == 3  # 23 rows in chunks of 8


def test_index_resumes_finished_chunks(tmp_path_factory):
    """A rerun keeps every finished chunk; a chunk without its marker (killed run) is recomputed, identically."""
    ds = dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("resume") / "idx"
    spec = f"local-dir:{tiny_clip_dir(tmp_path_factory)}"
    runner = CliRunner()
    from biomedica_hf.search.cli import index_cmd

    res = runner.invoke(index_cmd, [str(ds), "--encoder", spec, "--out", str(out), "--chunk-size", "10",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "image" in res.output
    assert "Flat" in res.output
    chunks = sorted((out / "embeddings" / "image").glob("*.npy"))
    assert len(chunks) == 3
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in chunks}
    (out / "embeddings" / "image" / "000001.done.json").unlink()      # as if killed while writing chunk 1
    build_search_index(ds, out, IndexConfig(encoder=spec, chunk_size=10, progress=False))
    chunks = sorted((out / "embeddings" / "image").glob("*.npy"))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in chunks}
    assert after["000000.npy"][0] == before["000000.npy"][0]
    assert after["000002.npy"][0] == before["000002.npy"][0]
    assert after["000001.npy"][0] != before["000001.npy"][0]
    assert after["000001.npy"][1] == before["000001.npy"][1]  # same seeded model: same vectors


# ------------------------------------------------------------------------------------- ranking
def test_every_image_query_finds_its_own_figure_first(tmp_path_factory, rows):
    ds = dataset(tmp_path_factory)
    for which in ("clip", "hybrid"):
        eng = engine(tmp_path_factory, which)
        for r in rows:
            res = eng.search(image=image_bytes(ds, r), limit=3)
            assert res.sources == ["image"]
            assert res.hits[0]["key"] == r["key"], (which, r["key"])


def _distinctive_queries(rows: list[dict]) -> list[tuple[str, str]]:
    """(query of words found in one figure's caption/references and no other text, that figure's text)."""
    from biomedica_hf.search.bm25 import _tokenizer

    tok = _tokenizer()
    texts = [document_text(r["caption"], r["references"]) for r in rows]
    tokens = [set(t) for t in tok.tokenize(texts, show_progress=False, return_as="string")]
    df = Counter(t for i, ts in enumerate(tokens) for t in ts if texts.index(texts[i]) == i)  # identical texts once
    out = []
    for text, ts in zip(texts, tokens):
        unique = sorted(t for t in ts if df[t] == 1 and not t.isdigit() and len(t) > 4)
        if len(unique) >= 2:
            out.append((" ".join(unique[:3]), text))
    return out


def test_distinctive_caption_words_rank_that_figure_first(tmp_path_factory, rows):
    queries = _distinctive_queries(rows)
    assert len(queries) >= 10
    texts = [document_text(r["caption"], r["references"]) for r in rows]
    hybrid, joint = engine(tmp_path_factory, "hybrid"), engine(tmp_path_factory, "clip")
    for query, text in queries:
        res = hybrid.search(query, limit=3)            # default: bm25 + MiniLM caption vectors, fused by RRF
        assert res.sources == ["bm25", "text"]
        assert texts[res.hits[0]["row"]] == text, query
        res = joint.search(query, limit=3, sources=["bm25"])  # random CLIP text vectors carry no meaning
        assert texts[res.hits[0]["row"]] == text, query
    assert joint.search("coronavirus", limit=1).sources == ["bm25", "text", "text2image"]


def test_minilm_finds_paraphrase_without_shared_words(tmp_path_factory):
    """The dense caption list is real: a query sharing no word with the caption still finds it."""
    eng = engine(tmp_path_factory, "hybrid")
    res = eng.search("evolutionary relationship between viral genomes", limit=5, sources=["text"])
    assert any("Phylogenetic" in h["caption"] for h in res.hits[:3])


# ------------------------------------------------------------------------------------- filters, paging
def test_filters_exclude_what_they_must(tmp_path_factory, rows):
    eng = engine(tmp_path_factory, "hybrid")
    by_key = {r["key"]: r for r in rows}
    q = "figure patients cells"
    everything = eng.search(q, limit=23, depth=23)
    assert {h["subset"] for h in everything.hits} >= {"commercial", "noncommercial", "other"}
    for f, ok in [
        (Filters(subsets=["commercial"]), lambda r: r["subset"] == "commercial"),
        (Filters(subsets=["noncommercial", "commercial"]), lambda r: r["subset"] != "other"),
        (Filters(licenses=["PHE"]), lambda r: r["license_code"] == "PHE"),
        (Filters(year_min=2016), lambda r: r["year"] is not None and r["year"] >= 2016),
        (Filters(year_min=2010, year_max=2020), lambda r: r["year"] is not None and 2010 <= r["year"] <= 2020),
        (Filters(concepts=["Microscopy"]), lambda r: r["pmcid"] == "PMC7112410"),
        (Filters(subsets=["other"], concepts=["radiology"]), lambda r: r["pmcid"] == "PMC7159286"),
    ]:
        res = eng.search(q, filters=f, limit=23, depth=23)
        assert res.hits and all(ok(by_key[h["key"]]) for h in res.hits), f
        for sources in (["text"], ["bm25"]):
            assert all(ok(by_key[h["key"]]) for h in eng.search(q, filters=f, limit=23, sources=sources).hits)
    assert eng.search(q, filters=Filters(year_min=1900, year_max=1901)).total == 0
    # the image list obeys the mask too: a noncommercial figure's own image, restricted to commercial
    r = next(r for r in rows if r["subset"] == "noncommercial")
    res = eng.search(image=image_bytes(dataset(tmp_path_factory), r), filters=Filters(subsets=["commercial"]))
    assert res.hits
    assert r["key"] not in {h["key"] for h in res.hits}
    assert {h["subset"] for h in res.hits} == {"commercial"}


def test_the_search_takes_the_loaders_selection(tmp_path_factory, rows):
    """Issue 29: one ``Selection`` for the loader and the search; a ``Filters`` is the same selection, and the
    fields the search index has (exclusions, excluded concepts, a list of years) select like the loader's."""
    from biomedica_hf.filters import Selection

    eng = engine(tmp_path_factory, "hybrid")
    by_key = {r["key"]: r for r in rows}
    q = "figure patients cells"

    def keys(f) -> list[str]:
        return [h["key"] for h in eng.search(q, filters=f, limit=23, depth=23).hits]

    assert keys(Selection(subset=["noncommercial", "commercial"], years=(2010, 2020))) == \
        keys(Filters(subsets=["noncommercial", "commercial"], year_min=2010, year_max=2020))
    everything = keys(Selection(subset="all"))
    assert everything == keys(None)
    assert len({by_key[k]["subset"] for k in everything}) == 3
    years = sorted({by_key[k]["year"] for k in everything if by_key[k]["year"] is not None})[:2]
    picked = keys(Selection(subset="all", years=years))
    assert picked
    assert all(by_key[k]["year"] in years for k in picked)
    dropped = everything[:3]
    kept = keys(Selection(subset="all", exclude=dropped))
    assert kept
    assert not set(dropped) & set(kept)
    assert set(kept) < set(everything)
    no_microscopy = keys(Selection(subset="all", exclude_concepts="Microscopy"))
    assert no_microscopy
    assert all(by_key[k]["pmcid"] != "PMC7112410" for k in no_microscopy)
    with pytest.raises(ValueError, match="cannot filter on min_caption_chars, split"):
        eng.search(q, filters=Selection(subset="all", min_caption_chars=10, split="test"))


def test_pagination_pages_tile_the_ranking(client):
    full = client.get("/search", params={"q": "patients virus cells figure", "limit": 20}).json()
    assert full["total"] >= 20
    keys = []
    for offset in range(0, 20, 6):
        page = client.get("/search", params={"q": "patients virus cells figure", "offset": offset, "limit": 6}).json()
        assert page["offset"] == offset
        assert page["total"] == full["total"]
        keys += [h["key"] for h in page["results"]]
        assert [h["rank"] for h in page["results"]] == list(range(offset + 1, offset + 1 + len(page["results"])))
    assert keys[:20] == [h["key"] for h in full["results"]]
    assert len(set(keys)) == len(keys)


# ------------------------------------------------------------------------------------- API
def test_search_api_get_and_post(client, tmp_path_factory, rows):
    res = client.get("/search", params={"q": "coronavirus", "subset": "other", "limit": 5})
    assert res.status_code == 200
    body = res.json()
    assert body["sources"] == ["bm25", "text"]
    assert body["query"]["subset"] == ["other"]
    hit = body["results"][0]
    assert hit["subset"] == "other"
    assert hit["image_url"] == f"/figure/{hit['key']}/image"
    assert hit["pmc_url"] == f"https://pmc.ncbi.nlm.nih.gov/articles/{hit['pmcid']}/"
    assert set(hit["ranks"]) <= {"bm25", "text"}
    assert hit["title"]
    # the smallest commercial image (the build's shuffle decides which row comes first; this one is chosen)
    r = min((r for r in rows if r["subset"] == "commercial"), key=lambda r: r["image_size"])
    assert r["image_size"] <= SMALL.max_upload_bytes
    assert r["width"] * r["height"] <= SMALL.max_image_pixels
    data = image_bytes(dataset(tmp_path_factory), r)
    res = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"limit": "2"})
    assert res.status_code == 200, res.text
    assert res.json()["results"][0]["key"] == r["key"]
    assert res.json()["sources"] == ["image"]
    res = client.post("/search", files={"image": ("q.png", data, "image/png")},
                      data={"q": "virus", "subset": ["commercial", "other"], "year_max": "2030"})
    assert res.status_code == 200
    assert res.json()["sources"] == ["bm25", "text", "image"]


def test_figure_article_health_docs(client, tmp_path_factory, rows):
    from PIL import Image

    r = rows[0]
    fig = client.get(f"/figure/{r['key']}").json()
    assert fig["caption"] == r["caption"]
    assert fig["article"]["pmcid"] == r["pmcid"]
    assert fig["article"]["title"]
    import base64

    inline = client.get(f"/figure/{r['key']}", params={"include_image": "true"}).json()["image"]
    assert hashlib.sha256(base64.b64decode(inline["base64"])).hexdigest() == r["sha256"]
    img = client.get(f"/figure/{r['key']}/image")
    assert img.status_code == 200
    assert img.headers["content-type"] in ("image/png", "image/jpeg")
    assert hashlib.sha256(img.content).hexdigest() == r["sha256"]
    thumb = client.get(f"/figure/{r['key']}/image", params={"size": 64})
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 64
    art = client.get(f"/article/{r['pmcid']}").json()
    assert art["pmcid"] == r["pmcid"]
    assert r["key"] in [f["key"] for f in art["figures"]]
    assert "full_text" not in art
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["dataset_available"]
    assert (health["figures"], health["panels"]) == (22, 23)   # PMC7159286's Figure 3 has two panels
    facets = client.get("/facets").json()
    assert facets["subset"]["other"] >= 1
    assert facets["concept"]["Microscopy"] == 4
    assert facets["concept"]["Plots and Charts"] == 4
    assert "plots and charts" not in facets["concept"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/figure/{key}", "/figure/{key}/image", "/article/{pmcid}", "/health"} <= set(paths)
    assert "post" in paths["/search"]
    assert "get" in paths["/search"]
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="q"' in page.text


@pytest.mark.parametrize("method,path,kwargs,status,pattern", [
    ("get", "/search", {}, 422, r"empty query: give q"),
    ("get", "/search", {"params": {"q": "virus", "top_k": 3}}, 422, r"unknown parameter\(s\) top_k .*'limit'"),
    ("post", "/search", {"data": {"text": "virus"}}, 422, r"unknown parameter\(s\) text in the form .*'q'"),
    ("post", "/search", {"json": {"q": "virus", "topk": 3, "x": 1}}, 422, r"unknown parameter\(s\) topk, x in the JSON"),
    ("post", "/search", {"json": {"q": "virus", "limit": "many"}}, 422, r"limit: Input should be a valid integer"),
    ("post", "/search", {"json": ["virus"]}, 422, r"JSON body must be an object"),
    ("post", "/search", {"content": b"q=virus", "headers": {"content-type": "text/plain"}}, 415, r"content type"),
    ("get", "/search", {"params": {"q": "x" * 201}}, 422, r"exceeds the limit of 200"),
    ("get", "/search", {"params": {"q": "virus", "limit": 21}}, 422, r"limit"),
    ("get", "/search", {"params": {"q": "virus", "limit": 0}}, 422, r"limit"),
    ("get", "/search", {"params": {"q": "virus", "offset": 50, "limit": 20}}, 422, r"offset \+ limit must be <= 60"),
    ("get", "/search", {"params": {"q": "virus", "offset": -1}}, 422, r"offset"),
    ("get", "/search", {"params": {"q": "virus", "year_min": 2020, "year_max": 2000}}, 422, r"year_min"),
    ("get", "/search", {"params": {"q": "virus", "year_min": "soon"}}, 422, r"year_min"),
    ("get", "/search", {"params": {"q": "virus", "subset": "secret"}}, 422, r"unknown subset"),
    ("get", "/search", {"params": {"q": "virus", "sources": "magic"}}, 400, r"unknown source"),
    ("get", "/search", {"params": {"q": "virus", "sources": "image2text"}}, 400, r"not available"),
    ("get", "/search", {"params": {"q": "virus", "sources": "image"}}, 400, r"need a image query"),
    ("post", "/search", {"data": {"limit": "3"}}, 422, r"empty query"),
    ("post", "/search", {"data": {"q": "   "}}, 422, r"empty query"),
    ("post", "/search", {"json": {"q": ""}}, 422, r"empty query"),
    ("post", "/search", {"files": {"image": ("a.txt", b"just some text", "text/plain")}}, 415, r"not a JPEG"),
    ("post", "/search", {"files": {"image": ("a.png", _png(2000, 1500), "image/png")}}, 413, r"pixels exceeds"),
    ("post", "/search", {"files": {"image": ("a.bin", b"\0" * 400_000, "image/png")}}, 413, r"exceeds the limit"),
    ("post", "/search", {"files": {"image": ("a.png", _png(50, 50)[:60], "image/png")}}, 400, r"cannot decode"),
    ("get", "/figure/NOPE_fig1", {}, 404, r"no figure"),
    ("get", "/figure/NOPE_fig1/image", {}, 404, r"no figure"),
    ("get", "/figure/{key}/image", {"params": {"size": 5000}}, 422, r"size"),
    ("get", "/article/PMC0000000", {}, 404, r"no article"),
    ("get", "/no/such/route", {}, 404, r"Not Found"),
])
def test_bad_requests_get_json_4xx(client, rows, method, path, kwargs, status, pattern):
    res = getattr(client, method)(path.replace("{key}", rows[0]["key"]), **kwargs)
    assert res.status_code == status, res.text
    body = res.json()
    assert body["error"]["status"] == status
    assert body["error"]["code"]
    assert re.search(pattern, body["error"]["message"]), body


def test_streamed_oversized_body_is_rejected(client):
    """No Content-Length (chunked upload): the body is counted as it arrives."""
    def chunks():
        yield (b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield b"x" * 16_384
    res = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert res.status_code == 413
    assert res.json()["error"]["code"] == "payload_too_large"


def test_engine_loads_without_dataset_but_images_are_503(tmp_path_factory, tmp_path):
    import shutil

    from biomedica_hf.search.engine import SearchEngine

    idx = tmp_path / "moved_index"
    shutil.copytree(hybrid_index(tmp_path_factory), idx)
    manifest = json.loads((idx / "index.json").read_text())
    manifest["dataset"].update(path=str(tmp_path / "gone"), relpath="../gone")
    (idx / "index.json").write_text(json.dumps(manifest))
    eng = SearchEngine(idx, encoders=engine(tmp_path_factory, "hybrid").encoders)
    c = TestClient(create_app(eng))
    key = eng.meta.table["key"][0].as_py()
    assert c.get("/search", params={"q": "virus"}).status_code == 200
    res = c.get(f"/figure/{key}/image")
    assert res.status_code == 503
    assert "serve --dataset" in res.json()["error"]["message"]
    assert c.get("/health").json()["dataset_available"] is False


def test_encoder_mismatch_is_refused(tmp_path_factory):
    from biomedica_hf.search.encoders import load_encoders
    from biomedica_hf.search.engine import SearchEngine

    other = load_encoders("minilm")  # text side differs from the CLIP index's text tower
    with pytest.raises(ValueError, match="fingerprint"):
        SearchEngine(clip_index(tmp_path_factory), encoders=other)


def test_bm25_vectors_identical_after_reload(tmp_path_factory):
    """BM25 scores survive save/load (memory-mapped), and the dense vectors match the saved chunks."""
    from biomedica_hf.search.bm25 import BM25Index

    idx = hybrid_index(tmp_path_factory)
    eng = engine(tmp_path_factory, "hybrid")
    loaded = BM25Index.load(idx / "bm25", mmap=False)
    a, b = eng.bm25.search("coronavirus pneumonia", 10), loaded.search("coronavirus pneumonia", 10)
    assert np.array_equal(a[1], b[1])
    assert np.allclose(a[0], b[0])
    vecs = np.concatenate([np.load(p) for p in sorted((idx / "embeddings" / "caption").glob("*.npy"))])
    assert vecs.shape == (23, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)


def test_concurrent_requests_on_a_real_uvicorn_server(tmp_path_factory, rows):
    """40 mixed text / image requests from 8 threads against uvicorn on 127.0.0.1: all answered, same
    rankings as one at a time."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import uvicorn
    from test_search_support import free_port

    app = create_app(engine(tmp_path_factory, "hybrid"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        ds = dataset(tmp_path_factory)
        jobs = [("text", q) for q in ("coronavirus", "texture", "mitochondria", "neurons", "phylogenetic")] + \
               [("image", r["key"]) for r in rows[:3]]

        def run(job):
            kind, value = job
            with httpx.Client(base_url=base, timeout=30) as c:
                if kind == "text":
                    res = c.get("/search", params={"q": value, "limit": 5})
                else:
                    r = next(r for r in rows if r["key"] == value)
                    res = c.post("/search", files={"image": ("q.img", image_bytes(ds, r))}, data={"limit": "5"})
            assert res.status_code == 200, res.text
            return job, [h["key"] for h in res.json()["results"]]

        sequential = dict(run(j) for j in jobs)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, jobs * 5))
        assert len(results) == 40
        assert all(keys == sequential[job] for job, keys in results)
        assert all(sequential[("image", r["key"])][0] == r["key"] for r in rows[:3])
    finally:
        server.should_exit = True
        thread.join(10)
