"""PubMed enrichment against a real loopback HTTP server that answers like efetch.

The server answers with the real PubmedArticle record of the fixture (PMID 29768149, byte-exact);
other numeric PMIDs are served as copies of that record with the PMID replaced and the title and
first abstract section tagged with the PMID, so joins can be checked. PMIDs in ``server.missing``
are left out of the answer, as NCBI does for unknown ids.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.efetch_server import (  # noqa: F401 - pytest fixtures
    FIXTURE_NAME,
    REAL,
    EfetchServer,
    FixtureXML,
    fixture_path,
    fixture_xml,
    make_client,
    rec,
    server,
)

from biomedica_hf.dataset.enrich import (
    EnrichReport,
    EutilsClient,
    EutilsHTTPError,
    EutilsRetryError,
    PubmedCache,
    PubmedParseError,
    enrich_articles_parquet,
    enrich_records,
    normalize_pmid,
    parse_pubmed_xml,
)
from biomedica_hf.schema import ARTICLE_FIELDS, arrow_schema


def test_parse_real_record(fixture_path, fixture_xml):
    recs = parse_pubmed_xml(fixture_path.read_bytes())
    # keyed by MedlineCitation/PMID, not by the PMIDs of CommentsCorrections (29768146, 30242404)
    assert list(recs) == [REAL]
    r = recs[REAL]
    assert r.title == "Inhaled Combined Budesonide-Formoterol as Needed in Mild Asthma."
    assert r.journal == "The New England journal of medicine"
    assert r.year == 2018
    assert r.doi == "10.1056/NEJMoa1715274"
    assert r.status == "MEDLINE"
    assert not r.is_book
    assert len(r.mesh_terms) == 23
    assert r.mesh_terms[:3] == ["Administration, Inhalation", "Adolescent", "Adult"]
    for term in ("Asthma", "Budesonide", "Terbutaline", "Formoterol Fumarate", "Humans", "Young Adult"):
        assert term in r.mesh_terms
    assert "Bronchodilator Agents" in r.mesh_terms          # MeSH, not the ChemicalList
    assert r.mesh_major == ["Asthma", "Bronchodilator Agents", "Budesonide",
                            "Formoterol Fumarate", "Terbutaline"]
    assert "Asthma/drug therapy" in r.mesh_qualified
    assert "Glucocorticoids/administration & dosage" in r.mesh_qualified
    assert r.publication_types == [
        "Clinical Trial, Phase III", "Comparative Study", "Journal Article", "Multicenter Study",
        "Randomized Controlled Trial", "Research Support, Non-U.S. Gov't"]
    lines = r.abstract.split("\n")
    assert [ln.split(":")[0] for ln in lines] == ["BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"]
    assert lines[0] == ("BACKGROUND: In patients with mild asthma, as-needed use of an inhaled "
                        "glucocorticoid plus a fast-acting β2-agonist may be an alternative to "
                        "conventional treatment strategies.")
    assert "200 μg of budesonide and 6 μg of formoterol" in lines[1]
    assert lines[3].endswith("(Funded by AstraZeneca; SYGMA 1 ClinicalTrials.gov number, NCT02149199 .).")
    assert r.keywords == []
    # the server's copies are the same record under another PMID
    assert parse_pubmed_xml(fixture_xml.header + b"<PubmedArticleSet>" + fixture_xml.real_record
                            + b"</PubmedArticleSet>")[REAL] == r


def test_parse_is_safe_against_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE PubmedArticleSet [
  <!ENTITY xxe SYSTEM "{secret.as_uri()}">
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<PubmedArticleSet><PubmedArticle><MedlineCitation Status="MEDLINE"><PMID>1</PMID><Article>
<ArticleTitle>T &xxe; &lol2;</ArticleTitle>
<Abstract><AbstractText>Plain &xxe;text.</AbstractText></Abstract>
</Article></MedlineCitation></PubmedArticle></PubmedArticleSet>""".encode()
    r = parse_pubmed_xml(xml)["1"]
    assert "TOPSECRET" not in r.title + r.abstract
    assert "lol" not in r.title
    assert r.abstract == "Plain text."


