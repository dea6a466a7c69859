"""PubMed enrichment: MeSH terms, publication types and abstracts from NCBI E-utilities.

Layers, from pure to I/O:

* :func:`parse_pubmed_xml` - pure: efetch XML bytes -> ``{pmid: PubmedRecord}`` (safe lxml parser:
  no network, no DTD loading, no entity expansion). Records are keyed by ``MedlineCitation/PMID``
  (``BookDocument/PMID`` for books), never by position in the answer.
* :func:`apply_pubmed` - pure: copy a :class:`PubmedRecord` into one article dict.
* :class:`EutilsClient` - HTTP: thread-safe rate limiting (3 req/s, 10 with an API key; the
  :class:`~biomedica_hf.io.retry.RateLimiter`), retries with exponential backoff on 429
  (``Retry-After`` honoured), 408, 5xx, timeouts and dropped connections; other 4xx fail at once.
* :class:`PubmedCache` - one SQLite file ``<cache_dir>/pubmed.sqlite``: one row per PMID, state
  ``ok`` (parsed record as JSON) or ``missing`` (NCBI answered without it). Each efetch batch is
  stored in one transaction, so an interrupted run loses at most the batch in flight and a rerun
  fetches only PMIDs not yet cached. Only answers that parse completely are stored: a reply cut
  short (status 200, no Content-Length) or malformed is asked again and, if it stays bad, the
  batch is reported failed with nothing cached. ``missing`` PMIDs are reported and refetched with
  ``refresh="missing"``; ``refresh=True`` (``biomedica enrich --refresh``) refetches every PMID.
* :func:`enrich_records` / :func:`enrich_articles_parquet` - the joins (by PMID).

Choices: ``mesh_terms`` holds the MeSH *descriptor* names (deduplicated, PubMed order) - the column
in ``articles.parquet``; the cached record also keeps ``mesh_major`` (descriptors flagged as major
topic on the descriptor or on one of its qualifiers) and ``mesh_qualified``
(``"Descriptor/Qualifier"``) for later use. Structured abstracts are rendered one section per line
as ``"LABEL: text"``. ``PubmedBookArticle`` entries are parsed partially (title, abstract,
publication types, keywords; no MeSH); ``DeleteCitation`` entries are ignored.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
from lxml import etree

from biomedica_hf.io.atomic import KeepOld, atomic_path
from biomedica_hf.io.retry import Backoff, RateLimiter, parse_retry_after
from biomedica_hf.io.xml import safe_parser
from biomedica_hf.schema import ARTICLE_FIELDS, arrow_schema

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
MAX_EFETCH_IDS = 200            # field notes: efetch takes up to 200 PMIDs a request
RATE_NO_KEY = 3.0               # requests per second without an API key
RATE_WITH_KEY = 10.0            # ... and with one
PARSER_VERSION = 1              # bump when PubmedRecord extraction changes (stored in the cache)
ENRICH_COLUMNS = ("pmid", "abstract", "mesh_terms", "publication_types")

_PMID_RE = re.compile(r"^\d{1,9}$")
_YEAR_RE = re.compile(r"(1[89]\d\d|2\d\d\d)")


# ============================================================================================
# Pure parsing
# ============================================================================================


class PubmedParseError(ValueError):
    """The efetch answer is not a PubmedArticleSet (or is an E-utilities error document)."""


@dataclass
class PubmedRecord:
    """What enrichment takes from one PubMed citation."""

    pmid: str
    title: str = ""
    journal: str | None = None
    year: int | None = None
    abstract: str = ""
    mesh_terms: list[str] = field(default_factory=list)       # descriptor names
    mesh_major: list[str] = field(default_factory=list)       # descriptors that are major topics
    mesh_qualified: list[str] = field(default_factory=list)   # "Descriptor/Qualifier"
    publication_types: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    doi: str | None = None
    pmcid: str | None = None
    status: str | None = None      # MedlineCitation/@Status: "MEDLINE", "In-Process", ... (books: None)
    is_book: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PubmedRecord:
        """Inverse of :meth:`to_dict`; unknown keys (newer cache rows) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_TIGHT_INLINE = {"sub", "sup"}


