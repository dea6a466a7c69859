"""Read the wanted byte ranges of a shard, locally or over HTTP, at the link's speed.

One :class:`RangeReader` reads a sorted list of ``(offset, size)`` ranges of one file and yields each
range's bytes in order. The ranges are first planned into *pieces* (:func:`plan_pieces`):

* ranges separated by a gap of at most ``gap_bytes`` are read in one request, gap included: a request
  costs about ``latency`` seconds, which the link would have filled with ``latency x bandwidth`` bytes,
  shared among the ``in_flight`` requests open at a time - so the default gap is
  ``latency x bandwidth / in_flight`` (0 for a local file: only adjacent ranges are joined);
* a piece holds at most ``piece_bytes`` (a range larger than that is a piece of its own), so a long
  contiguous run is fetched as several plain range GETs of whole samples, ``in_flight`` of them at once,
  each streamed straight into its buffer (no read-ahead buffer, no byte outside the planned pieces).

Pieces are fetched by a thread pool, at most ``in_flight`` requests and ``in_flight_bytes`` ahead of the
consumer (the memory bound). The same code reads a local file (``os.pread``) and a Hub file
(``hf://datasets/{repo}@{rev}/{path}``, through the Hub's ``/resolve/`` URL with ``Range`` and the
``huggingface_hub`` token headers, with ``urllib3`` (connections kept alive per process; proxies and CA bundle from the
environment as ``requests`` reads them); a redirect to a CDN is followed once and its target
reused).
Errors say what is wrong: a missing file (``FileNotFoundError``), a file shorter than the index says
(``ShardTruncatedError``), a server that ignores ranges.

The small synchronous helpers read local files the same way (``os.pread``, the same errors), for every other
reader of ``tar[offset:offset + size]``: :class:`LocalFile` (one open file: one range, or ranges in the order
given), :func:`read_range`, :class:`ShardFiles` (shards of a folder, each opened once), :func:`read_many` /
:func:`iter_many` (rows of an index across shards) and :func:`copy_ranges` (ranges appended to another file).
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np

from biomedica_hf.io.retry import Backoff, parse_retry_after

RANGE_BACKOFF = Backoff(base=0.5, cap=8.0, jitter=0.5, max_retry_after=30.0)  # between attempts of a range GET
HF_URL = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)@(?P<rev>[^/]+)/(?P<path>.+)$")


class ShardTruncatedError(OSError):
    """A shard file ends before a range the index lists in it."""


@dataclass(frozen=True)
class ReadOptions:
    """How :class:`RangeReader` reads. Defaults suit a Hub link (tens of ms per request, ~100 MB/s+).

    Attributes:
        latency: seconds a request costs before its first byte, as assumed for the gap (remote files).
        bandwidth: bytes/s of the link, as assumed for the gap (remote files).
        in_flight: requests open at a time per reader (prefetch depth); 1 disables prefetch. Sparse selections
            (many small requests) on slow links want more: at 100 ms, 128 read a random 10% in 0.31 s instead
            of 0.42 s on the loopback Hub (each is a connection to the server).
        in_flight_bytes: bytes of the requests open at a time (with ``in_flight``, bounds the memory).
        piece_bytes: largest single request; longer runs are split at sample boundaries.
        gap_bytes: read through gaps up to this many bytes between wanted ranges; ``None``:
            ``latency * bandwidth / in_flight`` for remote files, 0 for local files.
        retries: attempts per request on a connection error, 5xx or 429 (remote).
        timeout: seconds without progress before a request fails (remote).
    """

    latency: float = 0.03
    bandwidth: float = 100e6
    in_flight: int = 64
    in_flight_bytes: int = 64 * 2**20
    piece_bytes: int = 8 * 2**20
    gap_bytes: int | None = None
    retries: int = 4
    timeout: float = 60.0

    def gap_for(self, remote: bool) -> int:
        if self.gap_bytes is not None:
            return int(self.gap_bytes)
        return int(self.latency * self.bandwidth / max(1, self.in_flight)) if remote else 0


# ------------------------------------------------------------------------------------ planning
def plan_pieces(ranges: np.ndarray, gap: int, piece_bytes: int,
                first_caps: Sequence[int] = ()) -> list[tuple[int, int, int, int]]:
    """``(start, end, first, last)`` requests covering ``ranges`` (sorted ``(offset, size)`` rows):
    ranges ``first..last-1`` lie in ``[start, end)``; gaps up to ``gap`` bytes are read through. Piece ``k``
    holds at most ``first_caps[k]`` bytes (``piece_bytes`` after them; a single range may exceed either)."""
    pieces: list[tuple[int, int, int, int]] = []
    start = end = first = 0
    cap = first_caps[0] if first_caps else piece_bytes
    for i, (offset, size) in enumerate(ranges.tolist()):
        if i and offset - end <= gap and offset >= end and offset + size - start <= cap:
            end = offset + size
            continue
        if i:
            pieces.append((start, end, first, i))
            cap = first_caps[len(pieces)] if len(pieces) < len(first_caps) else piece_bytes
        start, end, first = offset, offset + size, i
    if len(ranges):
        pieces.append((start, end, first, len(ranges)))
    return pieces


def ramp_caps(options: ReadOptions) -> list[int]:
    """Byte caps of a stream's first pieces: ``piece_bytes x k / n`` for ``k = 1..n``, ``n = 2 x in_flight_bytes /
    piece_bytes``. Pieces of one size that start together share the link and end together, and a window refilled
    then leaves the link idle for a request's latency, every window (``in_flight_bytes``) of the stream: 15 x 30 ms
    over 980 MB. Graduated first pieces end one after another, so the refills stay staggered from then on (a
    processor-sharing model of the link gives 3.95 s for those 980 MB at 250 MB/s and 30 ms, the wire's
    own time, against 4.39 s without). At most ``in_flight`` caps: no more requests than that are ever open at once,
    so tiny pieces (``piece_bytes=1``: one sample per request) ramp over one window's requests, not over a list of
    ``2 x in_flight_bytes`` caps (134 M of them, 20 s and a GB to build)."""
    n = max(1, min(round(2 * options.in_flight_bytes / max(1, options.piece_bytes)), options.in_flight))
    return [max(1, options.piece_bytes * k // n) for k in range(1, n + 1)] if n > 1 else []


# ------------------------------------------------------------------------------------ sources
class LocalFile:
    """One local file opened for positional reads (``os.pread``: no shared position, safe across threads).

    ``read(offset, size)`` returns exactly ``size`` bytes or raises :class:`ShardTruncatedError`; a missing
    file raises ``FileNotFoundError`` (``what`` names the file in the message: a shard, a staging file).
    """

    def __init__(self, path: str | os.PathLike, what: str = "shard listed in the index") -> None:
        self.url = os.fspath(path)
        try:
            self.fd = os.open(self.url, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url}: {what} is missing") from None
        self.size = os.fstat(self.fd).st_size

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (the source interface of :class:`RangeReader`)."""
        if end > self.size:
            raise ShardTruncatedError(f"{self.url} is {self.size:,} bytes but the index lists bytes up to {end:,}: "
                                      f"the shard is truncated or the index is stale (rebuild the dataset)")
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise ShardTruncatedError(f"{self.url}: short read at {start:,} ({len(data)} of {end - start} bytes)")
        return data

    def read(self, offset: int, size: int) -> bytes:
        """The ``size`` bytes at ``offset``."""
        return self.fetch(int(offset), int(offset) + int(size))

    def ranges(self, offsets: Iterable[int], sizes: Iterable[int]) -> Iterator[bytes]:
        """The ranges ``[offset, offset + size)``, in the order given (give them in offset order for speed)."""
        for offset, size in zip(offsets, sizes):
            yield self.read(offset, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_range(path: str | os.PathLike, offset: int, size: int) -> bytes:
    """One range of one local file (see :class:`LocalFile` for the errors)."""
    with LocalFile(path) as f:
        return f.read(offset, size)


def copy_ranges(path: str | os.PathLike, offsets: Iterable[int], sizes: Iterable[int], dst: BinaryIO,
                check: Callable[[int, int, bytes], None] | None = None) -> int:
    """Append the ranges of ``path`` to the open file ``dst`` in the order given; returns the bytes written.
    ``check(offset, size, data)`` may raise to refuse a range (a tar range must be whole 512-byte blocks)."""
    written = 0
    with LocalFile(path) as f:
        for offset, size in zip(offsets, sizes):
            data = f.read(offset, size)
            if check is not None:
                check(int(offset), int(size), data)
            dst.write(data)
            written += len(data)
    return written


class ShardFiles:
    """Local shards below ``root`` by relative name, each opened once (on first use) until :meth:`close`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.fspath(root)
        self._open: dict[str, LocalFile] = {}

    def file(self, shard: str) -> LocalFile:
        f = self._open.get(shard)
        if f is None:
            f = self._open[shard] = LocalFile(os.path.join(self.root, shard))
        return f

    def read(self, shard: str, offset: int, size: int) -> bytes:
        return self.file(shard).read(offset, size)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_many(root: str | os.PathLike, shards: Sequence[str], offsets: Sequence[int],
              sizes: Sequence[int]) -> list[bytes]:
    """The bytes of rows ``i`` (``shards[i]``, ``offsets[i]``, ``sizes[i]``) in the order given, read one
    shard at a time in offset order (each shard opened once)."""
    out: list[bytes] = [b""] * len(shards)
    order = sorted(range(len(shards)), key=lambda i: (shards[i], int(offsets[i])))
    with ShardFiles(root) as files:
        for i in order:
            out[i] = files.read(shards[i], offsets[i], sizes[i])
    return out


def iter_many(root: str | os.PathLike, shards: Iterable[str], offsets: Iterable[int],
              sizes: Iterable[int]) -> Iterator[bytes]:
    """Like :func:`read_many`, streamed in the order given (one range in memory at a time)."""
    with ShardFiles(root) as files:
        for shard, offset, size in zip(shards, offsets, sizes):
            yield files.read(shard, offset, size)


_clients_lock = threading.Lock()
_managers: dict[tuple[int, str | None], Any] = {}
MAX_CONNECTIONS = 256          # kept-alive connections per host and process (above: opened, used, then closed)
REDIRECTS = 5


def _http(proxy: str | None) -> Any:
    """The process's ``urllib3`` pool manager (one per proxy): thread-safe, connections kept alive and shared by
    the reader threads. ``urllib3`` directly, not ``requests``: a third of the CPU per request (no session merge
    of environment, cookies and hooks), which a filtered stream of many small ranges spends in the GIL.
    Certificates as ``requests`` verifies them (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else ``certifi``)."""
    key = (os.getpid(), proxy)
    with _clients_lock:
        manager = _managers.get(key)
        if manager is None:
            import certifi
            import urllib3

            ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
            options = {"maxsize": MAX_CONNECTIONS, "block": False, "cert_reqs": "CERT_REQUIRED", "ca_certs": ca}
            manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
            _managers[key] = manager
        return manager


def _proxy(url: str) -> str | None:
    """The proxy for ``url`` from the environment (``HTTPS_PROXY``, ``NO_PROXY``, ...), as ``requests`` picks it."""
    from requests.utils import get_environ_proxies, select_proxy

    return select_proxy(url, get_environ_proxies(url))


class _Retry(OSError):
    """A transient failure of one attempt (connection dropped, 429, 5xx): the request is tried again."""


def http_url(url: str) -> str:
    """The HTTP URL of ``hf://datasets/{repo}@{rev}/{path}`` (``HF_ENDPOINT``'s ``/resolve/``), or ``url``."""
    m = HF_URL.match(url)
    if not m:
        return url
    from huggingface_hub import constants, hf_hub_url

    return hf_hub_url(m["repo"], unquote(m["path"]), repo_type="dataset", revision=unquote(m["rev"]),
                      endpoint=constants.ENDPOINT)


class _HttpSource:
    def __init__(self, url: str, token: str | bool | None, options: ReadOptions) -> None:
        from huggingface_hub.utils import build_hf_headers

        self.url, self.resolve_url = url, http_url(url)
        self.target = self.resolve_url              # a redirect target, once known
        self.headers = build_hf_headers(token=token)
        self.options = options
        self.size: int | None = None
        self._proxies: dict[str, str | None] = {}   # per host: the environment is read once, not per request

    def _get(self, url: str, headers: dict[str, str]) -> tuple[Any, str]:
        """``(response, its URL)``: a GET following redirects (Hub ``/resolve/`` -> CDN), the token sent only to
        the host it was meant for."""
        import urllib3

        timeout = urllib3.Timeout(connect=self.options.timeout, read=self.options.timeout)
        for _ in range(REDIRECTS + 1):
            host = urlsplit(url).netloc
            if host not in self._proxies:
                self._proxies[host] = _proxy(url)
            r = _http(self._proxies[host]).request("GET", url, headers=headers, preload_content=False,
                                                   redirect=False, retries=False, timeout=timeout)
            location = r.headers.get("Location")
            if r.status not in (301, 302, 303, 307, 308) or not location:
                return r, url
            r.drain_conn()
            r.release_conn()
            target = urljoin(url, location)
            if urlsplit(target).netloc != host:
                headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
            url = target
        raise OSError(f"{self.resolve_url}: more than {REDIRECTS} redirects")

    def fetch(self, start: int, end: int) -> bytes:
        import urllib3

        retry_after: float | None = None
        for attempt in range(self.options.retries + 1):
            url = self.target
            headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
            if url == self.resolve_url:
                headers.update(self.headers)
            try:
                r, final = self._get(url, headers)
                complete = False
                try:
                    if r.status == 404:
                        raise FileNotFoundError(f"{self.url}: shard listed in the index is missing on the Hub "
                                                f"(404 from {self.resolve_url})")
                    if r.status == 416:
                        raise ShardTruncatedError(f"{self.url} ends before byte {end:,} that the index lists: the "
                                                  f"shard is truncated or the index is stale")
                    if r.status in (403, 410) and url != self.resolve_url:
                        self.target = self.resolve_url  # an expired signed CDN URL: resolve again
                        continue
                    if r.status == 429 or r.status >= 500:
                        retry_after = parse_retry_after(r.headers.get("Retry-After"))
                        raise _Retry(f"HTTP {r.status}")
                    if r.status >= 400:
                        hint = " (a private or gated repo needs token=)" if r.status in (401, 403) else ""
                        raise OSError(f"{self.resolve_url}: HTTP {r.status} {r.reason}{hint}")
                    if r.status != 206:
                        raise OSError(f"{self.resolve_url}: the server ignored the byte range (status "
                                      f"{r.status}); range reads need a server that answers 206")
                    if final != url:
                        self.target = final     # a CDN redirect: later ranges go there directly
                    # one read of the whole body, filled from the socket into one buffer
                    data = r.read(end - start, decode_content=False)
                    promised = r.headers.get("Content-Length")
                    complete = len(data) == end - start and promised == str(end - start)
                finally:
                    if complete:
                        r.release_conn()        # the body was read whole: the connection is reused
                    else:
                        r.close()               # an error, or a body not read to its end: never reused
                if len(data) < end - start and promised == str(end - start):   # promised whole, then cut off
                    raise _Retry(f"connection dropped after {len(data):,} of {end - start:,} bytes")
                if len(data) != end - start:
                    raise ShardTruncatedError(f"{self.url}: the server sent {len(data):,} of the {end - start:,} "
                                              f"bytes at {start:,} (truncated shard?)")
                return data
            except (_Retry, urllib3.exceptions.HTTPError) as e:   # HTTPError: connect, read, timeout, protocol
                if attempt == self.options.retries:
                    raise OSError(f"{self.url}: bytes {start}..{end} failed after {attempt + 1} attempts: {e}") from e
                time.sleep(RANGE_BACKOFF.delay(attempt, retry_after))
                retry_after = None
        raise OSError(f"{self.url}: bytes {start}..{end} could not be read")

    def close(self) -> None:
        pass


def open_source(url: str, token: str | bool | None = None, options: ReadOptions | None = None) -> Any:
    """A source with ``fetch(start, end) -> bytes``: local path, ``hf://datasets/...`` or ``http(s)://``."""
    if url.startswith(("hf://", "http://", "https://")):
        return _HttpSource(url, token, options or ReadOptions())
    return LocalFile(url)


# ------------------------------------------------------------------------------------ reader
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    key = (os.getpid(), n)
    with _clients_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="biomedica-read")
        return _pools[key]