def test_parse_book_delete_error_and_empty():
    xml = b"""<?xml version="1.0"?>
<PubmedArticleSet>
<PubmedBookArticle><BookDocument><PMID Version="1">20301295</PMID>
  <Book><BookTitle>GeneReviews</BookTitle><PubDate><Year>1993</Year></PubDate></Book>
  <ArticleTitle>Alpha-Thalassemia</ArticleTitle>
  <Abstract><AbstractText Label="CLINICAL CHARACTERISTICS">Two <i>clinically</i> significant forms.</AbstractText>
  <AbstractText>Unlabelled part.</AbstractText><CopyrightInformation>(c) UW</CopyrightInformation></Abstract>
  <PublicationType UI="D016454">Review</PublicationType>
  <KeywordList><Keyword>HBA1</Keyword></KeywordList>
</BookDocument><PubmedBookData><ArticleIdList><ArticleId IdType="pubmed">20301295</ArticleId></ArticleIdList></PubmedBookData>
</PubmedBookArticle>
<DeleteCitation><PMID Version="1">12345</PMID></DeleteCitation>
<PubmedArticle><MedlineCitation><PMID>7</PMID><Article><ArticleTitle>No abstract</ArticleTitle>
<Journal><JournalIssue><PubDate><MedlineDate>1998 Dec-1999 Jan</MedlineDate></PubDate></JournalIssue></Journal>
</Article><KeywordList Owner="NOTNLM"><Keyword>alpha</Keyword><Keyword>alpha</Keyword></KeywordList>
</MedlineCitation></PubmedArticle>
</PubmedArticleSet>"""
    recs = parse_pubmed_xml(xml)
    assert set(recs) == {"20301295", "7"}
    book = recs["20301295"]
    assert book.is_book
    assert book.title == "Alpha-Thalassemia"
    assert book.year == 1993
    assert book.abstract == "CLINICAL CHARACTERISTICS: Two clinically significant forms.\nUnlabelled part."
    assert book.publication_types == ["Review"]
    assert book.keywords == ["HBA1"]
    assert book.mesh_terms == []
    assert recs["7"].year == 1998
    assert recs["7"].abstract == ""
    assert recs["7"].keywords == ["alpha"]
    assert parse_pubmed_xml(b"") == {}
    assert parse_pubmed_xml(b"  \n") == {}
    with pytest.raises(PubmedParseError, match="Empty id list"):
        parse_pubmed_xml(b"<eFetchResult><ERROR>Empty id list - nothing todo</ERROR></eFetchResult>")
    with pytest.raises(PubmedParseError):
        parse_pubmed_xml(b'{"error": "API rate limit exceeded"}')


def test_normalize_pmid():
    assert normalize_pmid(" 29768149 ") == "29768149"
    assert normalize_pmid(29768149) == "29768149"
    assert normalize_pmid("29768149.0") == "29768149"
    for bad in (None, "", "  ", "PMC123", "0", "12a", True):
        assert normalize_pmid(bad) is None


def test_default_rate_and_env(monkeypatch):
    monkeypatch.delenv("NCBI_API_KEY", raising=False)
    monkeypatch.setenv("NCBI_EMAIL", "someone@example.org")
    c = EutilsClient()
    assert c.rate == 3
    assert c.api_key is None
    assert c.email == "someone@example.org"
    monkeypatch.setenv("NCBI_API_KEY", "abc123")
    c = EutilsClient()
    assert c.rate == 10
    assert c.api_key == "abc123"
    assert "abc123" not in repr(c)
    assert EutilsClient(rate=5).rate == 5


# --------------------------------------------------------------------------------------------
# against the server
# --------------------------------------------------------------------------------------------


