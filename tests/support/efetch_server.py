"""A real loopback HTTP server that answers like NCBI efetch (for the enrichment and remote-build tests).

The server answers with the real PubmedArticle record of the fixture (PMID 29768149, byte-exact);
other numeric PMIDs are served as copies of that record with the PMID replaced and the title and
first abstract section tagged with the PMID, so joins can be checked. PMIDs in ``server.missing``
are left out of the answer, as NCBI does for unknown ids.
"""
from __future__ import annotations

import copy
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from lxml import etree

from biomedica_hf.dataset.enrich import EutilsClient

FIXTURE_NAME = "pubmed-29768149.xml"
REAL = "29768149"

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------------------------
# efetch server
# --------------------------------------------------------------------------------------------


@dataclass
class Hit:
    t: float
    method: str
    path: str
    params: dict[str, str]
    ids: list[str]
    fault: str | None


@dataclass
class FixtureXML:
    header: bytes                      # XML declaration + DOCTYPE, as efetch sends them
    real_record: bytes                 # the fixture's <PubmedArticle>, byte-exact
    template: etree._Element = field(repr=False)

    @classmethod
    def load(cls, path: Path) -> FixtureXML:
        raw = path.read_bytes()
        start = raw.index(b"<PubmedArticle>")
        end = raw.index(b"</PubmedArticle>") + len(b"</PubmedArticle>")
        header = raw[:raw.index(b"<PubmedArticleSet>")]
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        template = etree.fromstring(raw[start:end], parser)
        return cls(header, raw[start:end], template)

    def record(self, pmid: str) -> bytes:
        if pmid == REAL:
            return self.real_record
        el = copy.deepcopy(self.template)
        el.find("MedlineCitation/PMID").text = pmid
        title = el.find("MedlineCitation/Article/ArticleTitle")
        title.text = f"{title.text} [{pmid}]"
        first = el.find("MedlineCitation/Article/Abstract/AbstractText")
        first.text = f"[{pmid}] {first.text}"
        return etree.tostring(el, encoding="utf-8")


class EfetchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fixture: FixtureXML):
        super().__init__(("127.0.0.1", 0), EfetchHandler)
        self.fixture = fixture
        self.hits: list[Hit] = []
        self.faults: deque[str] = deque()   # "429", "500", "400", "404", "timeout", "drop", "truncate", "html"
        self.missing: set[str] = set()
        self.order = "asis"                 # or "reverse"
        self.retry_after = "1"
        self.sleep = 1.0
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/entrez/eutils"

    @property
    def efetch_hits(self) -> list[Hit]:
        return [h for h in self.hits if h.path.endswith("/efetch.fcgi")]

    def answer(self, ids: list[str]) -> bytes:
        ids = list(reversed(ids)) if self.order == "reverse" else ids
        recs = [self.fixture.record(p) for p in ids if p.isdigit() and p not in self.missing]
        return self.fixture.header + b"<PubmedArticleSet>\n" + b"\n".join(recs) + b"\n</PubmedArticleSet>\n"


class EfetchHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # TCP_NODELAY, as real servers: no ~40 ms delayed-ACK stall per response
    server: EfetchServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle(urlparse(self.path).query)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        query = urlparse(self.path).query
        self._handle("&".join(q for q in (query, body) if q))

    def _send(self, status: int, body: bytes, ctype: str = "text/xml; charset=UTF-8",
              headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self, query: str) -> None:
        srv = self.server
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        ids = [i for i in params.get("id", "").split(",") if i]
        with srv.lock:
            fault = srv.faults.popleft() if srv.faults else None
            srv.hits.append(Hit(time.monotonic(), self.command, urlparse(self.path).path, params, ids, fault))
        if not urlparse(self.path).path.endswith("/efetch.fcgi"):
            return self._send(404, b"not found", "text/plain")
        if fault == "drop":
            self.close_connection = True       # close the socket without any answer
            return
        if fault == "timeout":
            time.sleep(srv.sleep)
        elif fault == "429":
            return self._send(429, json.dumps({"error": "API rate limit exceeded", "count": "4"}).encode(),
                              "application/json", {"Retry-After": srv.retry_after})
        elif fault in ("400", "404", "500", "502", "503"):
            return self._send(int(fault), f"error {fault}".encode(), "text/plain")
        elif fault == "truncate":            # 200, no Content-Length, half the body, clean close
            body = srv.answer(ids)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/xml; charset=UTF-8")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        elif fault == "html":                # a portal's error page served with 200
            return self._send(200, b"<!DOCTYPE html><html><body><h1>Down for maintenance</h1></body></html>",
                              "text/html")
        self._send(200, srv.answer(ids))


@pytest.fixture(scope="module")
def fixture_path(pubmed_dir) -> Path:
    path = pubmed_dir / FIXTURE_NAME
    if not path.is_file():
        pytest.skip(f"fixture not found: {path}")
    return path


@pytest.fixture(scope="module")
def fixture_xml(fixture_path) -> FixtureXML:
    return FixtureXML.load(fixture_path)


@pytest.fixture()
def server(fixture_xml):
    srv = EfetchServer(fixture_xml)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def make_client(server: EfetchServer, **kw) -> EutilsClient:
    opts = dict(base_url=server.base_url, api_key="", email="", rate=1000, timeout=5,
                max_retries=5, backoff=0.01)
    opts.update(kw)
    return EutilsClient(**opts)


def rec(pmid, abstract: str = "", **kw) -> dict:
    return {"pmcid": f"PMC{pmid}", "pmid": pmid, "abstract": abstract, "mesh_terms": [],
            "publication_types": [], **kw}


# --------------------------------------------------------------------------------------------
# pure parsing
# --------------------------------------------------------------------------------------------
