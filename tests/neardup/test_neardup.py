"""Near-duplicate images and captions on real fixture figures (biomedica_hf.neardup)."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, UnidentifiedImageError

from biomedica_hf.neardup import (
    DEFAULT_THRESHOLD,
    HASH_BITS,
    GroupStats,
    bytes_phash,
    caption_near_duplicates,
    find_near_duplicates,
    hex_distance,
    image_phash,
)
from biomedica_hf.neardup.calibrate import calibrate, copies, figure_files
from biomedica_hf.neardup.hashing import hex_to_words

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "biomedica_hf" / "sample_data"


@pytest.fixture(scope="module")
def figures(pmc_dir) -> list[Path]:
    files = figure_files([pmc_dir, SAMPLE])
    assert len(files) >= 40
    return files


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_phash_bits_are_imagehashs_on_every_fixture_image_and_on_flat_and_tied_images(figures):
    """The build computes imagehash's pHash itself (hashing._bits_phash: no image copy, no numpy.median, no
    ImageHash object); its bits must be imagehash.phash's, for the build's hash sizes and an odd one, on every real
    fixture figure as the build hashes it, and where the median is a tie: flat images (every AC coefficient the
    same), two-level and striped images, and images of every mode that reaches the hash."""
    import imagehash

    from biomedica_hf.neardup.hashing import _bits_phash, _gray, open_image

    def same(img: Image.Image) -> None:
        for size in (5, 8, 16):     # 5: an odd count of coefficients, whose median is the middle one
            want = imagehash.phash(img, hash_size=size).hash.reshape(-1)
            assert np.array_equal(_bits_phash(img, size), want), (img.mode, img.size, size)

    for path in figures:
        img = open_image(path.read_bytes())
        img.load()
        same(_gray(img))
        same(img)                     # not yet gray: converted as imagehash converts it
    rng = np.random.default_rng(7)
    same(Image.new("L", (300, 200), 255))                                 # flat: every AC coefficient 0
    same(Image.new("L", (64, 64), 0))
    same(Image.new("RGB", (90, 90), (10, 200, 30)))
    stripes = np.zeros((128, 128), np.uint8)
    stripes[:, ::2] = 255
    same(Image.fromarray(stripes))
    half = np.zeros((100, 160), np.uint8)
    half[:, 80:] = 200
    same(Image.fromarray(half))
    for _ in range(20):
        same(Image.fromarray(rng.integers(0, 256, (int(rng.integers(8, 400)), int(rng.integers(8, 400))),
                                          dtype=np.uint8)))


def test_the_hash_dct_is_scipy_fftpack_dct_bit_for_bit(figures):
    """The pHash's DCT is scipy's pocketfft extension called directly (hashing._dct_ii: without scipy.fft's ~0.22 s
    import): its coefficients must be scipy.fftpack.dct's, bit for bit, on the hash's real inputs (every fixture
    figure as the build hashes it, at 64x64 and at other sizes), on random and flat arrays, along both axes."""
    from scipy.fftpack import dct as fftpack_dct

    from biomedica_hf.neardup.hashing import _dct_ii, _gray, _pocketfft_dct, open_image

    dct = _dct_ii()
    assert dct is not None and _pocketfft_dct() is not None       # this scipy: the direct path, not the fallback
    arrays = []
    for path in figures:
        img = _gray(open_image(path.read_bytes()))
        arrays += [np.asarray(img.resize((64, 64), Image.Resampling.LANCZOS)), np.asarray(img)]
    rng = np.random.default_rng(11)
    arrays += [rng.integers(0, 256, (64, 64), dtype=np.uint8), rng.random((37, 50)), np.full((64, 64), 255, np.uint8),
               rng.random((64, 64)).astype(np.float32), rng.random((16, 16)).astype(np.float16),
               rng.random((20, 24)).astype(">f8")]
    for a in arrays:
        for axis in (0, 1):
            got, want = dct(a, axis=axis), fftpack_dct(a, axis=axis)
            assert got.dtype == want.dtype and np.array_equal(got, want), (a.shape, a.dtype, axis)
        assert np.array_equal(dct(dct(a, axis=0), axis=1), fftpack_dct(fftpack_dct(a, axis=0), axis=1))


def test_the_hash_dct_falls_back_to_scipy_fftpack_where_the_extension_is_not_found():
    """Another scipy layout (no pocketfft extension where this scipy keeps it): scipy.fftpack.dct itself, the
    same hash."""
    import subprocess
    import sys

    code = """