def test_efetch_params_get_and_post(server):
    client = make_client(server, api_key="KEY", email="me@example.org")
    data = client.efetch_pubmed([REAL, "5"])
    assert set(parse_pubmed_xml(data)) == {REAL, "5"}
    hit = server.efetch_hits[-1]
    assert hit.method == "POST"
    assert hit.params == {"db": "pubmed", "retmode": "xml", "id": f"{REAL},5", "tool": "biomedica-hf",
                          "email": "me@example.org", "api_key": "KEY"}
    get = make_client(server, method="GET")
    assert REAL in parse_pubmed_xml(get.efetch_pubmed([REAL]))
    assert server.efetch_hits[-1].method == "GET"
    assert server.efetch_hits[-1].ids == [REAL]
    with pytest.raises(ValueError):
        client.efetch_pubmed([str(i) for i in range(1, 202)])


def test_join_by_pmid_not_position(server, tmp_path):
    server.order = "reverse"
    records = [rec("11"), rec(REAL), rec("22", abstract="Kept abstract."), rec(None), rec("")]
    report = enrich_records(records, make_client(server), tmp_path / "cache", progress=False)
    assert server.efetch_hits[0].ids == ["11", REAL, "22"]
    assert records[0]["abstract"].startswith("BACKGROUND: [11] In patients")
    assert records[1]["abstract"].startswith("BACKGROUND: In patients with mild asthma")
    assert records[2]["abstract"] == "Kept abstract."                 # not empty: kept
    assert all("Asthma" in r["mesh_terms"] for r in records[:3])
    assert records[2]["publication_types"][-1] == "Research Support, Non-U.S. Gov't"
    assert records[3]["mesh_terms"] == []
    assert records[3]["abstract"] == ""
    assert (report.n_records, report.n_with_pmid, report.n_without_pmid) == (5, 3, 2)
    assert (report.n_fetched, report.n_cached, report.n_enriched, report.n_filled_abstract) == (3, 0, 3, 2)
    assert report.ok
    assert report.missing == []
    assert "3 fetched" in str(report)


def test_batches_of_at_most_200(server, tmp_path):
    pmids = [str(1000 + i) for i in range(450)]
    records = [rec(p) for p in pmids] + [rec(pmids[0])]          # a duplicate PMID: fetched once
    report = enrich_records(records, make_client(server), tmp_path / "c", batch_size=500,
                            progress=False)                        # clamped to 200
    sizes = [len(h.ids) for h in server.efetch_hits]
    assert sizes == [200, 200, 50]
    assert [p for h in server.efetch_hits for p in h.ids] == pmids
    assert report.n_requests == 3
    assert report.n_fetched == 450
    assert report.n_enriched == 451
    assert all(r["abstract"].startswith(f"BACKGROUND: [{r['pmid']}]") for r in records)
    server.hits.clear()
    enrich_records([rec(str(5000 + i)) for i in range(30)], make_client(server), tmp_path / "c",
                   batch_size=7, progress=False)
    assert [len(h.ids) for h in server.efetch_hits] == [7, 7, 7, 7, 2]


