"""Perceptual image hashes: cheap enough for the per-article worker, stable under re-encoding and resizing.

The build's hash is a 256-bit pHash (``imagehash.phash(hash_size=16)``: the 16x16 lowest frequencies of a
64x64 DCT, each bit = coefficient > median), written as a 64-character hex string. It was chosen over
64-bit pHash and 64/256-bit dHash on the real fixture figures (``benchmarks/bench_neardup.py``; the
table is in ``biomedica_hf/neardup/README.md``): the widest gap between re-encoded/resized/PNG<->JPEG
copies and distinct figures, and balanced bits (a median threshold sets half of them), which keeps the
bucketed search in :mod:`.groups` even on the white-background plots that make dHash mostly zeros.

Before hashing, a large image is box-reduced (``Image.reduce``, integer factor) to at most ~4x the DCT
input, so a 4000x3000 figure costs about what a 256x256 one does; modes are normalised by the one image policy
(:func:`biomedica_hf.images.hash_gray`): alpha is composited on white (PMC's transparent PNGs are
black-on-transparent), 16-bit and float images are stretched by their own range (the build's rule), palette images go
through RGB(A).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from biomedica_hf.images import hash_gray

HASH_BITS = 256
HASH_NAME = "phash256"          # recorded in reports and the card
_DCT_SIDE = 64                  # imagehash.phash(hash_size=16, highfreq_factor=4) resizes to 64x64
_REDUCE_TO = 4 * _DCT_SIDE      # box-reduce larger images to about this before the Lanczos resize


def _gray(img: Image.Image) -> Image.Image:
    """The hash's input: :func:`biomedica_hf.images.hash_gray` (8-bit gray, alpha on white, reduced when large)."""
    return hash_gray(img, _REDUCE_TO)


def _bits_phash(gray: Image.Image, hash_size: int) -> np.ndarray:
    import imagehash

    return imagehash.phash(gray, hash_size=hash_size).hash.reshape(-1)


def _bits_dhash(gray: Image.Image, hash_size: int) -> np.ndarray:
    import imagehash

    return imagehash.dhash(gray, hash_size=hash_size).hash.reshape(-1)


# the candidates measured by the calibration; the build uses HASH_NAME
HASHERS = {
    "phash64": lambda g: _bits_phash(g, 8),
    "phash256": lambda g: _bits_phash(g, 16),
    "dhash64": lambda g: _bits_dhash(g, 8),
    "dhash256": lambda g: _bits_dhash(g, 16),
}


def bits_to_hex(bits: np.ndarray) -> str:
    """Row-major bits (most significant first) as a hex string of len(bits) / 4 characters."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def image_hashes(img: Image.Image, names=tuple(HASHERS)) -> dict[str, str]:
    """Several candidate hashes of one image (calibration); the image is normalised once."""
    gray = _gray(img)
    return {n: bits_to_hex(HASHERS[n](gray)) for n in names}


def image_phash(img: Image.Image) -> str:
    """The build's perceptual hash of a decoded image: 256-bit pHash, 64 hex characters."""
    return bits_to_hex(_bits_phash(_gray(img), 16))


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes (the first frame); warnings about odd metadata are not errors here.

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps it at least ``_REDUCE_TO`` pixels
    on its short side (``draft``): the hash only ever looks at ~256 px, and this makes hashing in the build
    ~4x cheaper than a full decode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        draft_for_hash(img)
        img.load()
    return img


def draft_for_hash(img: Image.Image) -> None:
    """Before ``load``: the DCT scale :func:`open_image` decodes a JPEG at (nothing for other formats), so that
    a caller that decodes the file anyway (the build's verification) hashes exactly the pixels
    :func:`bytes_phash` would, from its one decode."""
    if img.format == "JPEG" and min(img.size) > 2 * _REDUCE_TO:
        w, h = img.size
        scale = _REDUCE_TO / min(w, h)
        img.draft(img.mode, (max(1, int(w * scale)), max(1, int(h * scale))))


def bytes_phash(data: bytes) -> str:
    """:func:`image_phash` of encoded image bytes (JPEG, PNG, GIF, TIFF, ... anything Pillow opens)."""
    return image_phash(open_image(data))


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
