"""Issue 24, build half: resume state that proves itself, one identity per article, versions that only move
forward, updates as transactions, and the fault-injection matrix (a build and an update stopped at every
stage boundary, every kind of ``_work/`` file deleted, cut, flipped or padded with junk): after the rerun the
folder is byte-identical to an uninterrupted build, or the rerun refused loudly and changed nothing.

Every input is generated here (the real PMC10802347 nXML with new ids, noise figures). Builds run in this
process with ``workers=1``; :func:`biomedica_hf.ingest.state.arm` stops them at a named point as a kill would
(``BIOMEDICA_FAULT_AT`` does it with a real SIGKILL, see ``test_sigkill_hook_in_a_subprocess``)."""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.ingest import state
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.ingest.sources.base import FatalBuildError
from biomedica_hf.dataset.verify import verify_folder

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_article, synth_corpus  # noqa: E402
from support.resume import OPS, damage as _damage, killed as _killed, outputs as _outputs  # noqa: E402

N = 12
START = 95_700_000


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("partition_target", 4)
    kw.setdefault("split_fractions", (0.6, 0.2, 0.2))
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       shard_max_samples=6, caption_dups=False, **kw)


def _listed_fates(out: Path, listed: set[str]) -> None:
    """Every listed article exactly one article fate; no key twice; verify passes."""
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    ids = Counter((r["kind"], r["id"]) for r in ledger)
    assert not [i for i, n in ids.items() if n > 1], "an item with two fates"
    fates = {r["id"] for r in ledger if r["kind"] == "article"}
    assert listed <= fates, f"listed without a fate: {sorted(listed - fates)}"
    keys = pq.read_table(out / "figures.parquet", columns=["key"])["key"].to_pylist()
    assert len(keys) == len(set(keys))
    arts = pq.read_table(out / "articles.parquet", columns=["pmcid"])["pmcid"].to_pylist()
    assert len(arts) == len(set(arts))
    report = verify_folder(out)
    assert report.ok, report.text()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    inp = tmp_path_factory.mktemp("resume-in") / "in"
    synth_corpus(inp, N, start=START)
    return inp


@pytest.fixture(scope="module")
def newer(corpus, tmp_path_factory):
    """The next listing: 2 new articles, one re-versioned (new images), one withdrawn."""
    dest = tmp_path_factory.mktemp("resume-newer") / "in"
    shutil.copytree(corpus, dest)
    shutil.rmtree(dest / f"PMC{START + 3}.1")
    synth_article(dest, START + 3, version=2, image_seed=888_000)
    shutil.rmtree(dest / f"PMC{START + 5}.1")
    for n in (START + 100, START + 101):
        synth_article(dest, n)
    return dest


@pytest.fixture(scope="module")
def reference(corpus, newer, tmp_path_factory):
    """Uninterrupted runs: the first build, and the update over it (folders kept for copying)."""
    base = tmp_path_factory.mktemp("resume-ref") / "base"
    build(_cfg(corpus, base))
    updated = base.parent / "updated"
    shutil.copytree(base, updated)
    build(_cfg(newer, updated))
    return {"base": base, "base_out": _outputs(base), "updated": updated, "updated_out": _outputs(updated)}


def _ids(inp: Path) -> set[str]:
    return {p.name.split(".")[0] for p in inp.iterdir() if p.is_dir()}


# ------------------------------------------------------------------------------ resume state
def test_lost_manifest_after_a_kill_while_staging_is_redone(corpus, reference, tmp_path):
    """Row 1: the rerun used to say "resumed" and publish 7 articles fewer (verify OK)."""
    out = tmp_path / "ds"
    assert _killed(_cfg(corpus, out), "staged_article", 6)
    parts = sorted((out / "_work" / "snapshots" / "s000" / "partitions").glob("*.parquet"))
    victim = max(parts, key=lambda p: pq.ParquetFile(p).metadata.num_rows)
    victim.unlink()
    build(_cfg(corpus, out))
    assert _outputs(out) == reference["base_out"]
    _listed_fates(out, _ids(corpus))


