"""Open a package (``.tar.gz``, ``.tar``) as a tar stream, its gzip inflated with ISA-L where python-isal is
installed, else with the stdlib's zlib.

PMC packages are gzip-compressed tars; inflating them was most of the cost of reading one (~0.6 s, 5 %, of a
1-worker build of 1,000 realistic figures went to zlib; docs/scale-and-performance.md). ISA-L's inflate
(PyPI ``isal``, ``isal.isal_zlib``: the zlib API over Intel's ISA-L) does the same work in about two thirds of
the time. :func:`open_tar_stream` is the one place that opens a package's byte stream: it returns what
``tarfile.open(fileobj=raw, mode="r|*")`` returns - the same members, bytes, errors and the same point of
failure in a truncated or corrupt archive - only the inflate engine differs. That sameness is by construction:
:class:`GzipTarStream` is the stdlib's stream reader (``tarfile._Stream`` in gzip read mode: same header
parsing, same 512-byte first block and 10,240-byte reads, the same errors, no CRC check, the first gzip member
only) with the decompressor object taken from :data:`ENGINE`. A plain tar is left to ``tarfile`` as before. A
bzip2 or xz stream is refused (``tarfile.CompressionError``: the package's ``bad_archive``, its article ledgered
``bad_package``): PMC packages are gzip, and ``tarfile`` inflates those formats with no bound on one read's output
(208 bytes of bzip2 are 256 MiB of zeros in one call: a package named ``.tar.gz`` holding one would take a worker's
memory), where a gzip read inflates at most ~1,000-fold (~10 MB per 10 kB read). Without ``isal`` (a platform
without its wheels) the stdlib's zlib runs the same code.
"""
from __future__ import annotations

import inspect
import tarfile
import zlib
from typing import IO, Any

try:  # pragma: no cover - which branch runs depends on the environment
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover
    _isal_zlib = None

#: the inflate engines :func:`open_tar_stream` can use, by name (``zlib`` is always there)
ENGINES: dict[str, Any] = {"zlib": zlib, **({"isal": _isal_zlib} if _isal_zlib is not None else {})}
#: the engine used unless one is named: ISA-L when python-isal imports, else the stdlib's zlib
ENGINE = "isal" if "isal" in ENGINES else "zlib"

_GZIP_MAGIC = b"\x1f\x8b\x08"   # what tarfile's ``r|*`` takes for gzip

_BLOCKSIZE = tarfile.BLOCKSIZE     # the first read (format detection), as tarfile's stream proxy does
_BUFSIZE = tarfile.RECORDSIZE      # every later read of compressed bytes (tarfile.open's default bufsize)
# newer Pythons tell TarFile it reads a stream (as tarfile.open's "r|" does: no member list kept)
_STREAM = {"stream": True} if "stream" in inspect.signature(tarfile.TarFile.__init__).parameters else {}


def _unbounded_kind(first: bytes) -> str | None:
    """The compression (``bzip2``, ``xz``) that ``tarfile``'s ``r|*`` would take ``first`` for, by its own test
    (``tarfile._StreamProxy.getcomptype``); None for gzip and plain tar."""
    if first[0:3] == b"BZh" and first[4:10] == b"1AY&SY":
        return "bzip2"
    if first.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return "xz"
    return None