import importlib.machinery
importlib.machinery.EXTENSION_SUFFIXES[:] = ['.not-here.so']      # the extension's file is not found
from biomedica_hf.neardup import hashing
from PIL import Image
assert hashing._pocketfft_dct() is None and hashing._dct_ii() is hashing._fftpack_dct
img = Image.radial_gradient('L').resize((300, 200))
print(hashing.image_phash(img))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == image_phash(Image.radial_gradient("L").resize((300, 200)))


def test_hash_is_256_bits_and_the_same_from_bytes_or_image(figures):
    from biomedica_hf.neardup.hashing import open_image

    data = figures[0].read_bytes()
    h = image_phash(open_image(data))
    assert len(h) == HASH_BITS // 4
    assert int(h, 16) >= 0
    assert bytes_phash(data) == h
    img = Image.open(figures[0])
    img.load()                  # decoded at full size, not at the hash's DCT scale: a few bits off, no more
    assert hex_distance(image_phash(img), h) <= 6
    # every mode PMC figures come in gives a hash; alpha is composited on white, 16-bit scaled by its range
    rgb = img.convert("RGB")
    rgba = rgb.convert("RGBA")
    assert image_phash(rgba) == image_phash(rgb)
    black_on_clear = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    black_on_clear.paste(Image.new("RGBA", (100, 60), (0, 0, 0, 255)), (40, 50))
    black_on_white = Image.new("L", (300, 200), 255)
    black_on_white.paste(0, (40, 50, 140, 110))
    assert hex_distance(image_phash(black_on_clear), image_phash(black_on_white)) == 0
    sixteen = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert hex_distance(image_phash(sixteen), h) <= DEFAULT_THRESHOLD
    for mode in ("P", "CMYK", "1", "LA"):
        assert len(image_phash(rgb.convert(mode))) == 64
    with pytest.raises(UnidentifiedImageError):
        bytes_phash(b"not an image")


def test_a_jpeg_and_its_lossless_png_copy_hash_alike(pmc_dir):
    """One definition for every format: a JPEG (decoded at its DCT scale, luma only) and the PNG of its full-size
    pixels (box-reduced by the same factor, whole blocks) stay close on all 56 fixture JPEGs (measured: mean 1.0,
    max 6 bits; without the DCT-scale step for the PNG: mean 2.4, max 12)."""
    from biomedica_hf.neardup.hashing import dct_scale

    files = sorted(p for p in pmc_dir.rglob("*.jpg") if p.is_file())
    assert len(files) >= 50
    dists, scales = [], set()
    for f in files:
        data = f.read_bytes()
        full = Image.open(io.BytesIO(data))
        full.load()
        scales.add(dct_scale(full.size))
        dists.append(hex_distance(bytes_phash(data), bytes_phash(_encode(full, "PNG", compress_level=1))))
    assert {2, 4} <= scales                      # the fixtures reach more than one DCT scale
    assert max(dists) <= 10, dists
    assert np.mean(dists) <= 2.0, dists


def test_threshold_separates_copies_from_distinct_figures(figures):
    """The calibration itself: every generated copy inside the threshold, every distinct pair outside."""
    subset = figures[::2]                     # half the figures keeps the test short; the bench runs all
    cal = calibrate(subset, names=("phash256",))
    pos = cal.all_positives("phash256")
    neg = np.asarray(cal.negatives["phash256"])
    assert len(pos) == 10 * len(subset)
    assert len(neg) == len(subset) * (len(subset) - 1) // 2
    assert pos.max() <= DEFAULT_THRESHOLD < neg.min(), (pos.max(), neg.min(), cal.closest_negative)
    assert cal.precision_recall("phash256", DEFAULT_THRESHOLD)[:2] == (1.0, 1.0)


def _write_parts(rows: list[dict], folder: Path, n_parts: int, seed: int) -> list[Path]:
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_parts):
        chunk = rows[i::n_parts]
        t = pa.table({"key": [r["key"] for r in chunk], "subset": [r["subset"] for r in chunk],
                      "phash": pa.array([r["phash"] for r in chunk], pa.string()),
                      "width": [7] * len(chunk)})                    # an extra column is ignored
        pq.write_table(t, folder / f"commercial-train-s000-p{i:05d}-000.parquet")
        paths.append(folder / f"commercial-train-s000-p{i:05d}-000.parquet")
    return paths


