"""Legacy PMC-OA mirror: ``oa_file_list.csv`` + ``oa_package/xx/yy/PMCid.tar.gz``.

The layout PMC served until 2026 (moved under ``deprecated/`` on 2026-04-13, removed August 2026)
and which existing mirrors and archives still have. ``base_url_or_root`` is an HTTP(S) base URL or a
local mirror directory. Packages are downloaded (resumable, length-checked) and extracted safely;
a truncated gzip keeps every member read before the error. A local mirror's packages are read in memory
(:func:`read_package`: the same package, nothing written) unless the source's ``extract_to_disk`` is set.
Every package is opened by :func:`biomedica_hf.io.gzstream.open_tar_stream` (gzip inflated with ISA-L where
python-isal is installed).
"""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

from biomedica_hf.ingest.media import SNIFF_BYTES, is_image_name, sniff_image
from biomedica_hf.ingest.sources.base import (
    BAD_PACKAGE,
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_PACKAGE_BYTES,
    DOWNLOAD_FAILED,
    NOT_FOUND,
    OUTSIDE_INPUT,
    RETRACTED,
    XML_SUFFIXES,
    FatalBuildError,
    FetchError,
    Source,
    fatal_disk_error,
    is_disk_error,
    package_from_dir,
    package_from_members,
)
from biomedica_hf.ingest.sources.filelists import FileListReader
from biomedica_hf.io.gzstream import open_tar_stream
from biomedica_hf.io.markers import read_marker, write_marker
from biomedica_hf.schema import ArticlePackage, ArticleRef

if TYPE_CHECKING:
    from biomedica_hf.ingest.download import Downloader

ARCHIVE_PROBLEM = "<archive>"
MARKER = ".biomedica_package.json"   # written last into an extracted package: extraction complete
ARCHIVE_TOO_LARGE = "archive_too_large"   # over the uncompressed-bytes budget (member or package)
DUPLICATE_MEMBER = "duplicate_member"     # a second member with the same name (once the top folder is dropped)
NOT_AN_IMAGE = "not_an_image"             # named as an image, no image signature in its first 64 kB: not written


@dataclass(frozen=True)
class ArchiveLimits:
    """Budgets on uncompressed bytes: all members of one package, and one member."""

    max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES

    def __post_init__(self) -> None:
        if self.max_package_bytes < 1 or self.max_member_bytes < 1:
            raise ValueError("archive budgets must be >= 1 byte")


class _DiskError(Exception):
    """Internal: writing the extraction failed (wraps the OSError, never a property of the archive)."""


@dataclass
class Extracted:
    """What an archive gave: its files (name -> path), the problems met, and - read in memory
    (:func:`read_package`) - the bytes of the files the build reads (``data``; ``files`` then name paths that
    were never written)."""

    files: dict[str, Path] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False
    detail: str = ""
    data: dict[str, bytes] = field(default_factory=dict)
    in_memory: bool = False


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


