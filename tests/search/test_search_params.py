"""The /search parameters: one set of names for GET query strings, POST forms and POST JSON; unknown names
are a 422 naming them; a gibberish query finds nothing; one hit per figure with its panels; facet names
as stored; /docs lists what the README says.

Real parts: the fixture dataset built by the pipeline, the hybrid index (real MiniLM + tiny random CLIP),
FastAPI's TestClient.
"""
from __future__ import annotations

import base64
import re

import pyarrow.parquet as pq
import pytest
from test_search_support import CONCEPTS, REPO, dataset, engine, image_bytes

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from biomedica_hf.search import Retriever
from biomedica_hf.search.app import PARAMS, create_app

GIBBERISH = "zzzzqqq xxyy"
MULTI_PANEL = ("PMC7159286", "fig3")  # Figure 3 of PMC7159286 has two <graphic>s: gr3a and gr3b


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    return TestClient(create_app(engine(tmp_path_factory, "hybrid")))


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    return pq.read_table(dataset(tmp_path_factory) / "figures.parquet").to_pylist()


def _three_ways(client, params: dict) -> list[dict]:
    """The same search as GET query string, POST form and POST JSON."""
    get = client.get("/search", params=params)
    form = client.post("/search", data=params)
    js = client.post("/search", json=params)
    out = []
    for res in (get, form, js):
        assert res.status_code == 200, res.text
        out.append(res.json())
    return out


@pytest.mark.parametrize("params", [
    {"q": "coronavirus pneumonia", "limit": 4, "offset": 1},
    {"q": "cells figure patients", "subset": ["commercial", "other"], "year_min": 2000, "year_max": 2030,
     "limit": 6},
    {"q": "mitochondria choline", "concept": ["plots and charts"], "license": ["CC BY-NC-ND"], "sources": "bm25"},
])
def test_get_form_and_json_take_the_same_parameters(client, params):
    get, form, js = _three_ways(client, params)
    assert get["results"], get
    for other in (form, js):
        assert [h["key"] for h in other["results"]] == [h["key"] for h in get["results"]]
        assert (other["total"], other["offset"], other["limit"], other["sources"]) == \
            (get["total"], get["offset"], get["limit"], get["sources"])
        assert other["query"] == get["query"]
    assert get["offset"] == params.get("offset", 0)
    assert len(get["results"]) <= params.get("limit", 10) == get["limit"]
    if "subset" in params:
        assert get["query"]["subset"] == params["subset"]
        assert {h["subset"] for h in get["results"]} <= set(params["subset"])
    if "concept" in params:  # filters are case-insensitive, results spell the concept as stored
        assert all("Plots and Charts" in h["concepts"] for h in get["results"])


def test_unknown_parameters_are_named_in_every_form(client):
    for res in (client.get("/search", params={"q": "virus", "top_k": 3}),
                client.post("/search", data={"q": "virus", "top_k": "3"}),
                client.post("/search", json={"q": "virus", "top_k": 3})):
        assert res.status_code == 422
        msg = res.json()["error"]["message"]
        assert "top_k" in msg and "'limit'" in msg and all(p in msg for p in PARAMS), msg
    # a list parameter repeated is fine; a scalar repeated is an error
    assert client.get("/search", params=[("q", "virus"), ("subset", "commercial"), ("subset", "other")]) \
        .status_code == 200
    res = client.get("/search", params=[("q", "virus"), ("limit", "3"), ("limit", "4")])
    assert res.status_code == 422
    assert "limit given more than once" in res.json()["error"]["message"]


def test_gibberish_finds_nothing(client, tmp_path_factory):
    for body in _three_ways(client, {"q": GIBBERISH}):
        assert body["total"] == 0 and body["results"] == [], body
    eng = engine(tmp_path_factory, "hybrid")
    assert eng.search("the of and").total == 0  # stopwords only: no term to match either
    # a real word still brings the dense list in, and an explicit dense source is purely semantic
    res = eng.search("coronavirus " + GIBBERISH)
    assert res.total > 0
    assert res.sources == ["bm25", "text"]
    assert eng.search(GIBBERISH, sources=["text"]).total > 0


def test_one_hit_per_figure_with_its_panels(client, rows, tmp_path_factory):
    panels = sorted((r for r in rows if (r["pmcid"], r["figure_id"]) == MULTI_PANEL), key=lambda r: r["panel_index"])
    assert [r["key"] for r in panels] == ["PMC7159286_gr3a_lrg", "PMC7159286_gr3b_lrg"]
    figures = {(r["pmcid"], r["figure_id"]) for r in rows}
    assert len(rows) == 23
    assert len(figures) == 22
    body = client.get("/search", params={"q": "onset illness patients family", "limit": 30,
                                         "sources": "text"}).json()
    keys = [h["key"] for h in body["results"]]
    assert body["total"] == 22
    assert len(keys) == 22
    assert len({(h["pmcid"], h["figure_id"]) for h in body["results"]}) == 22
    hit = next(h for h in body["results"] if (h["pmcid"], h["figure_id"]) == MULTI_PANEL)
    assert [p["key"] for p in hit["panels"]] == [r["key"] for r in panels]
    assert [p["panel_index"] for p in hit["panels"]] == [0, 1]
    assert hit["panels"][1]["image_url"] == "/figure/PMC7159286_gr3b_lrg/image"
    assert sum(k in keys for k in ("PMC7159286_gr3a_lrg", "PMC7159286_gr3b_lrg")) == 1
    single = next(h for h in body["results"] if h["key"] != hit["key"])
    assert [p["key"] for p in single["panels"]] == [single["key"]]
    # the image query for panel b finds its figure first, listed once
    img = image_bytes(dataset(tmp_path_factory), panels[1])
    res = client.post("/search", files={"image": ("q.jpg", img)}, data={"limit": "5"}).json()
    assert res["results"][0]["key"] == "PMC7159286_gr3b_lrg"
    assert [h["pmcid"] + h["figure_id"] for h in res["results"]].count("PMC7159286fig3") == 1
    # JSON takes the image as base64
    res = client.post("/search", json={"image": base64.b64encode(img).decode(), "limit": 5}).json()
    assert res["results"][0]["key"] == "PMC7159286_gr3b_lrg"
    # pages of figures tile: no figure twice across pages
    seen = []
    for offset in (0, 7, 14, 21):
        page = client.get("/search", params={"q": "onset illness patients family", "sources": "text",
                                             "offset": offset, "limit": 7}).json()
        seen += [h["key"] for h in page["results"]]
    assert seen == keys


