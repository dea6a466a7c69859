"""Pure parsers for PMC listings (no I/O beyond reading the given file/bytes).

* legacy ``oa_file_list.csv`` / bulk ``*.filelist.csv`` / legacy AWS ``*.filelist.csv`` - with or
  without header (detected by content), CRLF, quoted fields, empty PMIDs, spreadsheet-mangled dates;
* legacy ``oa_file_list.txt`` (timestamp line, then TAB-separated rows; format not confirmed by a
  real sample);
* PMCID lists (``PMC123``, ``123``, ``PMC123.2``; ``#`` comments, blank lines);
* S3 ListObjectsV2 XML pages;
* PMC Cloud (2026) per-article metadata JSON.

Rows that cannot be used are collected as ``(line number, reason)`` in ``bad_rows`` (never raised),
so the pipeline can ledger them; unparseable dates are kept as-is with a ``warnings`` entry.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from biomedica_hf.schema import ArticleRef

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"

# file list kinds
LEGACY = "legacy"            # File,Article Citation,Accession ID,Last Updated (...),PMID,License
BULK = "bulk"                # Article File,Article Citation,AccessionID,LastUpdated (...),PMID,License,Retracted
AWS = "aws"                  # Key,ETag,Article Citation,AccessionID,Last Updated UTC (...),PMID,License,Retracted
LEGACY_TXT = "legacy_txt"    # oa_file_list.txt: timestamp line, then File<TAB>Citation<TAB>PMCID<TAB>PMID:n<TAB>License
PMCIDS = "pmcids"            # one PMCID per line

_PMCID_RE = re.compile(r"^(?:PMC)?(\d{1,10})(?:\.(\d{1,9}))?$", re.IGNORECASE)   # bounded: no 5,000-digit int()
_PMC_IN_TEXT_RE = re.compile(r"PMC\d+")

# canonical column -> header spellings (compared after lower-casing and dropping non-alphanumerics
# and any "(YYYY-MM-DD ...)" suffix)
_COLUMNS = {
    "file": {"file", "articlefile", "key"},
    "etag": {"etag"},
    "citation": {"articlecitation", "citation"},
    "pmcid": {"accessionid", "pmcid", "accession"},
    "last_updated": {"lastupdated", "lastupdatedutc"},
    "pmid": {"pmid"},
    "license": {"license", "licence"},
    "retracted": {"retracted"},
}
_HEADERLESS = {  # number of columns -> (kind, column order)
    6: (LEGACY, ["file", "citation", "pmcid", "last_updated", "pmid", "license"]),
    7: (BULK, ["file", "citation", "pmcid", "last_updated", "pmid", "license", "retracted"]),
    8: (AWS, ["file", "etag", "citation", "pmcid", "last_updated", "pmid", "license", "retracted"]),
}


def normalize_pmcid(value: str) -> tuple[str, int | None] | None:
    """``PMC123`` / ``123`` / ``pmc123.2`` -> (``PMC123``, version or None); None if not a PMCID."""
    m = _PMCID_RE.match(value.strip())
    if not m:
        return None
    return f"PMC{int(m.group(1))}", int(m.group(2)) if m.group(2) else None


def normalize_date(value: str) -> str | None:
    """A last-updated value -> ISO ``YYYY-MM-DD HH:MM:SS``; None when not recognised.

    Accepts ISO (``2019-11-05 11:56:12``, ``T`` separator, missing seconds, date only) and the
    spreadsheet re-save ``DD-MM-YY HH:MM`` (``06-04-20 14:56`` -> ``2020-04-06 14:56:00``) and
    ``DD-MM-YYYY HH:MM[:SS]``. Two-digit years are 20YY (PMC started in 2000).
    """
    v = value.strip()
    if not v:
        return None
    m = re.match(r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?Z?)?$", v)
    if m:
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    else:
        m = re.match(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{2}|\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$", v)
        if not m:
            return None
        d, mo, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if y < 100:
            y += 2000
    hh, mm, ss = (int(m.group(i)) if m.group(i) else 0 for i in (4, 5, 6))
    try:
        return datetime(y, mo, d, hh, mm, ss).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _canon_header(name: str) -> str | None:
    key = re.sub(r"\(.*?\)", "", name.strip().lstrip("\ufeff")).lower()
    key = re.sub(r"[^a-z0-9]", "", key)
    for canon, spellings in _COLUMNS.items():
        if key in spellings:
            return canon
    return None


def _looks_like_header(fields: list[str]) -> bool:
    canon = [_canon_header(f) for f in fields]
    return "pmcid" in canon and ("file" in canon or "citation" in canon)


def _looks_like_row(fields: list[str]) -> bool:
    first = fields[0].strip() if fields else ""
    return bool(re.match(r"^(oa_package/|oa_comm/|oa_noncomm/|phe_timebound/|PMC\d)", first)
                or first.endswith((".tar.gz", ".xml", ".txt", ".nxml"))
                or any(_PMC_IN_TEXT_RE.fullmatch(f.strip()) for f in fields))


@dataclass
class FileList:
    """A parsed listing: refs, plus every row that could not be used."""

    kind: str
    refs: list[ArticleRef] = field(default_factory=list)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    header: list[str] | None = None

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[ArticleRef]:
        return iter(self.refs)


class FileListReader:
    """Streaming reader of any CSV file list; iterate for :class:`ArticleRef`.

    ``kind``, ``header``, ``bad_rows`` and ``warnings`` are filled while iterating (a multi-million
    row list is never held in memory). ``source`` names the file in ``ArticleRef.extra``.
    """

    def __init__(self, stream: TextIO, source: str = "") -> None:
        self._stream = stream
        self.source = source
        self.kind: str | None = None
        self.header: list[str] | None = None
        self.bad_rows: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []

    def __iter__(self) -> Iterator[ArticleRef]:
        first = self._stream.readline()
        while first and not first.strip():
            first = self._stream.readline()
        if not first:
            self.kind = LEGACY
            return
        if "\t" in first or (_TXT_STAMP.match(first.strip()) and "," not in first):
            self.kind = LEGACY_TXT
            yield from self._iter_txt(first)
            return
        rows = csv.reader(_chain([first], self._stream))
        columns: list[str] | None = None
        for fields in rows:
            line = rows.line_num
            if columns is None:
                if _looks_like_header(fields):
                    self.header = fields
                    columns = [_canon_header(f) or f"col{i}" for i, f in enumerate(fields)]
                    self.kind = AWS if "etag" in columns else BULK if "retracted" in columns else LEGACY
                    continue
                if not _looks_like_row(fields) or len(fields) not in _HEADERLESS:
                    self.kind = self.kind or LEGACY
                    self.bad_rows.append((line, f"unrecognised header or row ({len(fields)} fields)"))
                    return
                self.kind, columns = _HEADERLESS[len(fields)]
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(columns):
                self.bad_rows.append((line, f"wrong_column_count: {len(fields)} != {len(columns)}"))
                continue
            ref = self._ref(dict(zip(columns, fields)), line)
            if ref is not None:
                yield ref

    def _ref(self, row: dict[str, str], line: int) -> ArticleRef | None:
        parsed = normalize_pmcid(row.get("pmcid", ""))
        if parsed is None:
            self.bad_rows.append((line, f"bad_pmcid: {row.get('pmcid', '')!r}"))
            return None
        pmcid, version = parsed
        location = row.get("file", "").strip()
        if not location:
            self.bad_rows.append((line, "missing_file"))
            return None
        raw_date = row.get("last_updated", "").strip()
        date = normalize_date(raw_date) if raw_date else None
        extra: dict[str, Any] = {"line": line, "list_format": self.kind}
        if self.source:
            extra["file_list"] = self.source
        if raw_date and date is None:
            self.warnings.append((line, f"unparseable_date: {raw_date!r}"))
            date = raw_date
        elif raw_date and date != raw_date:
            extra["last_updated_raw"] = raw_date
        if row.get("etag"):
            extra["etag"] = row["etag"].strip().strip('"')
        pmid = row.get("pmid", "").strip()
        if pmid.upper().startswith("PMID:"):
            pmid = pmid[5:].strip()
        retracted_raw = row.get("retracted", "").strip().lower()
        retracted = {"yes": True, "y": True, "true": True, "1": True,
                     "no": False, "n": False, "false": False, "0": False}.get(retracted_raw)
        return ArticleRef(pmcid=pmcid, location=location, version=version, pmid=pmid or None,
                          citation=row.get("citation", "").strip() or None,
                          license_hint=row.get("license", "").strip() or None,
                          last_updated=date, retracted=retracted, extra=extra)

    def _iter_txt(self, first: str) -> Iterator[ArticleRef]:
        """``oa_file_list.txt``: optional timestamp line, then File, Citation, PMCID, PMID:n, License."""
        lines = _chain([first], self._stream)
        for line_no, raw in enumerate(lines, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if line_no == 1 and len(fields) == 1 and _TXT_STAMP.match(line.strip()):
                continue
            if len(fields) < 3:
                self.bad_rows.append((line_no, f"wrong_column_count: {len(fields)}"))
                continue
            row = {"file": fields[0], "citation": fields[1], "pmcid": fields[2],
                   "pmid": fields[3] if len(fields) > 3 else "", "license": fields[4] if len(fields) > 4 else ""}
            ref = self._ref(row, line_no)
            if ref is not None:
                yield ref


_TXT_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$")


def _chain(head: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from head
    yield from rest


def _open_text(src: str | Path | bytes) -> tuple[TextIO, str]:
    if isinstance(src, bytes):
        return io.StringIO(src.decode("utf-8-sig", errors="replace"), newline=""), ""
    p = Path(src)
    return open(p, encoding="utf-8-sig", errors="replace", newline=""), str(p)


def read_file_list(src: str | Path | bytes) -> FileList:
    """Parse a whole CSV/TXT file list (path or bytes) into a :class:`FileList`."""
    stream, name = _open_text(src)
    with stream:
        reader = FileListReader(stream, name)
        refs = list(reader)
    return FileList(kind=reader.kind or LEGACY, refs=refs, bad_rows=reader.bad_rows,
                    warnings=reader.warnings, header=reader.header)


def parse_pmcid_list(src: str | Path | bytes | Iterable[str]) -> FileList:
    """PMCIDs one per line (``PMC123``, ``123``, ``PMC123.2``); ``#`` comments and blank lines are
    ignored; the first whitespace/comma separated token of a line is taken. Duplicates are dropped
    and reported in ``bad_rows`` as ``duplicate``."""
    if isinstance(src, bytes):
        lines: Iterable[str] = src.decode("utf-8-sig", errors="replace").splitlines()
    elif isinstance(src, (str, Path)) and not (isinstance(src, str) and "\n" in src):
        lines = Path(src).read_text(encoding="utf-8-sig", errors="replace").splitlines()
    elif isinstance(src, str):
        lines = src.splitlines()
    else:
        lines = src
    out = FileList(kind=PMCIDS)
    seen: set[tuple[str, int | None]] = set()
    for n, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        token = re.split(r"[\s,;]+", text)[0]
        parsed = normalize_pmcid(token)
        if parsed is None:
            out.bad_rows.append((n, f"bad_pmcid: {token!r}"))
            continue
        if parsed in seen:
            out.bad_rows.append((n, f"duplicate: {token}"))
            continue
        seen.add(parsed)
        pmcid, version = parsed
        out.refs.append(ArticleRef(pmcid=pmcid, location="", version=version, extra={"line": n}))
    return out


def sniff_listing(src: str | Path | bytes) -> str:
    """``pmcids`` for a plain PMCID list, else the CSV/TXT file-list kind (best guess from line 1)."""
    if isinstance(src, bytes):
        head = src[:4096].decode("utf-8-sig", errors="replace")
    else:
        with open(src, encoding="utf-8-sig", errors="replace") as f:
            head = f.read(4096)
    for line in head.splitlines():
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        if "," in s or "\t" in s or _TXT_STAMP.match(s):
            return LEGACY_TXT if ("\t" in s or _TXT_STAMP.match(s)) else "csv"
        return PMCIDS
    return PMCIDS


def read_listing(src: str | Path | bytes) -> FileList:
    """Any listing file: PMCID list or CSV/TXT file list (sniffed)."""
    return parse_pmcid_list(src) if sniff_listing(src) == PMCIDS else read_file_list(src)


# ---------------------------------------------------------------------------------- S3 listing
@dataclass
class S3Object:
    key: str
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class S3ListPage:
    prefix: str = ""
    common_prefixes: list[str] = field(default_factory=list)
    contents: list[S3Object] = field(default_factory=list)
    is_truncated: bool = False
    next_token: str | None = None
    key_count: int | None = None


def parse_s3_list(data: bytes | str) -> S3ListPage:
    """One S3 ListObjectsV2 answer (namespaced or not) -> :class:`S3ListPage`."""
    from lxml import etree

    from biomedica_hf.io.xml import safe_parser

    raw = data.encode("utf-8") if isinstance(data, str) else data
    root = etree.fromstring(raw, safe_parser())
    if etree.QName(root).localname == "Error":
        code = root.findtext("Code") or "?"
        raise ValueError(f"S3 error answer: {code}")

    def local(el, name):
        return [c for c in el if isinstance(c.tag, str) and etree.QName(c).localname == name]

    def text(el, name) -> str | None:
        found = local(el, name)
        return found[0].text if found else None

    page = S3ListPage(prefix=text(root, "Prefix") or "")
    page.is_truncated = (text(root, "IsTruncated") or "false").strip().lower() == "true"
    page.next_token = text(root, "NextContinuationToken")
    kc = text(root, "KeyCount")
    page.key_count = int(kc) if kc and kc.isdigit() else None
    for cp in local(root, "CommonPrefixes"):
        p = text(cp, "Prefix")
        if p:
            page.common_prefixes.append(p)
    for c in local(root, "Contents"):
        size = text(c, "Size")
        etag = text(c, "ETag")
        page.contents.append(S3Object(key=text(c, "Key") or "", size=int(size) if size and size.isdigit() else None,
                                      etag=etag.strip('"') if etag else None,
                                      last_modified=text(c, "LastModified")))
    return page


_VERSION_DIR_RE = re.compile(r"^(PMC\d+)\.(\d{1,9})$")


def versions_from_prefixes(prefixes: Iterable[str], pmcid: str | None = None) -> list[int]:
    """``["PMC1.1/", "PMC1.2/"]`` -> ``[1, 2]`` (sorted; only prefixes of ``pmcid`` when given)."""
    out = set()
    for p in prefixes:
        m = _VERSION_DIR_RE.match(p.rstrip("/").rsplit("/", 1)[-1])
        if m and (pmcid is None or m.group(1) == pmcid):
            out.add(int(m.group(2)))
    return sorted(out)


_METADATA_KEY_RE = re.compile(r"(?:^|/)(PMC\d+)\.(\d{1,9})\.json$")


def parse_metadata_key(key: str) -> tuple[str, int] | None:
    """``metadata/PMC123.2.json`` -> (``PMC123``, 2)."""
    m = _METADATA_KEY_RE.search(key)
    return (m.group(1), int(m.group(2))) if m else None


# ---------------------------------------------------------------------------------- Cloud metadata
def split_s3_url(url: str) -> tuple[str | None, str, str | None]:
    """``s3://bucket/KEY?md5=HEX`` -> (bucket, KEY, md5); https URLs -> (None, path, md5)."""
    parts = urlsplit(url)
    md5 = None
    for kv in parts.query.split("&"):
        k, _, v = kv.partition("=")
        if k == "md5" and re.fullmatch(r"[0-9a-fA-F]{32}", v):
            md5 = v.lower()
    if parts.scheme == "s3":
        return parts.netloc, unquote(parts.path.lstrip("/")), md5
    return None, unquote(parts.path.lstrip("/")), md5


