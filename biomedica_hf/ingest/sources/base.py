"""The source interface: list articles, fetch one article's files to local disk.

A :class:`Source` yields :class:`~biomedica_hf.schema.ArticleRef` from ``list_articles()`` and turns
one into an :class:`~biomedica_hf.schema.ArticlePackage` with ``fetch(ref, cache_dir)``. A fetch that
cannot produce a usable package raises :class:`FetchError` with a reason code; files that failed
while the article still proceeds go to ``ArticlePackage.problems``. Entries a listing had to leave
out are reported so the pipeline can ledger them: ``Source.unlisted`` - ``(path or key, reason)``
for things skipped on purpose (folders without XML, older versions, duplicates);
``Source.listing_problems`` - ``(where, reason)`` for unusable listing rows (``"list.csv:17"``,
``"bad_pmcid: 'x'"``). Both are filled while ``list_articles()`` is iterated.
"""
from __future__ import annotations

import abc
import errno
import io
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from biomedica_hf.schema import ArticlePackage, ArticleRef

# FetchError reasons
NOT_OPEN_ACCESS = "not_open_access"
RETRACTED = "retracted"
NOT_FOUND = "not_found"
DOWNLOAD_FAILED = "download_failed"
BAD_PACKAGE = "bad_package"
FETCH_REASONS = (NOT_OPEN_ACCESS, RETRACTED, NOT_FOUND, DOWNLOAD_FAILED, BAD_PACKAGE)

# budgets on the uncompressed bytes of one package (all members) and of one member (see legacy.extract_package)
DEFAULT_MAX_PACKAGE_BYTES = 2 << 30
DEFAULT_MAX_MEMBER_BYTES = 1 << 30

# errno values that mean "this machine cannot write": never a property of the article
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

XML_SUFFIXES = (".xml", ".nxml")
_JATS_ROOT_RE = re.compile(rb"<(?:[\w.-]+:)?(?:article|sub-article|articles|pmc-articleset|OAI-PMH)[\s>/]")


class FetchError(Exception):
    """An article that could not be fetched; ``reason`` is one of :data:`FETCH_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        return (FetchError, (self.reason, self.detail))


class FatalBuildError(RuntimeError):
    """The build cannot go on (disk full, quota, read-only output): no article is at fault.

    Sources and workers raise it instead of ledgering anything; the pipeline re-raises it and the
    CLI prints its one line and exits non-zero. A rerun once the cause is fixed repairs what was cut
    (nothing cut short was recorded as complete).
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        self.errno = errno_
        super().__init__(message)

    def __reduce__(self):
        return (FatalBuildError, (str(self), self.errno))


