"""Images: resolve a JATS ``xlink:href`` to a package file, and decode / verify / normalise it.

Two pure entry points:

* :func:`resolve_graphic` maps an ``xlink:href`` to the best image file of the package
  (extension-less hrefs, wrong extensions, case, path prefixes, full image over ``.gif`` thumbnail);
  :func:`alternate_renditions` names the other renditions of the same figure, for the ledger.
* :func:`process_image` turns the bytes of one file into an :class:`ImageRecord`: the bytes that go
  into the shard (``jpg`` or ``png``) plus size, source format / mode and SHA-256;
  :func:`process_figure` (what the build calls) also returns the image's perceptual hash, from the same
  decode: each figure is decoded once (a kept JPEG at a reduced DCT scale, which still reads the whole
  entropy-coded stream, so truncation is caught as by a full decode).

Output policy of :func:`process_image` ("original bytes, or lossless PNG"):

* JPEG (``L``/``RGB``) and PNG (8-bit modes) that decode completely are kept byte for byte
  (``reencoded=False``): no generation loss, and identical files keep identical hashes.
* Everything else is converted to PNG (``reencoded=True``); the pipeline never adds lossy
  compression.  That covers GIF, TIFF, BMP, WebP, ..., CMYK/YCCK JPEG (many viewers and ML
  loaders mis-render CMYK; converted via the embedded ICC profile when there is one) and
  16-bit grayscale PNG (``datasets.Image`` decodes it as ``I;16`` and the usual
  ``.convert("RGB")`` clips it to almost pure white - see ``keep_16bit_png``).
* Mode handling is the explicit table :data:`~biomedica_hf.images.TARGET_MODE` of the core images module
  (:func:`biomedica_hf.images.to_output_mode`, the one pixel policy of every stage).  High bit depth (``I;16*``, ``I``,
  ``F``) is stretched linearly from the image's actual min..max to 0..255 (no clipping; 12-bit
  data stored in 16 bits stays visible); non-finite floats map to 0.  Alpha is kept (``RGBA``/
  ``LA``) unless every pixel is opaque, in which case it is dropped (lossless).
* Only the first frame of multi-frame files (animated GIF, multi-page TIFF) is used.
* EXIF orientation: kept originals keep their tag (``datasets.Image`` applies it on decode);
  converted images have it applied to the pixels, because the tag is not carried over.
  ``width``/``height`` are the *displayed* size, i.e. after orientation, in both cases.
* Converted PNGs: every row filtered with Up and deflated with zlib's RLE strategy (:data:`PNG_STRATEGY` ``up-rle``:
  zlib-ng where installed, stdlib zlib otherwise, the same bytes; ~2.8x faster than libpng's Paeth + RLE, the fourth
  round's choice, for 17 % more bytes on the fixtures' TIFF/GIF figures).
* Converted PNGs carry no metadata (no text, time, EXIF, dpi); the ICC profile is kept only when
  it matches the output colour space (RGB profile on RGB/RGBA, gray profile on L/LA).  Output is
  deterministic: same input bytes and settings -> same output bytes.
"""
from __future__ import annotations

import hashlib
import io
import math
import posixpath
import struct
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import unquote

from PIL import Image, ImageFile, UnidentifiedImageError

from biomedica_hf.images import (
    HIGH_BIT_DEPTH,
    TARGET_MODE,
    UnsupportedMode,
    apply_orientation,
    exif_orientation,
    stretch_to_l,
    to_output_mode,
)
from biomedica_hf.neardup.hashing import HASH_NAME, definition_of, draft_for_hash, image_phash
from biomedica_hf.schema import ImageRecord

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEDIA_REASONS",
    "MediaError",
    "TARGET_MODE",
    "alternate_renditions",
    "is_image_name",
    "process_figure",
    "process_image",
    "resolve_graphic",
    "sha256_bytes",
    "warm_up",
]

MEDIA_REASONS = (
    "image_missing",       # href resolves to no file of the package
    "decode_error",        # bytes are an image format we know, but cannot be decoded
    "truncated_image",     # decoding ran out of data
    "decompression_bomb",  # header claims more than ``max_pixels`` pixels
    "too_small",           # a side is below ``min_side``
    "unsupported_format",  # not an image / a format we do not accept
    "image_too_large",     # decoding would need more than ``max_image_bytes`` of memory
    "not_an_image",        # named as an image, but its first bytes are no image signature (check_image_file)
    "metadata_too_large",  # JPEG/PNG metadata over ``max_metadata_bytes`` (check_image_file)
)

