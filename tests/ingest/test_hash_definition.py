"""The perceptual hash's definition is recorded and never mixed (issue 28): ``build_summary.json`` names it, the
staging binding, staged and done markers carry it; a rerun that finds partitions staged or written by code of
another definition (none recorded = the legacy ``phash256``) redoes them from their inputs; an update of a folder
built by older code keeps that folder's (legacy) definition, so nothing is rebuilt and no folder mixes two, and an
update of a folder of a definition this code does not know is refused before anything changes.

Builds run in this process with ``workers=1`` on a small generated corpus (the real PMC10802347 nXML with new ids,
noise figures), as in ``test_resume_state.py``; "older code's state" is made by removing the recorded name."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.dataset.verify import verify_folder
from biomedica_hf.ingest import state
from biomedica_hf.ingest.article import MediaOptions
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


def _shard_images(out: Path) -> dict[str, bytes]:
    got = {}
    for r in pq.read_table(out / "figures.parquet", columns=["key", "shard", "image_offset", "image_size"]).to_pylist():
        with open(out / r["shard"], "rb") as fh:
            fh.seek(r["image_offset"])
            got[r["key"]] = fh.read(r["image_size"])
    return got


def _shard_hashes(out: Path) -> dict[str, str]:
    return {k: bytes_phash(d) for k, d in _shard_images(out).items()}


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
    assert done
    assert all(read_sealed(p)["phash"] == HASH_NAME for p in done)
    hashes = reference["hashes"]
    assert hashes
    assert all(hashes.values())
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


FIXTURES = REPO.parent / "shared" / "fixtures" / "pmc" / "articles"
STEM = "nihpp-2023.12.31.573776v1-f000"          # bench_scale.FIG_STEMS: f0001..f0004


def _key(pmcid_num: int, fig: int) -> str:
    return f"PMC{pmcid_num}_{STEM.replace('.', '_')}{fig}"


def _legacy_corpus(dest: Path) -> Path:
    """N synthetic articles; the first one's figures 2-4 are the real PMC10802347 JPEGs (541-899 px: large enough
    that the legacy and today's definitions give different hashes; the synthetic 96 px figures hash alike)."""
    synth_corpus(dest, N, start=START)
    for i in (2, 3, 4):
        shutil.copyfile(FIXTURES / "PMC10802347" / f"{STEM}{i}.jpg", dest / f"PMC{START}.1" / f"{STEM}{i}.jpg")
    return dest


