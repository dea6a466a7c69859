"""Legacy PMC-OA mirror: ``oa_file_list.csv`` + ``oa_package/xx/yy/PMCid.tar.gz``.

The layout PMC served until 2026 (moved under ``deprecated/`` on 2026-04-13, removed August 2026)
and which existing mirrors and archives still have. ``base_url_or_root`` is an HTTP(S) base URL or a
local mirror directory. Packages are downloaded (resumable, length-checked) and extracted safely;
a truncated gzip keeps every member read before the error.
"""
from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from biomedica_hf.download import NOT_FOUND as DL_NOT_FOUND
from biomedica_hf.download import DownloadError, Downloader
from biomedica_hf.schema import ArticlePackage, ArticleRef
from biomedica_hf.sources.base import (BAD_PACKAGE, DOWNLOAD_FAILED, NOT_FOUND, RETRACTED, FetchError, Source,
                                       package_from_dir)
from biomedica_hf.sources.filelists import FileListReader

ARCHIVE_PROBLEM = "<archive>"
MARKER = ".biomedica_package.json"   # written last into an extracted package: extraction complete


@dataclass
class Extracted:
    files: dict[str, Path] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False
    detail: str = ""


def _member_relpath(name: str) -> str | None:
    """A safe relative path for a tar member, without the package's top folder; None if unsafe."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    if len(parts) > 1:  # PMCid/main.nxml -> main.nxml
        parts = parts[1:]
    return "/".join(parts)


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def extract_package(archive: Path, dest: Path) -> Extracted:
    """Extract ``archive`` (tar, tar.gz) into ``dest`` safely and atomically.

    Only regular files are written; absolute names, ``..`` and links are refused (problem
    ``unsafe_member``); member names lose the package's top folder (``PMC123/x.jpg`` -> ``x.jpg``).
    A truncated/corrupt archive keeps every complete member read before the error and records
    ``("<archive>", "truncated_archive")`` (and ``(member, "truncated")`` for the member cut short).
    ``dest`` is replaced as a whole once extraction ends; a completion marker is written last.
    """
    archive, dest = Path(archive), Path(dest)
    tmp = dest.with_name(dest.name + ".extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    out = Extracted()
    try:
        with open(archive, "rb") as raw:
            try:
                tf = tarfile.open(fileobj=raw, mode="r|*")
            except _TAR_ERRORS as e:
                out.problems.append((ARCHIVE_PROBLEM, "bad_archive"))
                out.detail = f"{type(e).__name__}: {e}"
                tf = None
            if tf is not None:
                with tf:
                    _extract_members(tf, tmp, out)
    except OSError as e:  # the archive itself could not be read
        out.problems.append((ARCHIVE_PROBLEM, "bad_archive"))
        out.detail = f"{type(e).__name__}: {e}"
    (tmp / MARKER).write_text(json.dumps({"archive": archive.name, "problems": out.problems,
                                          "files": sorted(out.files)}))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    out.files = {n: dest / n for n in out.files}
    return out


def _extract_members(tf: tarfile.TarFile, root: Path, out: Extracted) -> None:
    while True:
        try:
            m = tf.next()
        except _TAR_ERRORS:
            out.problems.append((ARCHIVE_PROBLEM, "truncated_archive"))
            out.truncated = True
            return
        if m is None:
            return
        if m.isdir():
            continue
        rel = _member_relpath(m.name)
        if not m.isfile() or rel is None:
            out.problems.append((m.name, "unsafe_member" if (rel is None or m.issym() or m.islnk()) else "skipped_member"))
            continue
        target = root / rel
        if root.resolve() not in target.resolve().parents:
            out.problems.append((m.name, "unsafe_member"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        try:
            src = tf.extractfile(m)
            assert src is not None
            with open(part, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            if part.stat().st_size != m.size:
                raise EOFError(f"member {m.name}: {part.stat().st_size} of {m.size} bytes")
        except _TAR_ERRORS:
            part.unlink(missing_ok=True)
            out.problems.append((rel, "truncated"))
            out.problems.append((ARCHIVE_PROBLEM, "truncated_archive"))
            out.truncated = True
            return
        part.replace(target)
        out.files[rel] = target


def load_extracted(dest: Path) -> Extracted | None:
    """The result of a finished earlier extraction into ``dest`` (resume), else None."""
    marker = Path(dest) / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    files = {n: Path(dest) / n for n in info.get("files", [])}
    if not all(p.is_file() for p in files.values()):
        return None
    return Extracted(files=files, problems=[tuple(p) for p in info.get("problems", [])],
                     truncated=any(p[1] == "truncated_archive" for p in info.get("problems", [])))


def package_from_archive(ref: ArticleRef, archive: Path, dest: Path) -> ArticlePackage:
    """Extract (or reuse a finished extraction of) ``archive`` into ``dest`` -> package.

    Raises ``FetchError(bad_package)`` when the package holds no XML.
    """
    ext = load_extracted(dest) or extract_package(archive, dest)
    if not any(n.lower().endswith((".xml", ".nxml")) and "/" not in n for n in ext.files):
        detail = f"no XML in {archive.name}"
        if ext.problems:
            detail += f" ({', '.join(f'{a}: {b}' for a, b in ext.problems)})"
        if ext.detail:
            detail += f" [{ext.detail}]"
        raise FetchError(BAD_PACKAGE, detail)
    return package_from_dir(ref, dest, problems=ext.problems)


def _is_url(s: str | Path) -> bool:
    return isinstance(s, str) and s.startswith(("http://", "https://"))


class LegacySource(Source):
    """Articles of a legacy ``oa_file_list.csv`` mirror (HTTP base URL or local directory).

    ``filelist``: path or URL of the list; default ``<base>/oa_file_list.csv``; a relative path
    that does not exist locally is taken relative to the base.
    """

    name = "legacy"

    def __init__(self, base_url_or_root: str | Path, filelist: str | Path | None = None, *,
                 downloader: Downloader | None = None, skip_retracted: bool = True,
                 keep_archives: bool = False) -> None:
        super().__init__()
        self.remote = _is_url(base_url_or_root)
        self.base = str(base_url_or_root).rstrip("/") if self.remote else Path(base_url_or_root)
        self.filelist = filelist if filelist is not None else "oa_file_list.csv"
        self.skip_retracted = skip_retracted
        self.keep_archives = keep_archives
        self._own_downloader = downloader is None and self.remote
        self.downloader = downloader or (Downloader() if self.remote else None)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _location(self, rel: str) -> str:
        if self.remote:
            return f"{self.base}/{quote(rel.lstrip('/'))}"
        return str(Path(self.base) / rel)

    def _filelist_path(self) -> Path:
        fl = self.filelist
        if isinstance(fl, Path) or (not _is_url(fl) and (Path(fl).is_absolute() or Path(fl).exists())):
            return Path(fl)
        url = fl if _is_url(fl) else None
        if url is None:
            if not self.remote:
                return Path(self.base) / fl
            url = self._location(str(fl))
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="biomedica-filelist-")
        dest = Path(self._tmp.name) / (url.rsplit("/", 1)[-1] or "filelist.csv")
        assert self.downloader is not None
        return self.downloader.download(url, dest)

    def list_articles(self) -> Iterator[ArticleRef]:
        self.unlisted = []
        self.listing_problems = []
        path = self._filelist_path()
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = FileListReader(f, str(self.filelist))
            for ref in reader:
                rel = ref.location
                ref.extra["package"] = rel
                yield replace(ref, location=self._location(rel))
        self.listing_problems.extend((f"{self.filelist}:{line}", reason) for line, reason in reader.bad_rows)

    def fetch(self, ref: ArticleRef, cache_dir: Path) -> ArticlePackage:
        if ref.retracted and self.skip_retracted:
            raise FetchError(RETRACTED, f"{ref.pmcid} is marked retracted in the file list")
        cache_dir = Path(cache_dir)
        dest = cache_dir / ref.pmcid
        if load_extracted(dest) is not None:  # finished earlier: no download
            return package_from_archive(ref, Path(ref.location), dest)
        if not self.remote:
            archive = Path(ref.location)
            if not archive.is_file():
                raise FetchError(NOT_FOUND, f"package {archive} not in mirror")
            return package_from_archive(ref, archive, dest)
        archive = cache_dir / "_archives" / ref.location.rsplit("/", 1)[-1]
        assert self.downloader is not None
        try:
            self.downloader.download(ref.location, archive)
        except DownloadError as e:
            raise FetchError(NOT_FOUND if e.reason == DL_NOT_FOUND else DOWNLOAD_FAILED, str(e)) from e
        try:
            return package_from_archive(ref, archive, dest)
        finally:
            if not self.keep_archives:
                archive.unlink(missing_ok=True)

    def close(self) -> None:
        if self._own_downloader and self.downloader is not None:
            self.downloader.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