#: default decode budget: the bytes Pillow would allocate for the decoded pixels (see :func:`decoded_bytes`)
DEFAULT_MAX_IMAGE_BYTES = 256 << 20

# bytes per pixel of Pillow's in-memory storage, by mode (3-band 8-bit images are padded to 4)
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """Memory the decoded pixels take: width x height x bands x bytes per band, as Pillow stores
    them (``L`` 1, ``I;16`` 2, ``RGB``/``RGBA``/``CMYK``/``I``/``F`` 4 bytes a pixel)."""
    w, h = size
    return w * h * _PIXEL_BYTES.get(mode, 4)


class MediaError(Exception):
    """An image that cannot go into the dataset; ``reason`` is one of :data:`MEDIA_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in MEDIA_REASONS:
            raise ValueError(f"unknown media reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Resolving xlink:href -> package file
# --------------------------------------------------------------------------------------------

#: image file extensions -> rendition priority (lower is better).  ``.gif`` is last: in PMC
#: packages a ``.gif`` next to a ``.jpg`` of the same stem is the thumbnail.
IMAGE_EXTENSIONS: dict[str, int] = {
    "jpg": 0, "jpeg": 0,
    "png": 1,
    "tif": 2, "tiff": 2,
    "webp": 3, "bmp": 3,
    "gif": 4,
}

# Extensions stripped from an href before stem matching ("fig1.eps" declared, "fig1.jpg" shipped).
# A fixed list, not "anything after the last dot": PLOS / bioRxiv stems contain dots
# ("journal.pone.0067380.g001", "nihpp-2023.12.31.573776v1-f0001").
_STRIPPABLE_EXTENSIONS = frozenset(IMAGE_EXTENSIONS) | {
    "eps", "ps", "pdf", "svg", "ai", "psd", "jp2", "pct", "pict", "wmf", "emf", "jpe", "jfif",
}


def _split_ext(name: str, known: frozenset[str] | Mapping[str, int]) -> tuple[str, str]:
    """``("dir/fig1", "jpg")`` for ``"dir/fig1.JPG"`` when the extension is in ``known``."""
    base = posixpath.basename(name)
    if "." in base:
        stem, ext = name.rsplit(".", 1)
        if ext.lower() in known:
            return stem, ext.lower()
    return name, ""


def is_image_name(name: str) -> bool:
    """True when the file name has an image extension (:data:`IMAGE_EXTENSIONS`)."""
    return bool(_split_ext(name, IMAGE_EXTENSIONS)[1])


def _clean_path(name: str) -> str:
    """Forward slashes, no empty or ``.`` segments: ``".\\fig\\a.jpg"`` -> ``"fig/a.jpg"``."""
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _normalise_href(href: str) -> str:
    """An href as a relative path: URL scheme/host, query, fragment and %-escapes removed."""
    h = unquote(href.strip())
    if "://" in h:
        h = h.split("://", 1)[1].split("/", 1)[-1]
    return _clean_path(h.split("?", 1)[0].split("#", 1)[0])


def _key_stem(name: str) -> str:
    """Lower-case relative path of a package file without its image extension."""
    return _split_ext(_clean_path(name).lower(), IMAGE_EXTENSIONS)[0]


def _file_size(path: Path | str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _best(names: list[str], files: Mapping[str, Path], size: Callable[[str], int] | None = None) -> str:
    """Best rendition: extension priority, then larger file, then name (deterministic)."""
    size = size or (lambda n: _file_size(files[n]))
    return min(names, key=lambda n: (IMAGE_EXTENSIONS[_split_ext(n, IMAGE_EXTENSIONS)[1]], -size(n), n))


def resolve_graphic(href: str, files: Mapping[str, Path], size: Callable[[str], int] | None = None) -> str | None:
    """Key of ``files`` that an ``xlink:href`` refers to, or None.

    Tried in order, first hit wins: (1) exact key, unless it is a ``.gif`` with a better
    same-stem rendition; (2) same relative path and stem, case-insensitive, any image extension;
    (3) same base-name stem in any folder.  Within (2)/(3) the best rendition is chosen by
    :data:`IMAGE_EXTENSIONS` priority (jpg > png > tif > webp/bmp > gif), then the larger file.
    Non-image files are never returned.  Only ``stat`` is used (for the size tie-break), or ``size(name)`` when
    given (files held in memory).
    """
    h = _normalise_href(href)
    if not h:
        return None
    images = [k for k in files if is_image_name(k)]
    for exact in (href.strip(), h):
        if exact in files and is_image_name(exact):
            if _split_ext(exact, IMAGE_EXTENSIONS)[1] != "gif":
                return exact
            break  # a .gif: look for a better rendition of the same stem below

    full = h.lower()
    stems = {full, _split_ext(full, _STRIPPABLE_EXTENSIONS)[0]}
    same_path = [k for k in images if _key_stem(k) in stems]
    if same_path:
        return _best(same_path, files, size)

    base_stems = {posixpath.basename(s) for s in stems}
    same_base = [k for k in images if posixpath.basename(_key_stem(k)) in base_stems]
    return _best(same_base, files, size) if same_base else None


def alternate_renditions(name: str, files: Mapping[str, Path]) -> list[str]:
    """Other image files with the same folder and stem as ``name`` (e.g. the ``.gif`` thumbnail)."""
    stem = _key_stem(name)
    return sorted(k for k in files if k != name and is_image_name(k) and _key_stem(k) == stem)


# --------------------------------------------------------------------------------------------
# Decoding / normalising
# --------------------------------------------------------------------------------------------

#: formats Pillow may open: an allow-list ("JPEG" also opens MPO).  Anything else - EPS (would
#: run Ghostscript), PDF, office files, exotic rasters - is ``unsupported_format``.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP", "JPEG2000", "PPM")

#: sources kept byte for byte: format -> (accepted modes, shard extension)
KEEP_ORIGINAL: dict[str, tuple[frozenset[str], str]] = {
    "JPEG": (frozenset({"L", "RGB"}), "jpg"),
    "MPO": (frozenset({"L", "RGB"}), "jpg"),
    "PNG": (frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"}), "png"),
}

# ICC header bytes 16..20: data colour space, checked against the output mode
_ICC_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "LA": b"GRAY"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAGIC = (b"\xff\xd8\xff", _PNG_SIGNATURE, b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
          b"BM", b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")

PNG_COMPRESS_LEVEL = 6

try:
    from isal import isal_zlib as _igzip
except ImportError:                      # pragma: no cover - a platform without python-isal's wheels
    _igzip = None

try:                                     # zlib-ng's RLE writes stdlib zlib's bytes in ~40 % of its time
    from zlib_ng import zlib_ng as _rle_zlib
except ImportError:                      # pragma: no cover - a platform without zlib-ng's wheels
    _rle_zlib = zlib

#: how converted PNGs are encoded, each chosen by measurement on the fixtures' converted TIFF/GIF figures
#: (docs/scale-and-performance.md):
#:
#: * ``up-rle`` (the default since issue 28's eleventh round): the Up filter on every row (numpy, bands of ~1 MiB of
#:   rows) deflated with zlib's RLE strategy (runs of the byte before: distance 1 only, no hash table), by zlib-ng
#:   where installed (PyPI ``zlib-ng``) and stdlib zlib otherwise: the two write the same bytes (checked on every
#:   fixture figure by the tests), zlib-ng's deflate in ~40 % of the time. 1.4x ``up-igzip``'s encoding time (its
#:   deflate alone: 2.3x) for 1.8 % fewer bytes.
#: * ``up-igzip`` (the default of the sixth to tenth rounds; kept for folders built with it, where python-isal is
#:   installed): the same rows deflated by ISA-L's igzip at level :data:`PNG_IGZIP_LEVEL`. Not reproducible: igzip's
#:   matcher can pick another of two equally long matches for the same input in another process (seen on one eLife
#:   TIFF: in two clean-clone test runs, and in 1 of 38 runs of the resume test), so the same pixels do not always
#:   give the same bytes, and an exact duplicate can be missed. A valid PNG of the same pixels either way.
#: * ``paeth-rle`` (the default of the fourth and fifth rounds): libpng through ``imagecodecs`` with the Paeth filter
#:   on every row and zlib's RLE strategy: Pillow-``rle``'s size (+0.5 %) in half its time (Pillow spends most of its
#:   encoding choosing a filter per row, which no Pillow setting turns off).
#: * Pillow's encoder with a zlib strategy: ``rle`` (the default before; level 6's size at level 1's speed, RLE does
#:   not depend on the level except 0), ``default`` (zlib's LZ77 at ``compress_level``), ``filtered``.
#:
#: All but ``up-igzip`` are deterministic: the same pixels and settings give the same bytes.
PNG_STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "filtered": zlib.Z_FILTERED, "rle": zlib.Z_RLE,
                  "paeth-rle": zlib.Z_RLE, "up-rle": None, "up-igzip": None}
PNG_STRATEGY = "up-rle"


def png_strategy_available(strategy: str) -> bool:
    """Whether this installation writes converted PNGs of ``strategy`` (``up-igzip`` needs python-isal)."""
    return strategy in PNG_STRATEGIES and (strategy != "up-igzip" or _igzip is not None)


#: igzip's level of ``up-igzip`` (0-3), part of its definition (the card names it): 1 and 2 encode the fixture figures
#: in the same time, 2 0.5 % smaller
PNG_IGZIP_LEVEL = 2
#: rows are filtered and deflated in bands of about this many bytes: the image is never copied whole
_PNG_BAND_BYTES = 1 << 20
#: PNG colour types of the modes the Up writers (``up-rle``, ``up-igzip``) take (8 bits a sample)
_PNG_COLOR_TYPE = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}
#: the strategies that encode with libpng and one fixed row filter (``imagecodecs.PNG.FILTER`` names)
_LIBPNG_FILTER = {"paeth-rle": "PAETH"}
#: the PNG modes libpng is given as arrays (``np.asarray`` of these is uint8 with 1-4 channels): the Up writers'
_LIBPNG_MODES = frozenset(_PNG_COLOR_TYPE)

# what Pillow raises on malformed input (plugins are not consistent about it)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                  ZeroDivisionError, struct.error)


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _encode_png(im: Image.Image, icc: bytes | None, compress_level: int, strategy: str = PNG_STRATEGY) -> bytes:
    """Deterministic PNG: no metadata chunks except a matching ICC profile.

    Clears ``im.info`` (Pillow's PNG writer would pick up transparency / ICC from it); callers
    pass an image they own.
    """
    im.info = {}
    keep_icc = bool(icc) and 20 <= len(icc) <= MAX_ICC_BYTES and icc[16:20] == _ICC_SPACE.get(im.mode)
    if strategy == "up-igzip" and _igzip is None:
        raise ValueError("png_strategy 'up-igzip' needs python-isal (pip install isal); 'paeth-rle' does not")
    if strategy in _UP_DEFLATERS and im.mode in _PNG_COLOR_TYPE:
        return _encode_up(im, icc if keep_icc else None, _UP_DEFLATERS[strategy])
    if strategy in _LIBPNG_FILTER and im.mode in _LIBPNG_MODES:
        return _encode_libpng(im, icc if keep_icc else None, compress_level, strategy)
    if strategy in _UP_DEFLATERS:               # an Up writer for a mode it does not take: Pillow's RLE
        strategy = "rle"
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=compress_level,
            compress_type=PNG_STRATEGIES[strategy], icc_profile=icc if keep_icc else None)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _iccp(icc: bytes) -> bytes:
    """The ``iCCP`` chunk of a profile, as Pillow writes it (name "ICC Profile", zlib's default level)."""
    return _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc))