def test_lost_manifest_then_an_update_is_refused_not_duplicated(corpus, newer, reference, tmp_path):
    """Row 2: a completed snapshot's manifest lost, then an update: refused in one line, nothing changed."""
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    victim = max((out / "_work" / "snapshots" / "s000" / "partitions").glob("*.parquet"),
                 key=lambda p: pq.ParquetFile(p).metadata.num_rows)
    victim.unlink()
    with pytest.raises(FatalBuildError, match="--rebuild-state"):
        build(_cfg(newer, out))
    assert _outputs(out) == reference["base_out"]


# ------------------------------------------------------------------------- fault injection
# (kill point, its n-th passage, a _work/ file that exists there): every kind of file a rerun trusts
WORK_FILES = [
    ("staged_article", 5, "stage/*/log.jsonl"),
    ("staged_article", 5, "stage/*/images.bin"),
    ("staged_article", 5, "stage/*/starts.txt"),
    ("staged_article", 5, "stage/*/for.json"),
    ("staged_article", 5, "snapshots/s000/layout.json"),
    ("staged_article", 5, "snapshots/s000/partitions/*.parquet"),
    ("staged_article", 5, "snapshots/s000/removed.parquet"),
    ("staged_article", 5, "parts/ledger/s000-listing.parquet"),
    ("staged", 2, "stage/*/staged.json"),
    ("staged", 2, "snapshots/s000/hashes/h*/*.parquet"),
    ("deduped", 1, "snapshots/s000/decisions.parquet"),
    ("deduped", 1, "snapshots/s000/near.parquet"),
    ("deduped", 1, "snapshots/s000/dedup.json"),
    ("deduped", 1, "stage/*/images.bin"),
    ("partition_written", 2, "parts/done/*.json"),
    ("partition_written", 2, "parts/articles/*.parquet"),
    ("partition_written", 2, "parts/ledger/s000-*-p*.parquet"),
    ("tables_ready", 1, "snapshots/s000/articles.parquet"),
    ("tables_ready", 1, "snapshots/s000/ledger.parquet"),
    ("tables_ready", 1, "snapshots/s000/finish.ready"),
    ("summary_written", 1, "snapshots/s000/layout.json"),
    ("", 0, "snapshots/s000/complete.json"),      # "": after a complete build
    ("", 0, "parts/done/*.json"),
]
def _target(out: Path, pattern: str) -> Path:
    found = sorted(p for p in (out / "_work").glob(pattern) if p.is_file() and p.stat().st_size)
    assert found, f"no {pattern} at that point"
    return found[-1] if "images.bin" in pattern else found[0]


def _check_damage_then_rerun(corpus, reference, tmp_path, point, nth, pattern, op):
    out = tmp_path / "ds"
    if point:
        assert _killed(_cfg(corpus, out), point, nth)
    else:
        shutil.copytree(reference["base"], out)
    _damage(_target(out, pattern), op)
    before = _outputs(out)
    try:
        build(_cfg(corpus, out))
    except FatalBuildError as e:        # refused loudly: one clear line, nothing changed
        assert "\n" not in str(e)
        assert _outputs(out) == before
        return
    assert _outputs(out) == reference["base_out"]
    _listed_fates(out, _ids(corpus))


@pytest.mark.parametrize("point,nth,pattern", WORK_FILES, ids=[w[2] for w in WORK_FILES])
def test_each_work_file_damaged_is_redone(corpus, reference, tmp_path, point, nth, pattern):
    """One damage per kind of file (rotating delete / cut / flip / junk); the exhaustive cross is slow."""
    op = OPS[WORK_FILES.index((point, nth, pattern)) % len(OPS)]
    _check_damage_then_rerun(corpus, reference, tmp_path, point, nth, pattern, op)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("point,nth,pattern", WORK_FILES, ids=[w[2] for w in WORK_FILES])
def test_every_damage_of_every_work_file(corpus, reference, tmp_path, point, nth, pattern, op):
    _check_damage_then_rerun(corpus, reference, tmp_path, point, nth, pattern, op)


# (these builds stage every partition whole: test_stage_slices.py stops builds and updates staged in slices)
BUILD_POINTS = [p for p in state.FAULT_POINTS if p not in ("revised", "retired", "slice_staged")]
UPDATE_POINTS = [p for p in state.FAULT_POINTS if p != "slice_staged"]


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_build_killed_at_every_stage_boundary(corpus, reference, tmp_path, point):
    out = tmp_path / "ds"
    assert _killed(_cfg(corpus, out), point, 2 if point in ("staged_article", "staged", "shard_written") else 1)
    build(_cfg(corpus, out))
    assert _outputs(out) == reference["base_out"]


