"""Hostile inputs generated on the fly for the tests (nothing large is ever committed or held in memory).

* :func:`article_xml` - a minimal valid JATS article (CC BY) with one figure per href, optional prolog;
* :func:`small_jpeg` / :func:`noise_png` - real images;
* :func:`write_targz` - a ``.tar.gz`` whose members are bytes or N zero bytes streamed (a 1 GiB
  zero member costs ~1 MB of gzip and no memory);
* :func:`png16_stream` / :func:`float_tiff_stream` - 16-bit PNG and float32 TIFF of any size, written row
  block by row block through zlib (12000x12000 takes ~300 kB and a few MB of memory);
* :func:`run_measured` - run Python code in a fresh interpreter and return its peak RSS and bytes
  written (``VmHWM`` of ``/proc/self/status`` and ``/proc/self/io``) with whatever JSON it printed last.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def article_xml(pmcid: str, hrefs: list[str], prolog: str = "") -> bytes:
    figs = "".join(f'<fig id="f{i}"><label>Figure {i}</label><caption><p>Caption {i} of {pmcid}.</p></caption>'
                   f'<graphic xlink:href="{h}"/></fig>' for i, h in enumerate(hrefs, 1))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}'
            f'<article xmlns:xlink="http://www.w3.org/1999/xlink" article-type="research-article"><front>'
            f'<journal-meta><journal-title-group><journal-title>Test J</journal-title></journal-title-group>'
            f'</journal-meta><article-meta><article-id pub-id-type="pmc">{pmcid}</article-id>'
            f'<title-group><article-title>Article {pmcid}</article-title></title-group>'
            f'<pub-date><year>2020</year></pub-date><permissions>'
            f'<license xlink:href="https://creativecommons.org/licenses/by/4.0/"><license-p>CC BY</license-p>'
            f'</license></permissions></article-meta></front><body><p>See Figure 1.</p>{figs}</body></article>'
            ).encode()


def small_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def noise_png(seed: int, size: tuple[int, int]) -> bytes:
    """An incompressible RGB PNG (about 3 bytes a pixel on disk)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(
        buf, "PNG", compress_level=0)
    return buf.getvalue()


def write_targz(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """``members``: (name, bytes) or (name, N) for N zero bytes. The gzip is written by hand: a run of
    zeros is deflated once per MiB after a full flush and that block is repeated (a full flush resets
    the compressor, so every such block compresses the same), which makes a 1 GiB zero member cost ~1 MB
    of file, no memory and well under a second."""
    zero = bytes(1 << 20)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    crc, size = 0, 0
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")   # gzip header, mtime 0

        def feed(data: bytes) -> None:
            nonlocal crc, size
            f.write(comp.compress(data))
            crc, size = zlib.crc32(data, crc), size + len(data)

        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            info.mtime = 0
            feed(info.tobuf(tarfile.GNU_FORMAT))
            if isinstance(data, int):
                full, rest = divmod(data, len(zero))
                if full:
                    f.write(comp.flush(zlib.Z_FULL_FLUSH))
                    block = comp.compress(zero) + comp.flush(zlib.Z_FULL_FLUSH)
                    for _ in range(full):
                        f.write(block)
                        crc, size = zlib.crc32(zero, crc), size + len(zero)
                if rest:
                    feed(bytes(rest))
            else:
                feed(data)
            pad = (-info.size) % tarfile.BLOCKSIZE
            if pad:
                feed(bytes(pad))
        feed(bytes(2 * tarfile.BLOCKSIZE))
        f.write(comp.flush())
        f.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16_stream(path: Path, width: int, height: int) -> Path:
    """A 16-bit grayscale PNG: row ``y`` holds the value ``y * 5`` (a vertical ramp), compressed per row."""
    comp = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)))
        for y in range(height):
            row = b"\x00" + struct.pack(">H", (y * 5) & 0xFFFF) * width
            out = comp.compress(row)
            if out:
                f.write(_chunk(b"IDAT", out))
        f.write(_chunk(b"IDAT", comp.flush()))
        f.write(_chunk(b"IEND", b""))
    return path


def float_tiff_stream(path: Path, width: int, height: int, rows_per_strip: int = 500) -> Path:
    """A float32 (SampleFormat 3) grayscale TIFF, Adobe-deflate strips; strip ``i`` holds the value ``i``."""
    strips = []
    for i, y0 in enumerate(range(0, height, rows_per_strip)):
        comp = zlib.compressobj(6)
        row = struct.pack("<f", float(i)) * width
        parts = [comp.compress(row) for _ in range(y0, min(height, y0 + rows_per_strip))]
        strips.append(b"".join(parts) + comp.flush())
    n = len(strips)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 32), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, n, None), (277, 3, 1, 1), (278, 4, 1, rows_per_strip), (279, 4, n, None), (339, 3, 1, 3)]
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    offsets, pos = [], data_at
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
        for tag, typ, count, value in entries:
            if tag == 273:
                value = offsets_at
            elif tag == 279:
                value = counts_at
            if typ == 3 and count == 1:
                f.write(struct.pack("<HHIHH", tag, typ, count, value, 0))
            else:
                f.write(struct.pack("<HHII", tag, typ, count, value))
        f.write(struct.pack("<I", 0))
        f.write(struct.pack(f"<{n}I", *offsets))
        f.write(struct.pack(f"<{n}I", *(len(s) for s in strips)))
        for s in strips:
            f.write(s)
    return path


# Peak RSS is this process's own VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve,
# and subprocess spawns with vfork, so ru_maxrss would report the peak of the (possibly large) pytest
# process that started the measurement instead of the measured code's.
MEASURE_TAIL = """
import json as _json
_io = dict(l.split(": ") for l in open("/proc/self/io").read().split("\\n") if l)
_hwm_kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print("MEASURED " + _json.dumps({"max_rss_mb": _hwm_kb / 1024,
                                 "written_mb": int(_io["wchar"]) / 1e6, "result": RESULT}, default=str))
"""


def run_measured(code: str, timeout: float = 600) -> dict:
    """Run ``code`` (which sets ``RESULT``) in a fresh Python; its peak RSS, bytes written, RESULT."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code + MEASURE_TAIL], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED ")][-1]
    return json.loads(line[len("MEASURED "):])