def _rle_deflater():
    """``up-rle``'s zlib stream: zlib's RLE strategy at memLevel 8 and a 32 KiB window (header ``78 01``), whose bytes
    zlib-ng and stdlib zlib write alike."""
    return _rle_zlib.compressobj(6, zlib.DEFLATED, 15, 8, zlib.Z_RLE)


def _igzip_deflater():
    return _igzip.compressobj(PNG_IGZIP_LEVEL)


#: the deflater of each Up writer: a new zlib-format compressor (``compress``/``flush``) per image
_UP_DEFLATERS: dict[str, Callable[[], object]] = {"up-rle": _rle_deflater, "up-igzip": _igzip_deflater}


def _encode_up(im: Image.Image, icc: bytes | None, deflater: Callable[[], object]) -> bytes:
    """``im`` (L, LA, RGB, RGBA; 8 bits) as a PNG of IHDR, an ``iCCP`` chunk when ``icc``, one IDAT and IEND: every
    row filtered with Up (its difference to the row above, modulo 256; the first row as it is) and the rows deflated
    by ``deflater()`` as one zlib stream, fed in bands of ~1 MiB (the pixels are read from ``im`` band by band, never
    copied whole)."""
    import numpy as np

    w, h = im.size
    row = w * len(im.getbands())
    band = max(1, _PNG_BAND_BYTES // row)
    deflate = deflater()
    parts, above = [], None
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        rows = np.frombuffer(im.crop((0, y0, w, y1)).tobytes(), np.uint8).reshape(y1 - y0, row)
        filtered = np.empty((y1 - y0, row + 1), np.uint8)
        filtered[:, 0] = 2                                          # filter type 2: Up
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])      # uint8 arithmetic wraps: modulo 256
        if above is None:
            filtered[0, 1:] = rows[0]                               # above the first row: zeros
        else:
            np.subtract(rows[0], above, out=filtered[0, 1:])
        above = rows[-1]
        parts.append(deflate.compress(filtered))
    parts.append(deflate.flush())
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[im.mode], 0, 0, 0)
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header), _iccp(icc) if icc else b"",
                     _png_chunk(b"IDAT", b"".join(parts)), _png_chunk(b"IEND", b"")))