def test_rate_limit_respected_across_threads(server):
    client = make_client(server, rate=5)
    threads = [threading.Thread(target=lambda: [client.efetch_pubmed([REAL]) for _ in range(2)])
               for _ in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = sorted(h.t for h in server.efetch_hits)
    assert len(stamps) == 6
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.2 - 0.03, gaps
    assert stamps[-1] - stamps[0] >= 1.0 - 0.05
    # never more than 5 requests in any 1-second window (less a little arrival jitter)
    assert all(sum(1 for s in stamps if a <= s < a + 0.95) <= 5 for a in stamps)
    assert time.monotonic() - t0 < 3


def test_second_run_uses_cache_only(server, tmp_path):
    cache = tmp_path / "cache"
    records = [rec(REAL), rec("31"), rec("32")]
    first = enrich_records(records, make_client(server), cache, progress=False)
    assert first.n_fetched == 3
    assert len(server.efetch_hits) == 1
    server.hits.clear()
    again = [rec(REAL), rec("31"), rec("32")]
    second = enrich_records(again, make_client(server), cache, progress=False)
    assert server.hits == []                                      # zero requests
    assert (second.n_cached, second.n_fetched, second.n_requests) == (3, 0, 0)
    assert again == records
    # a new PMID: only it is fetched
    third = enrich_records(again + [rec("33")], make_client(server), cache, progress=False)
    assert [h.ids for h in server.efetch_hits] == [["33"]]
    assert (third.n_cached, third.n_fetched) == (3, 1)
    with PubmedCache(cache) as c:
        assert len(c) == 4
        assert c.get(REAL).mesh_terms[4] == "Asthma"
        assert (cache / "pubmed.sqlite").is_file()


def test_missing_pmids_reported_and_refreshed(server, tmp_path):
    server.missing = {"999999", "888888"}
    cache = tmp_path / "cache"
    records = [rec(REAL), rec("999999"), rec("888888")]
    r1 = enrich_records(records, make_client(server), cache, progress=False)
    assert r1.missing == ["888888", "999999"]
    assert r1.n_fetched == 1
    assert r1.ok
    assert records[1]["abstract"] == ""
    server.hits.clear()
    r2 = enrich_records(records, make_client(server), cache, progress=False)
    assert server.hits == []
    assert r2.missing == ["888888", "999999"]   # reported, not refetched
    with PubmedCache(cache) as c:
        assert c.missing() == ["888888", "999999"]
    server.missing = {"888888"}                                   # NCBI now has 999999
    r3 = enrich_records(records, make_client(server), cache, refresh="missing", progress=False)
    assert [h.ids for h in server.efetch_hits] == [["999999", "888888"]]
    assert r3.missing == ["888888"]
    assert r3.n_fetched == 1
    assert r3.n_cached == 1
    assert records[1]["abstract"].startswith("BACKGROUND: [999999]")


def test_429_500_timeout_drop_recovered(server):
    server.faults.extend(["429", "500", "timeout", "drop", "502"])
    server.sleep = 1.0
    client = make_client(server, timeout=0.4, rate=50)
    t0 = time.monotonic()
    recs = parse_pubmed_xml(client.efetch_pubmed([REAL]))
    assert recs[REAL].mesh_terms[4] == "Asthma"
    hits = server.efetch_hits
    assert [h.fault for h in hits] == ["429", "500", "timeout", "drop", "502", None]
    assert all(h.ids == [REAL] for h in hits)
    assert hits[1].t - hits[0].t >= 0.95                          # Retry-After: 1 honoured
    assert client.n_requests == 6
    assert time.monotonic() - t0 < 5


def test_client_errors_not_retried(server):
    client = make_client(server)
    server.faults.append("400")
    with pytest.raises(EutilsHTTPError) as ei:
        client.efetch_pubmed([REAL])
    assert ei.value.status == 400
    assert len(server.efetch_hits) == 1
    server.faults.append("404")
    with pytest.raises(EutilsHTTPError, match="404"):
        client.efetch_pubmed([REAL])
    assert len(server.efetch_hits) == 2


def test_retries_exhausted(server):
    server.faults.extend(["500", "503", "500", "500"])
    client = make_client(server, max_retries=2)
    with pytest.raises(EutilsRetryError, match="3 attempts") as ei:
        client.efetch_pubmed([REAL])
    assert isinstance(ei.value.__cause__, EutilsHTTPError)
    assert ei.value.__cause__.status == 500
    assert len(server.efetch_hits) == 3


def test_failed_batch_does_not_abort_others(server, tmp_path):
    server.faults.append("400")
    pmids = [str(2000 + i) for i in range(450)]
    records = [rec(p) for p in pmids]
    report = enrich_records(records, make_client(server), tmp_path / "c", progress=False)
    assert len(report.failed_batches) == 1
    assert not report.ok
    assert report.failed_batches[0].pmids == pmids[:200]
    assert "400" in report.failed_batches[0].error
    assert report.n_fetched == 250
    assert report.n_enriched == 250
    assert report.missing == []
    assert records[0]["abstract"] == ""
    assert records[200]["abstract"].startswith("BACKGROUND: [2200]")
    server.hits.clear()
    retry = enrich_records(records, make_client(server), tmp_path / "c", progress=False)
    assert [len(h.ids) for h in server.efetch_hits] == [200]      # only the failed batch again
    assert retry.ok
    assert retry.n_fetched == 200
    assert retry.n_cached == 250
    assert records[0]["abstract"].startswith("BACKGROUND: [2000]")


def _articles_table() -> pa.Table:
    base = {n: None for n, _, _ in ARTICLE_FIELDS}
    rows = []
    for pmcid, pmid, abstract in [("PMC1", REAL, ""), ("PMC2", "41", "Original abstract."),
                                  ("PMC3", None, ""), ("PMC4", "999999", "")]:
        row = dict(base, pmcid=pmcid, pmid=pmid, abstract=abstract, title=f"title {pmcid}",
                   year=2018, subjects=["Medicine"], keywords=["k"], license_code="CC BY",
                   subset="commercial", authors_count=3, full_text=f"body {pmcid}",
                   mesh_terms=[], publication_types=[], n_figures=2, n_samples=2)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=arrow_schema(ARTICLE_FIELDS))


