"""Hostile servers for downloads (issue 13, row 5): a trickling server, short bodies without
Content-Length, HTML error pages served with 200, and `--retry-failed` on a failed package. A real
HTTP server on 127.0.0.1 (tests/support/pmc_server.py) with injected faults; packages generated here."""
from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
from support.hostile_inputs import article_xml, small_jpeg, write_targz
from support.pmc_server import pmc_server  # noqa: F401 - pytest fixture

from biomedica_hf.ingest.download import DEADLINE, HTML_PAGE, Downloader, DownloadError
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.ingest.sources.base import DOWNLOAD_FAILED, FetchError
from biomedica_hf.ingest.sources.legacy import LegacySource

HEADER = "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\r\n"
PKG = "oa_package/aa/bb/PMC900010.tar.gz"


def fast(**kw) -> Downloader:
    opts = {"backoff": 0.01, "backoff_max": 0.05, "retries": 2, "timeout": 5, "chunk_size": 16384}
    opts.update(kw)
    return Downloader(**opts)


@pytest.fixture
def mirror(pmc_server):
    """A legacy mirror with two packages; PMC900010's is ~200 kB so a cut is never at a member boundary."""
    root = pmc_server.root
    (root / PKG).parent.mkdir(parents=True)
    write_targz(root / PKG, [("PMC900010/main.nxml", article_xml("PMC900010", ["fig1", "fig2"])),
                             ("PMC900010/fig1.jpg", small_jpeg(1, (300, 200))),
                             ("PMC900010/fig2.jpg", small_jpeg(2, (300, 200)))])
    other = "oa_package/cc/dd/PMC900011.tar.gz"
    (root / other).parent.mkdir(parents=True)
    write_targz(root / other, [("PMC900011/main.nxml", article_xml("PMC900011", ["fig1"])),
                               ("PMC900011/fig1.jpg", small_jpeg(3))])
    (root / "oa_file_list.csv").write_text(HEADER + f"{PKG},J. 2020,PMC900010,2020-01-01 00:00:00,,CC BY\r\n"
                                           f"{other},J. 2020,PMC900011,2020-01-01 00:00:00,,CC BY\r\n")
    return pmc_server


def _ref(src: LegacySource, pmcid: str):
    return next(r for r in src.list_articles() if r.pmcid == pmcid)


def test_trickling_server_fails_at_the_deadline(mirror):
    mirror.add_fault("/" + PKG, "trickle", times=None, seconds=2.0)
    dl = fast(deadline=5, timeout=(2, 10), retries=3)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as ei:
        dl.download(mirror.url_for(PKG), mirror.root.parent / "dl" / "p.tar.gz")
    took = time.monotonic() - t0
    print(f"\n1 byte every 2 s, deadline 5 s, read timeout 10 s: failed after {took:.1f} s ({ei.value})")
    assert ei.value.reason == DEADLINE
    assert not ei.value.retryable
    assert took < 5 + 2 + 1.5                       # deadline + at most one inactivity gap
    assert len(mirror.requests_for("/" + PKG)) == 1  # no time left to retry
    part = mirror.root.parent / "dl" / "p.tar.gz.part"
    assert part.exists()
    assert 1 <= part.stat().st_size <= 4   # the prefix stays for a rerun to resume
    with pytest.raises(DownloadError) as ei:
        fast(deadline=3, timeout=(2, 10)).get_bytes(mirror.url_for(PKG))
    assert ei.value.reason == DEADLINE