def _reencoded(path: Path) -> bytes:
    """A near-duplicate copy of a figure: 90 % size, JPEG quality 70 (other bytes, the same picture)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").resize((im.width * 9 // 10, im.height * 9 // 10), Image.Resampling.LANCZOS)
    buf = __import__("io").BytesIO()
    small.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def _as_older_code(out: Path) -> None:
    """A folder as code before the definition was recorded left it: no ``phash`` in its summary (nor in its media
    options), its sealed summary copy and its done markers."""
    summary = json.loads((out / "build_summary.json").read_text())
    summary.pop("phash")
    summary["media"].pop("phash")
    (out / "build_summary.json").write_text(json.dumps(summary))
    write_sealed(out / "_work" / "build_summary.sealed.json", {"summary": summary})
    assert all(_as_legacy(p) for p in sorted((out / "_work" / "parts" / "done").glob("*.json")))


@pytest.fixture(scope="module")
def legacy_folder(tmp_path_factory):
    """A folder of legacy phash256 values built as older code built it (this code's legacy definition is that
    code's, bit for bit), its records stripped of the definition's name."""
    base = tmp_path_factory.mktemp("hashdef-legacy")
    inp = _legacy_corpus(base / "in")
    out = base / "ds"
    build(dataclasses.replace(_cfg(inp, out), media=MediaOptions(phash=LEGACY_HASH_NAME)))
    _as_older_code(out)
    assert folder_hash_name(out) == LEGACY_HASH_NAME
    return {"in": inp, "out": out}


def _published(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "_work" not in p.parts}


@pytest.mark.parametrize("kill", [None, "staged"])
def test_an_update_of_a_legacy_folder_keeps_the_legacy_definition(legacy_folder, tmp_path, caplog, kill):
    """An update (new article: a re-encoded copy of a published figure and three new real figures) of a folder
    built by older code is built in place with the folder's definition: the new samples' phash values are
    ``bytes_phash(image, LEGACY)`` (not today's, which differ on these images), the summary still says legacy, the
    near-duplicate across the old and the new sample is found; killed mid-way, the rerun keeps the definition too."""
    out = tmp_path / "ds"
    shutil.copytree(legacy_folder["out"], out)
    old_keys = set(_index_hashes(out))
    newer = tmp_path / "newer"
    shutil.copytree(legacy_folder["in"], newer)
    new = synth_article(newer, START + 100)
    (new / f"{STEM}1.jpg").write_bytes(_reencoded(FIXTURES / "PMC10802347" / f"{STEM}3.jpg"))
    for i, src in ((2, "gr2_lrg"), (3, "gr1_lrg"), (4, "gr4_lrg")):
        shutil.copyfile(FIXTURES / "PMC7112410" / f"{src}.jpg", new / f"{STEM}{i}.jpg")
    if kill:
        state.arm(kill, 1)
        try:
            with pytest.raises(state.SimulatedKill):
                build(_cfg(newer, out))
        finally:
            state.disarm()
    with caplog.at_level("INFO", logger="biomedica_hf.ingest"):
        report = build(_cfg(newer, out))
    assert report.changes.get("added") == 1
    said = [r.getMessage() for r in caplog.records]
    assert (f"this folder's samples carry {LEGACY_HASH_NAME} hashes: the update keeps that definition (a fresh "
            f"build uses {HASH_NAME})") in said
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["phash"] == LEGACY_HASH_NAME == folder_hash_name(out)
    assert [h["snapshot"] for h in summary["snapshots"]] == [0, 1]
    assert all(read_sealed(p)["phash"] == LEGACY_HASH_NAME
               for p in sorted((out / "_work" / "parts" / "done").glob("s001-*.json")))
    assert verify_folder(out).ok
    hashes = _index_hashes(out)
    added = {k: h for k, h in hashes.items() if k not in old_keys}
    assert sorted(added) == [_key(START + 100, i) for i in range(1, 5)]
    images = _shard_images(out)
    assert all(hashes[k] == bytes_phash(images[k], LEGACY_HASH_NAME) for k in hashes)   # old and new: one definition
    assert sum(bytes_phash(images[k]) != added[k] for k in added) >= 3       # today's would have differed
    near = pq.read_table(out / "near_duplicates.parquet").to_pylist()
    assert {(r["key"], r["near_dup_of"]) for r in near} >= {(_key(START + 100, 1), _key(START, 3))}
    assert build(_cfg(newer, out)).changes == {"up to date": 1}


def test_a_fresh_build_with_the_legacy_definition_hashes_as_its_bytes_phash(legacy_folder):
    """``MediaOptions(phash=LEGACY)``: every sample's phash is ``bytes_phash(image, LEGACY)`` of its shard image (the
    build's one-decode path gives the named definition), and differs from today's on the real figures."""
    hashes, images = _index_hashes(legacy_folder["out"]), _shard_images(legacy_folder["out"])
    assert hashes
    assert all(hashes[k] == bytes_phash(images[k], LEGACY_HASH_NAME) for k in hashes)
    real = [_key(START, i) for i in (2, 3, 4)]
    assert len(real) == 3
    assert all(bytes_phash(images[k]) != hashes[k] for k in real)


def test_an_update_of_a_folder_of_an_unknown_definition_is_refused(corpus, reference, tmp_path):
    """A folder whose summary names a definition this code does not compute (built by newer code): refused in one
    line once the listing shows changes, no published file changed, no snapshot left behind; the unchanged listing
    is still "up to date"."""
    out = tmp_path / "ds"
    shutil.copytree(reference["out"], out)
    summary = json.loads((out / "build_summary.json").read_text())
    summary["phash"] = "phash512-future"
    (out / "build_summary.json").write_text(json.dumps(summary))
    write_sealed(out / "_work" / "build_summary.sealed.json", {"summary": summary})
    newer = tmp_path / "newer"
    shutil.copytree(corpus, newer)
    synth_article(newer, START + 100)
    before = _published(out)
    with pytest.raises(FatalBuildError, match="'phash512-future', which this code does not compute") as e:
        build(_cfg(newer, out))
    assert "\n" not in str(e.value)
    assert _published(out) == before
    assert [p.name for p in sorted((out / "_work" / "snapshots").iterdir())] == ["s000"]
    assert build(_cfg(corpus, out)).changes == {"up to date": 1}
    assert _published(out) == before


def test_the_hash_software_is_recorded_and_an_update_with_other_versions_says_so(corpus, reference, tmp_path,
                                                                                  caplog):
    """Each snapshot records the versions that computed its hashes (Pillow 13 changed the resize of tall figures:
    a few bits of their hashes); an update run with other versions says which, in one warning, and goes on."""
    import PIL

    from biomedica_hf.neardup.hashing import hash_software, hash_software_changes

    out = tmp_path / "ds"
    shutil.copytree(reference["out"], out)
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["snapshots"][-1]["hash_software"] == hash_software()
    assert hash_software()["pillow"] == PIL.__version__
    assert hash_software_changes(summary["snapshots"]) == {}
    assert hash_software_changes([{"snapshot": 0}]) == {}                  # recorded by no snapshot: nothing to say
    summary["snapshots"][-1]["hash_software"] = {**hash_software(), "pillow": "12.1.1"}
    (out / "build_summary.json").write_text(json.dumps(summary))
    write_sealed(out / "_work" / "build_summary.sealed.json", {"summary": summary})
    newer = tmp_path / "newer"
    shutil.copytree(corpus, newer)
    synth_article(newer, START + 100)
    with caplog.at_level("WARNING", logger="biomedica_hf.ingest"):
        build(_cfg(newer, out))
    said = [r.getMessage() for r in caplog.records if "perceptual hashes were computed with" in r.getMessage()]
    assert len(said) == 1 and "pillow 12.1.1" in said[0] and f"pillow {PIL.__version__}" in said[0]
    history = json.loads((out / "build_summary.json").read_text())["snapshots"]
    assert [h["hash_software"]["pillow"] for h in history] == ["12.1.1", PIL.__version__]