def parse_cloud_metadata(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A PMC Cloud per-article metadata JSON -> normalised dict.

    Keys: every original field (``raw`` keeps the untouched dict), ``pmcid`` (``PMC123``),
    ``version`` (int), ``pmid`` (str or None), ``is_open_access`` (``is_pmc_openaccess`` and a
    licence other than ``TDM``), and file lists of ``(key, md5)``: ``xml``, ``media``, ``pdf``,
    ``text`` (``s3://pmc-oa-opendata/KEY?md5=HEX`` -> ``KEY``, ``HEX``); ``bucket``.
    """
    raw = json.loads(data) if isinstance(data, (bytes, str)) else dict(data)
    out: dict[str, Any] = dict(raw)
    out["raw"] = raw
    parsed = normalize_pmcid(str(raw.get("pmcid") or ""))
    out["pmcid"] = parsed[0] if parsed else raw.get("pmcid")
    try:
        out["version"] = int(raw["version"]) if raw.get("version") is not None else (parsed[1] if parsed else None)
    except (TypeError, ValueError):
        out["version"] = None
    out["pmid"] = str(raw["pmid"]) if raw.get("pmid") not in (None, "") else None
    bucket = None

    def files(value: Any) -> list[tuple[str, str | None]]:
        nonlocal bucket
        urls = value if isinstance(value, list) else [value] if value else []
        res = []
        for u in urls:
            if not isinstance(u, str) or not u:
                continue
            b, key, md5 = split_s3_url(u)
            bucket = bucket or b
            res.append((key, md5))
        return res

    out["xml"] = files(raw.get("xml_url"))
    out["media"] = files(raw.get("media_urls"))
    out["pdf"] = files(raw.get("pdf_url"))
    out["text"] = files(raw.get("text_url"))
    out["bucket"] = bucket
    lic = (raw.get("license_code") or "").strip()
    out["license_code"] = lic or None
    out["is_open_access"] = bool(raw.get("is_pmc_openaccess", True)) and lic.upper() != "TDM"
    out["is_retracted"] = bool(raw.get("is_retracted", False))
    return out
