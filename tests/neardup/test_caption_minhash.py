"""The caption MinHash computed with numpy for a whole batch is datasketch's MinHash, value for value, on real PMC
captions (biomedica_hf.neardup.captions.signatures), and the build's band parameters are datasketch's."""
from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from biomedica_hf.neardup import captions as C


def _all_captions(articles_dir: Path) -> list[str]:
    """Every figure caption of every fixture JATS file (PLOS, eLife, PMC nXML), in file order."""
    from biomedica_hf.ingest.parse import ParseError, parse_jats

    caps = []
    for xml in sorted(articles_dir.glob("*/*.xml")):
        try:
            parsed = parse_jats(xml)
        except ParseError:            # the corpus's non-JATS files
            continue
        caps += [f.caption for a in parsed for f in a.figures]
    return caps


# captions that real PMC has, in small: none, no words, one to three words (one shingle), non-ASCII words (byte
# offsets differ from character offsets), several spaces and punctuation between words
EDGE = [None, "", "  ", "(a)–(c).", "Figure", "A b", "one two three", "one two three four",
        "Ca²⁺ imaging in µm-thick slices, 37 °C; β-actin — Ångström", "Größe   der  Zellen\n(n = 3)  α β γ δ",
        "日本語 キャプション の 例 です", "x_y z_1 __ 42 42 42 42"]


def _datasketch(captions: list[str | None]) -> np.ndarray:
    from datasketch import MinHash

    sh = [C.shingles(c or "") for c in captions]
    out = np.zeros((len(captions), C.NUM_PERM), dtype=np.uint64)
    ok = [i for i, s in enumerate(sh) if s]
    hashed = MinHash.bulk([sh[i] for i in ok], num_perm=C.NUM_PERM, seed=C.MINHASH_SEED, hashfunc=zlib.crc32)
    out[ok] = np.stack([m.hashvalues for m in hashed]).astype(np.uint64)
    return out


def test_signatures_are_datasketchs_on_every_fixture_caption(articles_dir):
    caps = _all_captions(articles_dir) + EDGE
    assert len(caps) > 300
    sigs, ok = C.signatures(caps)
    assert ok.tolist() == [bool(C.shingles(c or "")) for c in caps]
    assert np.array_equal(sigs, _datasketch(caps))


def test_shingle_hashes_are_the_crc_of_each_shingle(articles_dir):
    for cap in _all_captions(articles_dir)[:300] + [c for c in EDGE if c is not None]:
        out: list[int] = []
        n = C._shingle_crcs(cap, out)
        assert out == [zlib.crc32(s) for s in C.shingles(cap)], cap
        assert n == len(out)


@pytest.mark.parametrize("slice_rows,chunk", [(1, 2048), (7, 5), (64, 1), (1 << 14, 3)])
def test_captions_cut_by_the_block_edge_get_the_same_signatures(articles_dir, monkeypatch, slice_rows, chunk):
    """Blocks of a few shingles (almost every caption split over blocks and merged back) and chunks of a few
    captions (the edge captions fall into chunks of their own)."""
    caps = _all_captions(articles_dir)[:60] + EDGE
    expected = _datasketch(caps)
    monkeypatch.setattr(C, "_SLICE_ROWS", slice_rows)
    monkeypatch.setattr(C, "_CHUNK_CAPTIONS", chunk)
    sigs, ok = C.signatures(caps)
    assert np.array_equal(sigs, expected)
    assert ok.tolist() == [bool(C.shingles(c or "")) for c in caps]


def test_a_caption_of_more_shingles_than_a_block_is_one_signature():
    long = " ".join(f"w{i % 5000}" for i in range(3 * (1 << 14) + 5))    # > 3 blocks of shingles
    caps = ["short caption here", long, "another short one"]
    assert np.array_equal(C.signatures(caps)[0], _datasketch(caps))


def test_the_builds_band_parameters_are_datasketchs():
    from datasketch.lsh import _optimal_param

    for (threshold, num_perm), params in C._KNOWN_BAND_PARAMS.items():
        assert params == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert C.band_params(C.DEFAULT_THRESHOLD) == _optimal_param(C.DEFAULT_THRESHOLD, C.NUM_PERM, 0.5, 0.5)
    assert C.band_params(0.8) == _optimal_param(0.8, C.NUM_PERM, 0.5, 0.5)     # any other: computed


def test_caption_keys_need_no_datasketch_import():
    """datasketch's package import pulls in scipy.integrate (~0.5 s a process); the build's keys do without it."""
    code = ("import sys; from biomedica_hf.neardup.captions import caption_keys; "
            "k, ok = caption_keys(['a caption of several words', None]); "
            "print(int(ok.sum()), 'datasketch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False"]
