"""Thumbnails with bounded memory (issue 13): sizes rounded to a fixed set, PNGs decoded in strips, JPEGs
DCT-scaled, a concurrency limit. The big case runs `biomedica serve` in a subprocess on a folder built by
`biomedica build` from a real eLife article whose figure is replaced by a generated 12000x12000 PNG, and
measures the server's RSS while 8 concurrent requests ask for ``size=200..207``.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support.paths import ARTICLES
from PIL import Image, ImageDraw
from test_search_support import serve, stop

from biomedica_hf.search import thumbs
from biomedica_hf.search.thumbs import SIZES, Thumbnailer, png_reduce, png_streamable, round_size

BIN = Path(sys.executable).parent
SIDE = 12000
GB = 1 << 30


def _drawing(side: int) -> Image.Image:
    """A white canvas with coloured lines and ellipses (compresses well, like a real chart)."""
    img = Image.new("RGB", (side, side), (255, 255, 255))
    d = ImageDraw.Draw(img)
    step = max(1, side // 40)
    for i in range(0, side, step):
        d.line([(0, i), (side, side - i)], fill=(i % 255, 80, 200), width=max(1, side // 1300))
        d.ellipse([i, i, i + 3 * step, i + 2 * step], outline=(20, i % 255, 40), width=max(1, side // 2400))
    return img


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- pieces
def test_sizes_round_up_to_the_fixed_set():
    assert [round_size(s) for s in (16, 64, 65, 200, 207, 320, 321, 1024)] == [64, 64, 128, 256, 256, 320, 512, 1024]
    assert {round_size(s) for s in range(16, 1025)} == set(SIZES)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
def test_strip_decoding_equals_pillow(mode, monkeypatch):
    """png_reduce in small strips gives exactly Pillow's full decode + reduce, for every filter the encoder chose."""
    monkeypatch.setattr(thumbs, "STRIP_BYTES", 40_000)
    rng = np.random.default_rng(1)
    arr = (np.cumsum(rng.integers(0, 255, (301, 455, 4), dtype=np.int64), axis=1) // 40).astype(np.uint8)
    base = Image.fromarray(arr, "RGBA")
    img = base.convert("RGB").quantize(50) if mode == "P" else base.convert(mode)
    data = _encode(img, "PNG")
    assert png_streamable(data)
    for factor in (1, 2, 5):
        ours = png_reduce(data, factor)
        ref = Image.open(io.BytesIO(data))
        ref = ref.convert("RGBA") if ref.mode == "P" else ref
        ref = ref.reduce(factor) if factor > 1 else ref
        assert ours.mode == ref.mode
        assert ours.size == ref.size
        assert np.array_equal(np.asarray(ours), np.asarray(ref)), (mode, factor)
    assert not png_streamable(_encode(Image.new("I;16", (8, 8)), "PNG"))  # 16-bit: decoded whole, under the budget
    assert not png_streamable(_encode(img.convert("RGB"), "GIF"))


def test_one_decode_per_figure_and_the_budget_refuses_what_cannot_fit():
    png = _encode(_drawing(3000), "PNG", compress_level=1)
    jpeg = _encode(_drawing(3000), "JPEG", quality=80)
    tiff = _encode(_drawing(3000), "TIFF")
    reads = []
    t = Thumbnailer(lambda key: reads.append(key) or {"png": png, "jpeg": jpeg, "tiff": tiff}[key],
                    decode_budget=20 << 20)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda s: t.thumbnail("png", s), range(200, 208)))
    assert len(set(outs)) == 1
    assert reads == ["png"]
    assert t.decodes == 1
    assert Image.open(io.BytesIO(outs[0])).size == (256, 256)
    for size in (64, 1024):
        assert max(Image.open(io.BytesIO(t.thumbnail("png", size))).size) == size
    assert t.decodes == 1  # every size is cut from the one reduced master
    small = Image.open(io.BytesIO(t.thumbnail("jpeg", 100)))
    assert small.size == (128, 128)
    assert np.asarray(small.convert("L")).min() < 200  # drawn, not blank
    with pytest.raises(thumbs.TooLarge, match="decode budget"):  # a 3000x3000 TIFF needs 27 MB > 20 MB
        t.thumbnail("tiff", 64)