def test_retriever_one_context_block_per_figure(tmp_path_factory):
    r = Retriever(engine(tmp_path_factory, "hybrid"), k=22, sources=["text"])
    ctx = r.context("clinical onset of illness in a family cluster with Figure 3 panels")
    assert len(ctx.passages) == 22
    assert len({(p.pmcid, p.caption) for p in ctx.passages}) == 22
    fig3 = next(p for p in ctx.passages if p.key.startswith("PMC7159286_gr3"))
    assert fig3.panels == ["PMC7159286_gr3a_lrg", "PMC7159286_gr3b_lrg"]
    text = ctx.text
    # captions keep their paragraph newlines; a passage prints the caption on one line (whitespace collapsed)
    assert "\n" in fig3.caption
    assert text.count(" ".join(fig3.caption.split())[:60]) == 1
    assert "2 panels" in text


def test_docs_and_the_search_page_agree(client):
    spec = client.get("/openapi.json").json()
    get = spec["paths"]["/search"]["get"]
    assert [p["name"] for p in get["parameters"]] == PARAMS
    limit = next(p for p in get["parameters"] if p["name"] == "limit")
    assert limit["schema"]["type"] == "integer"
    assert limit["schema"]["default"] == 10
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/x-www-form-urlencoded", "application/json"}
    for ctype in body:
        assert set(PARAMS) <= set(body[ctype]["schema"]["properties"])
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    section = (REPO / "docs" / "search.md").read_text()
    for name in PARAMS:
        assert f"`{name}`" in section, name
    assert "`top_k` → use `limit`" in section
    assert "top_k=" not in section
    # the README's curl examples are real requests
    for line in re.findall(r"curl [^\n]+", section):
        assert "127.0.0.1:8000/search" in line
    facets = client.get("/facets").json()
    assert "Plots and Charts" in facets["concept"]


def test_filter_values_follow_the_loaders_rule(client, rows):
    """Issue 27: one rule with load_biomedica. A misspelt licence or concept is a 422 naming the closest valid
    values; a valid one this index lacks finds nothing (200) with a note naming what the index has; both match
    case-insensitively."""
    from biomedica_hf import hooks
    from biomedica_hf.filters import LICENSE_CODES

    q = {"q": "cells patients figure", "sources": "bm25", "limit": 50}
    bad = client.get("/search", params={**q, "license": "CC-BY-4"})
    assert bad.status_code == 422
    assert "did you mean 'CC BY'" in bad.json()["error"]["message"]
    bad = client.post("/search", json={**q, "concept": ["Microscpy"]})
    assert bad.status_code == 422
    assert "did you mean 'Microscopy'" in bad.json()["error"]["message"]
    have = sorted({r["license_code"] for r in rows})
    absent = next(c for c in LICENSE_CODES if c not in have)
    res = client.get("/search", params={**q, "license": absent.lower()})
    assert res.status_code == 200
    assert res.json()["total"] == 0
    assert res.json()["results"] == []
    assert res.json()["notes"] == [f"license {absent!r} not in this build, which has {have}"]
    labelled = {c for cs in CONCEPTS.values() for c in cs}
    missing = sorted(hooks.concept_names() - labelled)[0]
    res = client.get("/search", params={**q, "concept": missing}).json()
    assert res["total"] == 0
    assert missing in res["notes"][0]
    assert "'Microscopy'" in res["notes"][0]
    for field, value in (("license", "CC BY"), ("concept", "Plots and Charts")):
        exact = client.get("/search", params={**q, field: value}).json()
        folded = client.get("/search", params={**q, field: value.swapcase()}).json()
        assert exact["results"]
        assert [h["key"] for h in folded["results"]] == [h["key"] for h in exact["results"]]
        assert exact["notes"] == folded["notes"] == []


def test_health_facets_and_totals_count_figures_like_the_results(client, rows):
    """The page's header ("N figures", from /health) and its facet counts count what a result is, a figure (panels
    of one <fig> are one hit): before, they counted panels (23 figures for 22 results here)."""
    figures = {(r["pmcid"], r["figure_id"]) for r in rows}
    assert len(figures) == len(rows) - 1                      # PMC7159286's Figure 3 has two panels
    health = client.get("/health").json()
    assert (health["figures"], health["panels"]) == (len(figures), len(rows))
    everything = client.get("/search", params={"q": "figure", "sources": "text", "limit": 100}).json()
    assert everything["total"] == len(everything["results"]) == health["figures"]
    facets = client.get("/facets").json()
    assert facets["total"] == sum(facets["subset"].values()) == sum(facets["license"].values()) == len(figures)
