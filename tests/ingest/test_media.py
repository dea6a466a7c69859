"""biomedica_hf.ingest.media on the real PMC fixture images (see fixtures/pmc/MANIFEST.md)."""
from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from support.images import png_chunks, png_row_filters

from biomedica_hf.ingest.media import (
    MediaError,
    alternate_renditions,
    is_image_name,
    process_image,
    resolve_graphic,
    sha256_bytes,
)
from biomedica_hf.images import TARGET_MODE, to_output_mode

OTHER = "images_other/pmc_packages_without_nxml"


def package_files(root: Path) -> dict[str, Path]:
    """``ArticlePackage.files`` for a fixture directory: names relative to the root."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pmc(pmc_dir) -> Path:
    return pmc_dir


def read(pmc: Path, rel: str) -> bytes:
    return (pmc / rel).read_bytes()


def decode_hf(data: bytes) -> Image.Image:
    """What a ``datasets`` user gets for the shard member."""
    from datasets import Image as HFImage

    return HFImage().decode_example({"bytes": data, "path": None})


def load(path: Path) -> Image.Image:
    """A fixture image, fully loaded, file closed."""
    with Image.open(path) as im:
        im.load()
        return im.copy() if getattr(im, "n_frames", 1) > 1 else im


def reopen(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# ------------------------------------------------------------------------------------------
# resolve_graphic / alternate_renditions
# ------------------------------------------------------------------------------------------

def test_resolve_prefers_full_jpg_over_gif_thumbnail(pmc):
    files = package_files(pmc / "articles/PMC7112410")
    for n in range(1, 5):
        assert resolve_graphic(f"gr{n}_lrg", files) == f"gr{n}_lrg.jpg"
    assert alternate_renditions("gr1_lrg.jpg", files) == ["gr1_lrg.gif"]
    # an explicit .gif href still gets the full image when one exists
    assert resolve_graphic("gr1_lrg.gif", files) == "gr1_lrg.jpg"


def test_resolve_gif_only_rendition(pmc):
    files = package_files(pmc / "articles/PMC10802347")
    stem = "nihpp-2023.12.31.573776v1-f000"
    assert resolve_graphic(stem + "1", files) == stem + "1.gif"     # only rendition
    assert alternate_renditions(stem + "1.gif", files) == []
    for n in (2, 3, 4):
        assert resolve_graphic(f"{stem}{n}", files) == f"{stem}{n}.jpg"
    # the article XML is never a candidate, although its stem shares the dotted prefix
    assert resolve_graphic("nihpp-2023.12.31.573776v1", files) is None


def test_resolve_extensionless_tif(pmc):
    files = package_files(pmc / "articles/eLife_19405")
    assert resolve_graphic("elife-19405-fig1", files) == "elife-19405-fig1.tif"
    assert resolve_graphic("elife-19405-inf1", files) == "elife-19405-inf1.tif"
    assert resolve_graphic("elife-19405", files) is None   # the .xml
    files = package_files(pmc / "articles/eLife_00353")
    assert resolve_graphic("elife-00353-fig1-v1", files) == "elife-00353-fig1-v1.tif"


def test_resolve_texture_mime_says_tiff_files_are_jpg(pmc):
    files = package_files(pmc / "articles/eLife_32671_texture")
    assert resolve_graphic("fig1.jpg", files) == "fig1.jpg"
    assert resolve_graphic("fig1.tif", files) == "fig1.jpg"   # declared tiff, shipped jpg
    assert resolve_graphic("fig1.eps", files) == "fig1.jpg"
    assert resolve_graphic("fig6.jpg", files) is None


def test_resolve_case_and_path_prefix(pmc):
    files = package_files(pmc / "articles/PMC7112410")
    assert resolve_graphic("GR2_LRG.JPG", files) == "gr2_lrg.jpg"
    assert resolve_graphic("./gr2_lrg.jpg", files) == "gr2_lrg.jpg"
    assert resolve_graphic(".\\gr2_lrg.jpg", files) == "gr2_lrg.jpg"
    assert resolve_graphic("gr2%5Flrg", files) == "gr2_lrg.jpg"          # %-escaped "_"
    assert resolve_graphic("figures/gr2_lrg", files) == "gr2_lrg.jpg"
    assert resolve_graphic(" https://example.org/x/gr2_lrg.jpg ", files) == "gr2_lrg.jpg"
    assert resolve_graphic("", files) is None
    assert resolve_graphic("gr9_lrg", files) is None


def test_resolve_on_tarball_member_names(pmc):
    """Keys with a folder prefix, as listed by the real package tarball (paths need not exist)."""
    with tarfile.open(pmc / "articles/PMC7159286/package/PMC7159286.tar.gz") as tf:
        files = {m.name: Path("/nonexistent") / m.name for m in tf.getmembers() if m.isfile()}
    assert resolve_graphic("gr3a_lrg", files) == "PMC7159286/gr3a_lrg.jpg"
    assert resolve_graphic("gr3b_lrg", files) == "PMC7159286/gr3b_lrg.jpg"
    assert resolve_graphic("PMC7159286/gr1_lrg", files) == "PMC7159286/gr1_lrg.jpg"
    assert resolve_graphic("mmc1", files) is None         # supplementary pdf
    assert resolve_graphic("main", files) is None         # pdf + nxml
    assert alternate_renditions("PMC7159286/gr4_lrg.jpg", files) == ["PMC7159286/gr4_lrg.gif"]


def test_resolve_never_picks_non_images(pmc):
    files = package_files(pmc / OTHER / "PMC11286954")
    # upstream pubmed-client picked the .gif here: a real bug pattern
    for fig in ("Fig1", "Fig2", "Fig3", "Fig4", "Figa"):
        assert resolve_graphic(f"41420_2024_2111_{fig}_HTML", files) == f"41420_2024_2111_{fig}_HTML.jpg"
    assert resolve_graphic("41420_2024_2111_MOESM2_ESM", files) == "41420_2024_2111_MOESM2_ESM.tif"
    assert resolve_graphic("41420_2024_2111_MOESM1_ESM", files) is None        # .docx
    assert resolve_graphic("41420_2024_2111_MOESM1_ESM.docx", files) is None   # exact, not image
    assert resolve_graphic("PMC11286954_figures_metadata.json", files) is None
    assert not is_image_name("x.xlsx")
    assert is_image_name("X.TIFF")


def test_resolve_size_tiebreak_and_priority(pmc):
    """Same priority (jpg/jpeg): the larger file wins; png beats tif beats gif."""
    src = pmc / OTHER / "PMC1064083"
    big, small = src / "bcr936-1.jpg", src / "bcr936-2.jpg"
    assert big.stat().st_size > small.stat().st_size
    files = {"f.jpeg": small, "f.jpg": big, "f.gif": src / "bcr936-1.gif"}
    assert resolve_graphic("f", files) == "f.jpg"
    files = {"f.jpeg": big, "f.jpg": small}
    assert resolve_graphic("f", files) == "f.jpeg"
    files = {"f.gif": big, "f.tif": small, "f.png": small}
    assert resolve_graphic("f", files) == "f.png"
    assert resolve_graphic("f.tif", files) == "f.tif"   # an exact non-gif match is respected


# ------------------------------------------------------------------------------------------
# process_image: kept originals
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", [
    "articles/PMC7112410/gr1_lrg.jpg",                         # RGB
    f"{OTHER}/PMC1175969/gb-2005-6-6-r49-2.jpg",               # grayscale JPEG
    "articles/eLife_32671_texture/fig3.jpg",
])
def test_jpeg_original_bytes_kept(pmc, rel):
    data = read(pmc, rel)
    rec = process_image(data, rel)
    src = load(pmc / rel)
    assert rec.data is data or rec.data == data
    assert rec.sha256 == sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert (rec.ext, rec.reencoded, rec.orig_format) == ("jpg", False, "JPEG")
    assert (rec.width, rec.height) == src.size
    assert rec.orig_mode == src.mode
    assert rec.source_name == rel
    assert decode_hf(rec.data).size == src.size


def test_png_original_bytes_kept(pmc):
    data = read(pmc, "images_other/misc/open_clip_with_biomedica_CT.png")
    rec = process_image(data, "ct.png")
    assert (rec.data, rec.ext, rec.reencoded, rec.orig_mode) == (data, "png", False, "L")
    assert decode_hf(rec.data).size == (512, 512)


def test_exif_orientation_on_kept_jpeg(pmc):
    """Kept bytes keep the tag; width/height are the displayed size, as datasets decodes it."""
    src = load(pmc / "articles/PMC7112410/gr3_lrg.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    src.save(buf, "JPEG", quality=90, exif=exif)
    rec = process_image(buf.getvalue())
    assert rec.data == buf.getvalue()
    assert not rec.reencoded
    assert (rec.width, rec.height) == (src.height, src.width)
    assert decode_hf(rec.data).size == (rec.width, rec.height)


# ------------------------------------------------------------------------------------------
# process_image: conversions
# ------------------------------------------------------------------------------------------

def test_gif_to_png(pmc):
    rel = "articles/PMC10802347/nihpp-2023.12.31.573776v1-f0001.gif"
    data = read(pmc, rel)
    src = load(pmc / rel).convert("RGB")
    rec = process_image(data, rel)
    assert (rec.ext, rec.reencoded, rec.orig_format, rec.orig_mode) == ("png", True, "GIF", "P")
    assert (rec.width, rec.height) == src.size == (100, 128)
    out = reopen(rec.data)
    assert out.format == "PNG"
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(src))   # lossless
    assert rec.sha256 == sha256_bytes(rec.data)
    hf = decode_hf(rec.data)
    assert hf.size == src.size
    assert hf.mode == "RGB"


def test_gif_transparency(pmc):
    # transparent palette entry actually used -> RGBA; declared but unused -> alpha dropped (RGB)
    used = process_image(read(pmc, f"{OTHER}/PMC1175969/gb-2005-6-6-r49-i3.gif"))
    assert reopen(used.data).mode == "RGBA"
    unused = process_image(read(pmc, f"{OTHER}/PMC1064083/bcr936-1.gif"))
    assert reopen(unused.data).mode == "RGB"


def test_rgba_tiff_keeps_alpha(pmc):
    rel = "articles/eLife_19405/elife-19405-inf1.tif"
    src = load(pmc / rel)
    rec = process_image(read(pmc, rel), rel)
    assert (rec.orig_format, rec.orig_mode, rec.ext, rec.reencoded) == ("TIFF", "RGBA", "png", True)
    out = reopen(rec.data)
    assert out.mode == "RGBA"
    assert out.size == src.size == (661, 624)
    assert np.array_equal(np.asarray(out), np.asarray(src))      # pixels and alpha unchanged
    assert out.getchannel("A").getextrema() == (200, 255)
    assert out.info.get("icc_profile") == src.info["icc_profile"]  # RGB profile travels along
    assert decode_hf(rec.data).mode == "RGBA"


def test_big_tiff_converts(pmc):
    rel = f"{OTHER}/PMC11286954/41420_2024_2111_MOESM2_ESM.tif"
    rec = process_image(read(pmc, rel), rel)
    assert (rec.width, rec.height, rec.orig_format, rec.ext) == (2250, 3250, "TIFF", "png")
    src = load(pmc / rel)
    out = reopen(rec.data)
    assert np.array_equal(np.asarray(out), np.asarray(src))
    assert decode_hf(rec.data).size == (2250, 3250)


def test_converted_png_has_no_metadata(pmc):
    rec = process_image(read(pmc, "articles/PMC7112410/gr1_lrg.gif"))
    assert {kind for kind, _ in png_chunks(rec.data)} == {b"IHDR", b"IDAT", b"IEND"}


@pytest.mark.parametrize("rel", [
    "articles/PMC7112410/gr2_lrg.gif",
    "articles/eLife_19405/elife-19405-fig1.tif",
    "articles/eLife_19405/elife-19405-inf1.tif",
])
def test_deterministic(pmc, rel):
    data = read(pmc, rel)
    a, b = process_image(data, rel), process_image(bytes(data), rel)
    assert a.data == b.data
    assert a.sha256 == b.sha256


def _converted_fixtures(pmc: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every fixture GIF / TIFF figure the build converts (61 files)."""
    found = []
    for path in sorted(pmc.rglob("*")):
        if path.suffix.lower() in (".gif", ".tif", ".tiff"):
            data = path.read_bytes()
            try:
                process_image(data, path.name, png_strategy="rle")
            except MediaError:
                continue
            found.append((path.name, data))
    return found


