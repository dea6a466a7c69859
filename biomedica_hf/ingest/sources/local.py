"""Articles already on local disk.

``LocalSource(path)`` scans a folder (or takes one XML / one package file) and finds

(a) extracted packages: a directory that directly holds article XML (``.xml``/``.nxml`` that looks
    like JATS) is one article; every file below it belongs to it (``package/PMC1.tar.gz`` too);
(b) ``.tar.gz``/``.tgz`` packages anywhere outside an article directory (read at fetch time, in memory
    unless ``extract_to_disk`` is set; truncated archives tolerated);
(c) Cloud-layout folders ``PMCid.V/`` holding ``PMCid.V.xml`` (+ ``PMCid.V.json`` or
    ``../metadata/PMCid.V.json``); only the latest version of a PMCID is listed.

Everything left out is reported in ``unlisted`` as ``(path, reason)``: ``no_xml`` (a folder with
files but no XML or package), ``no_article_xml`` (XML that is not an article), ``older_version``,
``duplicate_id``, ``outside_input`` (an XML or package that is a symlink resolving outside the input
folder; such files inside an article are refused at fetch time, as ``ArticlePackage.problems``). The listing is sorted by path (deterministic).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomedica_hf.ingest.sources.base import (
    BAD_PACKAGE,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_PACKAGE_BYTES,
    NOT_FOUND,
    OUTSIDE_INPUT,
    XML_SUFFIXES,
    FetchError,
    Source,
    looks_like_jats,
    package_from_dir,
    pmcid_in,
    safe_id,
)
from biomedica_hf.ingest.sources.filelists import parse_metadata_key
from biomedica_hf.ingest.sources.legacy import ArchiveLimits, package_from_archive
from biomedica_hf.schema import ArticlePackage, ArticleRef

TAR_SUFFIXES = (".tar.gz", ".tgz")
_CLOUD_DIR_RE = re.compile(r"^(PMC\d+)\.(\d+)$")
MAX_VERSION_DIGITS = 9

DIR, TAR, CLOUD, XML = "dir", "tar", "cloud", "xml"


@dataclass
class _Entry:
    id: str
    kind: str
    path: Path
    version: int | None = None
    metadata: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _tar_stem(name: str) -> str:
    for s in TAR_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


class LocalSource(Source):
    name = "local"

    def __init__(self, path: str | Path, *, max_package_bytes: int | None = None,
                 max_member_bytes: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.limits = ArchiveLimits(max_package_bytes or DEFAULT_MAX_PACKAGE_BYTES,
                                    max_member_bytes or DEFAULT_MAX_MEMBER_BYTES)
        self._entries: dict[str, _Entry] | None = None
        self._root_cache: tuple[tuple[Path, str], str] | None = None     # (input path, working folder) -> abspath

    @property
    def root(self) -> Path:
        """The input root: listing locations (and so the ledger's ``source``) are relative to it, never absolute
        paths of this machine (the ledger is published)."""
        return self.path if self.path.is_dir() else self.path.parent

    def public(self, path: str | Path) -> str:
        """``path`` relative to the input root (posix), as the listing and the ledger name it."""
        ap, root = os.path.abspath(path), self._abs_root()
        if os.sep == "/" and not ap.startswith("//") and not root.startswith("//"):   # by string: once per article
            if ap == root:
                return "."
            prefix = root if root == "/" else root + "/"
            if ap.startswith(prefix):
                return ap[len(prefix):]
            return Path(path).name
        try:
            rel = Path(ap).relative_to(root).as_posix()
        except ValueError:
            return Path(path).name
        return rel or "."

    def _abs_root(self) -> str:
        """``os.path.abspath(self.root)``, kept while the input path and the working folder are the same."""
        key = (self.path, os.getcwd())
        cached = self._root_cache
        if cached is None or cached[0] != key:
            cached = self._root_cache = (key, os.path.abspath(self.root))
        return cached[1]

    def _resolve(self, location: str) -> Path:
        p = Path(location)
        return p if p.is_absolute() else self.root / p

    def _publish_unlisted(self) -> None:
        root = os.path.abspath(self.root)
        self.unlisted = [(self.public(path), reason.replace(root + os.sep, "").replace(root, "."))
                         for path, reason in self.unlisted]

    @property
    def confine(self) -> Path | None:
        """The folder every file must resolve into (symlinks followed); None for a single-file input."""
        return self.path if self.path.is_dir() else None

    # ------------------------------------------------------------------ scan
    def scan(self) -> list[_Entry]:
        """Find the articles (and fill ``unlisted``); sorted by path."""
        self.unlisted = []
        found: list[_Entry] = []
        p = self.path
        if not p.exists():
            raise FileNotFoundError(p)
        if p.is_file():
            if p.name.lower().endswith(XML_SUFFIXES):
                found.append(_Entry(pmcid_in(p.parent.name, p.name) or safe_id(p.stem), XML, p))
            elif p.name.lower().endswith(TAR_SUFFIXES):
                found.append(_Entry(pmcid_in(p.name) or safe_id(_tar_stem(p.name)), TAR, p))
            else:
                self.unlisted.append((str(p), "not_xml_or_package"))
        else:
            found = self._walk(p)
        out = self._dedupe(found)
        self._publish_unlisted()
        return out

    def _walk(self, top: Path) -> list[_Entry]:
        found: list[_Entry] = []
        cloud: dict[str, list[_Entry]] = {}
        real_top = top.resolve()
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".extracting"))
            filenames = sorted(f for f in filenames if not f.startswith("."))
            d = Path(dirpath)
            xmls = [f for f in filenames if f.lower().endswith(XML_SUFFIXES)]
            if xmls:
                inside = [f for f in xmls if _walked_inside(os.path.join(dirpath, f), real_top)]   # never read outside
                jats = [f for f in inside if looks_like_jats(d / f)]
                m = _CLOUD_DIR_RE.match(d.name)
                if m and len(m.group(2)) > MAX_VERSION_DIGITS:     # an integer from input is bounded
                    self.unlisted.append((str(d), f"bad_version: {len(m.group(2))} digits"))
                    dirnames[:] = []
                    continue
                if m and f"{d.name}.xml" in inside:
                    meta = d / f"{d.name}.json"
                    if not meta.is_file():
                        alt = d.parent / "metadata" / f"{d.name}.json"
                        meta = alt if alt.is_file() else None
                    cloud.setdefault(m.group(1), []).append(
                        _Entry(m.group(1), CLOUD, d, version=int(m.group(2)), metadata=meta))
                    dirnames[:] = []
                    continue
                if jats:
                    found.append(_Entry(pmcid_in(d.name, *jats) or safe_id(d.name), DIR, d))
                    dirnames[:] = []
                    continue
                self.unlisted.extend((str(d / f), OUTSIDE_INPUT) for f in xmls if f not in inside)
                if inside:
                    self.unlisted.append((str(d), "no_article_xml"))
            tarballs = [f for f in filenames if f.lower().endswith(TAR_SUFFIXES)]
            for t in tarballs:
                if not _walked_inside(os.path.join(dirpath, t), real_top):
                    self.unlisted.append((str(d / t), OUTSIDE_INPUT))
                    continue
                found.append(_Entry(pmcid_in(t) or safe_id(_tar_stem(t)), TAR, d / t))
            if filenames and not xmls and not tarballs:
                if d.name == "metadata" and all(parse_metadata_key(f) for f in filenames):
                    continue  # Cloud-layout metadata folder: read with its articles
                self.unlisted.append((str(d), "no_xml"))
        for pmcid, versions in cloud.items():
            versions.sort(key=lambda e: e.version or 0)
            for old in versions[:-1]:
                self.unlisted.append((str(old.path), f"older_version: {pmcid}.{versions[-1].version} listed"))
            found.append(versions[-1])
        return found

    def _dedupe(self, found: list[_Entry]) -> list[_Entry]:
        """One entry per id: an extracted folder wins over a tarball of the same article, then the
        first path in sort order; the others go to ``unlisted``. Result sorted by path."""
        rank = {CLOUD: 0, DIR: 0, XML: 1, TAR: 2}
        chosen: dict[str, _Entry] = {}
        for e in sorted(found, key=lambda e: (rank[e.kind], str(e.path))):
            if e.id in chosen:
                self.unlisted.append((str(e.path), f"duplicate_id: {e.id} (kept {chosen[e.id].path})"))
            else:
                chosen[e.id] = e
        out = sorted(chosen.values(), key=lambda e: str(e.path))
        self._entries = {e.id: e for e in out}
        return out

    # ------------------------------------------------------------------ Source API
    def list_articles(self) -> Iterator[ArticleRef]:
        for e in self.scan():
            yield self._ref(e)

    def _ref(self, e: _Entry) -> ArticleRef:
        extra: dict[str, Any] = {"kind": e.kind}
        ref = ArticleRef(pmcid=e.id, location=self.public(e.path), version=e.version, extra=extra)
        if e.metadata is not None:
            extra["metadata_path"] = str(e.metadata)
            meta = _read_json(e.metadata)
            if meta:
                ref.pmid = str(meta["pmid"]) if meta.get("pmid") not in (None, "") else None
                ref.citation = meta.get("citation")
                ref.license_hint = meta.get("license_code")
                ref.retracted = meta.get("is_retracted")
        return ref

    def fetch(self, ref: ArticleRef, cache_dir: Path) -> ArticlePackage:
        path = self._resolve(ref.location)
        if not path.exists():
            raise FetchError(NOT_FOUND, f"{ref.location} does not exist")
        kind = ref.extra.get("kind") or (TAR if path.name.lower().endswith(TAR_SUFFIXES)
                                          else XML if path.is_file() else DIR)
        confine = self.confine
        if confine is not None and not _inside(path, confine):
            raise FetchError(BAD_PACKAGE, f"{OUTSIDE_INPUT}: {ref.location} resolves outside the input folder")
        if kind == TAR:
            return package_from_archive(ref, path, Path(cache_dir) / safe_id(ref.pmcid), self.limits,
                                        in_memory=not self.extract_to_disk)
        if kind == XML:
            pkg = package_from_dir(ref, path.parent, recursive=False, confine=confine)
            if path.name not in pkg.files:
                raise FetchError(BAD_PACKAGE, f"{OUTSIDE_INPUT}: {ref.location}")
            pkg.xml_files = [path.name]
            return pkg
        metadata: dict[str, Any] = {}
        if kind == CLOUD:
            mp = ref.extra.get("metadata_path")
            if mp and confine is not None and not _inside(Path(mp), confine):
                mp = None  # metadata JSON symlinked from outside: ignored
            metadata = _read_json(Path(mp)) if mp else {}
            pkg = package_from_dir(ref, path, metadata=metadata, confine=confine)
            main = f"{path.name}.xml"
            if main in pkg.files:
                pkg.xml_files = [main] + [x for x in pkg.xml_files if x != main]
            return pkg
        try:
            return package_from_dir(ref, path, confine=confine)
        except FetchError:
            raise
        except OSError as e:
            raise FetchError(BAD_PACKAGE, f"{ref.location}: {e}") from e


def _inside(path: Path, root: Path, *, root_resolved: bool = False) -> bool:
    """Does ``path`` (symlinks resolved) lie in ``root`` (or is it ``root``)? ``root_resolved``: ``root`` is
    resolved already (the scan resolves its top once, not once per file)."""
    real, top = Path(path).resolve(), (Path(root) if root_resolved else Path(root).resolve())
    return real == top or top in real.parents


def _walked_inside(path: str, real_top: Path) -> bool:
    """:func:`_inside` for a file the scan's ``os.walk`` reached: the walk never enters a symlinked folder, so a file
    that is not a symlink itself lies where it was found, in the input; only a symlink is resolved (one ``lstat``
    a file instead of one a path component). ``fetch`` checks each path again, resolved, before reading it."""
    return not os.path.islink(path) or _inside(path, real_top, root_resolved=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
