"""A real HTTP server for tests: serves a directory tree like S3 / the PMC mirrors do.

* ``ThreadingHTTPServer`` on 127.0.0.1, port 0, HTTP/1.1 keep-alive, in a daemon thread;
* GET / HEAD of files with ``Content-Length``, ``ETag`` (md5), ``Accept-Ranges``; single ``Range``
  requests (206 + ``Content-Range``; 416 + ``Content-Range: bytes */N``);
* S3 ListObjectsV2 at ``/?list-type=2&prefix=&delimiter=&max-keys=&continuation-token=&start-after=``
  generated from the tree (Contents, CommonPrefixes, pagination), namespace 2006-03-01;
* fault injection per URL path (see :class:`Fault`), consumed in order, each for ``times`` requests;
* a request log (:attr:`PMCServer.log`) to assert what clients did (Range headers, retries, ...).

Builders :func:`build_cloud_tree` and :func:`build_legacy_tree` lay out real fixture articles as the
2026 PMC Cloud Service and the legacy FTP mirror do. Pytest fixtures: ``pmc_server`` (empty tree
under tmp), ``cloud_tree``/``cloud_server``, ``legacy_tree``/``legacy_server``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import shutil
import socket
import struct
import tarfile
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from support.paths import ARTICLES, FILELISTS  # the real fixtures

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
FAULT_KINDS = ("status", "retry_after", "drop", "truncate", "corrupt", "not_found", "ignore_range", "delay",
               "trickle", "no_length", "html_200")

HTML_ERROR_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Service temporarily unavailable</title></head>"
                   b"<body><h1>Maintenance</h1><p>Please try again later.</p></body></html>\n")


@dataclass
class Fault:
    """One injected fault for a URL path.

    kind:
      ``status``       answer ``status`` (default 503) with a short body;
      ``retry_after``  answer 429 (or ``status``) with ``Retry-After: <retry_after>``;
      ``drop``         send the headers and ``at`` body bytes, pause, then reset the connection (RST);
      ``truncate``     send the headers (full Content-Length) and ``at`` body bytes, then close cleanly;
      ``corrupt``      send the right length with wrong bytes (md5 mismatch);
      ``not_found``    answer 404;
      ``ignore_range`` answer 200 with the whole file even when a Range was asked;
      ``delay``        sleep ``seconds`` before answering normally (client timeouts);
      ``trickle``      send the headers (full Content-Length), then one body byte every ``seconds``
                       (never idle long enough for a read timeout);
      ``no_length``    answer 200 without Content-Length (``Connection: close``), send ``at`` body bytes and
                       close cleanly: a short body the client cannot tell from a complete one;
      ``html_200``     answer 200 with an HTML error page (``Content-Type`` from ``content_type``,
                       default ``text/html``) instead of the file.
    times: how many requests the fault applies to (``None``: every request).
    at: bytes of the body to send before dropping/truncating (default: half of the body).
    """

    kind: str
    times: int | None = 1
    status: int | None = None
    retry_after: float | str | None = None
    at: int | None = None
    seconds: float = 0.0
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {FAULT_KINDS}")


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0
    fault: str | None = None

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


class PMCServer:
    """Serve ``root`` over HTTP on 127.0.0.1. Use as a context manager or ``start()``/``stop()``."""

    def __init__(self, root: Path | str, *, bucket: str = "pmc-oa-opendata", host: str = "127.0.0.1") -> None:
        self.root = Path(root)
        self.bucket = bucket
        self.host = host
        self.log: list[LoggedRequest] = []
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._md5_cache: dict[tuple[str, int, int], str] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, key: str) -> str:
        return f"{self.url}/{quote(key)}"

    def start(self) -> PMCServer:
        httpd = _QuietServer((self.host, 0), _Handler)
        httpd.daemon_threads = True
        httpd.pmc = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="pmc-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PMCServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- faults & log
    def add_fault(self, path: str, kind: str, times: int | None = 1, **kw: Any) -> Fault:
        """Inject a fault for URL path ``path`` (``/KEY`` or ``KEY``); faults queue in order."""
        path = "/" + path.lstrip("/")
        f = Fault(kind, times=times, **kw)
        with self._lock:
            self._faults.setdefault(path, []).append(f)
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(path)
            while queue:
                f = queue[0]
                if f.times is None:
                    return f
                if f.times > 0:
                    f.times -= 1
                    if f.times == 0:
                        queue.pop(0)
                    return f
                queue.pop(0)
            return None

    def _record(self, req: LoggedRequest) -> None:
        with self._lock:
            self.log.append(req)

    def requests_for(self, path: str, method: str | None = None) -> list[LoggedRequest]:
        path = "/" + path.lstrip("/")
        with self._lock:
            return [r for r in self.log if r.path == path and (method is None or r.method == method)]

    # ---------------------------------------------------------------- tree
    def resolve(self, key: str) -> Path | None:
        p = (self.root / key).resolve()
        root = self.root.resolve()
        if p != root and root not in p.parents:
            return None
        return p if p.is_file() else None

    def md5_of(self, path: Path) -> str:
        st = path.stat()
        k = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            if k in self._md5_cache:
                return self._md5_cache[k]
        h = hashlib.md5(path.read_bytes()).hexdigest()
        with self._lock:
            self._md5_cache[k] = h
        return h

    def keys(self) -> list[str]:
        """All object keys (posix paths relative to root), in S3 (UTF-8 binary) order."""
        out = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]
        return sorted(out, key=lambda k: k.encode("utf-8"))

    def list_objects_v2(self, prefix: str = "", delimiter: str = "", max_keys: int = 1000,
                        continuation_token: str | None = None, start_after: str = "") -> bytes:
        after = start_after
        if continuation_token:
            after = base64.urlsafe_b64decode(continuation_token.encode()).decode("utf-8")
        entries: list[tuple[str, str]] = []  # (kind, key-or-prefix)
        last_cp = None
        for key in self.keys():
            if not key.startswith(prefix):
                continue
            if after and (key.encode() <= after.encode() or (after.endswith(delimiter or "\0") and key.startswith(after))):
                continue
            if delimiter:
                rest = key[len(prefix):]
                i = rest.find(delimiter)
                if i >= 0:
                    cp = prefix + rest[: i + len(delimiter)]
                    if cp != last_cp:
                        entries.append(("prefix", cp))
                        last_cp = cp
                    continue
            entries.append(("key", key))
        max_keys = max(0, min(max_keys, 1000))
        page, more = entries[:max_keys], len(entries) > max_keys
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{S3_NS}">',
                 f"<Name>{escape(self.bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"]
        if continuation_token:
            parts.append(f"<ContinuationToken>{escape(continuation_token)}</ContinuationToken>")
        if start_after:
            parts.append(f"<StartAfter>{escape(start_after)}</StartAfter>")
        parts.append(f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        parts.append(f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>")
        for kind, k in page:
            if kind == "key":
                p = self.root / k
                st = p.stat()
                lm = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(st.st_mtime))
                parts.append(f"<Contents><Key>{escape(k)}</Key><LastModified>{lm}</LastModified>"
                             f"<ETag>&quot;{self.md5_of(p)}&quot;</ETag><Size>{st.st_size}</Size>"
                             f"<StorageClass>STANDARD</StorageClass></Contents>")
        for kind, k in page:
            if kind == "prefix":
                parts.append(f"<CommonPrefixes><Prefix>{escape(k)}</Prefix></CommonPrefixes>")
        if more:
            token = base64.urlsafe_b64encode(page[-1][1].encode("utf-8")).decode()
            parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
        parts.append("</ListBucketResult>")
        return "".join(parts).encode("utf-8")


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # clients that time out or go away are part of the tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # TCP_NODELAY, as real servers: no ~40 ms delayed-ACK stall per response
    server_version = "pmc-test-server/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    @property
    def pmc(self) -> PMCServer:
        return self.server.pmc  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # ------------------------------------------------------------------ helpers
    def _simple(self, rec: LoggedRequest, status: int, body: bytes, head: bool,
                headers: dict[str, str] | None = None, ctype: str = "application/xml") -> None:
        rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _s3_error(self, rec: LoggedRequest, status: int, code: str, head: bool,
                  headers: dict[str, str] | None = None) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{code}</Message><Key>{escape(rec.path.lstrip('/'))}</Key></Error>").encode()
        self._simple(rec, status, body, head, headers)

    def _abort(self, rst: bool) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            if rst:
                time.sleep(0.15)  # let the client consume what was sent before the reset
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    # ------------------------------------------------------------------ main
    def _serve(self, head: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        rec = LoggedRequest("HEAD" if head else "GET", path, query,
                            {k.lower(): v for k, v in self.headers.items()})
        self.pmc._record(rec)
        fault = self.pmc._take_fault(path)
        rec.fault = fault.kind if fault else None

        if fault is not None:
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            elif fault.kind == "status":
                return self._s3_error(rec, fault.status or 503, "ServiceUnavailable", head)
            elif fault.kind == "retry_after":
                ra = fault.retry_after if fault.retry_after is not None else 1
                return self._s3_error(rec, fault.status or 429, "SlowDown", head, {"Retry-After": str(ra)})
            elif fault.kind == "not_found":
                return self._s3_error(rec, 404, "NoSuchKey", head)
            elif fault.kind == "html_200":
                return self._simple(rec, 200, HTML_ERROR_PAGE, head, ctype=fault.content_type or "text/html")

        if path == "/" and query.get("list-type", [""])[0] == "2":
            q = {k: v[0] for k, v in query.items()}
            body = self.pmc.list_objects_v2(prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
                                            max_keys=int(q.get("max-keys", "1000") or 1000),
                                            continuation_token=q.get("continuation-token") or None,
                                            start_after=q.get("start-after", ""))
            return self._simple(rec, 200, body, head)

        file = self.pmc.resolve(path.lstrip("/"))
        if file is None:
            return self._s3_error(rec, 404, "NoSuchKey", head)
        data = file.read_bytes()
        size = len(data)
        status, start, end = 200, 0, size - 1
        rng = self.headers.get("Range")
        if rng and not (fault and fault.kind == "ignore_range"):
            m = _RANGE_RE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: last N bytes
                    start, end = max(0, size - int(m.group(2))), size - 1
                if start >= size or start > end:
                    return self._s3_error(rec, 416, "InvalidRange", head, {"Content-Range": f"bytes */{size}"})
                status = 206
        body = data[start:end + 1]
        if fault is not None and fault.kind == "corrupt":
            body = bytes(b ^ 0x5A for b in body)

        if fault is not None and fault.kind == "no_length":
            rec.status = 200
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(file.name)[0] or "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                at = fault.at if fault.at is not None else len(data) // 2
                self.wfile.write(data[:max(0, min(at, len(data)))])
            return self._abort(rst=False)

        rec.status = status
        self.send_response(status)
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{self.pmc.md5_of(file)}"')
        self.send_header("Last-Modified", formatdate(file.stat().st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        if fault is not None and fault.kind in ("drop", "truncate"):
            at = fault.at if fault.at is not None else len(body) // 2
            self.wfile.write(body[: max(0, min(at, len(body) - 1))])
            return self._abort(rst=fault.kind == "drop")
        if fault is not None and fault.kind == "trickle":
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(fault.seconds or 2.0)
            except OSError:  # the client gave up
                self.close_connection = True
            return
        self.wfile.write(body)


# ====================================================================================== trees
def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _xml_meta(xml: Path) -> dict[str, Any]:
    """pmid / doi / title / journal / year / volume / elocation from a JATS file (no network)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=True)
    root = etree.parse(str(xml), parser).getroot()

    def first(xp: str) -> str | None:
        r = root.xpath(xp)
        if not r:
            return None
        v = r[0] if isinstance(r[0], str) else "".join(r[0].itertext())
        return " ".join(v.split()) or None

    return {
        "pmid": first("//article-meta/article-id[@pub-id-type='pmid']"),
        "doi": first("//article-meta/article-id[@pub-id-type='doi']"),
        "title": first("//article-meta/title-group/article-title"),
        "journal": first("//journal-meta//journal-title") or first("//journal-meta/journal-id"),
        "year": first("//article-meta/pub-date/year"),
        "volume": first("//article-meta/volume"),
        "elocation": first("//article-meta/elocation-id"),
    }