@pytest.mark.parametrize("strategy,most", [("paeth-rle", 1.02), ("up-rle", 1.20), ("up-igzip", 1.25)])
def test_converted_pngs_are_pillows_image_with_its_icc(pmc, strategy, most):
    """Every converted fixture figure (GIF, TIFF: RGB, RGBA, gray, with and without ICC) encoded by libpng with the
    Paeth filter (the fourth round's default), with Up rows deflated with zlib's RLE strategy (the default now) or by
    igzip (the sixth to tenth rounds') decodes to exactly the pixels of Pillow's PNG (the ``rle`` choice before),
    carries the same ICC chunk right after IHDR and nothing else, and the whole set is at most ``most`` times as large
    (measured: +0.7 %, +17 % and +19 %)."""
    sizes = {"rle": 0, strategy: 0}
    with_icc = 0
    for name, data in _converted_fixtures(pmc):
        path = Path(name)
        old = process_image(data, path.name, png_strategy="rle")
        new = process_image(data, path.name, png_strategy=strategy)
        assert new.reencoded
        assert new.ext == "png"
        a, b = reopen(old.data), reopen(new.data)
        assert (b.mode, b.size) == (a.mode, a.size), path.name
        assert np.array_equal(np.asarray(b), np.asarray(a)), path.name
        kinds = [k for k, _ in png_chunks(new.data)]
        icc = [c for c in png_chunks(old.data) if c[0] == b"iCCP"]
        assert [c for c in png_chunks(new.data) if c[0] == b"iCCP"] == icc, path.name
        assert kinds[:2] == [b"IHDR", b"iCCP" if icc else b"IDAT"], path.name
        assert set(kinds) <= {b"IHDR", b"iCCP", b"IDAT", b"IEND"}, path.name
        with_icc += bool(icc)
        sizes["rle"] += len(old.data)
        sizes[strategy] += len(new.data)
    assert with_icc >= 1                      # the eLife TIFFs carry RGB profiles
    assert sizes["rle"] > 1_000_000           # the 61 converted fixture figures
    assert sizes[strategy] <= most * sizes["rle"]