def extract_package(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> Extracted:
    """Extract ``archive`` (tar, tar.gz) into ``dest`` safely and atomically.

    Only regular files are written; absolute names, ``..`` and links are refused (problem
    ``unsafe_member``); member names lose the package's top folder (``PMC123/x.jpg`` -> ``x.jpg``).
    A second member that maps to a name already extracted is never written over the first: it is
    recorded as ``(member name, "duplicate_member")``. A member named as an image whose first 64 kB carry no
    image signature is recorded as ``(member, "not_an_image")`` after that first block: not written to disk.
    Budgets (``limits``, on uncompressed bytes, checked from the member headers before a byte is
    written and enforced while copying): a member over ``max_member_bytes`` is skipped as
    ``(member, "archive_too_large")``; once the members seen add up to more than
    ``max_package_bytes`` the rest of the archive is not read and ``("<archive>",
    "archive_too_large")`` is recorded (members extracted before stay).
    A truncated/corrupt archive keeps every complete member read before the error and records
    ``("<archive>", "truncated_archive")`` (and ``(member, "truncated")`` for the member cut short).
    ``dest`` is replaced as a whole once extraction ends; a completion marker is written last.
    A full disk (or any error writing under ``dest``) is never blamed on the archive: it raises
    :class:`~biomedica_hf.ingest.sources.base.FatalBuildError` (disk full, quota) or the ``OSError``,
    leaves no marker, and the next call starts over.
    """
    archive, dest = Path(archive), Path(dest)
    limits = limits or ArchiveLimits()
    tmp = dest.with_name(dest.name + ".extracting")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        out = Extracted()
        _read_archive(archive, _DiskSink(tmp), out, limits)
        write_marker(tmp / MARKER, {"archive": archive.name, "problems": out.problems, "files": sorted(out.files)})
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except _DiskError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space; the rerun extracts again
        err = e.args[0]
        raise (fatal_disk_error(err, str(tmp)) if is_disk_error(err) else err) from err
    except OSError as e:
        if is_disk_error(e):
            shutil.rmtree(tmp, ignore_errors=True)
            raise fatal_disk_error(e, str(tmp)) from e
        raise
    out.files = {n: dest / n for n in out.files}
    return out


def _problem_name(name: str, taken: set[str]) -> str:
    """A ledger name for a member that is not among the extracted files (unique in the package)."""
    n, i = name, 1
    while n in taken:
        i += 1
        n = f"{name}#{i}"
    return n


def _read_archive(archive: Path, sink, out: Extracted, limits: ArchiveLimits) -> None:
    """Open ``archive`` as a tar stream and read its members into ``sink`` (:func:`_read_members`); an archive
    that cannot be opened, or is not a tar, is recorded on ``out`` as ``bad_archive`` with the error."""
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed by the `with raw` below; open errors differ
    except OSError as e:  # the archive itself could not be read
        out.problems.append((ARCHIVE_PROBLEM, "bad_archive"))
        out.detail = f"{type(e).__name__}: {e}"
        return
    with raw:
        try:
            tf = open_tar_stream(raw)
        except _TAR_ERRORS as e:
            out.problems.append((ARCHIVE_PROBLEM, "bad_archive"))
            out.detail = f"{type(e).__name__}: {e}"
            return
        with tf:
            _read_members(tf, sink, out, limits)


class _DiskSink:
    """Members written under ``root`` (``name.part``, then renamed)."""

    def __init__(self, root: Path) -> None:
        self.root, self.real_root = root, root.resolve()

    def place(self, rel: str) -> bool:
        """Make room for ``rel``: False when it cannot go there (outside the root, a file where a folder goes)."""
        target = self.root / rel
        if self.real_root not in target.resolve().parents:
            return False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if is_disk_error(e):
                raise _DiskError(e) from e
            return False                            # a file where a folder goes
        return True

    def copy(self, tf: tarfile.TarFile, m: tarfile.TarInfo, rel: str) -> None:
        target = self.root / rel
        part = target.with_name(target.name + ".part")
        try:
            _copy_member(tf, m, _open_part(part), sniff=rel)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        try:
            part.replace(target)
        except OSError as e:
            raise _DiskError(e) from e


class _UseDisk(Exception):
    """Internal: a package the memory reader leaves to :func:`extract_package` (see :func:`read_package`)."""


#: the most bytes of one package :func:`read_package` holds in memory; a larger package is extracted to disk
DEFAULT_MAX_MEMORY_BYTES = 256 << 20
#: the longest name of one path component most file systems take (a longer one is left to the disk's own error)
_NAME_MAX = 255


class _MemorySink:
    """Members read into memory: the bytes of those the build reads (the XML and the images) are kept, the
    rest is read (its truncation is found as on disk) and dropped. Whatever the disk would treat in its own way
    (a folder where a file goes, a ``.part`` name, a name too long, a NUL) raises :class:`_UseDisk`, and so
    does a package whose kept bytes would pass ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        self.data: dict[str, bytes] = {}
        self.kept = 0
        self.files: set[str] = set()
        self.dirs: set[str] = set()

    def place(self, rel: str) -> bool:
        parts = rel.split("/")
        if (rel in self.dirs or "\0" in rel or any(p.endswith(".part") for p in parts)
                or any(len(p.encode("utf-8", "surrogateescape")) > _NAME_MAX for p in parts)):
            raise _UseDisk(rel)
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(d in self.files for d in prefixes):
            return False                            # a file where a folder goes
        self.dirs.update(prefixes)
        return True

    def copy(self, tf: tarfile.TarFile, m: tarfile.TarInfo, rel: str) -> None:
        keep = rel.lower().endswith(XML_SUFFIXES) or is_image_name(rel)
        if keep and self.kept + m.size > self.max_bytes:
            raise _UseDisk(rel)
        buf = _Sink(keep)
        _copy_member(tf, m, buf, sniff=rel)
        self.files.add(rel)
        if keep:
            self.data[rel] = buf.value()
            self.kept += m.size


class _Sink:
    """A write-only file that keeps what it is given (``keep``) or only counts it."""

    def __init__(self, keep: bool) -> None:
        self.blocks: list[bytes] | None = [] if keep else None

    def write(self, block: bytes) -> None:
        if self.blocks is not None:
            self.blocks.append(block)

    def flush(self) -> None:
        pass

    def value(self) -> bytes:
        assert self.blocks is not None
        return self.blocks[0] if len(self.blocks) == 1 else b"".join(self.blocks)

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def read_package(archive: Path, dest: Path, limits: ArchiveLimits | None = None,
                 max_bytes: int = DEFAULT_MAX_MEMORY_BYTES) -> Extracted | None:
    """Read ``archive`` as :func:`extract_package` would extract it into ``dest``, without writing a byte: the
    same files (``files`` names paths under ``dest`` that are never written), problems, detail and truncation,
    and the bytes of the XML and image members in ``data`` (the only files the build reads; other members are
    read, so that a truncation is found where extraction finds it, and dropped). None when the package is left
    to extraction: its XML and images would hold more than ``max_bytes`` in memory, or a name that the file
    system treats in its own way (a member where an earlier member made a folder, a ``.part`` name, a name
    longer than 255 bytes, a NUL)."""
    archive, dest = Path(archive), Path(dest)
    limits = limits or ArchiveLimits()
    out = Extracted(in_memory=True)
    sink = _MemorySink(dest, max_bytes)
    try:
        _read_archive(archive, sink, out, limits)
    except _UseDisk:
        return None
    out.data = sink.data
    return out


def _read_members(tf: tarfile.TarFile, sink, out: Extracted, limits: ArchiveLimits) -> None:
    """The members of ``tf`` into ``sink`` (:class:`_DiskSink` or :class:`_MemorySink`), the rules of
    :func:`extract_package`; ``out.files`` gets each member placed (name -> path under the sink's root)."""
    total = 0
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
        taken = set(out.files) | {p[0] for p in out.problems}
        if not m.isfile() or rel is None:
            reason = "unsafe_member" if (rel is None or m.issym() or m.islnk()) else "skipped_member"
            out.problems.append((_problem_name(m.name, taken), reason))
            continue
        total += m.size
        if total > limits.max_package_bytes:
            out.problems.append((_problem_name(rel, taken), ARCHIVE_TOO_LARGE))
            out.problems.append((ARCHIVE_PROBLEM, ARCHIVE_TOO_LARGE))
            out.detail = (f"members add up to more than {limits.max_package_bytes} bytes uncompressed "
                          f"(at {m.name}, {m.size} bytes); the rest of the archive was not read")
            return
        if m.size > limits.max_member_bytes:
            out.problems.append((_problem_name(rel, taken), ARCHIVE_TOO_LARGE))
            continue  # the stream skips its bytes without writing them
        if rel in out.files:
            out.problems.append((_problem_name(m.name, taken), DUPLICATE_MEMBER))
            continue
        if not sink.place(rel):
            out.problems.append((_problem_name(m.name, taken), "unsafe_member"))
            continue
        try:
            sink.copy(tf, m, rel)
        except _NotAnImage:     # the stream skips the rest of its bytes without writing them
            out.problems.append((rel, NOT_AN_IMAGE))
            continue
        except _TAR_ERRORS:
            out.problems.append((rel, "truncated"))
            out.problems.append((ARCHIVE_PROBLEM, "truncated_archive"))
            out.truncated = True
            return
        out.files[rel] = sink.root / rel


class _NotAnImage(Exception):
    """Internal: a member named as an image whose first bytes are no image signature."""


def _open_part(part: Path):
    try:
        return open(part, "wb")  # noqa: SIM115 - the caller's `with`; an open error is a disk error
    except OSError as e:
        raise _DiskError(e) from e


def _copy_member(tf: tarfile.TarFile, m: tarfile.TarInfo, f, chunk: int = 1 << 20,
                 sniff: str | None = None) -> None:
    """Copy one member to the open file ``f`` (closed here): archive errors raise as they are (the archive is
    bad), errors writing ``f`` raise :class:`_DiskError`; never more than ``m.size`` bytes are written.
    ``sniff``: the member's name; one that claims an image and whose first :data:`SNIFF_BYTES` carry no image
    signature raises :class:`_NotAnImage` after that first block, before a byte is written (the stream then
    skips the rest of the member)."""
    src = tf.extractfile(m)
    assert src is not None
    n = 0
    with f:
        while n < m.size:
            block = src.read(min(max(chunk, SNIFF_BYTES), m.size - n))
            if not block:
                break
            if n == 0 and sniff is not None and not sniff_image(sniff, block[:SNIFF_BYTES]):
                raise _NotAnImage(sniff)
            try:
                f.write(block)
            except OSError as e:
                raise _DiskError(e) from e
            n += len(block)
        try:
            f.flush()
        except OSError as e:
            raise _DiskError(e) from e
    if n != m.size:
        raise EOFError(f"member {m.name}: {n} of {m.size} bytes")


def load_extracted(dest: Path) -> Extracted | None:
    """The result of a finished earlier extraction into ``dest`` (resume), else None."""
    info = read_marker(Path(dest) / MARKER)
    if info is None:
        return None
    files = {n: Path(dest) / n for n in info.get("files", [])}
    if not all(p.is_file() for p in files.values()):
        return None
    return Extracted(files=files, problems=[tuple(p) for p in info.get("problems", [])],
                     truncated=any(p[1] == "truncated_archive" for p in info.get("problems", [])))


def package_from_archive(ref: ArticleRef, archive: Path, dest: Path, limits: ArchiveLimits | None = None, *,
                         in_memory: bool = False) -> ArticlePackage:
    """Extract (or reuse a finished extraction of) ``archive`` into ``dest`` -> package. ``in_memory``: read the
    archive without writing it to disk (:func:`read_package`; the same package, its files' bytes held in
    ``ArticlePackage.data``), unless the package is one :func:`read_package` leaves to extraction.

    Raises ``FetchError(bad_package)`` when the package holds no XML.
    """
    ext = load_extracted(dest)
    if ext is None and in_memory:
        ext = read_package(archive, dest, limits)
    return _package(ref, archive, dest, ext or extract_package(archive, dest, limits))


def _package(ref: ArticleRef, archive: Path, dest: Path, ext: Extracted) -> ArticlePackage:
    if not any(n.lower().endswith((".xml", ".nxml")) and "/" not in n for n in ext.files):
        detail = f"no XML in {archive.name}"
        if ext.problems:
            detail += f" ({', '.join(f'{a}: {b}' for a, b in ext.problems)})"
        if ext.detail:
            detail += f" [{ext.detail}]"
        raise FetchError(BAD_PACKAGE, detail)
    if ext.in_memory:
        return package_from_members(ref, dest, list(ext.files), ext.data, problems=ext.problems)
    return package_from_dir(ref, dest, problems=ext.problems)


def mirror_relpath(rel: str) -> str | None:
    """A file-list ``File`` path as a path inside the mirror (``oa_package/ac/6a/PMC1.tar.gz``), or None when it
    could leave it: absolute (``/x``, ``C:x``, ``\\x``), with a ``..`` part, a backslash or a NUL. Pure; the same
    rule as the local source's: a listing never makes a build read a file outside its input."""
    if not rel or "\\" in rel or "\0" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _is_url(s: str | Path) -> bool:
    return isinstance(s, str) and s.startswith(("http://", "https://"))


class LegacySource(Source):
    """Articles of a legacy ``oa_file_list.csv`` mirror (HTTP base URL or local directory).

    ``filelist``: path or URL of the list; default ``<base>/oa_file_list.csv``; a relative path
    that does not exist locally is taken relative to the base. Whatever the list's origin, its package paths
    resolve inside the mirror only (:func:`mirror_relpath`; a local mirror's links are resolved too): a row
    with ``..`` or an absolute path is refused at fetch (``bad_package``, detail ``outside_input: ...``).
    """

    name = "legacy"

    def __init__(self, base_url_or_root: str | Path, filelist: str | Path | None = None, *,
                 downloader: Downloader | None = None, skip_retracted: bool = True,
                 keep_archives: bool = False, max_package_bytes: int | None = None,
                 max_member_bytes: int | None = None) -> None:
        super().__init__()
        self.limits = ArchiveLimits(max_package_bytes or DEFAULT_MAX_PACKAGE_BYTES,
                                    max_member_bytes or DEFAULT_MAX_MEMBER_BYTES)
        self.remote = _is_url(base_url_or_root)
        self.base = str(base_url_or_root).rstrip("/") if self.remote else Path(base_url_or_root)
        self.filelist = filelist if filelist is not None else "oa_file_list.csv"
        self.skip_retracted = skip_retracted
        self.keep_archives = keep_archives
        self._own_downloader = downloader is None and self.remote
        if downloader is None and self.remote:
            from biomedica_hf.ingest.download import Downloader    # (requests: only a remote mirror imports it)

            downloader = Downloader()
        self.downloader = downloader
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _location(self, rel: str) -> str:
        """Where a package is: its URL on a remote mirror; on a local mirror its path relative to the mirror root
        (resolved by :meth:`_local`), so that the ledger never names a path of this machine."""
        if self.remote:
            return f"{self.base}/{quote(rel.lstrip('/'))}"
        return rel.lstrip("/")

    def _local(self, location: str) -> Path:
        p = Path(location)
        return p if p.is_absolute() else Path(self.base) / p

    def _filelist_path(self) -> Path:
        fl = self.filelist
        if isinstance(fl, Path) or (not _is_url(fl) and (Path(fl).is_absolute() or Path(fl).exists())):
            return Path(fl)
        url = fl if _is_url(fl) else None
        if url is None:
            if not self.remote:
                return Path(self.base) / fl
            url = f"{self.base}/{quote(str(fl).lstrip('/'))}"
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
        name = str(self.filelist).rsplit("/", 1)[-1]    # the file's name: never a path of this machine
        self.listing_problems.extend((f"{name}:{line}", reason) for line, reason in reader.bad_rows)

    def _check_inside(self, ref: ArticleRef) -> None:
        """Refuse (``bad_package``, ``outside_input``) a file-list path that leaves the mirror: ``..``, absolute,
        or (local mirror) a link resolving outside it."""
        rel = ref.extra.get("package")
        if rel is None:
            return
        where = self.base if self.remote else Path(self.base).resolve()
        if mirror_relpath(rel) is None:
            raise FetchError(BAD_PACKAGE, f"{OUTSIDE_INPUT}: file list path {rel!r} is not a path inside the "
                                          f"mirror {where}")
        if not self.remote:
            real = Path(self.base, rel).resolve()
            if real != where and where not in real.parents:
                raise FetchError(BAD_PACKAGE, f"{OUTSIDE_INPUT}: file list path {rel!r} resolves to {real}, "
                                              f"outside the mirror {where}")

    def fetch(self, ref: ArticleRef, cache_dir: Path) -> ArticlePackage:
        if ref.retracted and self.skip_retracted:
            raise FetchError(RETRACTED, f"{ref.pmcid} is marked retracted in the file list")
        self._check_inside(ref)
        cache_dir = Path(cache_dir)
        dest = cache_dir / ref.pmcid
        if load_extracted(dest) is not None:  # finished earlier: no download
            return package_from_archive(ref, self._local(ref.location) if not self.remote else Path(ref.location),
                                        dest, self.limits)
        if not self.remote:
            archive = self._local(ref.location)
            if not archive.is_file():
                raise FetchError(NOT_FOUND, f"package {ref.location} not in mirror")
            return package_from_archive(ref, archive, dest, self.limits, in_memory=not self.extract_to_disk)
        archive = cache_dir / "_archives" / ref.location.rsplit("/", 1)[-1]
        try:
            return _package(ref, archive, dest, self._download_complete(ref, archive, dest))
        except FatalBuildError:
            archive.unlink(missing_ok=True)  # fetched again on the rerun; frees space now
            raise
        finally:
            if not self.keep_archives:
                archive.unlink(missing_ok=True)

    def _download_complete(self, ref: ArticleRef, archive: Path, dest: Path) -> Extracted:
        """Download and extract ``ref``'s package into ``dest`` (on disk: a rerun reuses it instead of downloading
        it again), what it gave. A body whose length nobody stated
        (no Content-Length, no size in the list) that extracts as a truncated or unreadable archive
        was most likely cut in transit: it is discarded and fetched again (up to the downloader's
        retries), then reported as ``download_failed`` (transient), never as a bad package."""
        from biomedica_hf.ingest.download import NOT_FOUND as DL_NOT_FOUND
        from biomedica_hf.ingest.download import DownloadError

        assert self.downloader is not None
        dl = self.downloader
        for attempt in range(dl.retries + 1):
            try:
                got = dl.fetch_file(ref.location, archive)
            except DownloadError as e:
                raise FetchError(NOT_FOUND if e.reason == DL_NOT_FOUND else DOWNLOAD_FAILED, str(e)) from e
            except OSError as e:
                if is_disk_error(e):
                    raise fatal_disk_error(e, str(archive)) from e
                raise
            ext = extract_package(archive, dest, self.limits)
            cut = ext.truncated or (ARCHIVE_PROBLEM, "bad_archive") in ext.problems
            if got.verified or not cut:
                return ext
            shutil.rmtree(dest, ignore_errors=True)
            archive.unlink(missing_ok=True)
            if attempt < dl.retries:
                dl.stats.add(retries=1)
                time.sleep(dl.schedule.delay(attempt))
        raise FetchError(DOWNLOAD_FAILED, f"{ref.location}: body without Content-Length ended early "
                                          f"(archive truncated) in {dl.retries + 1} attempts")

    def close(self) -> None:
        if self._own_downloader and self.downloader is not None:
            self.downloader.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
