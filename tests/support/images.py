"""Image copies for the tests' near-duplicate builds: :func:`jpeg_copy` re-encodes a real figure at another scale
and JPEG quality (the kind of copy PMC holds when one figure is published twice)."""
from __future__ import annotations

import io

from PIL import Image


def jpeg_copy(data: bytes, scale: float, quality: int) -> bytes:
    """``data`` (any image) resized by ``scale`` (sides at least 32 px) and saved as a JPEG of ``quality``."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.resize((max(32, int(im.width * scale)), max(32, int(im.height * scale))))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
