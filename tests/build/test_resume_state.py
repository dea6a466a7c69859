"""Issue 24, build half: resume state that proves itself, one identity per article, versions that only move
forward, updates as transactions, and the fault-injection matrix (a build and an update stopped at every
stage boundary, every kind of ``_work/`` file deleted, cut, flipped or padded with junk): after the rerun the
folder is byte-identical to an uninterrupted build, or the rerun refused loudly and changed nothing.

Every input is generated here (the real PMC10802347 nXML with new ids, noise figures). Builds run in this
process with ``workers=1``; :func:`biomedica_hf.build.state.arm` stops them at a named point as a kill would
(``BIOMEDICA_FAULT_AT`` does it with a real SIGKILL, see ``test_sigkill_hook_in_a_subprocess``)."""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.build import state
from biomedica_hf.build.pipeline import BuildConfig, build
from biomedica_hf.build.sources.base import FatalBuildError
from biomedica_hf.dataset.verify import verify_folder

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_article, synth_corpus  # noqa: E402

N = 12
START = 95_700_000


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("partition_target", 4)
    kw.setdefault("split_fractions", (0.6, 0.2, 0.2))
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       shard_max_samples=6, caption_dups=False, **kw)


def _outputs(out: Path) -> dict[str, bytes]:
    """Every published file by relative path (not ``_work``); stats and the summary without their timings
    and dates (they name when the work ran, not what it made)."""
    got = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or "_work" in p.relative_to(out).parts:
            continue
        rel = p.relative_to(out).as_posix()
        if p.name.endswith("_stats.json"):
            d = json.loads(p.read_text())
            d.pop("timings", None)
            got[rel] = json.dumps(d, sort_keys=True).encode()
        elif p.name == "build_summary.json":
            d = json.loads(p.read_text())
            d.pop("timings", None)
            for h in d.get("snapshots", []):
                h.pop("date", None)
                h.pop("elapsed_seconds", None)
            got[rel] = json.dumps(d, sort_keys=True).encode()
        else:
            got[rel] = p.read_bytes()
    return got


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


def _killed(cfg: BuildConfig, point: str, nth: int = 1) -> bool:
    """Run the build, stopped the ``nth`` time it reaches ``point``; True when it was stopped."""
    state.arm(point, nth)
    try:
        build(cfg)
    except state.SimulatedKill:
        return True
    finally:
        state.disarm()
    return False


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
