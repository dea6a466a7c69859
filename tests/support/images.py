"""Image helpers of the tests: :func:`jpeg_copy` re-encodes a real figure at another scale and JPEG quality (the kind
of copy PMC holds when one figure is published twice); :func:`png_chunks` and :func:`png_row_filters` read a PNG's
chunks and the filter type of each of its rows (8-bit PNGs, as the build writes)."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def jpeg_copy(data: bytes, scale: float, quality: int) -> bytes:
    """``data`` (any image) resized by ``scale`` (sides at least 32 px) and saved as a JPEG of ``quality``."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.resize((max(32, int(im.width * scale)), max(32, int(im.height * scale))))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG, in order."""
    out, i = [], 8
    while i < len(png):
        n = struct.unpack(">I", png[i:i + 4])[0]
        out.append((png[i + 4:i + 8], png[i + 8:i + 8 + n]))
        i += 12 + n
    return out


_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}      # PNG colour type -> samples a pixel


def png_row_filters(png: bytes) -> bytes:
    """The filter type byte of every row of an 8-bit, non-interlaced PNG (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth);
    the inflated image data must be exactly that many rows."""
    chunks = png_chunks(png)
    ihdr = next(body for kind, body in chunks if kind == b"IHDR")
    width, height = struct.unpack(">II", ihdr[:8])
    row = width * _CHANNELS[ihdr[9]] + 1
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == row * height
    return raw[::row]
