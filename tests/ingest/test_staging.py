"""A partition's staging (biomedica_hf.ingest.staging) reads back exactly the real figures it staged, and every
staged image is checked on the way out: a changed byte is a StateError, never a sample."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from biomedica_hf.ingest.article import process_package
from biomedica_hf.ingest.sources.legacy import package_from_archive
from biomedica_hf.ingest.staging import PartitionStage
from biomedica_hf.ingest.state import StateError
from biomedica_hf.schema import ArticleRef


@pytest.fixture(scope="module")
def results(articles_dir, tmp_path_factory):
    """The real fixture packages that give samples, processed as the build does."""
    out = []
    for archive in sorted(articles_dir.glob("*/package/*.tar.gz")):
        dest = tmp_path_factory.mktemp("pkg") / archive.name.split(".")[0]
        res = process_package(package_from_archive(ArticleRef(pmcid=dest.name, location=archive.name), archive, dest))
        if res.samples:
            out.append(res)
    assert len(out) >= 3
    return out


def _staged(results, folder: Path) -> tuple[PartitionStage, list[dict]]:
    stage = PartitionStage(folder)
    stage.open()
    for res in results:
        stage.append(res)
    rows = [s for unit in stage.units() for s in unit["samples"]]
    return stage, rows


def test_staged_images_read_back_byte_for_byte(results, tmp_path):
    stage, rows = _staged(results, tmp_path / "p")
    expected = [(s.key, s.caption, s.image.data, s.image.sha256) for r in results for s in r.samples]
    got = [(s.key, s.caption, s.image.data, s.image.sha256) for s in stage.read_samples(rows)]
    assert got == expected
    assert all("crc32" in r for r in rows)


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_flipped_bit_in_any_staged_image_is_caught(results, tmp_path):
    """A bit flipped at the first, middle and last byte of every staged image (a copy each time)."""
    stage, rows = _staged(results, tmp_path / "p")
    good = stage.bin.read_bytes()
    caught = 0
    for i, row in enumerate(rows):
        for at in (row["offset"], row["offset"] + row["length"] // 2, row["offset"] + row["length"] - 1):
            stage.bin.write_bytes(good)
            _flip(stage.bin, at)
            with pytest.raises(StateError, match="CRC-32 differs"):
                list(stage.read_samples([row]))
            caught += 1
        stage.bin.write_bytes(good)
        assert [s.key for s in stage.read_samples([row])] == [row["key"]]
    assert caught == 3 * len(rows)


def test_a_staging_of_older_code_without_crc32_is_checked_by_sha256(results, tmp_path):
    """Staged rows written before the CRC-32 (resumed by this code) fall back to the image's sha256."""
    stage, rows = _staged(results, tmp_path / "p")
    old_rows = [{k: v for k, v in r.items() if k != "crc32"} for r in json.loads(json.dumps(rows))]
    assert [s.image.data for s in stage.read_samples(old_rows)] == [s.image.data for s in stage.read_samples(rows)]
    copy = tmp_path / "copy"
    shutil.copytree(stage.folder, copy)
    _flip(copy / "images.bin", old_rows[-1]["offset"] + 7)
    with pytest.raises(StateError, match="sha256 differs"):
        list(PartitionStage(copy).read_samples(old_rows[-1:]))