# ------------------------------------------------------------------------------------- the server
def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    """`biomedica build` + `biomedica index` on eLife 19405 with its figure replaced by a 12000x12000 PNG."""
    src = ARTICLES / "eLife_19405"
    if not src.is_dir():
        pytest.skip(f"fixtures not found at {src}")
    root = tmp_path_factory.mktemp("bigfig")
    art = root / "input" / "eLife_19405"
    shutil.copytree(src, art)
    (art / "elife-19405-fig1.tif").unlink()
    Image.MAX_IMAGE_PIXELS = None
    try:
        (art / "elife-19405-fig1.png").write_bytes(_encode(_drawing(SIDE), "PNG", compress_level=1))
    finally:
        Image.MAX_IMAGE_PIXELS = 89_478_485
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = root / "ds"
    # decoding a 12000x12000 RGB PNG takes 576 MB (Pillow pads RGB to 4 bytes), over the default 256 MiB decode
    # budget (image_too_large): this build raises it to keep the figure at full size
    for cmd in (["build", "--source", "local", "--input", str(root / "input"), "--out", str(out), "--no-progress",
                 "--max-image-bytes", "600MB"],
                ["index", str(out), "--encoder", "minilm", "--no-progress"]):
        r = subprocess.run([str(BIN / "biomedica"), *cmd], check=False, capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out


def test_eight_concurrent_thumbnails_of_a_12000px_figure_stay_under_1gb(big_folder, tmp_path):
    import httpx

    proc, base = serve(big_folder / "search_index", tmp_path / "serve.log")
    try:
        hits = httpx.get(base + "/search", params={"q": "membrane invaginations cell division"}).json()["results"]
        key = hits[0]["key"]
        fig = httpx.get(f"{base}/figure/{key}").json()
        assert (fig["width"], fig["height"]) == (SIDE, SIDE)
        assert fig["image_ext"] == "png"
        idle, _ = _rss(proc.pid)
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak.append(_rss(proc.pid)[0])
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def get(size: int):
            res = httpx.get(f"{base}/figure/{key}/image", params={"size": size}, timeout=120)
            assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg", res.text[:300]
            return res.content

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            same = list(pool.map(get, range(200, 208)))
            mixed = list(pool.map(get, (64, 128, 160, 256, 320, 512, 768, 1024)))
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        _, hwm = _rss(proc.pid)
        print(f"\nserver RSS idle {idle / 2**20:.0f} MB, peak sampled {max(peak) / 2**20:.0f} MB, "
              f"VmHWM {hwm / 2**20:.0f} MB; 16 thumbnails in {seconds:.1f} s")
        assert len(set(same)) == 1  # 200..207 are one thumbnail
        thumb = Image.open(io.BytesIO(same[0]))
        assert thumb.size == (256, 256)
        assert [max(Image.open(io.BytesIO(m)).size) for m in mixed] == list(SIZES)
        # the same picture as Pillow's own full decode + thumbnail (done here, in the test process)
        Image.MAX_IMAGE_PIXELS = None
        try:
            ref = Image.open(big_folder.parent / "input" / "eLife_19405" / "elife-19405-fig1.png")
            ref.thumbnail((256, 256), Image.Resampling.LANCZOS)
        finally:
            Image.MAX_IMAGE_PIXELS = 89_478_485
        diff = np.abs(np.asarray(thumb.convert("L"), float) - np.asarray(ref.convert("L"), float)).mean()
        assert np.asarray(thumb.convert("L")).min() < 150 and diff < 4, diff
        assert max(peak) < GB
        assert hwm < GB
    finally:
        stop(proc)
