"""The 2026 PMC Cloud Service (S3 bucket ``pmc-oa-opendata``, read over HTTPS without credentials).

Each article version has a prefix ``PMCid.V/`` holding ``PMCid.V.xml`` (JATS), ``.txt``, often
``.pdf`` and the media files by their original names; its metadata JSON is at
``metadata/PMCid.V.json`` (also ``PMCid.V/PMCid.V.json``). URLs in the metadata are
``s3://pmc-oa-opendata/KEY?md5=HEX``; they are mapped onto ``base_url`` and md5-verified.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode

from biomedica_hf.ingest.download import NOT_FOUND as DL_NOT_FOUND
from biomedica_hf.ingest.download import Downloader, DownloadError, DownloadItem
from biomedica_hf.ingest.sources.base import (
    DOWNLOAD_FAILED,
    NOT_FOUND,
    NOT_OPEN_ACCESS,
    RETRACTED,
    FetchError,
    Source,
    fatal_disk_error,
    is_disk_error,
)
from biomedica_hf.ingest.sources.filelists import (
    normalize_pmcid,
    parse_cloud_metadata,
    parse_metadata_key,
    parse_pmcid_list,
    parse_s3_list,
    read_listing,
    versions_from_prefixes,
)
from biomedica_hf.io.atomic import atomic_write_bytes
from biomedica_hf.schema import ArticlePackage, ArticleRef

DEFAULT_BASE_URL = "https://pmc-oa-opendata.s3.amazonaws.com"
DEFAULT_BUCKET = "pmc-oa-opendata"


class CloudSource(Source):
    """Articles of the PMC Cloud Service.

    Listing (any combination, de-duplicated, in the given order): ``pmcids`` (``PMC123``, ``123``,
    ``PMC123.2``), ``pmcid_file`` (one per line), ``filelist`` (any format of
    :mod:`~biomedica_hf.ingest.sources.filelists`: its accession ids are taken), ``list_all`` (S3 listing of
    ``metadata/``, latest version of each article; older versions go to ``unlisted``).
    Versions: an id's own version, else ``version`` when pinned, else the latest (resolved at fetch
    time from ``?list-type=2&prefix=PMCid.&delimiter=/``).
    """

    name = "cloud"

    def __init__(self, base_url: str = DEFAULT_BASE_URL, pmcids: Iterable[str] | None = None,
                 pmcid_file: str | Path | None = None, filelist: str | Path | None = None, list_all: bool = False,
                 version: int | None = None, include_non_oa: bool = False, skip_retracted: bool = True,
                 downloader: Downloader | None = None, *, bucket: str = DEFAULT_BUCKET, file_workers: int = 8,
                 fetch_pdf: bool = False, fetch_text: bool = False, list_page_size: int = 1000) -> None:
        super().__init__()
        if pmcids is None and pmcid_file is None and filelist is None and not list_all:
            raise ValueError("CloudSource needs pmcids, pmcid_file, filelist or list_all=True")
        self.base_url = base_url.rstrip("/")
        self.pmcids = list(pmcids) if pmcids is not None else None
        self.pmcid_file = pmcid_file
        self.filelist = filelist
        self.list_all = list_all
        self.version = version
        self.include_non_oa = include_non_oa
        self.skip_retracted = skip_retracted
        self.bucket = bucket
        self.file_workers = file_workers
        self.fetch_pdf = fetch_pdf
        self.fetch_text = fetch_text
        self.list_page_size = list_page_size
        self._own_downloader = downloader is None
        self.downloader = downloader or Downloader()

    # ------------------------------------------------------------------ URLs
    def key_url(self, key: str, bucket: str | None = None) -> str:
        """URL of an object key (``s3://`` of our bucket -> ``base_url``; other buckets -> their host)."""
        if bucket and bucket != self.bucket:
            return f"https://{bucket}.s3.amazonaws.com/{quote(key)}"
        return f"{self.base_url}/{quote(key)}"

    def list_url(self, prefix: str, delimiter: str | None = None, token: str | None = None,
                 max_keys: int | None = None) -> str:
        q: dict[str, Any] = {"list-type": 2, "prefix": prefix}
        if delimiter:
            q["delimiter"] = delimiter
        if max_keys:
            q["max-keys"] = max_keys
        if token:
            q["continuation-token"] = token
        return f"{self.base_url}/?{urlencode(q)}"

    def _list_pages(self, prefix: str, delimiter: str | None = None) -> Iterator[Any]:
        token = None
        while True:
            page = parse_s3_list(self.downloader.get_bytes(
                self.list_url(prefix, delimiter, token, self.list_page_size)))
            yield page
            if not page.is_truncated or not page.next_token:
                return
            token = page.next_token

    # ------------------------------------------------------------------ listing
    def _ref(self, pmcid: str, version: int | None, **kw: Any) -> ArticleRef:
        version = version if version is not None else self.version
        loc = f"{self.base_url}/{pmcid}.{version}/" if version is not None else f"{self.base_url}/{pmcid}"
        return ArticleRef(pmcid=pmcid, location=loc, version=version, **kw)

    def list_articles(self) -> Iterator[ArticleRef]:
        self.unlisted = []
        self.listing_problems = []
        seen: set[tuple[str, int | None]] = set()

        def new(ref: ArticleRef) -> bool:
            k = (ref.pmcid, ref.version)
            if k in seen:
                return False
            seen.add(k)
            return True

        if self.pmcids is not None:
            lst = parse_pmcid_list(self.pmcids)
            self.listing_problems.extend((f"pmcids[{n - 1}]", r) for n, r in lst.bad_rows)
            for r in lst.refs:
                ref = self._ref(r.pmcid, r.version)
                if new(ref):
                    yield ref
        for src in (self.pmcid_file, self.filelist):
            if src is None:
                continue
            lst = parse_pmcid_list(src) if src is self.pmcid_file else read_listing(src)
            self.listing_problems.extend((f"{src}:{n}", r) for n, r in lst.bad_rows)
            for r in lst.refs:
                ref = self._ref(r.pmcid, r.version, pmid=r.pmid, citation=r.citation, license_hint=r.license_hint,
                                last_updated=r.last_updated, retracted=r.retracted,
                                extra={k: v for k, v in r.extra.items() if k in ("line", "list_format", "file_list")})
                if new(ref):
                    yield ref
        if self.list_all:
            for ref in self._list_all():
                if new(ref):
                    yield ref

    def _list_all(self) -> Iterator[ArticleRef]:
        """S3 listing of ``metadata/``: keys of one PMCID are contiguous (``.`` sorts before digits)."""
        group: list[tuple[int, str]] = []
        current = None

        def flush() -> Iterator[ArticleRef]:
            if not group:
                return
            by_v = dict(group)
            if self.version is not None:
                chosen = self.version if self.version in by_v else None
                if chosen is None:
                    self.unlisted.append((f"{current}", f"version_not_found: {self.version}"))
            else:
                chosen = max(by_v)
            for v, key in sorted(group):
                if v != chosen:
                    self.unlisted.append((key, "older_version" if chosen is None or v < chosen else "not_pinned_version"))
            if chosen is not None:
                yield ArticleRef(pmcid=current, location=f"{self.base_url}/{current}.{chosen}/", version=chosen,
                                 extra={"metadata_key": by_v[chosen]})

        for page in self._list_pages("metadata/"):
            for obj in page.contents:
                parsed = parse_metadata_key(obj.key)
                if parsed is None:
                    if not obj.key.endswith("/"):
                        self.unlisted.append((obj.key, "not_metadata_key"))
                    continue
                pmcid, v = parsed
                if pmcid != current:
                    yield from flush()
                    group, current = [], pmcid
                group.append((v, obj.key))
        yield from flush()

    # ------------------------------------------------------------------ versions & metadata
    def versions(self, pmcid: str) -> list[int]:
        """Versions present in the bucket (``PMCid.V/`` common prefixes)."""
        prefixes: list[str] = []
        for page in self._list_pages(f"{pmcid}.", "/"):
            prefixes.extend(page.common_prefixes)
        return versions_from_prefixes(prefixes, pmcid)

    def latest_version(self, pmcid: str) -> int:
        try:
            vs = self.versions(pmcid)
        except DownloadError as e:
            raise FetchError(DOWNLOAD_FAILED, f"listing versions of {pmcid}: {e}") from e
        except ValueError as e:
            raise FetchError(DOWNLOAD_FAILED, f"listing versions of {pmcid}: {e}") from e
        if not vs:
            raise FetchError(NOT_FOUND, f"no version of {pmcid} in the bucket")
        return vs[-1]

    def metadata(self, prefix: str) -> bytes:
        """The metadata JSON of ``PMCid.V``: ``metadata/`` first, then inside the prefix."""
        errors: list[DownloadError] = []
        for key in (f"metadata/{prefix}.json", f"{prefix}/{prefix}.json"):
            try:
                return self.downloader.get_bytes(self.key_url(key))
            except DownloadError as e:
                errors.append(e)
        reason = NOT_FOUND if all(e.reason == DL_NOT_FOUND for e in errors) else DOWNLOAD_FAILED
        raise FetchError(reason, "; ".join(str(e) for e in errors))

    # ------------------------------------------------------------------ fetch
    def fetch(self, ref: ArticleRef, cache_dir: Path) -> ArticlePackage:
        if ref.retracted and self.skip_retracted:
            raise FetchError(RETRACTED, f"{ref.pmcid} is marked retracted in the listing")
        parsed = normalize_pmcid(ref.pmcid)
        if parsed is None:
            raise FetchError(NOT_FOUND, f"not a PMCID: {ref.pmcid!r}")
        pmcid = parsed[0]
        version = ref.version or parsed[1] or self.version or self.latest_version(pmcid)
        prefix = f"{pmcid}.{version}"
        pdir = Path(cache_dir) / prefix
        meta_name = f"{prefix}.json"
        cached = pdir / meta_name
        raw = None
        if cached.is_file():
            try:
                raw = json.loads(cached.read_bytes())
            except ValueError:
                raw = None
        if raw is None:
            data = self.metadata(prefix)
            try:
                raw = json.loads(data)
            except ValueError as e:
                raise FetchError(DOWNLOAD_FAILED, f"metadata of {prefix} is not JSON: {e}") from e
        meta = parse_cloud_metadata(raw)
        if not meta["is_open_access"] and not self.include_non_oa:
            raise FetchError(NOT_OPEN_ACCESS, f"{prefix}: is_pmc_openaccess={raw.get('is_pmc_openaccess')}, "
                                              f"license_code={raw.get('license_code')}")
        if meta["is_retracted"] and self.skip_retracted:
            raise FetchError(RETRACTED, f"{prefix} is retracted")
        if not meta["xml"]:
            raise FetchError(DOWNLOAD_FAILED, f"{prefix}: metadata has no xml_url")
        pdir.mkdir(parents=True, exist_ok=True)
        if not cached.is_file():
            atomic_write_bytes(cached, json.dumps(raw).encode())

        problems: list[tuple[str, str]] = []
        wanted: list[tuple[str, str, str | None]] = []  # (kind, key, md5)
        wanted += [("xml", k, m) for k, m in meta["xml"][:1]]
        wanted += [("media", k, m) for k, m in meta["media"]]
        if self.fetch_pdf:
            wanted += [("pdf", k, m) for k, m in meta["pdf"]]
        if self.fetch_text:
            wanted += [("text", k, m) for k, m in meta["text"]]
        items: list[DownloadItem] = []
        seen_names: set[str] = set()
        for kind, key, md5 in wanted:
            name = _name_in_prefix(key, prefix)
            if name is None:
                problems.append((key, "unsafe_name"))
                continue
            if name in seen_names:
                continue
            seen_names.add(name)
            items.append(DownloadItem(self.key_url(key, meta["bucket"]), pdir / name, md5=md5, key=(kind, name)))
        try:
            results = self.downloader.download_many(items, max_workers=self.file_workers)
        except OSError as e:
            if is_disk_error(e):
                raise fatal_disk_error(e, str(pdir)) from e
            raise

        files: dict[str, Path] = {meta_name: cached}
        xml_name = None
        for r in results:
            kind, name = r.item.key
            if r.ok:
                assert r.path is not None
                files[name] = r.path
                if kind == "xml":
                    xml_name = name
            elif kind == "xml":
                assert r.error is not None
                raise FetchError(DOWNLOAD_FAILED, f"{prefix} XML: {r.error}")
            else:
                assert r.error is not None
                problems.append((name, r.error.reason))
        if xml_name is None:
            raise FetchError(DOWNLOAD_FAILED, f"{prefix}: XML could not be named safely")

        extra = dict(ref.extra)
        extra.update({k: raw.get(k) for k in ("doi", "mid", "title", "is_pmc_openaccess", "is_manuscript",
                                               "is_historical_ocr") if k in raw})
        out_ref = replace(ref, pmcid=pmcid, version=version, location=f"{self.base_url}/{prefix}/",
                          pmid=meta["pmid"] or ref.pmid, citation=raw.get("citation") or ref.citation,
                          license_hint=meta["license_code"] or ref.license_hint,
                          retracted=meta["is_retracted"], extra=extra)
        return ArticlePackage(ref=out_ref, root=pdir, files=files, xml_files=[xml_name], metadata=raw,
                              problems=problems)

    def discard(self, ref: ArticleRef, cache_dir: Path) -> None:
        """Forget every cached version folder of ``ref``'s PMCID (``build --retry-failed``)."""
        parsed = normalize_pmcid(ref.pmcid)
        if parsed is None:
            return
        for d in Path(cache_dir).glob(f"{parsed[0]}.*"):
            if d.is_dir() and not d.is_symlink() and d.name.split(".", 1)[1].isdigit():
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        if self._own_downloader:
            self.downloader.close()


_UNSAFE_RE = re.compile(r"(^|/)\.\.(/|$)")


def _name_in_prefix(key: str, prefix: str) -> str | None:
    """``PMC1.2/fig 1.jpg`` -> ``fig 1.jpg`` (relative to the version prefix); None when unsafe."""
    name = key[len(prefix) + 1:] if key.startswith(prefix + "/") else PurePosixPath(key).name
    if not name or name.startswith("/") or _UNSAFE_RE.search(name) or "\\" in name or name.startswith("."):
        return None
    return name