@pytest.mark.parametrize("point", UPDATE_POINTS)
def test_update_killed_at_every_stage_boundary(newer, reference, tmp_path, point):
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    assert _killed(_cfg(newer, out), point)
    build(_cfg(newer, out))
    assert _outputs(out) == reference["updated_out"]
    _listed_fates(out, _ids(newer))


# ------------------------------------------------------------------------------- identity
def _impostor(inp: Path, listed: int, actual: int) -> None:
    """A folder ``PMC<listed>.1`` holding the XML (and figures) of article ``actual``."""
    tmp = inp.parent / "impostor"
    d = synth_article(tmp, actual, image_seed=actual * 10)
    target = inp / f"PMC{listed}.1"
    shutil.move(str(d), target)
    (target / f"PMC{actual}.1.xml").rename(target / f"PMC{listed}.1.xml")
    shutil.rmtree(tmp)


@pytest.mark.parametrize("partition_target", [100, 1], ids=["same-partition", "different-partitions"])
def test_listing_id_and_xml_id_are_reconciled(tmp_path, partition_target):
    """Row 3: a listed folder holding another listed article's XML. Before: the same partition died at the end
    ("more than one fate"); different partitions published duplicate keys and lost the listed id."""
    inp = tmp_path / "in"
    synth_corpus(inp, 4, start=95_800_000)
    _impostor(inp, 95_800_099, 95_800_001)
    out = tmp_path / "ds"
    build(_cfg(inp, out, partition_target=partition_target, split_fractions=(1.0, 0.0, 0.0)))
    _listed_fates(out, _ids(inp))
    ledger = {(r["kind"], r["id"]): r for r in pq.read_table(out / "ledger.parquet").to_pylist()}
    bad = ledger[("article", "PMC95800099")]
    assert (bad["state"], bad["reason"]) == ("failed", "id_mismatch")
    assert "PMC95800099" in bad["detail"]
    assert "PMC95800001" in bad["detail"]
    assert ledger[("article", "PMC95800001")]["state"] == "kept"
    index = pq.read_table(out / "figures.parquet").to_pylist()
    assert sorted({r["pmcid"] for r in index}) == [f"PMC{95_800_000 + i}" for i in range(4)]
    assert len(index) == 16


# ------------------------------------------------------------------------------- versions
def test_versions_only_move_forward_unless_allowed(tmp_path):
    inp = tmp_path / "in"
    synth_corpus(inp, 3, start=95_810_000)
    synth_article(inp, 95_810_050, version=2, image_seed=500)
    out = tmp_path / "ds"
    build(_cfg(inp, out))
    before = pq.read_table(out / "figures.parquet").to_pylist()
    older = tmp_path / "older"
    shutil.copytree(inp, older)
    shutil.rmtree(older / "PMC95810050.2")
    synth_article(older, 95_810_050, version=1, image_seed=900)
    report = build(_cfg(older, out))
    assert report.changes.get("older_version_listed") == 1
    assert not report.changes.get("replaced")
    assert pq.read_table(out / "figures.parquet").to_pylist() == before, "v2 stays"
    ledger = {(r["kind"], r["id"]): r for r in pq.read_table(out / "ledger.parquet").to_pylist()}
    row = ledger[("file", "listing:PMC95810050.1@s001")]
    assert (row["state"], row["reason"]) == ("skipped", "older_version_listed")
    assert ledger[("article", "PMC95810050")]["state"] == "kept"
    again = build(_cfg(older, out, allow_downgrade=True))
    assert again.changes.get("replaced") == 1
    shas = {r["sha256"] for r in pq.read_table(out / "figures.parquet").to_pylist() if r["pmcid"] == "PMC95810050"}
    assert shas
    assert not shas & {r["sha256"] for r in before if r["pmcid"] == "PMC95810050"}
    _listed_fates(out, _ids(older))


