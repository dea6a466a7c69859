"""An update keeps the encoding of its folder's converted figures (issue 28, sixth round): a folder built with
``paeth-rle`` (the default of the fourth and fifth rounds) is updated with ``paeth-rle``, so an identical TIFF in an
old and a new snapshot has the same bytes (the same sha256 for exact de-duplication) and the card's sentence on
converted PNGs stays true of every sample; a fresh build writes ``up-rle`` (eleventh round); a resumed snapshot keeps
the encoding it began with.

Builds run in this process with ``workers=1`` on copies of the real image-bearing fixture articles (eLife TIFFs among
them) with fresh PMCIDs, as ``benchmarks/bench_build.py`` makes them."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.images import png_row_filters

from biomedica_hf.dataset.card import write_card
from biomedica_hf.ingest import state
from biomedica_hf.ingest.article import MediaOptions
from biomedica_hf.ingest.pipeline import BuildConfig, build

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import replicate  # noqa: E402


def _cfg(inp: Path, out: Path, partition_target: int | None = None, **media) -> BuildConfig:
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       caption_dups=False, partition_target=partition_target, media=MediaOptions(**media))


def _converted_filters(out: Path) -> dict[str, set[int]]:
    """key -> the row filter types of each converted (TIFF) figure's PNG, read from the shards at its offsets."""
    got = {}
    rows = pq.read_table(out / "figures.parquet", columns=["key", "shard", "image_offset", "image_size", "reencoded",
                                                           "image_format"]).to_pylist()
    for r in rows:
        if not (r["reencoded"] and r["image_format"] == "TIFF"):
            continue
        with open(out / r["shard"], "rb") as fh:
            fh.seek(r["image_offset"])
            got[r["key"]] = set(png_row_filters(fh.read(r["image_size"])))
    return got


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> Path:
    made = tmp_path_factory.mktemp("png_copies")
    replicate(made, 80)                      # copies 0-3 of the TIFF-heavy mix (PMC900000xx, PMC900001xx, ...)
    return made


def _add(copies: Path, inp: Path, which: str) -> None:
    """Copy the packages of copies ``which`` (e.g. "01") into the input folder ``inp``."""
    inp.mkdir(exist_ok=True)
    for path in copies.iterdir():
        if path.name[8] in which:            # PMC9000 0 c NN: copy c
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, inp / path.name)


def test_an_update_keeps_the_folders_png_encoding(copies, tmp_path, caplog):
    """The first snapshot converts copies 0-1's TIFFs with ``paeth-rle``; the update (default options: ``up-rle``)
    lists copies 0-3 (0-1 unchanged), keeps ``paeth-rle``, so copies 2-3's identical TIFFs convert to the same bytes
    and are found as exact duplicates of the published ones (with ``up-rle`` their sha256 would differ, and they
    would be published again)."""
    inp, out = tmp_path / "in", tmp_path / "ds"
    _add(copies, inp, "01")
    build(_cfg(inp, out, png_strategy="paeth-rle"))
    first = _converted_filters(out)
    assert first and all(f == {4} for f in first.values())        # Paeth on every row
    with caplog.at_level("INFO", logger="biomedica_hf"):
        _add(copies, inp, "23")
        build(_cfg(inp, out))                                      # the default is up-rle
    assert "png_strategy 'paeth-rle': the update keeps it" in caplog.text
    assert _converted_filters(out) == first                        # nothing converted was published again
    dups = {d for r in pq.read_table(out / "duplicates.parquet").to_pylist() if r["key"] in first
            for d in r["duplicate_keys"]}
    for key in first:                                              # each TIFF's copies in the update: duplicates
        assert {f"{key[:8]}{c}{key[9:]}" for c in "23"} <= dups, key     # PMC9000 0 cNN: copy c
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["media"]["png_strategy"] == "paeth-rle"
    assert "libpng with the Paeth filter on every row" in write_card(out).read_text()

    fresh = tmp_path / "fresh"
    build(_cfg(inp, fresh))
    made = _converted_filters(fresh)
    assert set(made) == set(first) and all(f == {2} for f in made.values())    # up-rle: Up on every row
    assert json.loads((fresh / "build_summary.json").read_text())["media"]["png_strategy"] == "up-rle"
    assert "the Up filter on every row, deflated with zlib's RLE strategy" in write_card(fresh).read_text()


def test_a_resume_keeps_the_encoding_its_snapshot_began_with(copies, tmp_path, caplog):
    """A build begun with ``paeth-rle``, killed after its first partition was staged, and resumed with the default
    options (``up-rle``) finishes with ``paeth-rle``: its layout recorded the encoding, so one snapshot never holds
    both."""
    inp, out = tmp_path / "in", tmp_path / "ds"
    _add(copies, inp, "0123")
    state.arm("staged", 1)
    try:
        with pytest.raises(state.SimulatedKill):
            build(_cfg(inp, out, png_strategy="paeth-rle", partition_target=4))
    finally:
        state.disarm()
    with caplog.at_level("INFO", logger="biomedica_hf"):
        build(_cfg(inp, out, partition_target=4))
    assert "this snapshot's converted figures are PNGs of png_strategy 'paeth-rle': the resume keeps it" in caplog.text
    made = _converted_filters(out)
    assert made and all(f == {4} for f in made.values())
    assert json.loads((out / "build_summary.json").read_text())["media"]["png_strategy"] == "paeth-rle"
