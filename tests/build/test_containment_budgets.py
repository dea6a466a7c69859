"""Issue 24, build side of the hostile rows: legacy-mirror file lists that point outside the mirror, image files
whose metadata is over its byte budget, figure members that are not images. Every input is generated here."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hostile_inputs import article_xml, small_jpeg, write_targz
from pmc_server import PMCServer

from biomedica_hf.build.pipeline import BuildConfig, build
from biomedica_hf.build.sources.legacy import LegacySource, mirror_relpath

HEADER = "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\r\n"


def _ledger(out: Path) -> dict[tuple[str, str], dict]:
    rows = pq.read_table(out / "ledger.parquet").to_pylist()
    table = {(r["kind"], r["id"]): r for r in rows}
    assert len(table) == len(rows), "every item exactly once"
    return table


def _samples(out: Path) -> set[str]:
    return set(pq.read_table(out / "figures.parquet", columns=["key"]).column("key").to_pylist())


def _package(path: Path, pmcid: str, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_targz(path, [(f"{pmcid}/main.nxml", article_xml(pmcid, ["fig1"])),
                              (f"{pmcid}/fig1.jpg", small_jpeg(seed))])


# ------------------------------------------------------------------------------------ legacy mirror containment
def test_mirror_relpath():
    assert mirror_relpath("oa_package/ac/6a/PMC1.tar.gz") == "oa_package/ac/6a/PMC1.tar.gz"
    assert mirror_relpath("./oa_package//x.tar.gz") == "oa_package/x.tar.gz"
    for bad in ("../x.tar.gz", "oa_package/../../x.tar.gz", "/etc/x.tar.gz", "C:/x.tar.gz", "..\\x.tar.gz",
                "oa\\..\\..\\x", "", ".", "x\0.tar.gz"):
        assert mirror_relpath(bad) is None, bad


def _site(tmp_path: Path) -> tuple[Path, Path]:
    """``site/mirror`` (a good package + a file list whose other rows leave the mirror) and ``site/outside``."""
    site = tmp_path / "site"
    mirror = site / "mirror"
    _package(mirror / "oa_package/aa/bb/PMC900040.tar.gz", "PMC900040", 40)
    outside = _package(site / "outside/PMC900041.tar.gz", "PMC900041", 41)
    _package(site / "outside/PMC900042.tar.gz", "PMC900042", 42)
    (mirror / "oa_file_list.csv").write_text(
        HEADER + "oa_package/aa/bb/PMC900040.tar.gz,J. 2020,PMC900040,2020-01-01 00:00:00,,CC BY\r\n"
        "../outside/PMC900041.tar.gz,J. 2020,PMC900041,2020-01-01 00:00:00,,CC BY\r\n"
        f"{outside.with_name('PMC900042.tar.gz')},J. 2020,PMC900042,2020-01-01 00:00:00,,CC BY\r\n")
    return site, mirror


def _check_refused(out: Path) -> None:
    ledger = _ledger(out)
    assert _samples(out) == {"PMC900040_fig1"}
    assert ledger[("article", "PMC900040")]["state"] == "kept"
    for pmcid in ("PMC900041", "PMC900042"):
        row = ledger[("article", pmcid)]
        assert (row["state"], row["reason"]) == ("failed", "bad_package"), row
        assert "outside_input" in row["detail"] and "not a path inside the mirror" in row["detail"], row


def test_legacy_local_mirror_refuses_paths_outside_it(tmp_path):
    _, mirror = _site(tmp_path)
    out = tmp_path / "out"
    build(BuildConfig(out=out, source="legacy", source_opts={"base_url_or_root": str(mirror)}, workers=1,
                      progress=False))
    _check_refused(out)


def test_legacy_local_mirror_refuses_a_link_out_of_it(tmp_path):
    site, mirror = _site(tmp_path)
    link = mirror / "oa_package/cc/dd/PMC900041.tar.gz"
    link.parent.mkdir(parents=True)
    link.symlink_to(site / "outside/PMC900041.tar.gz")
    (mirror / "oa_file_list.csv").write_text(
        HEADER + "oa_package/cc/dd/PMC900041.tar.gz,J. 2020,PMC900041,2020-01-01 00:00:00,,CC BY\r\n")
    ref = next(iter((src := LegacySource(mirror)).list_articles()))
    from biomedica_hf.build.sources import FetchError

    with pytest.raises(FetchError, match="outside_input: .* resolves to .*outside the mirror") as ei:
        src.fetch(ref, tmp_path / "cache")
    assert ei.value.reason == "bad_package" and not (tmp_path / "cache").exists()


def test_legacy_http_mirror_with_a_url_filelist_refuses_paths_outside_it(tmp_path):
    site, _ = _site(tmp_path)
    out = tmp_path / "out"
    with PMCServer(site) as srv:
        build(BuildConfig(out=out, source="legacy", workers=1, progress=False, source_opts={
            "base_url_or_root": f"{srv.url}/mirror", "filelist": f"{srv.url}/mirror/oa_file_list.csv",
            "retries": 0}))
        asked = [r.path for r in srv.log]
    _check_refused(out)
    assert not [p for p in asked if "outside" in p], asked      # nothing outside the mirror was requested
