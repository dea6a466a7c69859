"""Perceptual image hashes: cheap enough for the per-article worker, stable under re-encoding and resizing.

The build's hash is a 256-bit pHash (``imagehash.phash(hash_size=16)``: the 16x16 lowest frequencies of a
64x64 DCT, each bit = coefficient > median), written as a 64-character hex string. It was chosen over
64-bit pHash and 64/256-bit dHash on the real fixture figures (``benchmarks/bench_neardup.py``; the
table is in ``biomedica_hf/neardup/README.md``): the widest gap between re-encoded/resized/PNG<->JPEG
copies and distinct figures, and balanced bits (a median threshold sets half of them), which keeps the
bucketed search in :mod:`.groups` even on the white-background plots that make dHash mostly zeros.

The definition (``HASH_NAME`` ``phash256-dct128``, one for every format, so a PNG and a JPEG copy of a figure stay
close): the image is first reduced by the largest DCT scale factor of 8, 4, 2 that keeps its short side >= 128 px
(:func:`dct_scale`) - a JPEG by decoding it at that scale (``draft``, luma only where it is YCbCr: the full-size
pixels never exist, and libjpeg still reads every entropy-coded block, so the build's one decode of a kept JPEG is
also its truncation check), any other image by an integer box-reduce - keeping whole blocks only (a JPEG's partial
last block row/column averages the encoder's padding); then, as before, box-reduced to a short side < 256, normalised
by the one image policy (:func:`biomedica_hf.images.hash_gray`: alpha composited on white - PMC's transparent PNGs
are black-on-transparent -, 16-bit and float images stretched by their own range, palette images through RGB(A)),
Lanczos-resized to 64x64 and DCT'd as ``imagehash.phash`` does (computed here, bit for bit: :func:`_bits_phash`).
Folders built before the definition was recorded hold ``LEGACY_HASH_NAME`` (``phash256``: JPEG decoded at >= 256 px,
no DCT-scale step; mean 6.6, max 16 bits from today's on the same images). Both stay computable (:data:`DEFINITIONS`,
the ``definition`` argument of :func:`bytes_phash`, :func:`image_phash`, :func:`open_image`, :func:`draft_for_hash`;
the legacy one is the code of a595d4e bit for bit): a fresh build uses ``HASH_NAME``, an update keeps its folder's
(:func:`folder_hash_name`), and ``biomedica decontaminate`` hashes evaluation images with the folder's, so two
definitions are never compared. Calibration of both: ``biomedica_hf/neardup/README.md``.
"""
from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from biomedica_hf.images import hash_gray, reduce_by

HASH_BITS = 256
HASH_NAME = "phash256-dct128"     # the definition's name: recorded in the build's output, reports and the card
#: the definition of folders built before ``HASH_NAME`` was recorded (same 256 bits, a larger hash input:
#: JPEG at >= 256 px short side, others box-reduced to ~256 px); its values differ from today's (on the realistic
#: bench build's 1,060 images: mean 6.6, max 16 bits)
LEGACY_HASH_NAME = "phash256"
_INPUT_SIDE = 128               # the hash's input keeps its short side >= this (DCT scale, then integer box-reduce)