def _encode_libpng(im: Image.Image, icc: bytes | None, compress_level: int, strategy: str) -> bytes:
    """``im`` (L, LA, RGB, RGBA) as a PNG written by libpng (``imagecodecs.png_encode``: IHDR, IDAT, IEND) with one
    row filter for every row; an ICC profile goes into an ``iCCP`` chunk right after IHDR, as Pillow writes it."""
    import imagecodecs
    import numpy as np

    png = imagecodecs.png_encode(np.asarray(im), level=compress_level, strategy=PNG_STRATEGIES[strategy],
                                 filter=imagecodecs.PNG.FILTER[_LIBPNG_FILTER[strategy]])
    if not icc:
        return bytes(png)
    ihdr_end = 8 + 12 + 13            # signature, then IHDR (length, type, 13 bytes, CRC)
    return bytes(png[:ihdr_end]) + _iccp(icc) + bytes(png[ihdr_end:])


def _bomb_action(max_pixels: int) -> str:
    """Filter action for Pillow's ``DecompressionBombWarning`` (> ``Image.MAX_IMAGE_PIXELS``).

    Our header check enforces ``max_pixels``; the warning is promoted to an error whenever
    Pillow's threshold is at least as strict, and ignored when the caller allows more.
    Pillow's hard error (> 2 * ``MAX_IMAGE_PIXELS``) always applies.
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    return "error" if pil_limit is not None and max_pixels <= pil_limit else "ignore"


def _open(data: bytes) -> Image.Image:
    """``Image.open`` restricted to :data:`ALLOWED_FORMATS`; classify failures."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError("decompression_bomb", str(e)) from e
    except UnidentifiedImageError as e:
        reason = "decode_error" if _looks_like_image(data) else "unsupported_format"
        raise MediaError(reason, "cannot identify image") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise MediaError("decode_error", f"{type(e).__name__}: {e}") from e


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# TIFF (offsets, byte counts) tag pairs: strips, tiles
_TIFF_EXTENTS = ((273, 279), (324, 325))