def is_disk_error(exc: BaseException) -> bool:
    """True for an ``OSError`` meaning the local disk cannot take more (ENOSPC, EDQUOT, EROFS)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def fatal_disk_error(exc: OSError, where: str = "") -> FatalBuildError:
    """The :class:`FatalBuildError` for a disk error, one clear line."""
    what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}
    name = what.get(exc.errno or 0, "disk error")
    target = f" while writing {exc.filename or where}" if (exc.filename or where) else ""
    return FatalBuildError(f"{name}{target} ({exc.strerror or exc}): free space and rerun the same command; "
                           "work cut short is redone", exc.errno)


class Source(abc.ABC):
    """Where articles come from (PMC Cloud, a legacy mirror, a local folder)."""

    name: str = "source"
    #: local packages (archives) are extracted under the cache folder, not read in memory (``build
    #: --keep-downloads`` keeps them there); the package given is the same either way. Downloaded packages are
    #: always extracted: a rerun reuses the extraction instead of downloading them again
    extract_to_disk: bool = False

    def __init__(self) -> None:
        self.unlisted: list[tuple[str, str]] = []
        self.listing_problems: list[tuple[str, str]] = []

    @abc.abstractmethod
    def list_articles(self) -> Iterator[ArticleRef]:
        """Every article of the source, in a deterministic order."""

    @abc.abstractmethod
    def fetch(self, ref: ArticleRef, cache_dir: Path) -> ArticlePackage:
        """Bring ``ref``'s files to local disk under ``cache_dir``; raises :class:`FetchError`."""

    def discard(self, ref: ArticleRef, cache_dir: Path) -> None:
        """Forget what an earlier ``fetch(ref, cache_dir)`` left in ``cache_dir`` (an extraction, a
        partial download), so the next fetch asks the source again (``build --retry-failed``)."""
        for p in _cache_paths(ref, Path(cache_dir)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink(missing_ok=True)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release network sessions / temporary files."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cache_paths(ref: ArticleRef, cache_dir: Path) -> list[Path]:
    """What a fetch of ``ref`` may have left in ``cache_dir`` (extraction, its temp folder, archives)."""
    ids = {ref.pmcid, safe_id(ref.pmcid)}
    out = []
    for i in ids:
        out += [cache_dir / i, cache_dir / f"{i}.extracting"]
    loc = str(ref.location or "").rsplit("/", 1)[-1]
    if loc:
        out += [cache_dir / "_archives" / loc, cache_dir / "_archives" / f"{loc}.part"]
    return out


#: the most bytes :func:`looks_like_jats` reads to get past a prolog (comments, DOCTYPE, PIs)
MAX_PROLOG_BYTES = 16 << 20
_ROOT_NAMES = frozenset({"article", "sub-article", "articles", "pmc-articleset", "OAI-PMH"})


def looks_like_jats(path: Path | bytes, head_bytes: int = 65536, max_prolog: int = MAX_PROLOG_BYTES) -> bool:
    """Cheap sniff: does the XML file start like an article (JATS, OAI-PMH, ``<articles>``)?

    Used to keep non-article XML (a Texture ``manifest.xml``, an S3 listing) out of ``xml_files``.
    Fast path: an article root tag in the first ``head_bytes``. Otherwise the file is fed, in
    ``head_bytes`` chunks, to a safe pull parser (no DTD loading, no entities, no network) until
    the root element starts, so a prolog longer than the window (comments, a DOCTYPE with an
    internal subset) is skipped properly; at most ``max_prolog`` bytes are read. ``path`` may also be the
    file's bytes (a member of an archive read in memory).
    """
    try:
        with (io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")) as f:
            head = f.read(head_bytes)
            if _JATS_ROOT_RE.search(head):
                return True
            if len(head) < head_bytes:
                return False
            return _root_after_prolog(f, head, head_bytes, max_prolog)
    except OSError:
        return False


def _root_after_prolog(f, head: bytes, chunk: int, max_prolog: int) -> bool:
    from lxml import etree

    parser = etree.XMLPullParser(events=("start",), resolve_entities=False, no_network=True, load_dtd=False,
                                 huge_tree=False, remove_comments=True, remove_pis=True)
    data, read = head, len(head)
    try:
        while data:
            parser.feed(data)
            for _, el in parser.read_events():
                return etree.QName(el).localname in _ROOT_NAMES
            if read >= max_prolog:
                return False
            data = f.read(min(chunk, max_prolog - read))
            read += len(data)
    except etree.XMLSyntaxError:
        return False
    return False


def order_xml_files(names: list[str], root: Path, data: Mapping[str, bytes] | None = None) -> list[str]:
    """Every XML among ``names``, the JATS-looking ones first (each group sorted).

    Non-article XML (a Texture ``manifest.xml``) stays in the list so the parser can ledger it
    (``not_jats``); it just never comes first. ``data``: the bytes of files held in memory (read from there
    instead of ``root``).
    """
    data = data or {}
    xmls = sorted(n for n in names if n.lower().endswith(XML_SUFFIXES))
    jats = [n for n in xmls if looks_like_jats(data[n] if n in data else root / n)]
    return jats + [n for n in xmls if n not in jats]


OUTSIDE_INPUT = "outside_input"   # a (symlinked) file that resolves outside the input folder


def package_from_dir(ref: ArticleRef, root: Path, *, recursive: bool = True, metadata: dict[str, Any] | None = None,
                     problems: list[tuple[str, str]] | None = None, exclude: tuple[str, ...] = (),
                     confine: Path | None = None) -> ArticlePackage:
    """An :class:`ArticlePackage` over the files of ``root`` (names relative to it, posix style).

    ``xml_files`` are the article XMLs directly in ``root``. Hidden files (``.name``), ``*.part``
    leftovers and names in ``exclude`` are skipped. With ``confine`` (the input folder), a file
    whose real path (symlinks resolved) is not inside it is left out and recorded in ``problems``
    as ``(name, "outside_input")``. Raises ``FetchError(bad_package)`` without XML.
    """
    root = Path(root)
    files: dict[str, Path] = {}
    problems = list(problems or [])
    real_confine = Path(confine).resolve() if confine is not None else None
    it = root.rglob("*") if recursive else root.iterdir()
    for p in sorted(it):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if _skipped_name(rel, exclude):
            continue
        if real_confine is not None and real_confine not in p.resolve().parents:
            problems.append((rel, OUTSIDE_INPUT))
            continue
        files[rel] = p
    top = [n for n in files if "/" not in n]
    xml_files = order_xml_files(top, root)
    if not xml_files:
        outside = [n for n, r in problems if r == OUTSIDE_INPUT and n.lower().endswith(XML_SUFFIXES)]
        detail = f" ({OUTSIDE_INPUT}: {', '.join(outside)})" if outside else ""
        raise FetchError(BAD_PACKAGE, f"no XML in {root}{detail}")
    return ArticlePackage(ref=ref, root=root, files=files, xml_files=xml_files, metadata=dict(metadata or {}),
                          problems=problems)


def _skipped_name(rel: str, exclude: tuple[str, ...] = ()) -> bool:
    """Names a package leaves out: hidden (``.name`` anywhere in the path), ``*.part`` leftovers, ``exclude``."""
    return any(part.startswith(".") for part in rel.split("/")) or rel.endswith(".part") or rel in exclude


def package_from_members(ref: ArticleRef, root: Path, names: list[str], data: dict[str, bytes],
                         problems: list[tuple[str, str]] | None = None) -> ArticlePackage:
    """The :class:`ArticlePackage` that :func:`package_from_dir` gives for ``root`` had ``names`` (relative,
    posix) been written there, without a file on disk: ``data`` holds the bytes of those the build reads (the
    XML and the images; see :func:`~biomedica_hf.ingest.sources.legacy.read_package`). Same files in the same
    order, same XML order, same error without XML."""
    root = Path(root)
    kept = sorted((n for n in names if not _skipped_name(n)), key=lambda n: root / n)   # as sorted() over paths
    files = {n: root / n for n in kept}
    xml_files = order_xml_files([n for n in files if "/" not in n], root, data)
    if not xml_files:
        raise FetchError(BAD_PACKAGE, f"no XML in {root}")
    return ArticlePackage(ref=ref, root=root, files=files, xml_files=xml_files, problems=list(problems or []),
                          data={n: data[n] for n in kept if n in data})


_SAFE_ID_RE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(name: str) -> str:
    """A dot-free, path-free id from a folder or file name (``PLOS_pbio.0020188`` -> ``PLOS_pbio_0020188``)."""
    return _SAFE_ID_RE.sub("_", name).strip("_") or "article"


_PMCID_RE = re.compile(r"PMC\d+")


def pmcid_in(*names: str) -> str | None:
    """The first ``PMC\\d+`` found in ``names`` (in order)."""
    for n in names:
        m = _PMCID_RE.search(n)
        if m:
            return m.group(0)
    return None