class GzipTarStream:
    """The stdlib's gzip stream reader for tar (``tarfile._Stream``, mode ``r``, comptype ``gz``) over ``raw``,
    inflating with ``engine`` (a module with zlib's ``decompressobj`` and ``error``). ``first``: the bytes
    already read from ``raw`` to detect the format (returned by the first read, as ``tarfile`` does)."""

    def __init__(self, raw: IO[bytes], first: bytes, engine: Any, bufsize: int = _BUFSIZE) -> None:
        self.name = ""
        self.mode = "r"
        self.fileobj, self.bufsize, self.engine = raw, bufsize, engine
        self._first: bytes | None = first
        self.buf = b""
        self.dbuf = b""           # inflated bytes, of which those from dpos on are not returned yet
        self.dpos = 0
        self.pos = 0
        self.closed = False
        self.exception = engine.error
        self.cmp = engine.decompressobj(-zlib.MAX_WBITS)
        self._read_header()

    def _raw_read(self, size: int) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self.fileobj.read(size)

    def _read_header(self) -> None:
        """The gzip header (RFC 1952), read and checked as ``tarfile._Stream._init_read_gz`` does."""
        if self._rawbuf(2) != b"\037\213":
            raise tarfile.ReadError("not a gzip file")
        if self._rawbuf(1) != b"\010":
            raise tarfile.CompressionError("unsupported compression method")
        flag = self._rawbuf(1)
        if not flag:
            raise tarfile.ReadError("not a gzip file")   # the stdlib fails here with ord('') (TypeError)
        flag_bits = flag[0]
        self._rawbuf(6)
        if flag_bits & 4:
            xlen = self._rawbuf(2)
            if len(xlen) < 2:
                raise tarfile.ReadError("not a gzip file")
            self.read(xlen[0] + 256 * xlen[1])
        for bit in (8, 16):     # file name, comment: NUL-terminated
            if flag_bits & bit:
                while True:
                    s = self._rawbuf(1)
                    if not s or s == b"\0":
                        break
        if flag_bits & 2:
            self._rawbuf(2)

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int = 0) -> int:
        """Forward only, by reading (as ``tarfile._Stream.seek``)."""
        if pos - self.pos < 0:
            raise tarfile.StreamError("seeking backwards is not allowed")
        blocks, remainder = divmod(pos - self.pos, self.bufsize)
        for _ in range(blocks):
            self.read(self.bufsize)
        self.read(remainder)
        return self.pos

    def read(self, size: int) -> bytes:
        """The next ``size`` inflated bytes (fewer at the end of the input)."""
        buf = self._read(size)
        self.pos += len(buf)
        return buf

    def _read(self, size: int) -> bytes:
        """The stdlib's ``_Stream._read`` (the same raw reads and inflate calls, so the same point of failure),
        but the inflated bytes not returned yet stay in ``dbuf`` from offset ``dpos`` instead of being sliced off
        into a new object at every read: a well-compressed member (a run of zeros inflates ~1,000-fold, ~10 MB per
        10 kB read) cost a copy of the whole buffer per 10 kB returned, 42 s for a 1 GiB zero member in a 1 MB
        package; each read now copies only what it returns (~1 s)."""
        start, avail = self.dpos, len(self.dbuf) - self.dpos
        if avail >= size:
            self.dpos += size
            return self.dbuf[start:start + size]
        t = [self.dbuf[start:]] if avail else []
        c = avail
        self.dbuf, self.dpos = b"", 0
        while c < size:
            if self.buf:        # what the header left of the last raw read
                buf, self.buf = self.buf, b""
            else:
                buf = self._raw_read(self.bufsize)
                if not buf:
                    break
            try:
                buf = self.cmp.decompress(buf)
            except self.exception as e:
                raise tarfile.ReadError("invalid compressed data") from e
            need = size - c
            if len(buf) > need:         # the rest waits in dbuf
                self.dbuf, self.dpos = buf, need
                buf = buf[:need]
            t.append(buf)
            c += len(buf)
        return t[0] if len(t) == 1 else b"".join(t)

    def _rawbuf(self, size: int) -> bytes:
        """``size`` compressed bytes (the header), the rest of the raw read kept in ``buf``."""
        c = len(self.buf)
        t = [self.buf]
        while c < size:
            buf = self._raw_read(self.bufsize)
            if not buf:
                break
            t.append(buf)
            c += len(buf)
        joined = b"".join(t)
        self.buf = joined[size:]
        return joined[:size]

    def close(self) -> None:
        self.closed = True   # ``raw`` stays open: it belongs to the caller


def open_tar_stream(raw: IO[bytes], engine: str | None = None) -> tarfile.TarFile:
    """``raw`` (a binary file at its start) as a tar stream: what ``tarfile.open(fileobj=raw, mode="r|*")``
    gives, gzip inflated by ``engine`` (a name in :data:`ENGINES`; default :data:`ENGINE`). Members are read in
    order (``next()``, ``extractfile`` of the current member); errors are tarfile's (``ReadError`` for a stream
    that is no tar or whose compressed data is cut or corrupt; ``CompressionError`` for a bzip2 or xz stream, read no
    further than its first block). ``raw`` is not closed."""
    mod = ENGINES[engine or ENGINE]
    first = raw.read(_BLOCKSIZE)
    if not first.startswith(_GZIP_MAGIC):
        kind = _unbounded_kind(first)
        if kind is not None:
            raise tarfile.CompressionError(f"a {kind}-compressed stream: packages are read as gzip (.tar.gz) or "
                                           f"plain tar only ({kind} has no bound on what one read inflates to)")
        return tarfile.open(fileobj=_Replay(first, raw), mode="r|*")
    stream = GzipTarStream(raw, first, mod)
    try:
        tf = tarfile.TarFile(fileobj=stream, mode="r", **_STREAM)   # type: ignore[arg-type]
    except BaseException:
        stream.close()
        raise
    tf._extfileobj = False   # closing the TarFile closes the stream (as tarfile.open's stream mode does)
    return tf


class _Replay:
    """``raw`` with ``first`` (bytes already read from it) put back in front."""

    def __init__(self, first: bytes, raw: IO[bytes]) -> None:
        self._first: bytes | None = first
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._first is None:
            return self.raw.read(size)
        first, self._first = self._first, None
        if size is None or size < 0:
            return first + self.raw.read()
        if len(first) > size:
            self._first = first[size:]
            return first[:size]
        return first + (self.raw.read(size - len(first)) if size > len(first) else b"")

    def close(self) -> None:
        pass