def test_the_default_png_writer_is_up_rle_and_deterministic(pmc):
    """The default for converted figures is ``up-rle``: every IDAT row starts with filter type 2 (Up), and the same
    figure gives the same bytes twice (its sha256 is what exact de-duplication compares)."""
    from biomedica_hf.ingest.media import PNG_STRATEGY

    assert PNG_STRATEGY == "up-rle"
    for name, data in _converted_fixtures(pmc)[:12]:
        a, b = process_image(data, name), process_image(data, name)
        assert a.data == b.data and a.sha256 == b.sha256, name
        assert set(png_row_filters(a.data)) == {2}, name           # the Up filter on every row


def test_up_rle_is_zlibs_rle_whichever_zlib_writes_it(pmc, monkeypatch):
    """``up-rle``'s bytes are defined by zlib's RLE strategy: zlib-ng (installed with the package, faster) and the
    stdlib's zlib (where zlib-ng is missing) write the same PNG for every converted fixture figure (61: gray, RGB,
    RGBA, 1-6 bands of rows), for noise (literals only) and for one flat colour (runs far past 258 bytes), so a folder
    built on either is the same folder, and exact de-duplication finds the same duplicates."""
    import zlib

    zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
    from biomedica_hf.ingest import media

    rng = np.random.default_rng(0)
    images = _converted_fixtures(pmc)
    for name, arr in (("noise", rng.integers(0, 256, (300, 517, 3), dtype=np.uint8)),
                      ("flat", np.full((1200, 1000), 77, np.uint8))):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "TIFF")
        images.append((name, buf.getvalue()))
    bands = 0
    for name, data in images:
        monkeypatch.setattr(media, "_rle_zlib", zlib_ng)
        ng = process_image(data, name, png_strategy="up-rle").data
        monkeypatch.setattr(media, "_rle_zlib", zlib)
        assert process_image(data, name, png_strategy="up-rle").data == ng, name
        im = reopen(ng)
        bands = max(bands, -(-im.height * (im.width * len(im.getbands()) + 1) // media._PNG_BAND_BYTES))
    assert len(images) == 63 and bands >= 4


@pytest.mark.parametrize("strategy", ["up-rle", "up-igzip"])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_up_rows_across_band_edges(pmc, monkeypatch, mode, strategy):
    """Bands of 1, 7 and 64 rows (the first row of each band is filtered against the last of the band before) and one
    band for the whole image give the same pixels, for each mode the Up writers take; an ICC profile of the mode's
    colour space rides along."""
    from biomedica_hf.ingest import media

    base = load(pmc / "images_other/misc/open_clip_with_biomedica_CT.png").convert("RGBA")
    im = base.resize((301, 97)).convert(mode)          # an odd width: rows of 301-1204 bytes
    want = np.asarray(im)
    icc = b"\0" * 16 + (b"GRAY" if mode in ("L", "LA") else b"RGB ") + b"\0" * 108
    for rows in (1, 7, 64, 10_000):
        monkeypatch.setattr(media, "_PNG_BAND_BYTES", rows * im.width * len(im.getbands()))
        png = media._encode_png(im.copy(), icc, 6, strategy)
        got = reopen(png)
        assert got.mode == mode and np.array_equal(np.asarray(got), want), rows
        assert [k for k, _ in png_chunks(png)] == [b"IHDR", b"iCCP", b"IDAT", b"IEND"]
        assert got.info.get("icc_profile") == icc


def _ct_l(pmc) -> np.ndarray:
    return np.asarray(load(pmc / "images_other/misc/open_clip_with_biomedica_CT.png").convert("L"))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_scaled_not_clipped(pmc, fmt):
    """A real CT slice as 12-bit data in a 16-bit container (typical for microscopy / CT)."""
    l8 = _ct_l(pmc)
    a16 = l8.astype(np.uint16) * 16 + 7                       # 7 .. 4087: far below 65535
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, fmt)
    im = Image.open(io.BytesIO(buf.getvalue()))
    assert im.mode.startswith("I")
    # what a naive convert does: Pillow clips at 255 -> all tissue (27 %) saturates to white
    assert (np.asarray(im.convert("L")) == 255).mean() > 0.25 > 50 * (l8 == 255).mean()
    rec = process_image(buf.getvalue())
    assert rec.reencoded
    assert rec.ext == "png"
    assert rec.orig_mode == im.mode
    out = reopen(rec.data)
    assert out.mode == "L"
    lo, hi = int(l8.min()), int(l8.max())
    expected = np.rint((l8.astype(float) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    assert np.array_equal(np.asarray(out), expected)
    assert decode_hf(rec.data).mode == "L"


def test_16bit_big_endian_and_float_tiff(pmc):
    l8 = _ct_l(pmc)
    for arr in (l8.astype(">u2") * 200, l8.astype(np.float32) / 1000.0):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "TIFF")
        rec = process_image(buf.getvalue())
        out = np.asarray(reopen(rec.data))
        assert out.dtype == np.uint8
        assert out.min() == 0
        assert out.max() == 255
        assert np.abs(out.astype(int) - l8.astype(int)).max() <= 1   # l8 spans 0..255


def test_16bit_png_can_be_kept_on_request(pmc):
    buf = io.BytesIO()
    Image.fromarray(_ct_l(pmc).astype(np.uint16) * 257).save(buf, "PNG")
    rec = process_image(buf.getvalue(), keep_16bit_png=True)
    assert rec.data == buf.getvalue()
    assert not rec.reencoded


def test_cmyk_jpeg_converted_to_rgb(pmc):
    rel = f"{OTHER}/PMC11286954/41420_2024_2111_Fig3_HTML.jpg"
    rgb = load(pmc / rel).convert("RGB")
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG", quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
    rec = process_image(buf.getvalue(), rel)
    assert (rec.orig_format, rec.orig_mode, rec.ext, rec.reencoded) == ("JPEG", "CMYK", "png", True)
    out = decode_hf(rec.data)
    assert out.mode == "RGB"
    assert out.size == rgb.size
    diff = np.abs(np.asarray(out).astype(int) - np.asarray(rgb).astype(int))
    assert diff.mean() < 3            # colours survive (not inverted / not black)


def test_other_modes_via_table(pmc):
    """Modes that no fixture carries, made from a real figure: LAB, YCbCr, 1, LA."""
    rgb = load(pmc / "articles/PMC7112410/gr3_lrg.jpg").convert("RGB")
    for mode, fmt, out_mode in (("LAB", "TIFF", "RGB"), ("YCbCr", "TIFF", "RGB"),
                                ("1", "TIFF", "L"), ("LA", "TIFF", "LA")):
        im = rgb.convert(mode) if mode != "LA" else rgb.convert("L").convert("LA")
        if mode == "LA":
            im.putalpha(128)
        buf = io.BytesIO()
        im.save(buf, fmt)
        rec = process_image(buf.getvalue())
        out = reopen(rec.data)
        assert (rec.orig_mode, out.mode, out.size) == (mode, out_mode, rgb.size), mode
    lab = process_image(_save(rgb.convert("LAB"), "TIFF"))
    diff = np.abs(np.asarray(reopen(lab.data)).astype(int) - np.asarray(rgb).astype(int))
    assert diff.mean() < 2


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_tiff_orientation_applied_when_converting(pmc):
    src = load(pmc / "articles/PMC7112410/gr3_lrg.gif").convert("RGB")
    rec = process_image(_save(src, "TIFF", tiffinfo={0x0112: 6}))
    out = reopen(rec.data)
    assert (rec.width, rec.height) == out.size == (src.height, src.width)
    assert np.array_equal(np.asarray(out), np.asarray(src.transpose(Image.Transpose.ROTATE_270)))


# ------------------------------------------------------------------------------------------
# process_image: failures
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", [
    "articles/PMC7112410/gr2_lrg.jpg",
    "articles/eLife_19405/elife-19405-fig1.tif",
    "articles/PMC7112410/gr2_lrg.gif",
])
def test_truncated(pmc, rel):
    data = read(pmc, rel)
    with pytest.raises(MediaError) as ei:
        process_image(data[: len(data) // 2], rel)
    assert ei.value.reason in ("truncated_image", "decode_error")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_reason(pmc):
    data = read(pmc, "articles/PMC7112410/gr2_lrg.jpg")
    with pytest.raises(MediaError) as ei:
        process_image(data[: len(data) // 2])
    assert ei.value.reason == "truncated_image"


def test_truncated_rgba_tiff_is_caught(pmc):
    """Strips past the end of the file: truncated_image (libtiff alone says "decoder error")."""
    data = read(pmc, "articles/eLife_19405/elife-19405-inf1.tif")
    # pixels end at byte 396506; the rest (to 972652) is Photoshop layer data we do not need
    assert process_image(data[:400_000]).width == 661
    with pytest.raises(MediaError) as ei:
        process_image(data[:300_000])
    assert ei.value.reason == "truncated_image"


def test_png_without_iend_is_truncated(pmc):
    """Cut inside the last chunks: Pillow decodes every row, but the kept bytes are incomplete."""
    data = read(pmc, "images_other/misc/open_clip_with_biomedica_CT.png")
    for cut in (1, 12, 20):
        with pytest.raises(MediaError) as ei:
            process_image(data[:-cut])
        assert ei.value.reason == "truncated_image"
    assert process_image(data + b"\0" * 16).width == 512    # trailing padding is harmless


def test_truncated_package_member(pmc):
    """The truncated real tarball: every member that can be read must pass or fail cleanly."""
    path = pmc / "articles/PMC10802347/package/PMC10802347.truncated.tar.gz"
    seen = 0
    with tarfile.open(path) as tf:
        try:
            for m in tf:
                if m.isfile() and is_image_name(m.name):
                    data = tf.extractfile(m).read()
                    process_image(data, m.name)
                    seen += 1
        except (EOFError, tarfile.ReadError, OSError, zlib.error):
            pass
    assert seen >= 3


def _patch_png_size(png: bytes, w: int, h: int) -> bytes:
    """Rewrite the IHDR width/height (and CRC) of a real PNG: a classic decompression bomb."""
    assert png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", w, h) + png[24:29]
    return png[:8] + png[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_decompression_bomb_lowered_limit(pmc):
    # small in bytes, large in pixels: Pillow-written bilevel PNG
    im = load(pmc / "articles/PMC7112410/gr1_lrg.jpg").convert("1").resize((3000, 3000))
    data = _save(im, "PNG")
    assert len(data) < 2_000_000
    with pytest.raises(MediaError) as ei:
        process_image(data, max_pixels=1_000_000)
    assert ei.value.reason == "decompression_bomb"
    assert process_image(data, max_pixels=10_000_000).width == 3000


def test_decompression_bomb_header_before_decode(pmc):
    png = _save(load(pmc / "images_other/misc/open_clip_with_biomedica_CT.png"), "PNG")
    # 100000 x 100000: over Pillow's hard limit, default max_pixels
    with pytest.raises(MediaError) as ei:
        process_image(_patch_png_size(png, 100_000, 100_000))
    assert ei.value.reason == "decompression_bomb"
    # 20000 x 20000 with a lowered limit: rejected from the header (the data could not decode)
    with pytest.raises(MediaError) as ei:
        process_image(_patch_png_size(png, 20_000, 20_000), max_pixels=50_000_000)
    assert ei.value.reason == "decompression_bomb"


def test_max_pixels_is_authoritative_over_pillow_warning(pmc, monkeypatch):
    """Pillow's warning threshold neither leaks a warning nor overrides a larger max_pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)   # warn > 1 M, error > 2 M
    data = _save(load(pmc / "articles/PMC7112410/gr1_lrg.jpg").resize((1200, 1200)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert process_image(data, max_pixels=1_500_000).width == 1200
    with pytest.raises(MediaError) as ei:
        process_image(data, max_pixels=1_000_000)
    assert ei.value.reason == "decompression_bomb"


def test_too_small(pmc):
    with pytest.raises(MediaError) as ei:
        process_image(read(pmc, f"{OTHER}/PMC1064083/bcr936-1.gif"), min_side=100)  # 100 x 78
    assert ei.value.reason == "too_small"
    tiny = load(pmc / "articles/PMC7112410/gr1_lrg.jpg").crop((0, 0, 300, 12))
    with pytest.raises(MediaError) as ei:
        process_image(_save(tiny, "JPEG"))
    assert ei.value.reason == "too_small"
    # a real 184 x 32 formula image is above the default 20 px
    assert process_image(read(pmc, f"{OTHER}/PMC1175969/gb-2005-6-6-r49-i3.gif")).height == 32


@pytest.mark.parametrize("rel", [
    f"{OTHER}/PMC1175969/gb-2005-6-6-r49-S1.xls",
    f"{OTHER}/PMC1175969/gb-2005-6-6-r49-S2.doc",
    f"{OTHER}/PMC11286954/41420_2024_2111_MOESM1_ESM.docx",
    f"{OTHER}/PMC11286954/PMC11286954_figures_metadata.json",
    "articles/PMC7112410/main.nxml",
])
def test_not_an_image(pmc, rel):
    with pytest.raises(MediaError) as ei:
        process_image(read(pmc, rel), rel)
    assert ei.value.reason == "unsupported_format"


def test_pdf_from_package_is_not_an_image(pmc):
    with tarfile.open(pmc / "articles/PMC7159286/package/PMC7159286.tar.gz") as tf:
        pdf = tf.extractfile("PMC7159286/mmc1.pdf").read()
    assert pdf.startswith(b"%PDF")
    with pytest.raises(MediaError) as ei:
        process_image(pdf, "mmc1.pdf")
    assert ei.value.reason == "unsupported_format"


def test_corrupt_image_header_and_empty(pmc):
    data = bytearray(read(pmc, "articles/PMC7112410/gr1_lrg.jpg"))
    data[4:400] = b"\x00" * 396          # JPEG magic, garbage markers
    with pytest.raises(MediaError) as ei:
        process_image(bytes(data))
    assert ei.value.reason == "decode_error"
    with pytest.raises(MediaError) as ei:
        process_image(b"")
    assert ei.value.reason == "decode_error"


def test_media_error_fields():
    e = MediaError("too_small", "10x10 < 20")
    assert (e.reason, e.detail, str(e)) == ("too_small", "10x10 < 20", "too_small: 10x10 < 20")
    with pytest.raises(ValueError):
        MediaError("nope")


def test_all_fixture_images_process(pmc):
    """Every real fixture image either yields a decodable record or a clean MediaError."""
    n = 0
    for p in sorted(pmc.rglob("*")):
        if p.is_file() and is_image_name(p.name):
            rec = process_image(p.read_bytes(), p.name)
            assert rec.ext in ("jpg", "png")
            assert rec.width >= 20
            assert rec.height >= 20
            if rec.width * rec.height < 2_000_000:
                assert decode_hf(rec.data).size == (rec.width, rec.height)
            n += 1
    assert n >= 115


def _in_mode(rgb: Image.Image, mode: str) -> Image.Image:
    """A real figure in ``mode`` (some modes are only reachable through another one)."""
    via = {"La": "LA", "RGBa": "RGBA", "PA": "RGBA", "I;16N": "L", "I;16": "L", "I;16B": "L",
           "I;16L": "L", "I": "L"}.get(mode)
    im = rgb.convert(via) if via else rgb
    if mode == "PA":
        return im.convert("P").convert("PA")
    return im.convert(mode)


@pytest.mark.parametrize("mode", sorted(TARGET_MODE))
def test_mode_table(pmc, mode):
    """Every row of the table converts a real figure to an 8-bit PNG mode."""
    rgb = load(pmc / "articles/PMC7112410/gr3_lrg.jpg").convert("RGB")
    im = _in_mode(rgb, mode)
    assert im.mode == mode
    out = to_output_mode(im)
    expected = TARGET_MODE[mode]
    assert out.mode == expected.removesuffix("A") if expected.endswith("A") else expected
    assert out.size == rgb.size
    if expected.endswith("A"):      # semi-transparent alpha survives
        with_alpha = rgb.convert("RGBA")
        with_alpha.putalpha(128)
        im = _in_mode(with_alpha, mode)
        assert to_output_mode(im).mode == expected


# ------------------------------------------------------------------------------------------
# process_figure: one decode for verification, conversion and the perceptual hash
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("definition", ["phash256-dct128", "phash256"])
def test_process_figure_hash_is_bytes_phash_of_the_written_image(pmc, definition):
    """Every real fixture image (JPEG kept at the hash's DCT scale, PNG kept, GIF/TIFF converted): the hash from
    the one decode is bit for bit the hash of the written bytes under the named definition (today's, and the legacy
    one an update of an older folder keeps), and the record is process_image's."""
    from biomedica_hf.ingest.media import process_figure
    from biomedica_hf.neardup.hashing import DEFINITIONS, bytes_phash

    assert definition in DEFINITIONS
    other = next(d for d in DEFINITIONS if d != definition)
    images = sorted(p for p in pmc.rglob("*") if p.is_file() and is_image_name(p.name))
    kinds, differ = set(), 0
    for path in images:
        data = path.read_bytes()
        try:
            record, phash = process_figure(data, path.name, phash_definition=definition)
        except MediaError:
            continue
        assert record == process_image(data, path.name), path
        assert phash is not None, path
        assert phash == bytes_phash(record.data, definition), path
        differ += phash != bytes_phash(record.data, other)
        kinds.add((record.orig_format, record.reencoded))
    assert {("JPEG", False), ("PNG", False), ("GIF", True), ("TIFF", True)} <= kinds
    assert differ >= 20                 # the two definitions are not the same function (the large JPEGs differ)
    assert process_figure(read(pmc, "articles/PMC7112410/gr2_lrg.jpg"), phash=False)[1] is None
    with pytest.raises(ValueError, match="unknown perceptual hash definition 'phash9'"):
        process_figure(read(pmc, "articles/PMC7112410/gr2_lrg.jpg"), phash_definition="phash9")


@pytest.mark.parametrize("rel", ["articles/PMC7112410/gr2_lrg.jpg", "articles/eLife_32671_texture/fig3.jpg",
                                 "articles/PMC10802347/nihpp-2023.12.31.573776v1-f0004.jpg"])
def test_reduced_scale_decode_still_catches_cut_and_corrupt_jpegs(pmc, rel):
    """A kept JPEG is decoded at a DCT scale (1/8, or the hash's), never at full size: libjpeg still reads every
    entropy-coded block, so a stream cut anywhere (even 2 bytes short of EOI) or corrupted mid-way fails exactly
    as a full decode does."""
    from biomedica_hf.ingest.media import process_figure

    data = read(pmc, rel)
    corrupt = bytearray(data)
    corrupt[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0x5A for b in corrupt[len(data) // 2: len(data) // 2 + 64])
    failures = 0
    for bad in [data[: int(len(data) * f)] for f in (0.3, 0.6, 0.9, 0.99)] + [data[:-2], bytes(corrupt)]:
        full = Image.open(io.BytesIO(bad))
        try:
            full.load()
            expected = None
        except OSError as e:
            expected = "truncated_image" if "truncated" in str(e) else "decode_error"
        for run in (lambda b: process_image(b), lambda b: process_figure(b)[0]):
            if expected is None:
                assert run(bad).sha256 == sha256_bytes(bad)
            else:
                with pytest.raises(MediaError) as ei:
                    run(bad)
                assert ei.value.reason == expected, (rel, len(bad))
        failures += expected is not None
    assert failures >= 4       # every cut at least: the full decode rejects them, so must the reduced one


def test_every_fixture_jpeg_cut_or_corrupt_gets_a_full_decodes_verdict(pmc):
    """The hash's DCT scale (a 1/2, 1/4 or 1/8 decode, luma only) on all 56 real fixture JPEGs: each cut at
    30/60/90/99 %, 2 bytes short of EOI and corrupted mid-stream (336 variants) is rejected, or passes, exactly as a
    full-size decode of the same bytes decides."""
    from biomedica_hf.ingest.media import process_figure

    files = sorted(p for p in pmc.rglob("*.jpg") if p.is_file())
    assert len(files) >= 50
    verdicts = []
    for path in files:
        data = path.read_bytes()
        corrupt = bytearray(data)
        mid = len(data) // 2
        corrupt[mid: mid + 64] = bytes(b ^ 0x5A for b in corrupt[mid: mid + 64])
        for bad in [data[: int(len(data) * f)] for f in (0.3, 0.6, 0.9, 0.99)] + [data[:-2], bytes(corrupt)]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    Image.open(io.BytesIO(bad)).load()
                expected = "ok"
            except (OSError, SyntaxError, ValueError) as e:
                expected = "truncated_image" if "truncated" in str(e) else "decode_error"
            try:
                process_figure(bad, path.name)
                got = "ok"
            except MediaError as e:
                got = e.reason
            verdicts.append((path.name, len(bad), expected, got))
    assert len(verdicts) == 6 * len(files)
    assert [v for v in verdicts if v[2] != v[3]] == []
    assert sum(v[2] != "ok" for v in verdicts) >= 4 * len(files)     # every cut at least is rejected


def test_warm_up_imports_what_the_first_real_figures_import(articles_dir):
    """media.warm_up (run by the build's driver before it forks its workers) leaves nothing for the first real
    figures of a process to import: processing a real JPEG, TIFF (converted) and GIF afterwards imports no module."""
    import subprocess
    import sys

    files = [next(articles_dir.rglob(p)) for p in ("*.jpg", "*.tif", "*.gif")]
    code = f"""
import sys
from biomedica_hf.ingest.media import process_figure, warm_up
warm_up()
assert "scipy.fft._pocketfft.pypocketfft" in sys.modules     # the pHash's DCT, loaded
assert "scipy.fft" not in sys.modules                         # without scipy.fft's front (~0.22 s: neardup/hashing)
before = set(sys.modules)
for path in {[str(f) for f in files]!r}:
    record, phash = process_figure(open(path, "rb").read(), path)
    assert phash
print(sorted(set(sys.modules) - before))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