class RangeReader:
    """Yield the bytes of each wanted range of one file, in order, with prefetch (see the module doc)."""

    def __init__(self, url: str, ranges: np.ndarray, options: ReadOptions | None = None,
                 token: str | bool | None = None) -> None:
        self.options = options or ReadOptions()
        self.url, self.ranges = url, ranges
        self.remote = url.startswith(("hf://", "http://", "https://"))
        self.pieces = plan_pieces(ranges, self.options.gap_for(self.remote), self.options.piece_bytes)
        self.token = token
        self.bytes_read = sum(e - s for s, e, _, _ in self.pieces)

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        """``(index of the range, its bytes)`` for every range."""
        for _, i, view in read_files([(self.url, self.ranges)], self.options, self.token, [self.pieces]):
            yield i, view


def read_files(files: Sequence[tuple[str, np.ndarray]], options: ReadOptions | None = None,
               token: str | bool | None = None, pieces: Sequence[list] | None = None,
               ) -> Iterator[tuple[int, int, memoryview]]:
    """``(index of the file, index of the range, its bytes)`` for every wanted range of several files, in order.

    One prefetch window spans the files: the first requests of the next file are already under way while the
    last ranges of this one are consumed, so a stream of many small selections (a filter that keeps a few samples
    per shard) pays the request latency once, not once per file. A file is opened when its first piece is
    requested and closed when its last range has been consumed.

    The window is refilled as requests *complete*, not as the consumer reaches them: at most ``in_flight``
    requests are on the wire, and at most ``in_flight_bytes`` are requested but not yet consumed (the memory
    bound). Refilling on completion keeps requests staggered, so the link is not left idle for a request's
    latency after each batch of requests that finished together.
    """
    options = options or ReadOptions()
    if pieces is not None:
        plans = list(pieces)
    else:
        plans, caps = [], ramp_caps(options)     # the stream's first pieces graduated (see ramp_caps)
        for url, r in files:
            plans.append(plan_pieces(r, options.gap_for(url.startswith(("hf://", "http://", "https://"))),
                                     options.piece_bytes, caps))
            caps = caps[len(plans[-1]):]
    depth = max(1, options.in_flight)
    total = sum(len(p) for p in plans)
    pool = _pool(depth) if depth > 1 and total > 1 else None
    todo = ((f, piece, k == len(plan) - 1) for f, plan in enumerate(plans) for k, piece in enumerate(plan))
    sources: dict[int, Any] = {}
    queue: deque[tuple[int, tuple[int, int, int, int], bool, Future | None]] = deque()
    queued_bytes = 0                      # requested and not yet consumed
    on_wire = [0]                         # requested and not yet complete
    done = threading.Condition()

    def completed(_: Future) -> None:
        with done:
            on_wire[0] -= 1
            done.notify()

    def room() -> bool:      # without a pool, a queued piece is fetched when reached: the queue is the window
        return nxt is not None and (on_wire[0] if pool is not None else len(queue)) < depth and (
            not queue or queued_bytes + nxt[1][1] - nxt[1][0] <= options.in_flight_bytes)

    nxt = next(todo, None)
    try:
        while True:
            while room():
                f, piece, last_of_file = nxt
                if f not in sources:
                    sources[f] = open_source(files[f][0], token, options)
                job = None
                if pool is not None:
                    with done:
                        on_wire[0] += 1
                    job = pool.submit(sources[f].fetch, piece[0], piece[1])
                    job.add_done_callback(completed)
                queue.append((f, piece, last_of_file, job))
                queued_bytes += piece[1] - piece[0]
                nxt = next(todo, None)
            if not queue:
                return
            job = queue[0][3]
            if job is not None and not job.done():
                with done:                # sleep until the head is ready or a request completes (room to refill)
                    while not job.done() and not room():
                        done.wait()
                if not job.done():
                    continue
            f, (start, end, first, last), last_of_file, job = queue.popleft()
            queued_bytes -= end - start
            data = job.result() if job is not None else sources[f].fetch(start, end)
            view = memoryview(data)
            ranges = files[f][1]
            for i in range(first, last):
                offset, size = int(ranges[i, 0]), int(ranges[i, 1])
                yield f, i, view[offset - start:offset - start + size]
            if last_of_file:
                sources.pop(f).close()
    finally:
        for _, _, _, job in queue:   # let fetches already running finish before their files are closed
            if job is not None and not job.cancel():
                try:
                    job.result()
                except Exception:  # noqa: BLE001, S110 - the consumer has stopped; this error is not its
                    pass
        for source in sources.values():
            source.close()
