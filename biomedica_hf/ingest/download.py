"""Robust HTTP downloads: retries, resume, verification, politeness.

One :class:`Downloader` is shared by every thread of a source. It

* retries 5xx / 429 / 408, connection errors, timeouts and truncated bodies with exponential
  backoff + jitter (``Retry-After`` is honoured, capped by ``max_retry_after``);
* resumes partial downloads with HTTP ``Range`` (``dest.part`` survives between attempts and runs;
  a server that ignores ``Range`` and answers 200 restarts the file cleanly; 416 is understood);
* verifies md5 (PMC Cloud URLs carry ``?md5=<hex>``) and/or size, deletes and retries on mismatch;
* bounds each file in time twice: ``timeout`` is the inactivity limit of one read, ``deadline`` the
  most seconds one file may take, every attempt and backoff wait included (a server trickling one
  byte every few seconds never resets it);
* treats an HTML page served with status 200 for a non-HTML URL (a proxy or portal error page) as a
  transient error, never as the file;
* stops a file named as an image, without an md5 to check it, whose first bytes carry no image signature
  (``not_an_image``, not retried): nothing of it is kept (with an md5, the md5 decides);
* never mistakes a local disk error for a network one: ``ENOSPC`` and other errors writing ``dest``
  propagate as the ``OSError`` (the ``.part`` is removed) so a build can stop instead of
  recording a bad package;
* is atomic: the final file only appears (renamed into place) once complete and verified;
* is polite: a shared token-bucket :class:`RateLimiter`, a cap on concurrent connections and a
  User-Agent naming biomedica-hf.

Errors are :class:`DownloadError` with a machine-friendly ``reason`` (see :data:`REASONS`).
404/410 and other non-retryable 4xx (403 included) fail at once.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import requests
import urllib3

from biomedica_hf import __version__
from biomedica_hf.ingest.media import is_image_name, sniff_image
from biomedica_hf.io.atomic import move_into_place
from biomedica_hf.io.retry import Backoff, RateLimiter, parse_retry_after

USER_AGENT = f"biomedica-hf/{__version__} (PMC-OA image-caption dataset builder; python-requests/{requests.__version__})"

# reason codes of DownloadError
NOT_FOUND = "not_found"
HTTP_ERROR = "http_error"
CHECKSUM_MISMATCH = "checksum_mismatch"
SIZE_MISMATCH = "size_mismatch"
TRUNCATED = "truncated"
CONNECTION = "connection"
TIMEOUT = "timeout"
DEADLINE = "deadline"          # the file took longer than ``deadline`` seconds in all
HTML_PAGE = "html_page"        # an HTML page answered with 200 instead of the file
NOT_AN_IMAGE = "not_an_image"  # a file named as an image whose first bytes are no image signature: not kept
INTERNAL = "error"  # unexpected exception (only from download_many, which never loses an item)
REASONS = (NOT_FOUND, HTTP_ERROR, CHECKSUM_MISMATCH, SIZE_MISMATCH, TRUNCATED, CONNECTION, TIMEOUT, DEADLINE,
           HTML_PAGE, NOT_AN_IMAGE, INTERNAL)

_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")


class DownloadError(Exception):
    """A download that failed for good (after retries, or at once for non-retryable errors)."""

    def __init__(self, url: str, reason: str, detail: str = "", *, status: int | None = None,
                 retryable: bool | None = None, retry_after: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        if retryable is None:
            retryable = reason in (TRUNCATED, CONNECTION, TIMEOUT, CHECKSUM_MISMATCH, SIZE_MISMATCH, HTML_PAGE) or (
                reason == HTTP_ERROR and status in _RETRY_STATUS)
        self.retryable = retryable
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across processes
        return (_rebuild_error, (self.url, self.reason, self.detail, self.status, self.retryable, self.retry_after))


def _rebuild_error(url, reason, detail, status, retryable, retry_after):
    return DownloadError(url, reason, detail, status=status, retryable=retryable, retry_after=retry_after)


class _WriteError(Exception):
    """Internal: writing the body to local storage failed; ``args[0]`` is the ``OSError``."""


_HTML_START = (b"<!doctype html", b"<html", b"<head", b"<body")
_HTML_TAGS = (b"<html", b"<body", b"<title")


def _is_html_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith((".html", ".htm", "/"))


def _looks_like_html(first: bytes, content_type: str) -> bool:
    """An HTML page: the body starts like one, or it is declared ``text/html`` and has HTML tags
    near the start (a declared type alone is not enough: some stores label any object ``text/html``)."""
    head = first[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(_HTML_START):
        return True
    return content_type.lower().startswith("text/html") and any(t in head for t in _HTML_TAGS)


@dataclass
class Fetched:
    """A finished :meth:`Downloader.fetch_file`: the path, and whether its completeness was checked
    (the server's Content-Length, or a caller's md5 / size). An unverified body that turns out
    short (no Content-Length, connection closed early) can only be caught by its content."""

    path: Path
    verified: bool


@dataclass
class DownloadStats:
    """Counters for progress reporting (all updates under a lock)."""

    bytes: int = 0             # body bytes received
    requests: int = 0          # HTTP requests sent
    retries: int = 0           # attempts repeated after a retryable error
    resumed: int = 0           # requests that continued a partial file with Range
    completed: int = 0         # files / objects delivered
    skipped: int = 0           # already present and verified: not fetched again
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            d = {k: getattr(self, k) for k in ("bytes", "requests", "retries", "resumed", "completed",
                                               "skipped", "failed")}
        d["elapsed_s"] = round(self.elapsed, 3)
        d["mb_per_s"] = round(self.mb_per_s, 3)
        return d


@dataclass
class DownloadItem:
    url: str
    dest: Path
    md5: str | None = None
    size: int | None = None
    key: Any = None            # caller's handle (e.g. the file name in the package)


@dataclass
class DownloadResult:
    item: DownloadItem
    path: Path | None = None
    error: DownloadError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None


def split_md5(url: str) -> tuple[str, str | None]:
    """``https://h/k?md5=HEX`` -> (``https://h/k``, ``hex``); other query parameters are kept."""
    parts = urlsplit(url)
    if not parts.query:
        return url, None
    md5 = None
    kept = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k == "md5" and _MD5_RE.match(v):
            md5 = v.lower()
        else:
            kept.append((k, v))
    if md5 is None:
        return url, None
    return urlunsplit(parts._replace(query=urlencode(kept))), md5


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-19/100`` -> (10, 19, 100); ``bytes */100`` -> (None, None, 100)."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    total = int(m.group(3)) if m.group(3) and m.group(3) != "*" else None
    return start, end, total