def _missing_tail(im: Image.Image, data: bytes) -> str:
    """Why the file is cut short, checked from the header before decoding ("" when complete).

    A PNG cut after its last pixel row decodes without complaint but lacks IEND (and the kept
    bytes would be incomplete); a TIFF whose strips/tiles run past the end of the file is
    reported by libtiff only as a generic "decoder error -2".  Data after the pixels (e.g.
    Photoshop layers in eLife TIFFs) may be missing without harm.
    """
    if im.format == "PNG" and data.rfind(_PNG_IEND) < 0:
        return "PNG has no IEND chunk"
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None:
        for off_tag, count_tag in _TIFF_EXTENTS:
            offsets, counts = tags.get(off_tag), tags.get(count_tag)
            if offsets is None or counts is None:
                continue
            offsets = offsets if isinstance(offsets, tuple) else (offsets,)
            counts = counts if isinstance(counts, tuple) else (counts,)
            end = max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)
            if end > len(data):
                return f"TIFF image data ends at byte {end}, file has {len(data)}"
    return ""


def _load(im: Image.Image) -> None:
    """Force a full decode of the (first) frame; classify failures."""
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError("decompression_bomb", str(e)) from e
    except _DECODE_ERRORS as e:
        msg = str(e)
        truncated = isinstance(e, EOFError) or "truncated" in msg.lower() or "premature" in msg
        raise MediaError("truncated_image" if truncated else "decode_error",
                         f"{type(e).__name__}: {msg}") from e