# The real articles laid out in Cloud form. The two eLife articles carry no PMCID in their XML:
# the ids given here are TEST-ONLY placeholders (8 digits, beyond any PMCID assigned so far).
CLOUD_ARTICLES: dict[str, dict[str, Any]] = {
    "PMC7112410": {"dir": "PMC7112410", "license_code": "NO-CC CODE"},
    "PMC7135076": {"dir": "PMC7135076", "license_code": "NO-CC CODE"},
    "PMC7159286": {"dir": "PMC7159286", "license_code": "NO-CC CODE"},
    "PMC90019405": {"dir": "eLife_19405", "license_code": "CC BY"},                        # CC BY 4.0
    "PMC90000353": {"dir": "eLife_00353", "license_code": "CC BY", "metadata_only_in_prefix": True},  # CC BY 3.0
}
TWO_VERSION_PMCID = "PMC10802347"   # .1 lacks the f0004 figure files; .2 is complete (CC BY-NC-ND 4.0)
NON_OA_PMCID = "PMC2994229"         # laid out as an author manuscript: license_code TDM, not OA
_MEDIA_EXT = {".jpg", ".jpeg", ".gif", ".png", ".tif", ".tiff"}


@dataclass
class CloudArticle:
    pmcid: str
    version: int
    xml_name: str
    files: dict[str, str]                 # name inside PMCid.V/ -> md5
    license_code: str
    is_oa: bool
    metadata: dict[str, Any]

    @property
    def prefix(self) -> str:
        return f"{self.pmcid}.{self.version}"