def test_copies_as_separate_articles_are_grouped_and_distinct_figures_are_not(figures, tmp_path):
    chosen = figures[:12]
    rows, expect = [], {}
    subsets = ["noncommercial", "other", "commercial"]
    for i, f in enumerate(chosen):
        img = Image.open(f)
        img.load()
        orig = {"key": f"PMC{100 + i}_fig{i}", "subset": subsets[i % 3], "phash": bytes_phash(f.read_bytes())}
        rows.append(orig)
        if i % 2:                     # odd figures are re-published: three copies as three other articles
            made = copies(img, img.format or "")
            group = [orig]
            for j, t in enumerate(("jpeg_q60", "resize_0.5x", "png_jpeg_swap")):
                group.append({"key": f"PMC{900 - 10 * i - j}_{t}", "subset": subsets[(i + j + 1) % 3],
                              "phash": bytes_phash(made[t])})
            rows += group[1:]
            kept = min(group, key=lambda r: (["commercial", "noncommercial", "other"].index(r["subset"]), r["key"]))
            for r in group:
                if r is not kept:
                    expect[r["key"]] = kept["key"]
    rows.append({"key": "PMC1_no_hash", "subset": "commercial", "phash": None})
    stats = GroupStats()
    out = list(find_near_duplicates(_write_parts(rows, tmp_path / "a", 3, 0), tmp_path / "work", stats=stats))
    assert {k: v for k, v, _ in out} == expect
    assert [k for k, _, _ in out] == sorted(expect)
    assert all(0 <= d <= DEFAULT_THRESHOLD for _, _, d in out)
    assert stats.rows_without_hash == 1
    assert stats.groups == 6
    assert stats.near_duplicates == 18
    # any file order, any partitioning: the same answer; nothing left in the work dir
    again = list(find_near_duplicates(_write_parts(rows, tmp_path / "b", 5, 1)[::-1], tmp_path / "work",
                                      memory_budget=1))
    assert again == out
    assert list((tmp_path / "work").iterdir()) == []