def test_enrich_articles_parquet_round_trip(server, tmp_path):
    server.missing = {"999999"}
    path = tmp_path / "articles.parquet"
    original = _articles_table()
    pq.write_table(original, path, row_group_size=2, compression="zstd")
    report = enrich_articles_parquet(path, make_client(server), tmp_path / "cache", progress=False)
    assert report.n_records == 4
    assert report.n_with_pmid == 3
    assert report.n_without_pmid == 1
    assert report.n_filled_abstract == 1
    assert report.n_enriched == 2
    assert report.missing == ["999999"]
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups == 2
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    out = pf.read()
    assert out.schema.equals(arrow_schema(ARTICLE_FIELDS), check_metadata=False)
    assert out.column_names == [n for n, _, _ in ARTICLE_FIELDS]
    rows = out.to_pylist()
    assert rows[0]["abstract"].startswith("BACKGROUND: In patients with mild asthma")
    assert rows[1]["abstract"] == "Original abstract."                 # not empty: kept
    assert rows[0]["mesh_terms"][4] == "Asthma"
    assert "Asthma" in rows[1]["mesh_terms"]
    assert rows[0]["publication_types"][2] == "Journal Article"
    assert rows[2]["mesh_terms"] == []
    assert rows[3]["mesh_terms"] == []
    assert rows[3]["abstract"] == ""
    untouched = [c for c in out.column_names if c not in ("abstract", "mesh_terms", "publication_types")]
    assert out.select(untouched).equals(original.select(untouched))
    assert not list(tmp_path.glob(".articles.parquet.*"))           # no temp file left
    # rerun: everything from the cache, nothing changes, file not rewritten
    server.hits.clear()
    mtime, data = path.stat().st_mtime_ns, path.read_bytes()
    again = enrich_articles_parquet(path, make_client(server), tmp_path / "cache", progress=False)
    assert server.hits == []
    assert again.n_cached == 2
    assert again.missing == ["999999"]
    assert path.stat().st_mtime_ns == mtime
    assert path.read_bytes() == data


def test_enrich_articles_parquet_rejects_wrong_schema(server, tmp_path):
    path = tmp_path / "articles.parquet"
    pq.write_table(pa.table({"pmcid": ["PMC1"], "pmid": [REAL]}), path)
    with pytest.raises(ValueError, match="abstract"):
        enrich_articles_parquet(path, make_client(server), tmp_path / "cache", progress=False)
    assert server.hits == []