def test_a_5000_digit_version_in_a_listing_is_one_bad_row(tmp_path):
    """Row: the whole build died with int()'s ValueError; now that row is ledgered and the build goes on."""
    from support.hostile_inputs import article_xml, small_jpeg, write_targz
    from support.pmc_server import PMCServer

    root = tmp_path / "mirror"
    rows = ["File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License"]
    for i, pmcid in enumerate(("PMC900030", "PMC900031")):
        key = f"oa_package/aa/b{i}/{pmcid}.tar.gz"
        (root / key).parent.mkdir(parents=True)
        write_targz(root / key, [(f"{pmcid}/main.nxml", article_xml(pmcid, ["fig1"])),
                                 (f"{pmcid}/fig1.jpg", small_jpeg(30 + i))])
        rows.append(f"{key},J. 2020,{pmcid},2020-01-01 00:00:00,,CC BY")
    rows.append(f"oa_package/aa/b9/PMC900032.tar.gz,J. 2020,PMC900032.{'9' * 5000},2020-01-01 00:00:00,,CC BY")
    (root / "oa_file_list.csv").write_text("\r\n".join(rows) + "\r\n")
    out = tmp_path / "ds"
    with PMCServer(root) as srv:
        build(BuildConfig(out=out, source="legacy", workers=1, progress=False,
                          source_opts={"base_url_or_root": srv.url, "filelist": str(root / "oa_file_list.csv"),
                                       "retries": 1, "rate": 1000}))
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    assert {r["pmcid"] for r in ledger if r["kind"] == "article" and r["state"] == "kept"} == {"PMC900030",
                                                                                            "PMC900031"}
    bad = [r for r in ledger if r["reason"] == "bad_listing_row"]
    assert len(bad) == 1
    assert "bad_pmcid" in bad[0]["detail"]
    assert len(bad[0]["detail"]) <= 500


# ------------------------------------------------------------------------------ transactions
def test_update_killed_inside_shard_revision_completes_on_rerun(newer, reference, tmp_path):
    """Row: old .parquet unlinked, old .tar not yet -> FileNotFoundError on every rerun. Now no old file is
    deleted before the new shards exist; the previous snapshot's shards are all still there after the kill."""
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    before = set(reference["base_out"])
    assert _killed(_cfg(newer, out), "revised")
    assert before <= set(_outputs(out)), "every file of the previous snapshot is still in place"
    problems = verify_folder(out).problems        # only the update's new, not yet published shards
    # (the update's own sub-folder, s001/, has no sizes.json until the update is published)
    assert problems and all("-s001-" in p or "-r001" in p or "/s001/" in p for p in problems), problems
    build(_cfg(newer, out))
    assert _outputs(out) == reference["updated_out"]
    history = json.loads((out / "build_summary.json").read_text())["snapshots"]
    want = json.loads((reference["updated"] / "build_summary.json").read_text())["snapshots"]
    assert history[1]["samples_removed"] == want[1]["samples_removed"] == 8   # re-versioned + withdrawn: 4 + 4


@pytest.mark.parametrize("point", ["revised", "retired", "tables_ready", "index_written", "summary_written"])
def test_samples_removed_is_right_wherever_the_update_was_killed(newer, reference, tmp_path, point):
    """Row: history said 10, 5 or 0 instead of 12 depending on where the kill hit."""
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    assert _killed(_cfg(newer, out), point)
    build(_cfg(newer, out))
    history = json.loads((out / "build_summary.json").read_text())["snapshots"]
    assert [h["snapshot"] for h in history] == [0, 1]
    assert history[1]["samples_removed"] == 8


def test_an_update_removing_every_sample_of_a_shard_leaves_a_consistent_folder(tmp_path):
    """Row: a 0-sample -r001 shard not in figures.parquet; verify failed, push refused, reruns "up to date"."""
    inp = tmp_path / "in"
    synth_corpus(inp, 6, start=95_820_000)
    out = tmp_path / "ds"
    cfg = dict(partition_target=100, split_fractions=(1.0, 0.0, 0.0))
    build(BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                      shard_max_samples=4, caption_dups=False, **cfg))
    index = pq.read_table(out / "figures.parquet").to_pylist()
    shard = index[0]["shard"]
    doomed = {r["pmcid"] for r in index if r["shard"] == shard}
    newer = tmp_path / "newer"
    shutil.copytree(inp, newer)
    for pmcid in doomed:                   # withdraw every article with a sample in that shard
        shutil.rmtree(newer / f"{pmcid}.1")
    build(BuildConfig(out=out, source="local", source_opts={"path": str(newer)}, workers=1, progress=False,
                      shard_max_samples=4, caption_dups=False, allow_shrink=True, **cfg))
    assert verify_folder(out).ok, verify_folder(out).text()
    assert not (out / shard).exists()
    assert not list(out.glob(f"{shard.removesuffix('.tar')}-r001*"))
    after = pq.read_table(out / "figures.parquet").to_pylist()
    assert not {r["pmcid"] for r in after} & doomed
    sizes = json.loads((out / Path(shard).parent / "sizes.json").read_text())   # the revised shard's folder
    assert all(n > 0 for n in sizes.values())
    _listed_fates(out, _ids(newer))