def test_planted_pairs_among_random_hashes(tmp_path):
    """5,000 random hashes with 200 planted pairs at distances 0..DEFAULT_THRESHOLD: all found, nothing else."""
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**64 - 1, size=(5000, 4), dtype=np.uint64, endpoint=True)
    pairs = rng.permutation(5000)[:400].reshape(200, 2)
    for n, (a, b) in enumerate(pairs):
        w = words[a].copy()
        for bit in rng.choice(256, n % (DEFAULT_THRESHOLD + 1), replace=False):
            w[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
        words[b] = w
    hexes = [r.astype(">u8").tobytes().hex() for r in words]
    assert (hex_to_words(hexes) == words).all()
    rows = [{"key": f"k{i:05d}", "subset": "commercial", "phash": h} for i, h in enumerate(hexes)]
    out = list(find_near_duplicates(_write_parts(rows, tmp_path / "p", 4, 2), tmp_path / "w", memory_budget=1))
    expect = {f"k{max(a, b):05d}": f"k{min(a, b):05d}" for a, b in pairs}
    assert {k: v for k, v, _ in out} == expect
    assert sorted(d for _, _, d in out) == sorted(n % (DEFAULT_THRESHOLD + 1) for n in range(200))
    with pytest.raises(ValueError, match="256 bits"):
        list(find_near_duplicates(_write_parts([{"key": "x", "subset": "other", "phash": "abc"}], tmp_path / "bad",
                                               1, 0), tmp_path / "w"))


def _captions(articles_dir: Path) -> list[str]:
    from biomedica_hf.ingest.parse import ParseError, parse_jats

    caps = []
    for xml in sorted(articles_dir.glob("*/*.xml"))[:40]:
        try:
            parsed = parse_jats(xml)
        except ParseError:            # the corpus's non-JATS files
            continue
        caps += [f.caption for a in parsed for f in a.figures if len(f.caption.split()) > 25]
    return list(dict.fromkeys(caps))


def test_caption_near_duplicates_flag_templates_not_distinct_captions(articles_dir, tmp_path):
    caps = _captions(articles_dir)
    assert len(caps) >= 30
    rows = [{"key": f"PMC{i:04d}_f", "subset": "commercial", "caption": c} for i, c in enumerate(caps)]
    # boilerplate: the same caption re-used verbatim, and with one word changed, in other articles
    words = caps[3].split()
    rows.append({"key": "PMC9000_same", "subset": "other", "caption": caps[3]})
    rows.append({"key": "PMC0000_edit", "subset": "noncommercial",
                 "caption": " ".join(words[:-1] + ["changed"])})
    rows.append({"key": "PMC9001_template", "subset": "commercial", "caption": caps[10].upper()})
    rows.append({"key": "PMC9002_empty", "subset": "commercial", "caption": ""})
    t = pa.table({k: [r[k] for r in rows] for k in ("key", "subset", "caption")})
    pq.write_table(t.slice(0, 20), tmp_path / "a.parquet")
    pq.write_table(t.slice(20), tmp_path / "b.parquet")
    stats = GroupStats()
    out = dict(caption_near_duplicates([tmp_path / "b.parquet", tmp_path / "a.parquet"], tmp_path / "w", stats=stats))
    assert out == {"PMC9000_same": "PMC0003_f", "PMC0000_edit": "PMC0003_f", "PMC9001_template": "PMC0010_f"}
    assert stats.rows_without_hash == 1


def test_no_parts_and_no_duplicates_give_nothing(tmp_path):
    assert list(find_near_duplicates([], tmp_path / "w")) == []
    rows = [{"key": f"k{i}", "subset": "other", "phash": f"{i:064x}"[::-1]} for i in range(1, 4)]
    rows = [{**r, "phash": h} for r, h in zip(rows, ["0" * 64, "f" * 64, "0f" * 32])]   # 256 / 128 bits apart
    assert list(find_near_duplicates(_write_parts(rows, tmp_path / "p", 2, 0), tmp_path / "w")) == []
    with pytest.raises(ValueError, match="missing"):
        pq.write_table(pa.table({"key": ["a"], "phash": ["0" * 64]}), tmp_path / "nosubset.parquet")
        list(find_near_duplicates([tmp_path / "nosubset.parquet"], tmp_path / "w"))


def test_caption_keys_computed_where_a_part_is_written_give_the_same_groups(articles_dir, tmp_path):
    """The band keys written beside each part (the build's write phase) are what the pass computes itself: the same
    groups with every part's keys file, with none, and with keys files that no longer match their part (rewritten
    part, other band parameters, damaged, of another part), which are computed again instead of trusted."""
    from biomedica_hf.neardup.captions import caption_keys, read_part_keys, write_part_keys

    caps = _captions(articles_dir)
    rows = [{"key": f"PMC{i:04d}_f", "subset": "commercial", "caption": c} for i, c in enumerate(caps)]
    rows += [{"key": "PMC9000_same", "subset": "other", "caption": caps[3]},
             {"key": "PMC9001_template", "subset": "commercial", "caption": caps[10].upper()},
             {"key": "PMC9002_empty", "subset": "commercial", "caption": ""}]
    t = pa.table({k: [r[k] for r in rows] for k in ("key", "subset", "caption")})
    parts = [tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"]
    for part, (lo, hi) in zip(parts, [(0, 10), (10, 25), (25, t.num_rows)]):
        pq.write_table(t.slice(lo, hi - lo), part)
    expected = dict(caption_near_duplicates(parts, tmp_path / "w"))
    assert expected == {"PMC9000_same": "PMC0003_f", "PMC9001_template": "PMC0010_f"}

    keys = {p: tmp_path / "keys" / f"{p.stem}.npz" for p in parts}
    for p in parts:
        got = write_part_keys(p, keys[p])
        assert np.array_equal(got[0], caption_keys(pq.read_table(p).column("caption").to_pylist())[0])
    asked, computed = [], []

    def keys_of(p):
        asked.append(p.name)
        found = read_part_keys(p, keys[p])
        if found is None:
            computed.append(p.name)
        return found

    assert dict(caption_near_duplicates(parts, tmp_path / "w", keys_of=keys_of)) == expected
    assert asked == ["a.parquet", "b.parquet", "c.parquet"]
    assert computed == []
    # keys that no longer match: the part rewritten (other bytes), other band parameters, a damaged file, a file of
    # another part (wrong length): each is refused and the part's keys computed, with the same groups
    pq.write_table(t.slice(0, 10), parts[0], compression="gzip")
    write_part_keys(parts[1], keys[parts[1]], threshold=0.8)
    keys[parts[2]].write_bytes(b"not an npz")
    assert read_part_keys(parts[0], keys[parts[0]]) is None
    assert read_part_keys(parts[1], keys[parts[1]]) is None
    asked.clear()
    assert dict(caption_near_duplicates(parts, tmp_path / "w", keys_of=keys_of)) == expected
    assert computed == ["a.parquet", "b.parquet", "c.parquet"]
    three_rows = caption_keys(["x"] * 3)            # keys of another length than any part: computed instead
    assert dict(caption_near_duplicates(parts, tmp_path / "w", keys_of=lambda p: three_rows)) == expected