def test_report_type():
    r = EnrichReport()
    assert r.ok
    assert r.failed_pmids == []
    assert r.to_dict()["missing"] == []


# --------------------------------------------------------------------------------------------
# hostile answers (issue 13) and exit codes (issue 17)
# --------------------------------------------------------------------------------------------


def test_truncated_or_malformed_reply_is_retried_never_cached(server, tmp_path):
    pmids = [REAL, "4101", "4102", "4103"]
    server.faults.extend(["truncate", "html"])
    records = [rec(p) for p in pmids]
    report = enrich_records(records, make_client(server), tmp_path / "c", progress=False)
    assert [h.fault for h in server.efetch_hits] == ["truncate", "html", None]
    assert report.ok
    assert report.n_fetched == 4
    assert report.missing == []
    assert all(r["abstract"].startswith("BACKGROUND") for r in records)
    # every attempt cut short: the batch fails and nothing (neither records nor "missing") is cached
    server.hits.clear()
    server.faults.extend(["truncate"] * 3)
    other = [rec(p) for p in ("5101", "5102")]
    report = enrich_records(other, make_client(server, max_retries=2), tmp_path / "c", progress=False)
    assert len(server.efetch_hits) == 3
    assert not report.ok
    assert report.missing == []
    assert "not well-formed" in report.failed_batches[0].error
    with PubmedCache(tmp_path / "c") as c:
        assert c.states(["5101", "5102"]) == {}
        assert len(c) == 4
    retry = enrich_records(other, make_client(server), tmp_path / "c", progress=False)
    assert retry.ok
    assert retry.n_fetched == 2


def test_strict_parse_rejects_what_recover_mode_would_keep(fixture_xml):
    body = fixture_xml.header + b"<PubmedArticleSet>" + fixture_xml.real_record + fixture_xml.record("77") \
        + b"</PubmedArticleSet>"
    cut = body[: len(body) - 400]
    assert REAL in parse_pubmed_xml(cut)                     # lenient: a partial answer
    with pytest.raises(PubmedParseError, match="not well-formed"):
        parse_pubmed_xml(cut, strict=True)
    with pytest.raises(PubmedParseError):
        parse_pubmed_xml(b"", strict=True)


def test_refresh_refetches_every_pmid(server, tmp_path):
    records = [rec(REAL), rec("6101")]
    enrich_records(records, make_client(server), tmp_path / "c", progress=False)
    server.hits.clear()
    assert enrich_records(records, make_client(server), tmp_path / "c", progress=False).n_cached == 2
    assert server.efetch_hits == []
    report = enrich_records(records, make_client(server), tmp_path / "c", refresh=True, progress=False)
    assert [sorted(h.ids) for h in server.efetch_hits] == [sorted([REAL, "6101"])]
    assert report.n_fetched == 2
    assert report.n_cached == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "biomedica_hf.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(repo), NCBI_API_KEY="", NCBI_EMAIL=""), timeout=120,
                          check=False)


def test_cli_enrich_refresh_and_exit_codes(server, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    pq.write_table(_articles_table(), ds / "articles.parquet")
    r = _cli("enrich", str(ds), "--base-url", server.base_url)
    assert r.returncode == 0, r.stderr
    n = len(server.efetch_hits)
    assert _cli("enrich", str(ds), "--base-url", server.base_url).returncode == 0
    assert len(server.efetch_hits) == n                      # all cached: nothing asked
    r = _cli("enrich", str(ds), "--base-url", server.base_url, "--refresh")
    assert r.returncode == 0
    assert len(server.efetch_hits) == n + 1
    # nothing reachable: every request fails -> exit 1 with one line, no traceback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/entrez/eutils"
    r = _cli("enrich", str(ds), "--base-url", dead, "--retries", "0", "--refresh")
    assert r.returncode == 1, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1
    assert "every efetch request failed" in err[0]
    assert "Traceback" not in r.stderr