def test_short_body_without_length_is_transient(mirror, tmp_path):
    size = (mirror.root / PKG).stat().st_size
    mirror.add_fault("/" + PKG, "no_length", times=1, at=size // 2)
    with LegacySource(mirror.url, downloader=fast()) as src:
        pkg = src.fetch(_ref(src, "PMC900010"), tmp_path / "cache")
        assert sorted(pkg.files) == ["fig1.jpg", "fig2.jpg", "main.nxml"]
        assert pkg.problems == []
    assert [r.fault for r in mirror.requests_for("/" + PKG)] == ["no_length", None]
    # cut on every attempt: download_failed (retried by the next run), never a bad package
    mirror.clear_log()
    mirror.add_fault("/" + PKG, "no_length", times=None, at=size // 2)
    with LegacySource(mirror.url, downloader=fast(retries=2)) as src, pytest.raises(FetchError) as ei:
        src.fetch(_ref(src, "PMC900010"), tmp_path / "cache2")
    assert ei.value.reason == DOWNLOAD_FAILED
    assert "Content-Length" in ei.value.detail
    assert len(mirror.requests_for("/" + PKG)) == 3
    assert not (tmp_path / "cache2" / "PMC900010").exists()        # nothing cached as a finished extraction
    # with Content-Length, the client knows the body is short: the existing TRUNCATED retry applies
    mirror.clear_faults()
    mirror.add_fault("/" + PKG, "truncate", times=1)
    with LegacySource(mirror.url, downloader=fast()) as src:
        assert src.fetch(_ref(src, "PMC900010"), tmp_path / "cache3").problems == []


@pytest.mark.parametrize("ctype", ["text/html", "application/octet-stream"])
def test_html_error_page_with_200_is_transient(mirror, tmp_path, ctype):
    mirror.add_fault("/" + PKG, "html_200", times=2, content_type=ctype)
    with LegacySource(mirror.url, downloader=fast()) as src:
        pkg = src.fetch(_ref(src, "PMC900010"), tmp_path / "cache")
    assert sorted(pkg.files) == ["fig1.jpg", "fig2.jpg", "main.nxml"]
    assert [r.fault for r in mirror.requests_for("/" + PKG)] == ["html_200", "html_200", None]
    mirror.add_fault("/" + PKG, "html_200", times=None, content_type=ctype)
    with LegacySource(mirror.url, downloader=fast(retries=1)) as src, pytest.raises(FetchError) as ei:
        src.fetch(_ref(src, "PMC900010"), tmp_path / "cache2")
    assert ei.value.reason == DOWNLOAD_FAILED
    assert HTML_PAGE in str(ei.value)
    # a page the URL asks for is still downloaded
    (mirror.root / "index.html").write_text("<!DOCTYPE html><html></html>")
    assert fast().get_bytes(mirror.url_for("index.html")).startswith(b"<!DOCTYPE html>")


def test_retry_failed_discards_the_cached_failed_package(mirror, tmp_path):
    """A package corrupted in transit with the right length is a bad package for that run; `--retry-failed`
    must fetch it again instead of reusing the failed extraction left in the cache."""
    mirror.add_fault("/" + PKG, "corrupt", times=1)
    out = tmp_path / "out"

    def run(**kw):
        return build(BuildConfig(out=out, source="legacy", workers=1, progress=False,
                                 source_opts={"base_url_or_root": mirror.url, "filelist": "oa_file_list.csv",
                                              "retries": 1, "rate": 1000}, **kw))

    run()
    ledger = {(r["kind"], r["id"]): r for r in pq.read_table(out / "ledger.parquet").to_pylist()}
    assert (ledger[("article", "PMC900010")]["state"], ledger[("article", "PMC900010")]["reason"]) == (
        "failed", "bad_package")
    assert (out / "_work" / "cache" / "PMC900010" / ".biomedica_package.json").exists()
    n = len(mirror.requests_for("/" + PKG))
    run()                                               # a plain rerun keeps the staged failure
    assert len(mirror.requests_for("/" + PKG)) == n
    run(retry_failed=True)
    assert len(mirror.requests_for("/" + PKG)) == n + 1
    ledger = {(r["kind"], r["id"]): r for r in pq.read_table(out / "ledger.parquet").to_pylist()}
    assert ledger[("article", "PMC900010")]["state"] == "kept"
    keys = set(pq.read_table(out / "figures.parquet", columns=["key"]).column("key").to_pylist())
    assert keys == {"PMC900010_fig1", "PMC900010_fig2", "PMC900011_fig1"}


def test_html_sniff_needs_the_body_not_just_the_type():
    from biomedica_hf.ingest.download import _looks_like_html

    assert _looks_like_html(b"\n  <!DOCTYPE HTML PUBLIC>", "")
    assert _looks_like_html(b"<!-- proxy --><html><title>502</title>", "text/html; charset=utf-8")
    assert not _looks_like_html(b'<?xml version="1.0"?>\n<!DOCTYPE article><article>', "text/html")
    assert not _looks_like_html(b"\x89PNG\r\n", "text/html")


def test_chunked_bodies_still_stream(tmp_path):
    """The body is now read with ``read1`` (what the socket has) to enforce the deadline: chunked
    transfer-encoding must still decode exactly."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    blocks = [bytes([i]) * (1000 + i) for i in range(60)]

    class Chunked(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for b in blocks:
                self.wfile.write(b"%x\r\n" % len(b) + b + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/x.bin"
        assert fast().get_bytes(url) == b"".join(blocks)
        assert fast().download(url, tmp_path / "x.bin").read_bytes() == b"".join(blocks)
    finally:
        srv.shutdown()
        srv.server_close()