def _collect(el: etree._Element, out: list[str]) -> None:
    if el.text:
        out.append(el.text)
    for ch in el:
        # efetch pretty-prints inline markup on its own indented line ("β\n\t\t<sub>2</sub>"):
        # that layout whitespace is not text, so "β2" / "CO2" are glued back together.
        if ch.tag in _TIGHT_INLINE and out and "\n" in out[-1][len(out[-1].rstrip()):]:
            out[-1] = out[-1].rstrip()
        if isinstance(ch.tag, str):
            _collect(ch, out)
        if ch.tail:
            out.append(ch.tail)


def _text(el: etree._Element | None) -> str:
    """All text of an element (inline markup included), whitespace collapsed."""
    if el is None:
        return ""
    out: list[str] = []
    _collect(el, out)
    return " ".join("".join(out).split())


def _uniq(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for it in items:
        if it and it not in seen:
            seen.add(it)
            out.append(it)
    return out


def _abstract(abstract_el: etree._Element | None) -> str:
    """``AbstractText`` parts, one a line, labelled ones as ``"LABEL: text"``."""
    if abstract_el is None:
        return ""
    parts = []
    for at in abstract_el.findall("AbstractText"):
        text = _text(at)
        if not text:
            continue
        label = (at.get("Label") or "").strip()
        parts.append(f"{label}: {text}" if label else text)
    return "\n".join(parts)


def _year(*date_els: etree._Element | None) -> int | None:
    for d in date_els:
        if d is None:
            continue
        y = d.findtext("Year")
        if y and y.strip().isdigit():
            return int(y.strip())
        m = _YEAR_RE.search(d.findtext("MedlineDate") or "")
        if m:
            return int(m.group(1))
    return None


def _article_ids(el: etree._Element | None) -> dict[str, str]:
    ids: dict[str, str] = {}
    if el is not None:
        for aid in el.findall("ArticleId"):
            kind, val = aid.get("IdType"), _text(aid)
            if kind and val and kind not in ids:
                ids[kind] = val
    return ids


def _mesh(citation: etree._Element) -> tuple[list[str], list[str], list[str]]:
    terms, major, qualified = [], [], []
    for mh in citation.findall("MeshHeadingList/MeshHeading"):
        desc = mh.find("DescriptorName")
        name = _text(desc)
        if not name:
            continue
        terms.append(name)
        quals = mh.findall("QualifierName")
        if desc.get("MajorTopicYN") == "Y" or any(q.get("MajorTopicYN") == "Y" for q in quals):
            major.append(name)
        qualified.extend(f"{name}/{_text(q)}" for q in quals if _text(q))
    return _uniq(terms), _uniq(major), _uniq(qualified)


def _keywords(parent: etree._Element) -> list[str]:
    return _uniq(_text(k) for k in parent.findall("KeywordList/Keyword"))


def _parse_article(el: etree._Element) -> PubmedRecord | None:
    cit = el.find("MedlineCitation")
    if cit is None:
        return None
    pmid = _text(cit.find("PMID"))
    if not pmid:
        return None
    art = cit.find("Article")
    if art is None:
        art = etree.Element("Article")
    ids = _article_ids(el.find("PubmedData/ArticleIdList"))
    doi = next((_text(e) for e in art.findall("ELocationID") if e.get("EIdType") == "doi"), None)
    mesh_terms, mesh_major, mesh_qualified = _mesh(cit)
    return PubmedRecord(
        pmid=pmid,
        title=_text(art.find("ArticleTitle")) or _text(art.find("VernacularTitle")),
        journal=_text(art.find("Journal/Title")) or _text(cit.find("MedlineJournalInfo/MedlineTA")) or None,
        year=_year(art.find("Journal/JournalIssue/PubDate"), art.find("ArticleDate")),
        abstract=_abstract(art.find("Abstract")),
        mesh_terms=mesh_terms,
        mesh_major=mesh_major,
        mesh_qualified=mesh_qualified,
        publication_types=_uniq(_text(p) for p in art.findall("PublicationTypeList/PublicationType")),
        keywords=_keywords(cit),
        doi=doi or ids.get("doi"),
        pmcid=ids.get("pmc"),
        status=cit.get("Status"),
    )


def _parse_book(el: etree._Element) -> PubmedRecord | None:
    doc = el.find("BookDocument")
    if doc is None:
        return None
    pmid = _text(doc.find("PMID"))
    if not pmid:
        return None
    ids = _article_ids(doc.find("ArticleIdList")) | _article_ids(el.find("PubmedBookData/ArticleIdList"))
    book = doc.find("Book")
    ptypes = doc.findall("PublicationType") or doc.findall("PublicationTypeList/PublicationType")
    return PubmedRecord(
        pmid=pmid,
        title=_text(doc.find("ArticleTitle")) or _text(doc.find("Book/BookTitle")),
        journal=None,
        year=_year(book.find("PubDate") if book is not None else None),
        abstract=_abstract(doc.find("Abstract")),
        publication_types=_uniq(_text(p) for p in ptypes),
        keywords=_keywords(doc),
        doi=ids.get("doi"),
        pmcid=ids.get("pmc"),
        is_book=True,
    )


def parse_pubmed_xml(data: bytes, *, strict: bool = False) -> dict[str, PubmedRecord]:
    """Parse an efetch ``db=pubmed&retmode=xml`` answer into ``{pmid: PubmedRecord}``.

    Empty input gives ``{}`` (``strict``: an error). Raises :class:`PubmedParseError` for an
    E-utilities error document or a root other than ``PubmedArticleSet`` / ``PubmedBookArticleSet``.
    Malformed XML is parsed in lxml's recover mode as a fallback (whatever complete records survive
    are returned); with ``strict=True`` it raises :class:`PubmedParseError` instead - what the cache
    uses, since a reply cut short (status 200, no Content-Length) is not well-formed and must be
    fetched again rather than stored as partial records plus "missing" PMIDs.
    """
    if not data or not data.strip():
        if strict:
            raise PubmedParseError("empty efetch answer")
        return {}
    try:
        root = etree.fromstring(data, safe_parser(remove_comments=True, remove_pis=True))
    except etree.XMLSyntaxError as exc:
        if strict:
            raise PubmedParseError(f"efetch answer is not well-formed (cut short?): {exc}") from exc
        root = etree.fromstring(data, safe_parser(remove_comments=True, remove_pis=True, recover=True))
        if root is None:
            raise PubmedParseError(f"unparsable efetch answer: {exc}") from exc
        log.warning("efetch answer is not well-formed (%s); parsed in recover mode", exc)
    if root.tag == "eFetchResult" or root.find("ERROR") is not None:
        raise PubmedParseError(f"E-utilities error: {_text(root.find('ERROR')) or _text(root)}")
    if root.tag not in ("PubmedArticleSet", "PubmedBookArticleSet"):
        raise PubmedParseError(f"unexpected root element <{root.tag}>")
    out: dict[str, PubmedRecord] = {}
    for el in root:
        if el.tag == "PubmedArticle":
            rec = _parse_article(el)
        elif el.tag == "PubmedBookArticle":
            rec = _parse_book(el)
        else:  # DeleteCitation, comments, ...
            continue
        if rec is not None:
            out[rec.pmid] = rec
    return out


def normalize_pmid(value: Any) -> str | None:
    """``"12345"`` for a usable PMID (str or int, surrounding blanks ignored), else None."""
    if value is None or isinstance(value, bool):
        return None
    s = str(value).strip()
    if s.endswith(".0") and s[:-2].isdigit():   # float-ified in a spreadsheet / pandas
        s = s[:-2]
    s = s.lstrip("0") or s
    return s if _PMID_RE.match(s) and s != "0" else None


def apply_pubmed(record: dict[str, Any], pub: PubmedRecord) -> bool:
    """Copy PubMed data into one article dict, in place; returns True when the abstract was filled.

    ``mesh_terms`` / ``publication_types`` are replaced by PubMed's when PubMed has any (an empty
    PubMed list keeps what the record had); ``abstract`` is set only when the record's is empty.
    """
    if pub.mesh_terms:
        record["mesh_terms"] = list(pub.mesh_terms)
    if pub.publication_types:
        record["publication_types"] = list(pub.publication_types)
    if not (record.get("abstract") or "").strip() and pub.abstract:
        record["abstract"] = pub.abstract
        return True
    return False


# ============================================================================================
# HTTP client
# ============================================================================================


class EutilsError(RuntimeError):
    """An E-utilities request failed."""


class EutilsHTTPError(EutilsError):
    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after


class EutilsRetryError(EutilsError):
    """Retries exhausted; ``__cause__`` is the last error."""


class EfetchClient(Protocol):
    def efetch_pubmed(self, pmids: list[str]) -> bytes: ...


def client_backoff(client: object) -> Backoff:
    """The retry schedule of an E-utilities client (its ``backoff`` / ``max_backoff``; 10 minutes at most
    for a ``Retry-After``)."""
    return Backoff(base=float(getattr(client, "backoff", 1.0)), cap=float(getattr(client, "max_backoff", 60.0)),
                   jitter=0.25, max_retry_after=600.0)


class EutilsClient:
    """Minimal NCBI E-utilities client (efetch for PubMed) with rate limiting and retries.

    ``rate`` defaults to 3 requests/s, or 10/s when an API key is set (``api_key`` or env
    ``NCBI_API_KEY``). ``email`` defaults to env ``NCBI_EMAIL``. Parameters travel in a POST body
    (``method="GET"`` puts them in the query string), which keeps the API key out of URLs and logs.
    Retries: ``max_retries`` more attempts after the first, waiting ``backoff * 2**attempt``
    (capped at ``max_backoff``, jittered: :class:`~biomedica_hf.io.retry.Backoff`) or the server's
    ``Retry-After`` when longer (up to 10 minutes).
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None,
                 email: str | None = None, tool: str = "biomedica-hf", rate: float | None = None,
                 timeout: float = 30.0, max_retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, method: str = "POST",
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("NCBI_API_KEY") or None)
        self.email = email if email is not None else (os.environ.get("NCBI_EMAIL") or None)
        self.tool = tool
        self.rate = float(rate) if rate is not None else (RATE_WITH_KEY if self.api_key else RATE_NO_KEY)
        self.limiter = RateLimiter(self.rate)
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.schedule = client_backoff(self)
        self.method = method.upper()
        if self.method not in ("GET", "POST"):
            raise ValueError("method must be GET or POST")
        self._session = session
        self._local = threading.local()
        self.n_requests = 0      # attempts made (all threads), for reporting
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return (f"EutilsClient(base_url={self.base_url!r}, rate={self.rate}, "
                f"api_key={'set' if self.api_key else None}, tool={self.tool!r})")

    # -- plumbing -----------------------------------------------------------------------------

    def _get_session(self) -> requests.Session:
        if self._session is not None:
            return self._session
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            from biomedica_hf import __version__
            s.headers["User-Agent"] = f"{self.tool} (biomedica-hf/{__version__})"
            self._local.session = s
        return s

    def _params(self, params: dict[str, str]) -> dict[str, str]:
        p = dict(params)
        if self.tool:
            p["tool"] = self.tool
        if self.email:
            p["email"] = self.email
        if self.api_key:
            p["api_key"] = self.api_key
        return p

    def request(self, endpoint: str, params: dict[str, str]) -> bytes:
        """One E-utilities call (e.g. ``efetch.fcgi``) with rate limit and retries; returns the body."""
        url = f"{self.base_url}/{endpoint}"
        params = self._params(params)
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            self.limiter.acquire()
            with self._count_lock:
                self.n_requests += 1
            delay = self.schedule.delay(attempt)
            try:
                if self.method == "POST":
                    resp = self._get_session().post(url, data=params, timeout=self.timeout)
                else:
                    resp = self._get_session().get(url, params=params, timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError,
                    requests.exceptions.ChunkedEncodingError) as exc:
                last = exc
            else:
                status = resp.status_code
                if status == 200:
                    return resp.content
                snippet = " ".join(resp.text[:300].split())
                if status in (408, 429) or 500 <= status < 600:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    last = EutilsHTTPError(status, snippet, retry_after)
                    delay = self.schedule.delay(attempt, retry_after)
                    if status == 429:
                        self.limiter.pause(delay)   # slow every thread down, not just this one
                else:
                    raise EutilsHTTPError(status, snippet)
            if attempt == self.max_retries:
                break
            log.warning("%s attempt %d/%d failed (%s); retrying in %.2fs", endpoint, attempt + 1,
                        self.max_retries + 1, last, delay)
            time.sleep(delay)
        raise EutilsRetryError(f"{endpoint}: giving up after {self.max_retries + 1} attempts: {last}") from last

    # -- endpoints ----------------------------------------------------------------------------

    def efetch_pubmed(self, pmids: list[str]) -> bytes:
        """PubMed XML (``PubmedArticleSet``) for up to 200 PMIDs."""
        pmids = [str(p).strip() for p in pmids]
        if len(pmids) > MAX_EFETCH_IDS:
            raise ValueError(f"efetch takes at most {MAX_EFETCH_IDS} PMIDs, got {len(pmids)}")
        if not pmids:
            return b"<PubmedArticleSet></PubmedArticleSet>"
        return self.request("efetch.fcgi", {"db": "pubmed", "retmode": "xml", "id": ",".join(pmids)})


# ============================================================================================
# Cache
# ============================================================================================

OK = "ok"
MISSING = "missing"


class PubmedCache:
    """SQLite cache ``<dir>/pubmed.sqlite``: table ``pubmed(pmid PRIMARY KEY, state, record,
    fetched_at, parser_version)``; ``state`` is ``ok`` (``record`` = PubmedRecord JSON) or
    ``missing`` (``record`` NULL). Writes are transactions (atomic); safe across threads."""

    FILENAME = "pubmed.sqlite"
    _CHUNK = 500  # host parameters per IN (...) query

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / self.FILENAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False,
                                     isolation_level=None)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS pubmed (pmid TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "record TEXT, fetched_at REAL NOT NULL, parser_version INTEGER NOT NULL)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PubmedCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM pubmed").fetchone()[0]

    def _select(self, cols: str, pmids: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        uniq = list(dict.fromkeys(pmids))
        with self._lock:
            for i in range(0, len(uniq), self._CHUNK):
                chunk = uniq[i:i + self._CHUNK]
                q = f"SELECT {cols} FROM pubmed WHERE pmid IN ({','.join('?' * len(chunk))})"
                rows.extend(self._conn.execute(q, chunk).fetchall())
        return rows

    def states(self, pmids: Sequence[str]) -> dict[str, str]:
        """``{pmid: "ok" | "missing"}`` for the cached ones."""
        return {p: s for p, s in self._select("pmid, state", pmids)}

    def get_many(self, pmids: Sequence[str]) -> dict[str, PubmedRecord]:
        """Cached records (state ``ok``) among ``pmids``."""
        return {p: PubmedRecord.from_dict(json.loads(r))
                for p, s, r in self._select("pmid, state, record", pmids) if s == OK and r}

    def get(self, pmid: str) -> PubmedRecord | None:
        return self.get_many([pmid]).get(pmid)

    def missing(self) -> list[str]:
        """Every PMID recorded as missing."""
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT pmid FROM pubmed WHERE state = ? ORDER BY CAST(pmid AS INTEGER)", (MISSING,))]

    def store(self, records: Iterable[PubmedRecord] = (), missing: Iterable[str] = ()) -> None:
        """Store found records and missing PMIDs in one transaction."""
        now = time.time()
        rows = [(r.pmid, OK, json.dumps(r.to_dict(), ensure_ascii=False), now, PARSER_VERSION)
                for r in records]
        rows += [(p, MISSING, None, now, PARSER_VERSION) for p in missing]
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO pubmed (pmid, state, record, fetched_at, parser_version) "
                    "VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


# ============================================================================================
# Enrichment
# ============================================================================================


@dataclass
class FailedBatch:
    pmids: list[str]
    error: str


@dataclass
class EnrichReport:
    """Outcome of one enrichment run. PMID counts are of unique PMIDs; record counts of rows."""

    n_records: int = 0
    n_with_pmid: int = 0          # records with a usable PMID
    n_without_pmid: int = 0       # records with no / unusable PMID (see invalid_pmids)
    n_unique_pmids: int = 0
    n_cached: int = 0             # PMIDs served from the cache
    n_fetched: int = 0            # PMIDs obtained from NCBI in this run
    n_requests: int = 0           # efetch batches sent (each may have been retried)
    missing: list[str] = field(default_factory=list)          # PMIDs NCBI does not return
    failed_batches: list[FailedBatch] = field(default_factory=list)
    invalid_pmids: list[str] = field(default_factory=list)    # non-empty but not a PMID
    n_enriched: int = 0           # records joined with a PubMed record
    n_filled_abstract: int = 0    # records whose empty abstract was filled

    @property
    def ok(self) -> bool:
        return not self.failed_batches

    @property
    def failed_pmids(self) -> list[str]:
        return [p for b in self.failed_batches for p in b.pmids]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:  # what the CLI prints; repr keeps every field
        return self.summary()

    def summary(self) -> str:
        return (f"{self.n_records} records ({self.n_with_pmid} with PMID, {self.n_without_pmid} without); "
                f"{self.n_unique_pmids} PMIDs: {self.n_cached} cached, {self.n_fetched} fetched, "
                f"{len(self.missing)} missing, {len(self.failed_pmids)} failed in "
                f"{len(self.failed_batches)} batches; {self.n_enriched} records enriched, "
                f"{self.n_filled_abstract} abstracts filled")


def _open_cache(cache_dir: str | Path | PubmedCache) -> tuple[PubmedCache, bool]:
    if isinstance(cache_dir, PubmedCache):
        return cache_dir, False
    return PubmedCache(cache_dir), True


def _clamp_batch(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if batch_size > MAX_EFETCH_IDS:
        log.warning("batch_size %d clamped to %d (efetch limit)", batch_size, MAX_EFETCH_IDS)
    return min(int(batch_size), MAX_EFETCH_IDS)


def _count_pmids(values: Iterable[Any], report: EnrichReport) -> list[str | None]:
    """Normalise a PMID column and count records with / without a PMID."""
    out = []
    for v in values:
        report.n_records += 1
        p = normalize_pmid(v)
        if p is None:
            report.n_without_pmid += 1
            if v is not None and str(v).strip():
                report.invalid_pmids.append(str(v))
        else:
            report.n_with_pmid += 1
        out.append(p)
    return out


def _fetch_batch(client: EfetchClient, batch: list[str]) -> dict[str, PubmedRecord]:
    """One batch, parsed strictly: a reply that is cut short, malformed or not a PubmedArticleSet
    is asked again (the client's retries and backoff), never returned partially."""
    attempts = int(getattr(client, "max_retries", 2)) + 1
    schedule = client_backoff(client)
    last: PubmedParseError | None = None
    for attempt in range(attempts):
        try:
            return parse_pubmed_xml(client.efetch_pubmed(batch), strict=True)
        except PubmedParseError as exc:
            last = exc
            if attempt + 1 < attempts:
                log.warning("efetch answer for %d PMIDs unusable (%s); asking again", len(batch), exc)
                time.sleep(schedule.delay(attempt))
    assert last is not None
    raise PubmedParseError(f"{last} (after {attempts} attempts)")


def fetch_into_cache(pmids: Iterable[str], client: EfetchClient, cache: PubmedCache,
                     report: EnrichReport, *, batch_size: int = MAX_EFETCH_IDS,
                     refresh: bool | str = False, progress: bool = True) -> None:
    """Fetch the PMIDs the cache lacks; ``refresh=True`` (or ``"all"``) fetches every PMID again,
    ``refresh="missing"`` only those cached as missing.

    Each batch is stored in one transaction right after it arrives, and only when the answer parsed
    completely (see :func:`_fetch_batch`); a failing batch is recorded in ``report.failed_batches``
    (nothing cached for it) and the others go on. Updates the PMID counters of ``report``.
    """
    if refresh not in (False, True, "all", "missing"):
        raise ValueError(f"refresh must be False, True, 'all' or 'missing', not {refresh!r}")
    refresh_all = refresh in (True, "all")
    from tqdm import tqdm

    batch_size = _clamp_batch(batch_size)
    unique = list(dict.fromkeys(p for p in pmids if p))
    report.n_unique_pmids = len(unique)
    states = {} if refresh_all else cache.states(unique)
    report.n_cached = sum(1 for s in states.values() if s == OK)
    todo = [p for p in unique if p not in states or (refresh and states[p] == MISSING)]
    missing = {p for p, s in states.items() if s == MISSING and not refresh}
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    with tqdm(total=len(todo), desc="efetch pubmed", unit="pmid", disable=not progress) as bar:
        for batch in batches:
            report.n_requests += 1
            try:
                found = _fetch_batch(client, batch)
                got = [found[p] for p in batch if p in found]
                lost = [p for p in batch if p not in found]
                cache.store(got, lost)
            except Exception as exc:  # one bad batch must not stop the run
                log.error("efetch batch of %d PMIDs (%s..) failed: %s", len(batch), batch[0], exc)
                report.failed_batches.append(FailedBatch(list(batch), f"{type(exc).__name__}: {exc}"))
            else:
                report.n_fetched += len(got)
                missing.update(lost)
            bar.update(len(batch))
    report.missing = sorted(missing, key=int)


def enrich_records(records: list[dict[str, Any]], client: EfetchClient,
                   cache_dir: str | Path | PubmedCache, *, batch_size: int = MAX_EFETCH_IDS,
                   refresh: bool | str = False, progress: bool = True) -> EnrichReport:
    """Enrich article dicts (keys as :class:`~biomedica_hf.schema.Article` fields) **in place**.

    Joins on ``pmid`` (records without one are counted and left alone); fills ``mesh_terms`` and
    ``publication_types``, and ``abstract`` only where it is empty (see :func:`apply_pubmed`).
    Fetches in batches of at most 200 through ``cache_dir`` (see :class:`PubmedCache`).
    """
    report = EnrichReport()
    cache, owned = _open_cache(cache_dir)
    try:
        pmids = _count_pmids((r.get("pmid") for r in records), report)
        fetch_into_cache([p for p in pmids if p], client, cache, report, batch_size=batch_size,
                         refresh=refresh, progress=progress)
        pubs = cache.get_many([p for p in pmids if p])
        for rec, p in zip(records, pmids):
            pub = pubs.get(p) if p else None
            if pub is not None:
                report.n_enriched += 1
                report.n_filled_abstract += apply_pubmed(rec, pub)
    finally:
        if owned:
            cache.close()
    return report


def _check_columns(schema) -> None:
    expected = arrow_schema(ARTICLE_FIELDS)
    for name in ENRICH_COLUMNS:
        want = expected.field(name).type
        idx = schema.get_field_index(name)
        if idx < 0:
            raise ValueError(f"articles table has no column {name!r}")
        if not schema.field(idx).type.equals(want):
            raise ValueError(f"column {name!r} is {schema.field(idx).type}, expected {want}")


def _compression(pf) -> str:
    md = pf.metadata
    if md.num_row_groups and md.num_columns:
        c = md.row_group(0).column(0).compression.lower()
        c = "none" if c == "uncompressed" else c
        if c in ("none", "snappy", "gzip", "brotli", "lz4", "zstd"):
            return c
    return "zstd"


def enrich_articles_parquet(path: str | Path, client: EfetchClient,
                            cache_dir: str | Path | PubmedCache, *, batch_size: int = MAX_EFETCH_IDS,
                            refresh: bool | str = False, progress: bool = True) -> EnrichReport:
    """Enrich an ``articles.parquet`` file and rewrite it atomically (``io.atomic.atomic_path``).

    Streams: pass 1 reads the ``pmid`` column and fills the cache; pass 2 rewrites row group by
    row group, touching only ``abstract`` / ``mesh_terms`` / ``publication_types``. Schema (with
    metadata), column order, row groups and compression are kept; the enrich columns must have the
    types of ``arrow_schema(ARTICLE_FIELDS)``. The file is left untouched when nothing changes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    report = EnrichReport()
    cache, owned = _open_cache(cache_dir)
    pf = None
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        _check_columns(schema)
        pmids = _count_pmids(pf.read(columns=["pmid"]).column("pmid").to_pylist(), report)
        fetch_into_cache([p for p in pmids if p], client, cache, report, batch_size=batch_size,
                         refresh=refresh, progress=progress)
        with atomic_path(path, fsync=True) as tmp:
            changed = False
            with pq.ParquetWriter(tmp, schema, compression=_compression(pf)) as writer:
                for i in range(pf.num_row_groups):
                    table = pf.read_row_group(i)
                    rows = table.select(list(ENRICH_COLUMNS)).to_pylist()
                    pubs = cache.get_many([p for p in (normalize_pmid(r["pmid"]) for r in rows) if p])
                    touched = False
                    for row in rows:
                        pub = pubs.get(normalize_pmid(row["pmid"]) or "")
                        if pub is None:
                            continue
                        before = (row["abstract"], row["mesh_terms"], row["publication_types"])
                        report.n_enriched += 1
                        report.n_filled_abstract += apply_pubmed(row, pub)
                        touched |= before != (row["abstract"], row["mesh_terms"], row["publication_types"])
                    if touched:
                        changed = True
                        for name in ENRICH_COLUMNS[1:]:
                            idx = schema.get_field_index(name)
                            table = table.set_column(idx, schema.field(idx),
                                                     pa.array([r[name] for r in rows], type=schema.field(idx).type))
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                if pf.num_row_groups == 0:
                    writer.write_table(schema.empty_table())
            if not changed:
                raise KeepOld   # nothing new: the file stays as it was, byte for byte
    finally:
        if pf is not None and hasattr(pf, "close"):
            pf.close()
        if owned:
            cache.close()
    return report


__all__ = [
    "DEFAULT_BASE_URL", "MAX_EFETCH_IDS", "EnrichReport", "EutilsClient", "EutilsError",
    "EutilsHTTPError", "EutilsRetryError", "FailedBatch", "PubmedCache", "PubmedParseError",
    "PubmedRecord", "apply_pubmed", "enrich_articles_parquet", "enrich_records",
    "fetch_into_cache", "normalize_pmid", "parse_pubmed_xml",
]
