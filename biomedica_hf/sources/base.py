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
import re
from collections.abc import Iterator
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


class Source(abc.ABC):
    """Where articles come from (PMC Cloud, a legacy mirror, a local folder)."""

    name: str = "source"

    def __init__(self) -> None:
        self.unlisted: list[tuple[str, str]] = []
        self.listing_problems: list[tuple[str, str]] = []

    @abc.abstractmethod
    def list_articles(self) -> Iterator[ArticleRef]:
        """Every article of the source, in a deterministic order."""

    @abc.abstractmethod
    def fetch(self, ref: ArticleRef, cache_dir: Path) -> ArticlePackage:
        """Bring ``ref``'s files to local disk under ``cache_dir``; raises :class:`FetchError`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release network sessions / temporary files."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def looks_like_jats(path: Path, head_bytes: int = 65536) -> bool:
    """Cheap sniff: does the XML file start like an article (JATS, OAI-PMH, ``<articles>``)?

    Used to keep non-article XML (a Texture ``manifest.xml``, an S3 listing) out of ``xml_files``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(head_bytes)
    except OSError:
        return False
    return bool(_JATS_ROOT_RE.search(head))


def order_xml_files(names: list[str], root: Path) -> list[str]:
    """Every XML among ``names``, the JATS-looking ones first (each group sorted).

    Non-article XML (a Texture ``manifest.xml``) stays in the list so the parser can ledger it
    (``not_jats``); it just never comes first.
    """
    xmls = sorted(n for n in names if n.lower().endswith(XML_SUFFIXES))
    jats = [n for n in xmls if looks_like_jats(root / n)]
    return jats + [n for n in xmls if n not in jats]


def package_from_dir(ref: ArticleRef, root: Path, *, recursive: bool = True, metadata: dict[str, Any] | None = None,
                     problems: list[tuple[str, str]] | None = None, exclude: tuple[str, ...] = ()) -> ArticlePackage:
    """An :class:`ArticlePackage` over the files of ``root`` (names relative to it, posix style).

    ``xml_files`` are the article XMLs directly in ``root``. Hidden files (``.name``), ``*.part``
    leftovers and names in ``exclude`` are skipped. Raises ``FetchError(bad_package)`` without XML.
    """
    root = Path(root)
    files: dict[str, Path] = {}
    it = root.rglob("*") if recursive else root.iterdir()
    for p in sorted(it):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or rel.endswith(".part") or rel in exclude:
            continue
        files[rel] = p
    top = [n for n in files if "/" not in n]
    xml_files = order_xml_files(top, root)
    if not xml_files:
        raise FetchError(BAD_PACKAGE, f"no XML in {root}")
    return ArticlePackage(ref=ref, root=root, files=files, xml_files=xml_files, metadata=dict(metadata or {}),
                          problems=list(problems or []))


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