def test_a_folder_without_its_work_state_refuses_an_update_then_rebuilds_it(newer, reference, tmp_path):
    """Row: `_work/` deleted, then an update: rebuilt as snapshot 0 over the old shards, keys listed twice."""
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    shutil.rmtree(out / "_work")
    with pytest.raises(FatalBuildError, match="resume state .* is gone.*--rebuild-state") as e:
        build(_cfg(newer, out))
    assert "\n" not in str(e.value)
    assert _outputs(out) == reference["base_out"]
    report = build(_cfg(newer, out, rebuild_state=True))
    assert report.snapshot == 1
    assert report.changes == {"added": 2, "replaced": 1, "withdrawn": 1}
    _listed_fates(out, _ids(newer))
    index = pq.read_table(out / "figures.parquet").to_pylist()
    ref_index = pq.read_table(reference["updated"] / "figures.parquet").to_pylist()
    assert sorted(r["key"] for r in index) == sorted(r["key"] for r in ref_index)
    assert build(_cfg(newer, out)).changes == {"up to date": 1}


@pytest.mark.parametrize("how", ["cut", "junk"])
def test_a_truncated_build_summary_keeps_its_history(corpus, newer, reference, tmp_path, how):
    """Row: an update silently dropped the snapshot history; an up-to-date rerun then tracebacked."""
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    _damage(out / "build_summary.json", how)
    assert build(_cfg(corpus, out)).changes == {"up to date": 1}
    assert json.loads((out / "build_summary.json").read_text())["snapshots"][0]["snapshot"] == 0
    _damage(out / "build_summary.json", how)
    build(_cfg(newer, out))
    assert [h["snapshot"] for h in json.loads((out / "build_summary.json").read_text())["snapshots"]] == [0, 1]
    # without the sealed copy the damage is refused in one line, nothing changed
    _damage(out / "build_summary.json", how)
    (out / "_work" / "build_summary.sealed.json").unlink()
    before = (out / "build_summary.json").read_bytes()
    with pytest.raises(FatalBuildError, match="build_summary.json is cut or damaged"):
        build(_cfg(newer, out))
    assert (out / "build_summary.json").read_bytes() == before


def test_sigkill_hook_in_a_subprocess(corpus, reference, tmp_path):
    """``BIOMEDICA_FAULT_AT`` kills the process for real (SIGKILL: no ``finally``, temporaries left behind);
    the rerun gives the uninterrupted folder."""
    import os
    import signal
    import subprocess

    out = tmp_path / "ds"
    script = (f"from pathlib import Path\nfrom biomedica_hf.ingest.pipeline import BuildConfig, build\n"
              f"build(BuildConfig(out=Path({str(out)!r}), source='local', source_opts={{'path': {str(corpus)!r}}}, "
              f"workers=1, progress=False, shard_max_samples=6, caption_dups=False, partition_target=4, "
              f"split_fractions=(0.6, 0.2, 0.2)))\n")
    env = dict(os.environ, BIOMEDICA_FAULT_AT="shard_written:3", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (out / "figures.parquet").exists()
    build(_cfg(corpus, out))
    assert _outputs(out) == reference["base_out"]


def test_damaged_history_is_refused_then_rebuilt_from_the_published_files(newer, reference, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(reference["base"], out)
    _damage(out / "_work" / "snapshots" / "s000" / "layout.json", "cut")
    with pytest.raises(FatalBuildError, match="--rebuild-state"):
        build(_cfg(newer, out))
    assert _outputs(out) == reference["base_out"]
    report = build(_cfg(newer, out, rebuild_state=True))
    assert report.changes == {"added": 2, "replaced": 1, "withdrawn": 1}
    assert list((out / "_work").glob("damaged-*/snapshots/s000/layout.json")), "the old state is kept aside"
    _listed_fates(out, _ids(newer))