def dct_scale(size: tuple[int, int]) -> int:
    """The first reduction of the hash's input, by the rule of a JPEG's DCT scaling (Pillow's ``draft``): the
    largest of 8, 4, 2 that keeps both sides at least 128 px, else 1."""
    scale = min(size[0] // _INPUT_SIDE, size[1] // _INPUT_SIDE)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def _gray_dct128(img: Image.Image) -> Image.Image:
    """``phash256-dct128``'s input: the image at the DCT scale a JPEG is decoded at (:func:`dct_scale`; a JPEG
    decoded so by :func:`draft_for_hash`, any other image box-reduced by the same factor), whole blocks only (a
    JPEG's partial last block row/column averages the encoder's padding, so it is cropped everywhere), then
    :func:`biomedica_hf.images.hash_gray` (8-bit gray, alpha on white, box-reduced to a short side < 256)."""
    box = getattr(img, _DRAFTED, None)
    if box is not None:                                     # a JPEG decoded by draft_for_hash: reduced already
        if box != (0, 0) + img.size:
            img = img.crop(box)
    else:
        factor = dct_scale(img.size)
        if factor > 1:
            img = reduce_by(img, factor, (0, 0, img.width // factor * factor, img.height // factor * factor))
    return hash_gray(img, _INPUT_SIDE)


def _draft_dct128(img: Image.Image) -> None:
    """``phash256-dct128``'s JPEG decode (:func:`draft_for_hash`)."""
    if img.format != "JPEG":
        return
    w, h = img.size
    scale = dct_scale((w, h))
    if scale > 1 and img.draft(_DRAFT_MODE.get(img.mode, img.mode), (_INPUT_SIDE, _INPUT_SIDE)) is not None:
        scale = img.decoderconfig[0]
        setattr(img, _DRAFTED, (0, 0, w // scale, h // scale))


_LEGACY_REDUCE_TO = 256         # phash256: box-reduce larger images to about this before the Lanczos resize


def _gray_legacy(img: Image.Image) -> Image.Image:
    """``phash256``'s input (the code of a595d4e): :func:`biomedica_hf.images.hash_gray` to ~256 px."""
    return hash_gray(img, _LEGACY_REDUCE_TO)


def _draft_legacy(img: Image.Image) -> None:
    """``phash256``'s JPEG decode (the code of a595d4e): a JPEG whose short side is > 512 px at the smallest DCT
    scale keeping it >= 256 px, in its own mode."""
    if img.format == "JPEG" and min(img.size) > 2 * _LEGACY_REDUCE_TO:
        w, h = img.size
        scale = _LEGACY_REDUCE_TO / min(w, h)
        img.draft(img.mode, (max(1, int(w * scale)), max(1, int(h * scale))))


@dataclass(frozen=True)
class HashDefinition:
    """One definition of the build's perceptual hash: how a JPEG is decoded for it (``draft``, called before
    ``load``) and how a decoded image becomes the 8-bit gray input of ``imagehash``'s pHash (``gray``); the
    pHash itself (256 bits) is the same for all."""

    name: str
    draft: Callable[[Image.Image], None]
    gray: Callable[[Image.Image], Image.Image]


#: every definition this code computes, by the name recorded in a build's output (``build_summary.json`` ``phash``):
#: a fresh build uses ``HASH_NAME``, an update of a folder keeps the folder's definition
DEFINITIONS: dict[str, HashDefinition] = {
    HASH_NAME: HashDefinition(HASH_NAME, _draft_dct128, _gray_dct128),
    LEGACY_HASH_NAME: HashDefinition(LEGACY_HASH_NAME, _draft_legacy, _gray_legacy),
}


def definition_of(name: str) -> HashDefinition:
    """The definition called ``name``; ``ValueError`` (naming the known ones) for a name this code does not know."""
    try:
        return DEFINITIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown perceptual hash definition {name!r} (this code computes "
                         f"{', '.join(map(repr, DEFINITIONS))})") from None


def _gray(img: Image.Image, name: str = HASH_NAME) -> Image.Image:
    """The hash's input under definition ``name`` (default ``HASH_NAME``: :func:`_gray_dct128`)."""
    return definition_of(name).gray(img)


_PHASH_HIGHFREQ = 4     # imagehash.phash's ``highfreq_factor``: the DCT is of a (4 x hash_size)^2 image


def _bits_phash(gray: Image.Image, hash_size: int) -> np.ndarray:
    """The bits of ``imagehash.phash(gray, hash_size)`` (imagehash 4.3), row-major: the image in 8-bit gray,
    Lanczos-resized to (4 x hash_size)^2, DCT-II'd along its columns then its rows (``scipy.fftpack.dct``), and each
    of the hash_size^2 lowest frequencies compared with their median. The same calls on the same arrays, so the same
    bits; without ``imagehash``'s copy of an image already in gray, its ``numpy.median`` (a general reduction, ~50 us
    of a ~0.5 ms hash) and its ``ImageHash`` object: ~0.09 ms less a figure. ``numpy.median`` of an even count is the
    mean of the two middle values of the partitioned array, here ``(lo + hi) / 2`` of float64s: the same value
    (tests/neardup/test_neardup.py compares the bits with imagehash's on every fixture image, flat and tied images,
    hash sizes 5, 8 and 16)."""
    dct = _dct_ii()
    side = hash_size * _PHASH_HIGHFREQ
    img = gray if gray.mode == "L" else gray.convert("L")
    pixels = np.asarray(img.resize((side, side), Image.Resampling.LANCZOS))
    low = dct(dct(pixels, axis=0), axis=1)[:hash_size, :hash_size].reshape(-1)
    mid = low.size // 2
    if low.size % 2:
        med = np.partition(low, mid)[mid]
    else:
        part = np.partition(low, (mid - 1, mid))
        med = (part[mid - 1] + part[mid]) / 2
    return low > med


_POCKETFFT = "scipy.fft._pocketfft.pypocketfft"      # the C++ extension behind scipy.fftpack.dct and scipy.fft.dct


@functools.cache
def _dct_ii() -> Callable[..., np.ndarray]:
    """``scipy.fftpack.dct`` (type II, unnormalised): ``dct(x, axis=...)``, the same values bit for bit.

    scipy computes it in its pocketfft extension; its Python front (``scipy.fft``) imports the array-API layer and
    with it numpy's whole namespace (``numpy.testing``, ``numpy.f2py``, ``numpy.ma``...): ~0.22 s of every build's
    first figure, in the serial part of the build (issue 28). The extension is loaded here by itself, under its
    own name, so a later ``import scipy.fft`` finds it in ``sys.modules`` (one copy), and called with the arguments
    ``scipy.fftpack.dct`` gives it (``type=2``, ``inorm=0``, one thread; integers as float64). It is checked once
    against the DCT-II's definition; where it cannot be found or loaded (another scipy layout), or fails the
    check, ``scipy.fftpack.dct`` itself is used (tests/neardup/test_neardup.py compares both, bit for bit)."""
    return _pocketfft_dct() or _fftpack_dct


def _fftpack_dct(x: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.fftpack import dct

    return dct(x, axis=axis)


def _pocketfft_dct() -> Callable[..., np.ndarray] | None:
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    try:
        pfft = sys.modules.get(_POCKETFFT)
        if pfft is None:
            spec = importlib.util.find_spec("scipy")            # finds the package, imports nothing
            folder = Path(next(iter(spec.submodule_search_locations))) / "fft" / "_pocketfft"
            path = next(p for suffix in importlib.machinery.EXTENSION_SUFFIXES
                        for p in [folder / f"pypocketfft{suffix}"] if p.is_file())
            spec = importlib.util.spec_from_file_location(
                _POCKETFFT, path, loader=importlib.machinery.ExtensionFileLoader(_POCKETFFT, str(path)))
            pfft = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(pfft)
            pfft = sys.modules.setdefault(_POCKETFFT, pfft)

        def dct(x: np.ndarray, axis: int = -1) -> np.ndarray:
            x = np.asarray(x)
            if x.dtype.kind in "biu":
                x = x.astype(np.float64)                       # scipy.fft's _asfarray: integers as float64
            elif x.dtype not in (np.float32, np.float64) or not x.flags.aligned:
                return _fftpack_dct(x, axis)                   # float16, complex, byte-swapped: scipy's own casts
            return pfft.dct(x, 2, (axis,), 0, None, 1, None)

        # the definition: y[k] = 2 * sum_n x[n] cos(pi k (2n + 1) / 2N), along either axis
        x = np.arange(24, dtype=np.float64).reshape(4, 6) ** 1.5
        for axis in (0, 1):
            n = x.shape[axis]
            basis = 2 * np.cos(np.pi * np.outer(np.arange(n), 2 * np.arange(n) + 1) / (2 * n))
            want = basis @ x if axis == 0 else x @ basis.T
            if not np.allclose(dct(x, axis=axis), want, rtol=1e-12, atol=1e-9):
                return None
        return dct
    except Exception:  # noqa: BLE001 - any other scipy: its public function
        return None


def _bits_dhash(gray: Image.Image, hash_size: int) -> np.ndarray:
    import imagehash

    return imagehash.dhash(gray, hash_size=hash_size).hash.reshape(-1)


# the candidates measured by the calibration (each with the normalisation of a definition); every definition of
# the build (DEFINITIONS) hashes its input with phash256
HASHERS = {
    "phash64": lambda g: _bits_phash(g, 8),
    "phash256": lambda g: _bits_phash(g, 16),
    "dhash64": lambda g: _bits_dhash(g, 8),
    "dhash256": lambda g: _bits_dhash(g, 16),
}


def bits_to_hex(bits: np.ndarray) -> str:
    """Row-major bits (most significant first) as a hex string of len(bits) / 4 characters."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def image_hashes(img: Image.Image, names=tuple(HASHERS), definition: str = HASH_NAME) -> dict[str, str]:
    """Several candidate hashes of one image (calibration); the image is normalised once (by ``definition``)."""
    gray = _gray(img, definition)
    return {n: bits_to_hex(HASHERS[n](gray)) for n in names}


def image_phash(img: Image.Image, definition: str = HASH_NAME) -> str:
    """The build's perceptual hash of a decoded image: 256-bit pHash, 64 hex characters, of the named
    ``definition`` (:data:`DEFINITIONS`; default ``HASH_NAME``).

    A JPEG should have been opened by :func:`open_image` (or :func:`draft_for_hash` before its ``load``) with the
    same definition: the hash of encoded bytes is defined on the pixels of that reduced-scale decode."""
    return bits_to_hex(_bits_phash(_gray(img, definition), 16))


def open_image(data: bytes, definition: str = HASH_NAME) -> Image.Image:
    """Decode image bytes (the first frame) as the hash of ``definition`` sees them; warnings about odd metadata
    are not errors.

    A JPEG is decoded at a DCT scale (:func:`draft_for_hash`): for ``HASH_NAME`` the smallest (1/2, 1/4, 1/8) that
    keeps its short side at least 128 px, for ``LEGACY_HASH_NAME`` the smallest that keeps it at least 256 px."""
    draft = definition_of(definition).draft
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        draft(img)
        img.load()
    return img


def draft_for_hash(img: Image.Image, definition: str = HASH_NAME) -> None:
    """Before ``load``: decode a JPEG at the DCT scale of the hash's input. For ``HASH_NAME``: :func:`dct_scale`,
    the smallest whose short side stays >= 128 px (nothing for other formats, which :func:`image_phash`
    box-reduces instead), only its luma where it is YCbCr; the image is marked with the box of its whole DCT
    blocks. For ``LEGACY_HASH_NAME``: the smallest keeping >= 256 px, in the JPEG's mode. :func:`open_image` and the
    build's one decode of a kept JPEG (its truncation check: libjpeg still reads every entropy-coded block) both
    call it, so the build's hash is bit for bit :func:`bytes_phash` of the written bytes."""
    definition_of(definition).draft(img)


_DRAFTED = "_phash_box"         # set on a JPEG image decoded by draft_for_hash: the box of its whole blocks
#: the decode mode of a drafted JPEG (by its mode): a YCbCr JPEG decodes only its luma (decode + hash ~15% faster
#: than RGB + convert on the fixture JPEGs, the same calibration; hashes within 0-2 bits of RGB's)
_DRAFT_MODE: dict[str, str] = {"RGB": "L"}


def bytes_phash(data: bytes, definition: str = HASH_NAME) -> str:
    """:func:`image_phash` of encoded image bytes (JPEG, PNG, GIF, TIFF, ... anything Pillow opens), of the named
    ``definition`` (default ``HASH_NAME``)."""
    return image_phash(open_image(data, definition), definition)


def recorded_hash_name(record) -> str:
    """The definition a record of the build names (``build_summary.json``, a staging binding, a staged or done
    marker: its ``"phash"``); a record without one was written before definitions were recorded:
    :data:`LEGACY_HASH_NAME`."""
    name = record.get("phash") if isinstance(record, dict) else None
    return name if isinstance(name, str) and name else LEGACY_HASH_NAME


def folder_hash_name(folder) -> str:
    """The hash definition of the ``phash`` values of a built folder: what its ``build_summary.json`` records
    (``"phash"``); a folder without that record (built before it existed) has :data:`LEGACY_HASH_NAME` values."""
    import json
    from pathlib import Path

    from biomedica_hf.layout import BUILD_SUMMARY

    try:
        summary = json.loads((Path(folder) / BUILD_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return LEGACY_HASH_NAME
    return recorded_hash_name(summary)


def hash_software() -> dict[str, str]:
    """The versions of what computes the pHash's pixels and bits: Pillow (its Lanczos resize: Pillow 13 runs the
    vertical pass first for an image that shrinks much more in height than in width, python-pillow/Pillow#9549, which
    moves a few low bits of tall figures' hashes), the libjpeg-turbo it bundles (the JPEG decode at DCT scale), numpy
    and scipy (the DCT). Each snapshot records them (``build_summary.json``: ``snapshots[].hash_software``), so that
    an update run with other versions says so (:func:`hash_software_changes`)."""
    import PIL
    import scipy
    from PIL import features

    return {"pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo") or "",
            "numpy": np.__version__, "scipy": scipy.__version__}


def hash_software_changes(history: list[dict], now: dict[str, str] | None = None) -> dict[str, tuple[set, str]]:
    """Which of :func:`hash_software` differ from what the folder's snapshots (``history``) computed their hashes
    with: ``{name: (the folder's versions, this run's)}``; empty when they agree or nothing was recorded (a folder of
    code before the record)."""
    now = now or hash_software()
    seen: dict[str, set] = {}
    for h in history:
        for name, version in (h.get("hash_software") or {}).items():
            seen.setdefault(name, set()).add(version)
    return {name: (versions, now.get(name, "")) for name, versions in seen.items() if versions != {now.get(name, "")}}


def hex_to_words(hexes, bits: int = HASH_BITS) -> np.ndarray:
    """Hex hashes -> ``uint64`` array of shape (n, bits // 64), big-endian words (bit order kept)."""
    nbytes = bits // 8
    try:
        buf = b"".join(bytes.fromhex(h) for h in hexes)
    except (ValueError, TypeError):
        buf = b""
    if len(buf) != nbytes * len(hexes):
        bad = next((h for h in hexes if not isinstance(h, str) or len(h) != 2 * nbytes), None)
        if bad is None:
            bad = next(h for h in hexes if any(c not in "0123456789abcdefABCDEF" for c in h))
        raise ValueError(f"hash {bad!r} is not {bits} bits in hex ({2 * nbytes} hexadecimal characters)")
    return np.frombuffer(buf, dtype=">u8").astype(np.uint64).reshape(len(hexes), bits // 64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between rows of two word arrays of the same shape (or broadcastable)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)


def hex_distance(a: str, b: str) -> int:
    """Hamming distance between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {len(a)} vs {len(b)} hex characters")
    return (int(a, 16) ^ int(b, 16)).bit_count()