def process_image(data: bytes, name: str = "", *, max_pixels: int = 178_956_970,
                  min_side: int = 20, keep_16bit_png: bool = False,
                  compress_level: int = PNG_COMPRESS_LEVEL, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                  reduce_to_pixels: int | None = None, png_strategy: str = PNG_STRATEGY) -> ImageRecord:
    """Decode, verify and normalise one image file; see the module docstring for the policy and
    :func:`process_figure` for the options. A JPEG kept byte for byte is decoded at 1/8 scale (``draft``):
    the whole entropy-coded stream is still read, so truncation and corrupt data are still caught."""
    return process_figure(data, name, max_pixels=max_pixels, min_side=min_side, keep_16bit_png=keep_16bit_png,
                          compress_level=compress_level, max_image_bytes=max_image_bytes,
                          reduce_to_pixels=reduce_to_pixels, png_strategy=png_strategy, phash=False)[0]


def warm_up() -> None:
    """Import what the first figure of a process imports (Pillow's plugins, the PNG encoder and the pHash's DCT:
    ~0.06 CPU s since the DCT is loaded without ``scipy.fft``, :func:`biomedica_hf.neardup.hashing._dct_ii`) by
    processing three tiny images: the build's driver calls it before it forks its workers, so that each worker does
    not pay it again."""
    from PIL import Image

    for fmt, name in (("JPEG", "warm.jpg"), ("PNG", "warm.png"), ("TIFF", "warm.tif")):
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (200, 100, 50)).save(buf, fmt)
        try:
            process_figure(buf.getvalue(), name)
        except MediaError:      # pragma: no cover - a warm-up never fails the build
            pass


def process_figure(data: bytes, name: str = "", *, max_pixels: int = 178_956_970,
                   min_side: int = 20, keep_16bit_png: bool = False,
                   compress_level: int = PNG_COMPRESS_LEVEL, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                   reduce_to_pixels: int | None = None, png_strategy: str = PNG_STRATEGY,
                   phash: bool = True, phash_definition: str = HASH_NAME) -> tuple[ImageRecord, str | None]:
    """Decode, verify and normalise one image file, and (``phash=True``) hash it, from one decode.

    Returns the :class:`ImageRecord` and the 256-bit pHash of the written image
    (:func:`biomedica_hf.neardup.hashing.bytes_phash` of ``record.data``, bit for bit, computed from the pixels
    this call decodes anyway: a kept JPEG at the DCT scale the hash uses, a kept PNG as decoded, a converted
    image from the pixels it encodes); the hash is None when ``phash=False`` or when hashing fails (a hash is a
    hint, never a reason to fail a figure). ``phash_definition`` names the hash's definition
    (:data:`biomedica_hf.neardup.hashing.DEFINITIONS`; a kept JPEG's decode scale follows it): an update keeps
    its folder's.

    Raises :class:`MediaError` (``decode_error``, ``truncated_image``, ``decompression_bomb``,
    ``too_small``, ``unsupported_format``).  The pixel limit is checked on the header size
    before any pixel is decoded; Pillow's own hard limit (2 * ``Image.MAX_IMAGE_PIXELS``) also
    applies.  ``keep_16bit_png=True`` keeps 16-bit grayscale PNGs as they are.
    Decode budget: ``max_image_bytes`` bounds the memory of the decoded pixels
    (:func:`decoded_bytes`: bit depth and bands count), checked from the header before the decoder
    allocates; over it ``image_too_large``.  ``reduce_to_pixels``: images with more pixels are
    downscaled (aspect kept) to at most that many and re-encoded as PNG; JPEGs are decoded at a
    reduced DCT scale (``draft``: the full-size pixels never exist), other formats are decoded
    (within the budget) and then reduced.
    ``compress_level`` (zlib 0-9) and ``png_strategy`` (:data:`PNG_STRATEGIES`) of converted PNGs trade speed
    for size; output bytes depend on them. With the default ``rle`` the level does not matter (except 0); with
    ``default``, on the fixture TIFFs level 1 encodes 2-5x faster than 6 and is 15-80 % larger.  Pillow's
    ``UserWarning``s about damaged metadata ("Corrupt EXIF data") are silenced: the pixels are
    what is verified.  Warning filters are changed only inside ``warnings.catch_warnings()``.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped the global: truncation would pass
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must be False")
    if not data:
        raise MediaError("decode_error", "empty file")
    if phash:
        definition_of(phash_definition)     # an unknown name is the caller's error, never a null hash
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter(_bomb_action(max_pixels), Image.DecompressionBombWarning)
        im = _open(data)
        try:
            return _process(im, data, name, max_pixels, min_side, keep_16bit_png, compress_level,
                            max_image_bytes, reduce_to_pixels, phash, png_strategy, phash_definition)
        except MediaError:
            raise
        except _DECODE_ERRORS as e:
            raise MediaError("decode_error", f"{type(e).__name__}: {e}") from e
        finally:
            im.close()


def _target_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect and at most ``max_pixels`` pixels (sides >= 1)."""
    w, h = size
    scale = math.sqrt(max_pixels / (w * h))
    tw, th = max(1, int(w * scale)), max(1, int(h * scale))
    while tw * th > max_pixels and (tw > 1 or th > 1):
        tw, th = max(1, tw - (tw >= th)), max(1, th - (th > tw))
    return tw, th


