"""Thumbnails for the search server with bounded memory.

A 12000x12000 figure decoded naively costs ~430 MB (RGB) per request, and eight concurrent requests
for slightly different sizes multiplied that. Here:

* **sizes from a fixed set**: a requested size is rounded up to one of :data:`SIZES`, so ``size=200``
  ... ``207`` are one thumbnail (cached, LRU bounded in bytes);
* **one reduced master per figure** (longest side :data:`MASTER_SIDE` .. 2x), made once (concurrent
  requests for the same figure wait for it) and cached; every size is cut from it;
* **decoding without the full image in memory**: JPEGs are DCT-scaled while decoding (``Image.draft``);
  non-interlaced 8-bit PNGs (grey, RGB, RGBA, grey+alpha, palette) are decoded in strips of rows,
  each reduced with ``Image.reduce`` as it arrives (the zlib stream is inflated incrementally and each
  strip is handed to Pillow's own PNG decoder with the previous row to unfilter against);
* **a concurrency limit and a decode budget**: at most ``max_concurrent`` decodes at a time, and a
  decode that must hold the whole image (other formats) reserves its size from ``decode_budget``
  bytes first; one larger than the whole budget is refused (:class:`TooLarge`).
"""
from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable

from biomedica_hf.io.sizes import human_size

SIZES = (64, 128, 160, 256, 320, 512, 768, 1024)
MASTER_SIDE = 1024
STRIP_BYTES = 8 << 20          # raw PNG bytes per strip (~8 MB)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}   # colour type -> samples per pixel


class TooLarge(ValueError):
    """The image would need more memory to decode than the server's decode budget."""


def round_size(size: int) -> int:
    """The smallest size of :data:`SIZES` >= ``size`` (the largest for anything above it)."""
    return next((s for s in SIZES if s >= size), SIZES[-1])