@dataclass
class CloudTree:
    root: Path
    articles: dict[str, CloudArticle] = field(default_factory=dict)   # "PMCid.V" -> article

    def latest(self, pmcid: str) -> CloudArticle:
        return max((a for a in self.articles.values() if a.pmcid == pmcid), key=lambda a: a.version)

    def metadata_path(self, prefix: str) -> Path:
        p = self.root / "metadata" / f"{prefix}.json"
        return p if p.exists() else self.root / prefix / f"{prefix}.json"

    def write_metadata(self, prefix: str, meta: dict[str, Any]) -> None:
        """Rewrite an article's metadata JSON wherever it lives (e.g. to mark it retracted)."""
        for p in (self.root / "metadata" / f"{prefix}.json", self.root / prefix / f"{prefix}.json"):
            if p.exists():
                p.write_text(json.dumps(meta))


def _cloud_article(root: Path, pmcid: str, version: int, src: Path, *, license_code: str, is_oa: bool = True,
                   is_manuscript: bool = False, citation: str | None = None, skip_media: tuple[str, ...] = (),
                   metadata_only_in_prefix: bool = False, bucket: str = "pmc-oa-opendata") -> CloudArticle:
    prefix = f"{pmcid}.{version}"
    pdir = root / prefix
    pdir.mkdir(parents=True)
    xml_src = next(p for p in sorted(src.iterdir()) if p.suffix in (".xml", ".nxml"))
    xml_name = f"{prefix}.xml"
    shutil.copyfile(xml_src, pdir / xml_name)
    files = {xml_name: _md5(pdir / xml_name)}
    media = []
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix.lower() in _MEDIA_EXT and not any(s in p.name for s in skip_media):
            shutil.copyfile(p, pdir / p.name)
            files[p.name] = _md5(pdir / p.name)
            media.append(p.name)
    info = _xml_meta(xml_src)
    if citation is None:
        citation = f"{info['journal']}. {info['year']}" + (f";{info['volume']}" if info["volume"] else "") + \
            (f":{info['elocation']}" if info["elocation"] else "")
        if info["doi"]:
            citation += f". doi: {info['doi']}"

    def s3(name: str) -> str:
        return f"s3://{bucket}/{prefix}/{quote(name)}?md5={files[name]}"

    meta: dict[str, Any] = {
        "pmcid": pmcid, "version": version, "pmid": int(info["pmid"]) if info["pmid"] else None,
        "doi": info["doi"], "mid": None, "title": info["title"], "citation": citation,
        "is_pmc_openaccess": is_oa, "is_manuscript": is_manuscript, "is_historical_ocr": False,
        "is_retracted": False, "license_code": license_code, "xml_url": s3(xml_name),
    }
    if media:
        meta["media_urls"] = [s3(n) for n in media]
    text = json.dumps(meta)
    (pdir / f"{prefix}.json").write_text(text)
    if not metadata_only_in_prefix:
        (root / "metadata").mkdir(exist_ok=True)
        (root / "metadata" / f"{prefix}.json").write_text(text)
    return CloudArticle(pmcid, version, xml_name, files, license_code, is_oa, meta)


