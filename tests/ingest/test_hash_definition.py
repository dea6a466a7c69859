"""The perceptual hash's definition is recorded and never mixed (issue 28): ``build_summary.json`` names it, the
staging binding, staged and done markers carry it; a rerun that finds partitions staged or written by code of
another definition (none recorded = the legacy ``phash256``) redoes them from their inputs, and an update over a
folder of another definition is refused before anything changes.

Builds run in this process with ``workers=1`` on a small generated corpus (the real PMC10802347 nXML with new ids,
noise figures), as in ``test_resume_state.py``; "older code's state" is made by removing the recorded name."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.dataset.verify import verify_folder
from biomedica_hf.ingest import state
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.ingest.sources.base import FatalBuildError
from biomedica_hf.ingest.state import read_sealed, write_sealed
from biomedica_hf.neardup.hashing import HASH_NAME, LEGACY_HASH_NAME, bytes_phash, folder_hash_name

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_article, synth_corpus  # noqa: E402

N = 8
START = 95_800_000


def _cfg(inp: Path, out: Path) -> BuildConfig:
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       shard_max_samples=6, caption_dups=False, partition_target=4, split_fractions=(0.6, 0.2, 0.2))


def _index_hashes(out: Path) -> dict[str, str]:
    return dict(zip(*pq.read_table(out / "figures.parquet", columns=["key", "phash"]).to_pydict().values()))


def _shard_hashes(out: Path) -> dict[str, str]:
    got = {}
    for r in pq.read_table(out / "figures.parquet", columns=["key", "shard", "image_offset", "image_size"]).to_pylist():
        with open(out / r["shard"], "rb") as fh:
            fh.seek(r["image_offset"])
            got[r["key"]] = bytes_phash(fh.read(r["image_size"]))
    return got


def _as_legacy(path: Path) -> bool:
    """Rewrite a sealed record as older code wrote it: without the hash definition's name."""
    info = read_sealed(path)
    if info is None or "phash" not in info:
        return False
    info.pop("phash")
    write_sealed(path, info)
    return True


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    inp = tmp_path_factory.mktemp("hashdef-in") / "in"
    synth_corpus(inp, N, start=START)
    return inp


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("hashdef-ref") / "ds"
    report = build(_cfg(corpus, out))
    return {"out": out, "report": report, "hashes": _index_hashes(out)}


def test_the_build_records_its_definition_and_its_hashes_are_the_shard_images(reference):
    out = reference["out"]
    assert json.loads((out / "build_summary.json").read_text())["phash"] == HASH_NAME == folder_hash_name(out)
    done = sorted((out / "_work" / "parts" / "done").glob("*.json"))
    assert done and all(read_sealed(p)["phash"] == HASH_NAME for p in done)
    hashes = reference["hashes"]
    assert hashes and all(hashes.values())
    assert hashes == _shard_hashes(out)       # bit for bit bytes_phash of every written image


@pytest.mark.parametrize("point", ["staged", "partition_written", "tables_ready"])
def test_a_rerun_redoes_partitions_staged_or_written_with_another_definition(corpus, reference, tmp_path, point,
                                                                             caplog):
    """Killed after the first partition was staged (or written); its markers then lose the definition's name, as
    older code left them: the rerun redoes that partition from its inputs (it does not trust its staged phash
    values or hash files), and the folder's hashes are this definition's, as an uninterrupted build's."""
    out = tmp_path / "ds"
    state.arm(point, 1)
    try:
        with pytest.raises(state.SimulatedKill):
            build(_cfg(corpus, out))
    finally:
        state.disarm()
    work = out / "_work"
    marked = [p for p in sorted((work / "stage").glob("*/*.json")) + sorted((work / "parts" / "done").glob("*.json"))
              if _as_legacy(p)]
    assert marked, "the kill left no marker that records the definition"
    with caplog.at_level("WARNING", logger="biomedica_hf.ingest"):
        build(_cfg(corpus, out))
    said = [r.getMessage() for r in caplog.records]
    assert any("hashed with another perceptual hash definition" in m for m in said), said
    # each marked partition's staged units or written shards (phash values of the other definition) were redone
    staged = {p.parent.name for p in marked if p.parent.parent.name == "stage"}
    done = {p.stem for p in marked if p.parent.name == "done"}
    assert staged | done
    for name in staged:
        assert f"staging of {name} was made for another manifest or hash definition, or is damaged: redone" in said
    for name in done:
        assert f"partition {name}: its done marker or parts do not check: redone" in said
    assert verify_folder(out).ok
    assert _index_hashes(out) == reference["hashes"]
    assert folder_hash_name(out) == HASH_NAME


def test_an_unmarked_rerun_of_the_same_kill_trusts_its_staging(corpus, reference, tmp_path, caplog):
    """The control of the test above: the same kill, markers left as written: the staged partition is kept."""
    out = tmp_path / "ds"
    state.arm("staged", 1)
    try:
        with pytest.raises(state.SimulatedKill):
            build(_cfg(corpus, out))
    finally:
        state.disarm()
    with caplog.at_level("WARNING", logger="biomedica_hf.ingest"):
        report = build(_cfg(corpus, out))
    assert not [r for r in caplog.records if r.getMessage().endswith("redone")]
    assert report.n_staged_now < reference["report"].n_listed
    assert _index_hashes(out) == reference["hashes"]


def test_an_update_over_a_folder_of_another_definition_is_refused(corpus, reference, tmp_path):
    """A folder whose build_summary.json records no definition (built by older code: legacy phash256 values):
    an update would publish new samples' hashes beside the old ones: refused in one line, no published file
    changed, no snapshot left behind; the unchanged listing is still "up to date"."""
    out = tmp_path / "ds"
    shutil.copytree(reference["out"], out)
    summary = json.loads((out / "build_summary.json").read_text())
    summary.pop("phash")
    (out / "build_summary.json").write_text(json.dumps(summary))
    copy = out / "_work" / "build_summary.sealed.json"
    write_sealed(copy, {"summary": summary})
    assert folder_hash_name(out) == LEGACY_HASH_NAME
    newer = tmp_path / "newer"
    shutil.copytree(corpus, newer)
    synth_article(newer, START + 100)
    def published() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "_work" not in p.parts}

    before = published()
    with pytest.raises(FatalBuildError, match=f"'{LEGACY_HASH_NAME}'.*'{HASH_NAME}'.*--out NEW_FOLDER") as e:
        build(_cfg(newer, out))
    assert "\n" not in str(e.value)
    assert published() == before
    assert [p.name for p in sorted((out / "_work" / "snapshots").iterdir())] == ["s000"]
    assert build(_cfg(corpus, out)).changes == {"up to date": 1}
    assert published() == before