class Downloader:
    """Thread-safe downloader (one ``requests.Session`` per thread, shared limits and counters).

    Parameters
    ----------
    retries: attempts after the first one for retryable errors.
    backoff / backoff_max / jitter: delay before retry ``i`` is ``min(backoff_max, backoff * 2**i)``
        times ``1 + jitter*U(0,1)``; a ``Retry-After`` answer waits at least that long
        (capped by ``max_retry_after``).
    timeout: seconds, or (connect, read) seconds, per request; the read timeout is an inactivity limit.
    deadline: the most seconds one file (or object) may take, all attempts and waits included;
        None for no limit. Over it: ``DownloadError(deadline)`` (the ``.part`` is kept for a rerun).
        It is checked between reads, so it is overrun by at most one read (bounded by the read timeout).
    rate_per_s / burst: request rate limit shared by all threads (None: unlimited).
    max_connections: concurrent requests in flight, all threads together.
    """

    def __init__(self, *, retries: int = 5, backoff: float = 0.5, backoff_max: float = 30.0,
                 jitter: float = 0.5, max_retry_after: float = 120.0,
                 timeout: float | tuple[float, float] = (10.0, 60.0), deadline: float | None = 1800.0,
                 rate_per_s: float | None = None, burst: int | None = None, max_connections: int = 16,
                 user_agent: str = USER_AGENT, chunk_size: int = 1 << 16, fsync: bool = False,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.schedule = Backoff(base=backoff, cap=backoff_max, jitter=jitter, max_retry_after=max_retry_after)
        self.timeout = timeout
        if deadline is not None and deadline <= 0:
            raise ValueError("deadline must be > 0 seconds (or None)")
        self.deadline = deadline
        self.limiter = RateLimiter(rate_per_s, burst or max(1, int(rate_per_s))) if rate_per_s else None
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.user_agent = user_agent
        self.chunk_size = chunk_size
        self.fsync = fsync
        self.on_bytes = on_bytes
        self.stats = DownloadStats()
        self._idle_sessions: list[requests.Session] = []   # at most max_connections ever exist
        self._all_sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._dest_locks: dict[str, list[Any]] = {}          # dest -> [lock, users] (dropped when unused)
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def _new_session(self) -> requests.Session:
        s = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=1, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.headers.update({"User-Agent": self.user_agent, "Accept-Encoding": "identity"})
        return s

    @contextmanager
    def _slot(self) -> Iterator[requests.Session]:
        """Rate-limit token, one of ``max_connections`` slots and a session nobody else is using.

        Sessions live in a pool (not per thread), so short-lived worker threads never leak
        connections: there are never more than ``max_connections`` sessions.
        """
        if self.limiter is not None:
            self.limiter.acquire()
        with self._slots:
            with self._lock:
                if self._idle_sessions:
                    session = self._idle_sessions.pop()
                else:
                    session = self._new_session()
                    self._all_sessions.append(session)
            try:
                yield session
            finally:
                with self._lock:
                    self._idle_sessions.append(session)

    @contextmanager
    def _dest_guard(self, dest: Path) -> Iterator[None]:
        """Serialise downloads to the same ``dest`` (its ``.part``); entries vanish when unused."""
        key = str(dest)
        with self._lock:
            entry = self._dest_locks.get(key)
            if entry is None:
                entry = self._dest_locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._dest_locks.pop(key, None)

    def _open(self, session: requests.Session, url: str, headers: dict[str, str] | None = None,
              method: str = "GET") -> requests.Response:
        self.stats.add(requests=1)
        try:
            resp = session.request(method, url, headers=headers, stream=True, timeout=self.timeout,
                                   allow_redirects=True)
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout) as e:
            raise DownloadError(url, TIMEOUT, str(e)) from None
        except requests.exceptions.ConnectionError as e:
            raise DownloadError(url, CONNECTION, str(e)) from None
        except requests.exceptions.RequestException as e:
            raise DownloadError(url, CONNECTION, f"{type(e).__name__}: {e}") from None
        return resp

    @staticmethod
    def _raise_for_status(url: str, resp: requests.Response) -> None:
        code = resp.status_code
        if code < 400:
            return
        if code in (404, 410):
            raise DownloadError(url, NOT_FOUND, f"HTTP {code}", status=code, retryable=False)
        raise DownloadError(url, HTTP_ERROR, f"HTTP {code} {resp.reason or ''}".strip(), status=code,
                            retry_after=parse_retry_after(resp.headers.get("Retry-After")))

    def _copy_body(self, url: str, resp: requests.Response, write: Callable[[bytes], Any],
                   expected: int | None, deadline_at: float | None = None, sniff: bool = False) -> int:
        """Stream the raw (undecoded) body into ``write``; raise on truncation, on an HTML page
        where a file was expected, and when ``deadline_at`` (monotonic) passes. Reads return what
        the socket has (``read1``), so a trickling server is caught at the deadline, not after a
        whole chunk. An ``OSError`` from ``write`` raises :class:`_WriteError`."""
        n = 0
        html_check = resp.status_code == 200 and not _is_html_url(url)
        ctype = resp.headers.get("Content-Type") or ""
        # ``sniff`` (a file without an md5 to check it): a body named as an image is sniffed in its first bytes,
        # no image signature -> stop, nothing kept. With an md5, the md5 decides (a mismatch is retried).
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        head: bytes | None = b"" if sniff and resp.status_code == 200 and is_image_name(name) else None
        try:
            while True:
                if deadline_at is not None and time.monotonic() > deadline_at:
                    raise DownloadError(url, DEADLINE, f"over the {self.deadline:g} s deadline after {n} bytes",
                                        retryable=False)
                chunk = resp.raw.read1(self.chunk_size, decode_content=False)
                if html_check and n == 0 and chunk and _looks_like_html(chunk, ctype):
                    raise DownloadError(url, HTML_PAGE, f"HTTP 200 with an HTML page as body ({ctype or 'no type'})")
                if head is not None and len(head) < 16:
                    head += chunk[:16 - len(head)]
                    if (len(head) >= 16 or not chunk) and not sniff_image(name, head):
                        raise DownloadError(url, NOT_AN_IMAGE, f"{name}: first bytes {head[:8].hex()} are no "
                                                               f"image signature", retryable=False)
                if not chunk:
                    break
                try:
                    write(chunk)
                except OSError as e:
                    raise _WriteError(e) from e
                n += len(chunk)
                self.stats.add(bytes=len(chunk))
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as e:
            raise DownloadError(url, TIMEOUT, f"after {n} bytes: {e}") from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.IncompleteRead) as e:
            raise DownloadError(url, TRUNCATED, f"after {n} of {expected} bytes: {e}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise DownloadError(url, CONNECTION, f"after {n} bytes: {type(e).__name__}: {e}") from None
        if expected is not None and n != expected:
            raise DownloadError(url, TRUNCATED, f"got {n} of {expected} bytes")
        return n

    def _deadline_at(self) -> float | None:
        return None if self.deadline is None else time.monotonic() + self.deadline

    def _with_retries(self, url: str, attempt_fn: Callable[[], Any], deadline_at: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return attempt_fn()
            except DownloadError as e:
                delay = self.schedule.delay(attempt, e.retry_after) if e.retryable else 0.0
                if e.retryable and deadline_at is not None and time.monotonic() + delay > deadline_at:
                    e.detail = f"{e.detail}; no time left before the {self.deadline:g} s deadline"
                    e.retryable = False
                if not e.retryable or attempt >= self.retries:
                    if attempt and e.detail and "attempt" not in e.detail:
                        e.detail = f"{e.detail}; after {attempt + 1} attempts"
                    raise
                self.stats.add(retries=1)
                attempt += 1
                if delay > 0:
                    time.sleep(delay)

    # ------------------------------------------------------------------ public API
    def get_bytes(self, url: str, *, md5: str | None = None) -> bytes:
        """GET a small object into memory (retries like :meth:`download`; md5 checked when given
        or when the URL carries ``?md5=``)."""
        req_url, url_md5 = split_md5(url)
        md5 = (md5 or url_md5 or "").lower() or None
        deadline_at = self._deadline_at()

        def attempt() -> bytes:
            buf = bytearray()
            with self._slot() as session:
                resp = self._open(session, req_url)
                with resp:
                    self._raise_for_status(req_url, resp)
                    cl = resp.headers.get("Content-Length")
                    self._copy_body(req_url, resp, buf.extend, int(cl) if cl and cl.isdigit() else None,
                                    deadline_at)
            data = bytes(buf)
            if md5 is not None and hashlib.md5(data).hexdigest() != md5:
                raise DownloadError(req_url, CHECKSUM_MISMATCH, f"md5 {hashlib.md5(data).hexdigest()} != {md5}")
            return data

        try:
            data = self._with_retries(req_url, attempt, deadline_at)
        except DownloadError:
            self.stats.add(failed=1)
            raise
        self.stats.add(completed=1)
        return data

    def head(self, url: str) -> requests.structures.CaseInsensitiveDict:
        """HEAD with retries; returns the response headers."""
        def attempt():
            with self._slot() as session:
                resp = self._open(session, url, method="HEAD")
                with resp:
                    self._raise_for_status(url, resp)
                    return resp.headers
        return self._with_retries(url, attempt)

    def download(self, url: str, dest: Path | str, *, md5: str | None = None, size: int | None = None) -> Path:
        """Download ``url`` to ``dest`` atomically; returns ``dest``.

        A verified ``dest`` that already exists is not fetched again. ``dest.part`` holds the bytes
        received so far and is resumed with ``Range`` (also across runs). On md5/size mismatch the
        partial file is deleted and the download retried; after the last attempt nothing is left.
        An error writing ``dest`` (disk full) raises the ``OSError`` and removes ``dest.part``.
        """
        return self.fetch_file(url, dest, md5=md5, size=size).path

    def fetch_file(self, url: str, dest: Path | str, *, md5: str | None = None, size: int | None = None) -> Fetched:
        """:meth:`download`, also saying whether the body's completeness was verified (see :class:`Fetched`)."""
        req_url, url_md5 = split_md5(url)
        md5 = (md5 or url_md5 or "").lower() or None
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        with self._dest_guard(dest):
            if dest.exists():
                if self._verified(dest, md5, size) is None:
                    self.stats.add(skipped=1)
                    return Fetched(dest, md5 is not None or size is not None)
                dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
            deadline_at = self._deadline_at()
            try:
                checked = self._with_retries(
                    req_url, lambda: self._attempt_download(req_url, dest, part, md5, size, deadline_at), deadline_at)
            except DownloadError as e:
                self.stats.add(failed=1)
                # keep .part only where it is a valid prefix a later run can resume
                resumable = e.reason in (TRUNCATED, CONNECTION, TIMEOUT, DEADLINE, HTML_PAGE) or (
                    e.reason == HTTP_ERROR and e.retryable)
                if not resumable:
                    part.unlink(missing_ok=True)
                raise
            except _WriteError as e:
                self.stats.add(failed=1)
                part.unlink(missing_ok=True)  # may end in a torn write; frees the space
                raise e.args[0] from None
            self.stats.add(completed=1)
            return Fetched(dest, bool(checked) or md5 is not None or size is not None)

    @staticmethod
    def _verified(path: Path, md5: str | None, size: int | None) -> str | None:
        """None when ``path`` matches; else a description of the mismatch."""
        if size is not None:
            got = path.stat().st_size
            if got != size:
                return f"size {got} != {size}"
        if md5 is not None:
            got_md5 = file_md5(path)
            if got_md5 != md5:
                return f"md5 {got_md5} != {md5}"
        return None

    def _finish(self, url: str, dest: Path, part: Path, md5: str | None, size: int | None) -> None:
        bad = self._verified(part, md5, size)
        if bad is not None:
            part.unlink(missing_ok=True)
            raise DownloadError(url, SIZE_MISMATCH if bad.startswith("size") else CHECKSUM_MISMATCH, bad)
        move_into_place(part, dest)

    def _attempt_download(self, url: str, dest: Path, part: Path, md5: str | None, size: int | None,
                          deadline_at: float | None = None) -> bool:
        """One request; True when the server stated the body's length (and it was all received)."""
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if size is not None and offset == size and offset > 0:
            self._finish(url, dest, part, md5, size)  # a previous run got every byte
            return True
        checked = False
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._slot() as session:
            resp = self._open(session, url, headers)
            with resp:
                if resp.status_code == 416 and offset:
                    _, _, total = _parse_content_range(resp.headers.get("Content-Range"))
                    if total is None or total != offset:  # our partial file does not fit: start over
                        part.unlink(missing_ok=True)
                        raise DownloadError(url, HTTP_ERROR, f"HTTP 416 for Range from {offset}", status=416,
                                            retryable=True)
                    # else: the partial file already holds the whole object
                    checked = True
                else:
                    self._raise_for_status(url, resp)
                    checked = self._write_part(url, resp, part, offset, deadline_at, sniff=md5 is None)
        self._finish(url, dest, part, md5, size)
        return checked

    def _write_part(self, url: str, resp: requests.Response, part: Path, offset: int,
                    deadline_at: float | None = None, sniff: bool = False) -> bool:
        if resp.status_code == 206 and offset:
            start, end, _ = _parse_content_range(resp.headers.get("Content-Range"))
            if start != offset or end is None:
                part.unlink(missing_ok=True)
                raise DownloadError(url, TRUNCATED, f"bad Content-Range {resp.headers.get('Content-Range')!r}"
                                    f" for Range from {offset}")
            expected: int | None = end - start + 1
            mode = "ab"
            self.stats.add(resumed=1)
        else:  # 200 (Range ignored, or none asked): restart cleanly
            cl = resp.headers.get("Content-Length")
            expected = int(cl) if cl and cl.isdigit() else None
            mode = "wb"
        try:
            f = open(part, mode)  # noqa: SIM115 - used in `with f` below; an open error is a disk error
        except OSError as e:
            raise _WriteError(e) from e
        try:
            with f:
                self._copy_body(url, resp, f.write, expected, deadline_at, sniff)
                try:
                    f.flush()
                    if self.fsync:
                        os.fsync(f.fileno())
                except OSError as e:
                    raise _WriteError(e) from e
        except OSError as e:     # close() flushes what is buffered: a full disk can surface there too
            raise _WriteError(e) from e
        return expected is not None

    def download_many(self, items: Iterable[DownloadItem | tuple | dict], max_workers: int = 8,
                      on_result: Callable[[DownloadResult], None] | None = None) -> list[DownloadResult]:
        """Download concurrently; one result per item, in input order (never loses an item).

        An ``OSError`` writing a file (disk full) is raised after every item has ended."""
        norm = [_as_item(it) for it in items]
        results: list[DownloadResult] = [DownloadResult(item=it) for it in norm]
        disk_errors: list[OSError] = []

        def one(i: int) -> None:
            r = results[i]
            try:
                r.path = self.download(r.item.url, r.item.dest, md5=r.item.md5, size=r.item.size)
            except DownloadError as e:
                r.error = e
            except OSError as e:
                r.error = DownloadError(r.item.url, INTERNAL, f"{type(e).__name__}: {e}", retryable=False)
                if e.errno in _DISK_ERRNOS:  # local disk: not the item's fault; raised once all items ended
                    disk_errors.append(e)
            except Exception as e:  # noqa: BLE001 - recorded, never lost
                r.error = DownloadError(r.item.url, INTERNAL, f"{type(e).__name__}: {e}", retryable=False)
            if on_result is not None:
                try:
                    on_result(r)
                except Exception:  # noqa: BLE001 - a progress callback must not lose results
                    pass

        if not norm:
            return results
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(norm))),
                                thread_name_prefix="biomedica-dl") as pool:
            for fut in [pool.submit(one, i) for i in range(len(norm))]:
                fut.result()
        if disk_errors:
            raise disk_errors[0]
        return results

    def close(self) -> None:
        with self._lock:
            sessions, self._all_sessions, self._idle_sessions = self._all_sessions, [], []
        for s in sessions:
            s.close()
        self._closed = True

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_item(it: DownloadItem | Sequence | dict) -> DownloadItem:
    if isinstance(it, DownloadItem):
        return it
    if isinstance(it, dict):
        return DownloadItem(url=it["url"], dest=Path(it["dest"]), md5=it.get("md5"), size=it.get("size"),
                            key=it.get("key"))
    url, dest, *rest = it
    return DownloadItem(url, Path(dest), *(rest + [None] * (3 - len(rest))))