def _sean_citations(filelists_dir: Path) -> dict[str, str]:
    import csv

    with open(filelists_dir / "oa_file_list.seanBr97_4rows_excel_dates.csv", newline="", encoding="utf-8") as f:
        return {row["Accession ID"]: row["Article Citation"] for row in csv.DictReader(f)}


def build_cloud_tree(dest: Path, articles_dir: Path = ARTICLES, filelists_dir: Path = FILELISTS) -> CloudTree:
    """Lay out real fixture articles as the 2026 PMC Cloud Service bucket under ``dest``.

    ``PMCid.V/PMCid.V.xml`` (copy of the article XML) + media by original names +
    ``metadata/PMCid.V.json`` (and ``PMCid.V/PMCid.V.json``) in the 2026 format with real md5s.
    Contents: PMC7112410, PMC7135076, PMC7159286 and the two eLife articles (version 1; one of
    them has its metadata only inside its prefix), PMC10802347 in versions 1 and 2, and PMC2994229
    as a non-OA author manuscript (``TDM``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tree = CloudTree(dest)
    cites = _sean_citations(filelists_dir)
    for pmcid, spec in CLOUD_ARTICLES.items():
        a = _cloud_article(dest, pmcid, 1, articles_dir / spec["dir"], license_code=spec["license_code"],
                           citation=cites.get(pmcid), metadata_only_in_prefix=spec.get("metadata_only_in_prefix", False))
        tree.articles[a.prefix] = a
    for v, skip in ((1, ("f0004",)), (2, ())):
        a = _cloud_article(dest, TWO_VERSION_PMCID, v, articles_dir / TWO_VERSION_PMCID,
                           license_code="CC BY-NC-ND", skip_media=skip)
        tree.articles[a.prefix] = a
    a = _cloud_article(dest, NON_OA_PMCID, 1, articles_dir / NON_OA_PMCID, license_code="TDM", is_oa=False,
                       is_manuscript=True)
    tree.articles[a.prefix] = a
    return tree


@dataclass
class LegacyTree:
    root: Path
    filelist: Path
    packages: dict[str, str]          # pmcid -> key (oa_package/xx/yy/PMCid.tar.gz) present in the tree
    missing: list[str]                # pmcids listed in the CSV whose package is absent
    truncated: str                    # pmcid of the truncated package


TRUNCATED_ROW = ("oa_package/5e/0b/PMC10802347.tar.gz,bioRxiv [Preprint]. 2024 Jan 2; 2023.12.31.573776,"
                 "PMC10802347,31-01-24 18:42,38260464,CC BY-NC-ND\r\n")


def build_legacy_tree(dest: Path, articles_dir: Path = ARTICLES, filelists_dir: Path = FILELISTS) -> LegacyTree:
    """Lay out the legacy FTP mirror: ``oa_file_list.csv`` (the real seanBr97 rows: CRLF, spreadsheet
    dates, plus one added row for the truncated PMC10802347 package) and ``oa_package/xx/yy/PMCid.tar.gz``
    copies of the real tarballs. PMC7159299 is listed (real row) but its tarball is not in the fixtures."""
    import csv
    import io

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    raw = (filelists_dir / "oa_file_list.seanBr97_4rows_excel_dates.csv").read_bytes()
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    raw += TRUNCATED_ROW.encode()
    filelist = dest / "oa_file_list.csv"
    filelist.write_bytes(raw)
    packages, missing = {}, []
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")):
        pmcid, key = row["Accession ID"], row["File"]
        srcdir = articles_dir / pmcid / "package"
        tarballs = sorted(srcdir.glob("*.tar.gz")) if srcdir.is_dir() else []
        if not tarballs:
            missing.append(pmcid)
            continue
        (dest / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tarballs[0], dest / key)
        packages[pmcid] = key
    return LegacyTree(dest, filelist, packages, missing, "PMC10802347")


def tar_members(tarball: Path) -> list[str]:
    """Member names readable from a (possibly truncated) tarball, for assertions."""
    names = []
    try:
        with tarfile.open(tarball, "r|*") as tf:
            for m in tf:
                names.append(m.name)
    except (tarfile.TarError, EOFError, OSError):
        pass
    return names


# ====================================================================================== fixtures
@pytest.fixture
def pmc_server(tmp_path_factory):
    """A server over an empty directory ``server.root`` (its own tmp dir): write files there, then fetch."""
    root = tmp_path_factory.mktemp("srv")
    with PMCServer(root) as srv:
        yield srv


@pytest.fixture(scope="session")
def cloud_tree(tmp_path_factory) -> CloudTree:
    return build_cloud_tree(tmp_path_factory.mktemp("cloud"))


@pytest.fixture
def cloud_server(cloud_tree):
    with PMCServer(cloud_tree.root) as srv:
        yield srv


@pytest.fixture(scope="session")
def legacy_tree(tmp_path_factory) -> LegacyTree:
    return build_legacy_tree(tmp_path_factory.mktemp("legacy"))


@pytest.fixture
def legacy_server(legacy_tree):
    with PMCServer(legacy_tree.root, bucket="pmc-legacy") as srv:
        yield srv