def _reduce(im: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale a loaded image to at most ``max_pixels`` pixels: integer ``reduce`` (box average,
    cheap) where the mode allows, then an exact LANCZOS resize to the target size."""
    if im.mode in HIGH_BIT_DEPTH and im.mode not in ("I", "F"):
        im = stretch_to_l(im)
    elif im.mode in ("1", "P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else TARGET_MODE[im.mode])
    tw, th = _target_size(im.size, max_pixels)
    factor = min(im.width // tw, im.height // th)
    if factor >= 2:
        im = im.reduce(factor)
    if im.width * im.height > max_pixels:
        im = im.resize((tw, th), Image.Resampling.LANCZOS)
    return im


def _phash(im: Image.Image, definition: str) -> str | None:
    try:
        return image_phash(im, definition)
    except Exception:  # noqa: BLE001 - a hash is a hint: never fails the figure
        return None


def _process(im: Image.Image, data: bytes, name: str, max_pixels: int, min_side: int,
             keep_16bit_png: bool, compress_level: int, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
             reduce_to_pixels: int | None = None, phash: bool = False,
             png_strategy: str = PNG_STRATEGY,
             phash_definition: str = HASH_NAME) -> tuple[ImageRecord, str | None]:
    fmt = im.format or ""
    mode = orig_mode = im.mode
    w, h = im.size
    drafted = False
    if reduce_to_pixels and w * h > reduce_to_pixels and fmt in ("JPEG", "MPO"):
        im.draft(mode, _target_size((w, h), reduce_to_pixels))  # DCT scaling: never decodes full size
        drafted = im.size != (w, h)
    dw, dh = im.size
    if dw * dh > max_pixels:
        raise MediaError("decompression_bomb", f"{dw}x{dh} = {dw * dh} pixels > {max_pixels}")
    if w < min_side or h < min_side:
        raise MediaError("too_small", f"{w}x{h} < {min_side}")
    need = decoded_bytes(im.mode, im.size)
    if need > max_image_bytes:
        raise MediaError("image_too_large", f"{dw}x{dh} {im.mode}: decoding needs {need} bytes > "
                                            f"{max_image_bytes} (--max-image-bytes)")
    if reason := _missing_tail(im, data):
        raise MediaError("truncated_image", reason)
    modes, ext = KEEP_ORIGINAL.get(fmt, (frozenset(), ""))
    keep = not drafted and not (reduce_to_pixels and w * h > reduce_to_pixels) and (
        mode in modes or (keep_16bit_png and fmt == "PNG" and mode in HIGH_BIT_DEPTH))
    if keep and fmt in ("JPEG", "MPO"):
        # the kept bytes need no pixels, only a complete decode: at a DCT scale (the hash's, else 1/8) libjpeg
        # still reads every entropy-coded block, so a cut or corrupt stream fails as it would at full size
        if phash:
            draft_for_hash(im, phash_definition)
        else:
            im.draft(mode, (1, 1))
    _load(im)
    orientation = exif_orientation(im)
    reduced = drafted
    if reduce_to_pixels and im.width * im.height > reduce_to_pixels:
        im = _reduce(im, reduce_to_pixels)
        reduced = True
    mode = im.mode if reduced else mode

    if keep:
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        return ImageRecord(data=data, ext=ext, width=w, height=h, orig_format=fmt,
                           orig_mode=orig_mode, sha256=sha256_bytes(data), reencoded=False,
                           source_name=name), _phash(im, phash_definition) if phash else None

    icc = im.info.get("icc_profile") if mode != "CMYK" else None
    try:
        out = apply_orientation(to_output_mode(im), orientation)
    except UnsupportedMode as e:
        raise MediaError("unsupported_format", str(e)) from e
    png = _encode_png(out, icc, compress_level, png_strategy)
    return ImageRecord(data=png, ext="png", width=out.width, height=out.height,
                       orig_format=fmt, orig_mode=orig_mode, sha256=sha256_bytes(png),
                       reencoded=True, source_name=name), _phash(out, phash_definition) if phash else None


# --------------------------------------------------------------------------------------------
# Byte budgets checked on the file, before it is read whole (issue 24)
# --------------------------------------------------------------------------------------------

#: the head of a file that must carry an image signature (:func:`sniff_image`, archive extraction)
SNIFF_BYTES = 64 << 10
#: default budget on the metadata of a JPEG or PNG (the formats kept byte for byte): JPEG APPn/COM segments (ICC,
#: EXIF, XMP, Photoshop), PNG chunks other than IHDR/PLTE/IDAT/IEND (iCCP, eXIf, text) and bytes after IEND. The
#: largest ICC profile a JPEG can carry (255 APP2 segments) fits; a figure over it is ledgered ``metadata_too_large``
#: without being read. ``MediaOptions.max_metadata_bytes`` sets it per build.
DEFAULT_MAX_METADATA_BYTES = 16 << 20
#: an ICC profile is carried into a converted PNG only up to this size
MAX_ICC_BYTES = DEFAULT_MAX_METADATA_BYTES
_PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})


def sniff_image(name: str, head: bytes) -> bool:
    """False when ``name`` claims an image (:data:`IMAGE_EXTENSIONS`) and ``head`` (its first bytes, up to
    :data:`SNIFF_BYTES`) starts with no image signature. Any accepted signature counts, not only the one of the
    extension: packages ship PNGs named ``.jpg``, which decode fine."""
    head = bytes(head[:16])
    return not is_image_name(name) or _looks_like_image(head) or head.startswith((b"II+\x00", b"MM\x00+"))


def check_image_file(f, name: str = "", max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> None:
    """Check an open image file (binary, seekable) before it is read whole; raises :class:`MediaError`
    ``not_an_image`` (no image signature at its start) or ``metadata_too_large`` (JPEG/PNG metadata over
    ``max_metadata_bytes``, see :data:`DEFAULT_MAX_METADATA_BYTES`). Reads a few bytes per segment / chunk (the
    segment lengths), never the metadata itself; stops as soon as the budget is passed."""
    head = f.read(16)
    if not sniff_image(name or "x.jpg", head):
        raise MediaError("not_an_image", f"first bytes {head[:8].hex()} are no image signature")
    total = 0
    if head.startswith(b"\xff\xd8"):                     # JPEG: markers up to the first scan
        pos = 2
        while total <= max_metadata_bytes:
            f.seek(pos)
            b = f.read(4)
            if len(b) < 4 or b[0] != 0xFF:
                break                                   # malformed: the decoder says what is wrong
            marker = b[1]
            if marker == 0xFF:                          # fill byte
                pos += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
                pos += 2
                continue
            if marker in (0xDA, 0xD9):                  # start of scan / end of image
                break
            length = int.from_bytes(b[2:4], "big")
            if 0xE0 <= marker <= 0xEF or marker == 0xFE:
                total += 2 + length
            pos += 2 + length
    elif head.startswith(_PNG_SIGNATURE):                # PNG: every chunk but the pixel ones, and a tail
        pos = 8
        while total <= max_metadata_bytes:
            f.seek(pos)
            b = f.read(8)
            if len(b) < 8:
                break
            length, kind = int.from_bytes(b[:4], "big"), b[4:8]
            pos += 12 + length
            if kind not in _PNG_PIXEL_CHUNKS:
                total += 12 + length
            if kind == b"IEND":
                total += max(0, f.seek(0, io.SEEK_END) - pos)
                break
    if total > max_metadata_bytes:
        raise MediaError("metadata_too_large", f"over {total} bytes of metadata (ICC, EXIF, XMP, text) > "
                                               f"{max_metadata_bytes} (max_metadata_bytes)")
