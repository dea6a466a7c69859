"""`biomedica build` against real HTTP servers on loopback: the 2026 PMC Cloud layout and a legacy
oa_package mirror, with injected faults. Also `biomedica enrich` against a loopback efetch server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from support.efetch_server import fixture_path, fixture_xml, server  # noqa: F401  (real efetch server on loopback)
from support.pmc_server import NON_OA_PMCID, TWO_VERSION_PMCID, cloud_server, cloud_tree, legacy_server, legacy_tree  # noqa: F401

BIN = Path(sys.executable).parent / "biomedica"


def _build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "build", "--no-progress", "--workers", "2", "--retries", "3", *args],
                          capture_output=True,
                          text=True, timeout=300)


def _ledger(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["kind"], r["id"]): r for r in pq.read_table(out / "ledger.parquet").to_pylist()}


def test_cloud_build_with_faults_then_retry(tmp_path, cloud_tree, cloud_server):
    pmcids = sorted({a.pmcid for a in cloud_tree.articles.values()})
    ids = tmp_path / "ids.txt"
    ids.write_text("# PMCIDs to build\n" + "\n".join(pmcids) + "\n")
    v2 = f"{TWO_VERSION_PMCID}.2"
    # transient faults the downloader must absorb
    cloud_server.add_fault("/PMC7112410.1/gr1_lrg.jpg", "status", times=2, status=503)
    cloud_server.add_fault("/PMC7112410.1/gr2_lrg.jpg", "drop", times=1)
    cloud_server.add_fault("/PMC7159286.1/gr4_lrg.jpg", "retry_after", times=1, retry_after=1)
    cloud_server.add_fault(f"/{v2}/{v2}.xml", "truncate", times=1)
    # a persistent fault: wrong bytes for one figure every time
    cloud_server.add_fault("/PMC7159286.1/gr1_lrg.jpg", "corrupt", times=None)
    out = tmp_path / "out"
    r = _build("--source", "cloud", "--base-url", cloud_server.url, "--pmcids", str(ids), "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    ledger = _ledger(out)
    assert ledger[("article", NON_OA_PMCID)]["reason"] == "not_open_access"
    assert ledger[("article", "PMC7112410")]["state"] == "kept"
    assert ledger[("figure", "PMC7112410_gr1_lrg")]["state"] == "kept"
    assert ledger[("figure", "PMC7112410_gr2_lrg")]["state"] == "kept"
    bad = ledger[("figure", "PMC7159286_gr1_lrg")]
    assert bad["state"] == "failed"
    assert "checksum" in bad["reason"]
    assert ledger[("file", "PMC7159286/gr1_lrg.jpg")]["state"] == "failed"
    arts = {a["pmcid"]: a for a in pq.read_table(out / "articles.parquet").to_pylist()}
    assert arts[TWO_VERSION_PMCID]["version"] == 2                      # latest version by default
    assert ledger[("figure", f"{TWO_VERSION_PMCID}_nihpp-2023_12_31_573776v1-f0004")]["state"] == "kept"
    # every download of a kept image was verified against the md5 in the metadata URL
    from biomedica_hf.layout import shard_tables

    idx = [row for p in shard_tables(out) for row in pq.read_table(p).to_pylist()]   # flat or in sub-folders
    assert idx
    files = {(row["pmcid"], row["image_file"]): row for row in idx}
    art = cloud_tree.latest("PMC7112410")
    import hashlib

    data = (cloud_tree.root / "PMC7112410.1" / "gr1_lrg.jpg").read_bytes()
    assert files[("PMC7112410", "gr1_lrg.jpg")]["sha256"] == hashlib.sha256(data).hexdigest()
    assert art.files["gr1_lrg.jpg"] == hashlib.md5(data).hexdigest()
    n_before = sum(json.loads((out / "build_summary.json").read_text())["samples"].values())

    # the fault is gone: --retry-failed re-processes only the articles with failures
    cloud_server.clear_faults()
    cloud_server.clear_log()
    r = _build("--source", "cloud", "--base-url", cloud_server.url, "--pmcids", str(ids), "--out", str(out),
               "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _ledger(out)[("figure", "PMC7159286_gr1_lrg")]["state"] == "kept"
    assert sum(json.loads((out / "build_summary.json").read_text())["samples"].values()) == n_before + 1
    fetched = {e.path.split("/")[1] for e in cloud_server.log if e.path.count("/") >= 2}
    assert "PMC7112410.1" not in fetched
    assert "PMC7159286.1" in fetched


def test_legacy_mirror_build_with_truncated_and_missing_packages(tmp_path, legacy_tree, legacy_server):
    out = tmp_path / "out"
    legacy_server.add_fault("/" + legacy_tree.packages["PMC7135076"], "drop", times=1)
    r = _build("--source", "legacy", "--base-url", legacy_server.url, "--filelist", str(legacy_tree.filelist),
               "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    ledger = _ledger(out)
    for pmcid in legacy_tree.missing:
        assert ledger[("article", pmcid)]["state"] == "failed"
        assert ledger[("article", pmcid)]["reason"] == "not_found"
    trunc = legacy_tree.truncated
    assert ledger[("file", f"{trunc}/<archive>")]["reason"] == "truncated_archive"
    # the members read before the cut are used: f0001's .jpg is lost in the cut, its .gif is all there is
    figs = {k: r for (kind, k), r in ledger.items() if kind == "figure" and r["pmcid"] == trunc}
    assert len(figs) == 4
    assert all(r["state"] == "kept" for r in figs.values())
    assert figs[f"{trunc}_nihpp-2023_12_31_573776v1-f0001"]["detail"].endswith("f0001.gif")
    assert figs[f"{trunc}_nihpp-2023_12_31_573776v1-f0002"]["detail"].endswith("f0002.jpg")
    for pmcid in ("PMC7112410", "PMC7135076", "PMC7159286"):
        assert ledger[("article", pmcid)]["state"] == "kept"
    arts = {a["pmcid"]: a for a in pq.read_table(out / "articles.parquet").to_pylist()}
    assert arts["PMC7112410"]["pmid"] == "12781535"
    assert not list((out / "_work" / "cache").rglob("*.tar.gz"))  # downloads are cleaned after staging


def test_enrich_command_against_loopback_eutils(tmp_path, server):
    out = tmp_path / "out"
    r = _build("--input", str(Path(__file__).resolve().parents[2] / "biomedica_hf/sample_data/articles"),
               "--out", str(out))
    assert r.returncode == 0, r.stderr
    before = {a["pmcid"]: a for a in pq.read_table(out / "articles.parquet").to_pylist()}
    with_pmid = [a for a in before.values() if a["pmid"]]
    assert with_pmid
    r = subprocess.run([str(BIN), "enrich", str(out), "--base-url", server.base_url], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    after = {a["pmcid"]: a for a in pq.read_table(out / "articles.parquet").to_pylist()}
    assert all(after[a["pmcid"]]["mesh_terms"] for a in with_pmid)
    assert all(not after[p]["mesh_terms"] for p, a in before.items() if not a["pmid"])
    asked = {i for h in server.efetch_hits for i in h.ids}
    assert asked == {a["pmid"] for a in with_pmid}          # joined by PMID, one batch
    assert len(server.efetch_hits) == 1