def _chunks(data: bytes):
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            return


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_streamable(data: bytes) -> bool:
    """A non-interlaced 8-bit PNG that :func:`png_reduce` decodes strip by strip."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    for kind, payload in _chunks(data):
        if kind == b"IHDR":
            _, _, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", payload[:13])
            return depth == 8 and ctype in _PNG_CHANNELS and interlace == 0
    return False


def png_reduce(data: bytes, factor: int):
    """The PNG reduced by an integer ``factor`` (``Image.reduce``), decoded ``STRIP_BYTES`` of rows at a time.

    Peak memory is about two strips plus the reduced image, whatever the PNG's size.
    """
    from PIL import Image

    header, extra, idat = None, [], []
    for kind, payload in _chunks(data):
        if kind == b"IHDR":
            header = payload
        elif kind in (b"PLTE", b"tRNS"):
            extra.append(_chunk(kind, payload))
        elif kind == b"IDAT":
            idat.append(payload)
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, ctype, comp, filt, _interlace = struct.unpack(">IIBBBBB", header[:13])
    row_bytes = 1 + width * _PNG_CHANNELS[ctype]
    rows_per_strip = max(factor, (STRIP_BYTES // row_bytes) // factor * factor)
    inflater = zlib.decompressobj()
    pending = bytearray()
    source = iter(idat)
    out = None
    prev: bytes | None = None   # the previous strip's last row, unfiltered
    y = 0
    while y < height:
        n = min(rows_per_strip, height - y)
        need = n * row_bytes
        while len(pending) < need:
            chunk = inflater.unconsumed_tail or next(source, None)
            if chunk is None:
                raise ValueError(f"PNG data ends at row {y + len(pending) // row_bytes} of {height}")
            pending += inflater.decompress(chunk, need - len(pending))
        raw = bytes(pending[:need])
        del pending[:need]
        rows = n + (prev is not None)
        ihdr = struct.pack(">IIBBBBB", width, rows, depth, ctype, comp, filt, 0)
        body = (b"\x00" + prev if prev is not None else b"") + raw
        mini = PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + b"".join(extra) + _chunk(b"IDAT", zlib.compress(body, 0)) \
            + _chunk(b"IEND", b"")
        strip = Image.open(io.BytesIO(mini))
        strip.load()
        if prev is not None:
            strip = strip.crop((0, 1, width, rows))
        prev = strip.crop((0, n - 1, width, n)).tobytes()
        if strip.mode == "P":
            strip = strip.convert("RGBA")
        small = strip.reduce(factor) if factor > 1 else strip
        del strip
        if out is None:
            out = Image.new(small.mode, (-(-width // factor), -(-height // factor)))
        out.paste(small, (0, y // factor))
        y += n
    return out


def _bytes_per_pixel(img) -> int:
    bands = len(img.getbands())
    return bands * (2 if img.mode.startswith("I;16") else 4 if img.mode in ("I", "F") else 1)


class Thumbnailer:
    """JPEG thumbnails of figures with bounded memory (see the module docstring)."""

    def __init__(self, read: Callable[[str], bytes], max_concurrent: int = 2, decode_budget: int = 512 << 20,
                 cache_bytes: int = 64 << 20, masters: int = 16):
        self.read = read
        self.decode_budget = decode_budget
        self.cache_bytes = cache_bytes
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._budget = threading.Condition()
        self._reserved = 0
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._masters: OrderedDict[str, object] = OrderedDict()
        self._max_masters = masters
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cached = 0
        self.decodes = 0   # full decodes done (a counter for tests and logs)

    # ------------------------------------------------------------------ public
    def thumbnail(self, key: str, size: int) -> bytes:
        """JPEG bytes, longest side <= ``round_size(size)``."""
        size = round_size(size)
        with self._lock:
            hit = self._cache.get((key, size))
            if hit is not None:
                self._cache.move_to_end((key, size))
                return hit
        master = self._master(key)
        img = master.copy()
        img.thumbnail((size, size), resample=_lanczos())
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            if (key, size) not in self._cache:
                self._cache[(key, size)] = data
                self._cached += len(data)
            while self._cached > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)
        return data

    # ------------------------------------------------------------------ internals
    def _master(self, key: str):
        with self._lock:
            if key in self._masters:
                self._masters.move_to_end(key)
                return self._masters[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one decode per figure: the others wait for it and share the result
            with self._lock:
                if key in self._masters:
                    return self._masters[key]
            with self._slots:
                master = self._decode(self.read(key))
            with self._lock:
                self._masters[key] = master
                while len(self._masters) > self._max_masters:
                    self._masters.popitem(last=False)
                self._key_locks.pop(key, None)
            return master

    def _decode(self, data: bytes):
        from PIL import Image

        self.decodes += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the budget below bounds memory instead
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            factor = max(1, max(img.size) // MASTER_SIDE)
            if img.format == "PNG" and png_streamable(data):
                return _flatten(png_reduce(data, factor))
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.size[0] // factor), max(1, img.size[1] // factor)))
            need = img.size[0] * img.size[1] * _bytes_per_pixel(img) * (4 if img.mode in ("P", "1") else 1)
            if need > self.decode_budget:
                raise TooLarge(f"decoding this {img.size[0]}x{img.size[1]} {img.format} image needs ~{human_size(need)},"
                               f" over the server's decode budget of {human_size(self.decode_budget)}")
            with self._reserve(need):
                img.load()
                if img.mode in ("P", "1"):
                    img = img.convert("RGBA")
                img.thumbnail((2 * MASTER_SIDE, 2 * MASTER_SIDE), resample=_lanczos())
                return _flatten(img)

    def _reserve(self, n: int):
        outer = self

        class _Reservation:
            def __enter__(self):
                with outer._budget:
                    outer._budget.wait_for(lambda: outer._reserved + n <= outer.decode_budget)
                    outer._reserved += n

            def __exit__(self, *exc):
                with outer._budget:
                    outer._reserved -= n
                    outer._budget.notify_all()
        return _Reservation()


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def _flatten(img):
    """RGB or L (what JPEG stores) by the one image policy (:func:`biomedica_hf.images.to_rgb`: upright,
    transparency onto white, 16-bit stretched; a small image by now)."""
    from biomedica_hf.images import to_rgb

    return to_rgb(img, keep_gray=True)
