"""Cloud, legacy and local sources end-to-end: real fixture articles, real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.pmc_server import (  # noqa: F401
    NON_OA_PMCID,
    TWO_VERSION_PMCID,
    PMCServer,
    build_cloud_tree,
    cloud_server,
    cloud_tree,
    legacy_server,
    legacy_tree,
    tar_members,
)

from biomedica_hf.ingest.download import Downloader
from biomedica_hf.ingest.sources import FetchError, make_source
from biomedica_hf.ingest.sources.cloud import CloudSource
from biomedica_hf.ingest.sources.legacy import LegacySource, extract_package
from biomedica_hf.ingest.sources.local import LocalSource
from biomedica_hf.schema import ArticlePackage


def fast() -> Downloader:
    return Downloader(backoff=0.01, backoff_max=0.05, retries=2, timeout=5, chunk_size=16384)


def md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def assert_matches_tree(pkg: ArticlePackage, tree_article) -> None:
    for name, digest in tree_article.files.items():
        assert name in pkg.files, name
        assert md5(pkg.files[name]) == digest, name


# ============================================================================ cloud
def test_cloud_fetch_end_to_end(cloud_server, cloud_tree, tmp_path):
    ids = ["PMC7112410", "PMC7135076", "PMC7159286", "PMC90019405", "PMC90000353"]
    with CloudSource(cloud_server.url, pmcids=ids, downloader=fast()) as src:
        refs = list(src.list_articles())
        assert [r.pmcid for r in refs] == ids
        assert all(r.version is None for r in refs)
        for ref in refs:
            pkg = src.fetch(ref, tmp_path)
            prefix = f"{ref.pmcid}.1"
            art = cloud_tree.articles[prefix]
            assert pkg.root == tmp_path / prefix
            assert pkg.xml_files == [f"{prefix}.xml"]
            assert_matches_tree(pkg, art)
            assert pkg.problems == []
            assert pkg.ref.version == 1
            assert pkg.ref.license_hint == art.license_code
            assert pkg.ref.pmid == (str(art.metadata["pmid"]) if art.metadata["pmid"] else None)
            assert pkg.metadata == art.metadata
            assert pkg.ref.citation == art.metadata["citation"]
    # the XML is the real article
    assert (tmp_path / "PMC7112410.1" / "PMC7112410.1.xml").read_bytes() == \
        (cloud_tree.root / "PMC7112410.1" / "PMC7112410.1.xml").read_bytes()
    # eLife 00353's metadata exists only inside its prefix: metadata/ was tried first
    tried = [r.path for r in cloud_server.log if r.path.endswith("PMC90000353.1.json")]
    assert tried == ["/metadata/PMC90000353.1.json", "/PMC90000353.1/PMC90000353.1.json"]


def test_cloud_picks_latest_version_unless_pinned(cloud_server, cloud_tree, tmp_path):
    with CloudSource(cloud_server.url, pmcids=[TWO_VERSION_PMCID, f"{TWO_VERSION_PMCID}.1"], downloader=fast()) as src:
        latest, pinned = list(src.list_articles())
        pkg2 = src.fetch(latest, tmp_path)
        pkg1 = src.fetch(pinned, tmp_path)
    assert pkg2.ref.version == 2
    assert pkg1.ref.version == 1
    assert_matches_tree(pkg2, cloud_tree.articles[f"{TWO_VERSION_PMCID}.2"])
    assert any("f0004" in n for n in pkg2.files)
    assert not any("f0004" in n for n in pkg1.files)
    listing = [r for r in cloud_server.log if r.path == "/" and r.query.get("list-type") == ["2"]]
    assert len(listing) == 1
    assert listing[0].query["prefix"] == [f"{TWO_VERSION_PMCID}."]
    assert listing[0].query["delimiter"] == ["/"]
    with CloudSource(cloud_server.url, pmcids=[TWO_VERSION_PMCID], version=1, downloader=fast()) as src:
        assert src.fetch(next(src.list_articles()), tmp_path / "pinned").ref.version == 1


def test_cloud_refuses_non_oa_unless_asked(cloud_server, tmp_path):
    with CloudSource(cloud_server.url, pmcids=[NON_OA_PMCID], downloader=fast()) as src:
        with pytest.raises(FetchError) as ei:
            src.fetch(next(src.list_articles()), tmp_path)
    assert ei.value.reason == "not_open_access"
    assert "TDM" in ei.value.detail
    assert not (tmp_path / f"{NON_OA_PMCID}.1").exists()
    assert not cloud_server.requests_for(f"{NON_OA_PMCID}.1/{NON_OA_PMCID}.1.xml")
    with CloudSource(cloud_server.url, pmcids=[NON_OA_PMCID], include_non_oa=True, downloader=fast()) as src:
        pkg = src.fetch(next(src.list_articles()), tmp_path)
    assert pkg.ref.license_hint == "TDM"
    assert pkg.xml_files == [f"{NON_OA_PMCID}.1.xml"]


def test_cloud_media_with_wrong_md5_goes_to_problems(cloud_server, cloud_tree, tmp_path):
    cloud_server.add_fault("PMC7159286.1/gr2_lrg.jpg", "corrupt", times=None)
    cloud_server.add_fault("PMC7159286.1/gr3a_lrg.jpg", "status", times=2, status=500)
    cloud_server.add_fault("PMC7159286.1/gr4_lrg.jpg", "drop", at=40_000)
    with CloudSource(cloud_server.url, pmcids=["PMC7159286"], downloader=fast()) as src:
        pkg = src.fetch(next(src.list_articles()), tmp_path)
    assert pkg.problems == [("gr2_lrg.jpg", "checksum_mismatch")]
    assert "gr2_lrg.jpg" not in pkg.files
    assert not (pkg.root / "gr2_lrg.jpg").exists()
    assert not (pkg.root / "gr2_lrg.jpg.part").exists()
    art = cloud_tree.articles["PMC7159286.1"]
    for name, digest in art.files.items():
        if name != "gr2_lrg.jpg":
            assert md5(pkg.files[name]) == digest
    assert any(r.range for r in cloud_server.requests_for("PMC7159286.1/gr4_lrg.jpg"))


def test_cloud_missing_xml_fails_the_article(cloud_server, tmp_path):
    cloud_server.add_fault("PMC7135076.1/PMC7135076.1.xml", "not_found", times=None)
    with CloudSource(cloud_server.url, pmcids=["PMC7135076"], downloader=fast()) as src:
        with pytest.raises(FetchError) as ei:
            src.fetch(next(src.list_articles()), tmp_path)
    assert ei.value.reason == "download_failed"


def test_cloud_resume_does_not_refetch(cloud_server, tmp_path):
    with CloudSource(cloud_server.url, pmcids=["PMC7135076.1"], downloader=fast()) as src:
        ref = next(src.list_articles())
        first = src.fetch(ref, tmp_path)
        n = len(cloud_server.log)
        second = src.fetch(ref, tmp_path)
    assert first.files == second.files
    assert len(cloud_server.log) == n, "verified files and cached metadata must not be fetched again"


def test_cloud_unknown_article_is_not_found(cloud_server, tmp_path):
    with CloudSource(cloud_server.url, pmcids=["PMC1"], downloader=fast()) as src:
        with pytest.raises(FetchError) as ei:
            src.fetch(next(src.list_articles()), tmp_path)
    assert ei.value.reason == "not_found"
    with CloudSource(cloud_server.url, pmcids=["PMC7135076.9"], downloader=fast()) as src:
        with pytest.raises(FetchError) as ei:
            src.fetch(next(src.list_articles()), tmp_path)
    assert ei.value.reason == "not_found"


def test_cloud_list_all_paginates_and_keeps_latest(cloud_server):
    with CloudSource(cloud_server.url, list_all=True, list_page_size=2, downloader=fast()) as src:
        refs = list(src.list_articles())
        unlisted = src.unlisted
    # PMC90000353 has no metadata/ object (only PMCid.V/PMCid.V.json) so a metadata/ listing misses it
    assert [(r.pmcid, r.version) for r in refs] == [
        (TWO_VERSION_PMCID, 2), (NON_OA_PMCID, 1), ("PMC7112410", 1), ("PMC7135076", 1), ("PMC7159286", 1),
        ("PMC90019405", 1)]
    assert unlisted == [(f"metadata/{TWO_VERSION_PMCID}.1.json", "older_version")]
    pages = [r for r in cloud_server.log if r.path == "/"]
    assert len(pages) == 4
    assert sum("continuation-token" in r.query for r in pages) == 3
    with CloudSource(cloud_server.url, list_all=True, version=1, downloader=fast()) as src:
        refs = list(src.list_articles())
        assert (TWO_VERSION_PMCID, 1) in [(r.pmcid, r.version) for r in refs]
        assert (f"metadata/{TWO_VERSION_PMCID}.2.json", "not_pinned_version") in src.unlisted


def test_cloud_from_file_lists(cloud_server, filelists_dir, tmp_path):
    with CloudSource(cloud_server.url, filelist=filelists_dir / "oa_file_list.seanBr97_4rows_excel_dates.csv",
                     downloader=fast()) as src:
        refs = list(src.list_articles())
        assert [r.pmcid for r in refs] == ["PMC7112410", "PMC7135076", "PMC7159286", "PMC7159299"]
        assert refs[0].pmid == "12781535"
        assert refs[0].last_updated == "2020-04-06 14:56:00"
        assert src.fetch(refs[0], tmp_path).ref.version == 1
        with pytest.raises(FetchError) as ei:
            src.fetch(refs[3], tmp_path)  # listed, but not in this bucket
        assert ei.value.reason == "not_found"
    ids = tmp_path / "ids.txt"
    ids.write_text("# ids\nPMC7112410\n7135076\nPMC7112410.1\nbogus\n")
    with CloudSource(cloud_server.url, pmcid_file=ids, downloader=fast()) as src:
        assert [(r.pmcid, r.version) for r in src.list_articles()] == [
            ("PMC7112410", None), ("PMC7135076", None), ("PMC7112410", 1)]
        assert src.listing_problems == [(f"{ids}:5", "bad_pmcid: 'bogus'")]


def test_cloud_retracted(tmp_path, filelists_dir):
    bulk = (filelists_dir / "oa_bulk_filelist.curieo_5rows.csv").read_text().replace(",no\n", ",yes\n", 1)
    (tmp_path / "bulk.csv").write_text(bulk)
    tree = build_cloud_tree(tmp_path / "bucket")
    meta = dict(tree.articles["PMC7135076.1"].metadata, is_retracted=True)
    tree.write_metadata("PMC7135076.1", meta)
    with PMCServer(tree.root) as srv:
        with CloudSource(srv.url, filelist=tmp_path / "bulk.csv", downloader=fast()) as src:
            first = next(src.list_articles())
            assert first.retracted is True
            with pytest.raises(FetchError) as ei:
                src.fetch(first, tmp_path / "cache")
            assert ei.value.reason == "retracted"
            assert srv.log == []  # decided from the list, no request
        with CloudSource(srv.url, pmcids=["PMC7135076"], downloader=fast()) as src:
            with pytest.raises(FetchError) as ei:
                src.fetch(next(src.list_articles()), tmp_path / "cache")
            assert ei.value.reason == "retracted"
        with CloudSource(srv.url, pmcids=["PMC7135076"], skip_retracted=False, downloader=fast()) as src:
            assert src.fetch(next(src.list_articles()), tmp_path / "cache").ref.retracted is True


# ============================================================================ legacy
def test_legacy_http_end_to_end(legacy_server, legacy_tree, articles_dir, tmp_path):
    with LegacySource(legacy_server.url, downloader=fast()) as src:
        refs = list(src.list_articles())
        assert [r.pmcid for r in refs] == ["PMC7112410", "PMC7135076", "PMC7159286", "PMC7159299", "PMC10802347"]
        assert refs[0].location == f"{legacy_server.url}/oa_package/ac/6a/PMC7112410.tar.gz"
        assert refs[0].last_updated == "2020-04-06 14:56:00"
        assert refs[4].last_updated == "2024-01-31 18:42:00"
        assert src.unlisted == []
        pkgs = {}
        for ref in refs:
            if ref.pmcid in legacy_tree.missing:
                with pytest.raises(FetchError) as ei:
                    src.fetch(ref, tmp_path)
                assert ei.value.reason == "not_found"
                continue
            pkgs[ref.pmcid] = src.fetch(ref, tmp_path)
    p = pkgs["PMC7112410"]
    assert p.xml_files == ["main.nxml"]
    assert p.problems == []
    assert p.root == tmp_path / "PMC7112410"
    members = tar_members(legacy_tree.root / legacy_tree.packages["PMC7112410"])
    assert sorted(p.files) == sorted(m.split("/", 1)[1] for m in members if "/" in m and not m.endswith("/")
                                     and m.split("/", 1)[1])
    for name in ("main.nxml", "gr1_lrg.jpg", "gr4_lrg.gif"):
        assert p.read(name) == (articles_dir / "PMC7112410" / name).read_bytes()
    assert "mmc1.pdf" in pkgs["PMC7159286"].files
    t = pkgs["PMC10802347"]
    assert ("<archive>", "truncated_archive") in t.problems
    assert t.xml_files == ["nihpp-2023.12.31.573776v1.nxml"]
    assert "nihpp-2023.12.31.573776v1-f0001.gif" in t.files
    assert "nihpp-2023.12.31.573776v1-f0001.jpg" not in t.files
    assert not any(n.endswith(".pdf") for n in t.files)
    assert not list((tmp_path / "_archives").iterdir()), "downloaded archives are removed after extraction"


def test_legacy_resume_and_flaky_download(legacy_server, legacy_tree, tmp_path):
    key = legacy_tree.packages["PMC7159286"]
    legacy_server.add_fault(key, "status", status=503)
    legacy_server.add_fault(key, "drop", at=700_000)
    with LegacySource(legacy_server.url, downloader=fast()) as src:
        ref = [r for r in src.list_articles() if r.pmcid == "PMC7159286"][0]
        pkg = src.fetch(ref, tmp_path)
        assert pkg.problems == []
        assert len(pkg.files) == 13
        reqs = legacy_server.requests_for(key)
        assert [r.fault for r in reqs][:2] == ["status", "drop"]
        assert reqs[-1].range
        assert reqs[-1].status == 206
        n = len(legacy_server.log)
        again = src.fetch(ref, tmp_path)
        assert len(legacy_server.log) == n
        assert sorted(again.files) == sorted(pkg.files)


def test_legacy_local_mirror(legacy_tree, tmp_path):
    src = make_source("legacy", root=legacy_tree.root)
    refs = list(src.list_articles())
    assert refs[0].location == "oa_package/ac/6a/PMC7112410.tar.gz"     # relative to the mirror: ledger-safe
    pkg = src.fetch(refs[1], tmp_path)
    assert pkg.xml_files == ["main.nxml"]
    assert (sorted(pkg.files) == ["gr1_lrg.gif", "gr1_lrg.jpg", "main.nxml",
                                                                   "main.pdf"])
    with pytest.raises(FetchError) as ei:
        src.fetch(refs[3], tmp_path)
    assert ei.value.reason == "not_found"
    truncated = src.fetch(refs[4], tmp_path)
    assert ("nihpp-2023.12.31.573776v1.pdf", "truncated") in truncated.problems
    assert (legacy_tree.root / legacy_tree.packages["PMC10802347"]).exists(), "mirror files are never touched"


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]], path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def test_extraction_is_safe(tmp_path, articles_dir):
    xml = (articles_dir / "PMC7135076" / "main.nxml").read_bytes()
    link = tarfile.TarInfo("PMCX/link.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("PMCX/hard.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "PMCX/main.nxml"
    arc = _tar_with([_file("PMCX/main.nxml", xml), _file("/abs/evil.txt", b"x"), _file("PMCX/../../evil.txt", b"x"),
                     (link, None), (hard, None), _file("PMCX/sub/fig.jpg", b"\xff\xd8\xffjpg")],
                    tmp_path / "evil.tar.gz")
    out = extract_package(arc, tmp_path / "out" / "PMCX")
    assert sorted(out.files) == ["main.nxml", "sub/fig.jpg"]
    assert sorted(n for n, r in out.problems if r == "unsafe_member") == [
        "/abs/evil.txt", "PMCX/../../evil.txt", "PMCX/hard.jpg", "PMCX/link.jpg"]
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["PMCX"]


def test_package_without_xml_is_bad(tmp_path, legacy_tree):
    mirror = tmp_path / "mirror"
    (mirror / "oa_package/00/00").mkdir(parents=True)
    _tar_with([_file("PMC1/fig.jpg", b"jpg")], mirror / "oa_package/00/00/PMC1.tar.gz")
    (mirror / "oa_package/00/00/PMC2.tar.gz").write_bytes(b"this is not a tarball")
    (mirror / "oa_file_list.csv").write_text(
        "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\n"
        "oa_package/00/00/PMC1.tar.gz,C,PMC1,2020-01-01 00:00:00,,CC BY\n"
        "oa_package/00/00/PMC2.tar.gz,C,PMC2,2020-01-01 00:00:00,,CC BY\n")
    src = LegacySource(mirror)
    for ref in src.list_articles():
        with pytest.raises(FetchError) as ei:
            src.fetch(ref, tmp_path / "cache")
        assert ei.value.reason == "bad_package"


# ============================================================================ local
def _xml_dirs(articles: Path) -> list[Path]:
    return [d for d in sorted(articles.iterdir())
            if d.is_dir() and any(f.suffix in (".xml", ".nxml") for f in d.iterdir())]


def test_local_fixture_folder(pmc_dir, articles_dir, tmp_path):
    src = LocalSource(pmc_dir)
    refs = list(src.list_articles())
    expected = _xml_dirs(articles_dir)
    assert len(expected) >= 70  # 72 in this checkout (the MANIFEST's 77 includes articles kept aside)
    assert len(refs) == len(expected)
    # locations relative to the input root (they become the ledger's `source`, which is published)
    assert sorted(r.location for r in refs) == sorted(d.relative_to(pmc_dir).as_posix() for d in expected)
    assert [r.location for r in refs] == sorted(r.location for r in refs), "sorted listing"
    ids = [r.pmcid for r in refs]
    assert ids.count("PMC7112410") == 1
    assert len(set(ids)) == len(ids)
    assert "PLOS_pbio_0020188" in ids
    assert "eLife_19405" in ids
    unlisted = dict(src.unlisted)
    others = pmc_dir / "images_other"
    for d in sorted((others / "pmc_packages_without_nxml").iterdir()):
        assert unlisted[d.relative_to(pmc_dir).as_posix()] == "no_xml"
    assert unlisted["images_other/misc"] == "no_xml"
    assert unlisted["filelists/pmc_cloud_2026"] == "no_article_xml"
    assert [r.pmcid for r in LocalSource(pmc_dir).list_articles()] == ids, "deterministic"

    by = {r.pmcid: r for r in refs}
    pkg = src.fetch(by["PMC7112410"], tmp_path)
    assert pkg.xml_files == ["main.nxml"]
    assert pkg.root == articles_dir / "PMC7112410"
    assert "package/PMC7112410.tar.gz" in pkg.files
    assert "gr1_lrg.jpg" in pkg.files
    assert src.fetch(by["eLife_32671_texture"], tmp_path).xml_files == ["manuscript.xml", "manifest.xml"]  # JATS first
    assert not list(tmp_path.iterdir()), "extracted folders are used in place"


def test_local_cloud_layout(cloud_tree, tmp_path):
    src = LocalSource(cloud_tree.root)
    refs = list(src.list_articles())
    assert sorted((r.pmcid, r.version) for r in refs) == sorted(
        {(a.pmcid, cloud_tree.latest(a.pmcid).version) for a in cloud_tree.articles.values()})
    assert src.unlisted == [(f"{TWO_VERSION_PMCID}.1", f"older_version: {TWO_VERSION_PMCID}.2 listed")]
    by = {r.pmcid: r for r in refs}
    assert by["PMC90000353"].license_hint == "CC BY"  # metadata inside the prefix
    assert by["PMC7112410"].license_hint == "NO-CC CODE"
    assert by["PMC7112410"].pmid == "12781535"
    pkg = src.fetch(by[TWO_VERSION_PMCID], tmp_path)
    assert pkg.xml_files == [f"{TWO_VERSION_PMCID}.2.xml"]
    assert pkg.metadata["version"] == 2
    assert_matches_tree(pkg, cloud_tree.articles[f"{TWO_VERSION_PMCID}.2"])


def test_local_tarballs_and_single_paths(articles_dir, tmp_path):
    lib = tmp_path / "lib"
    (lib / "nested").mkdir(parents=True)
    shutil.copy(articles_dir / "PMC10802347/package/PMC10802347.truncated.tar.gz", lib / "nested")
    shutil.copy(articles_dir / "PMC7135076/package/PMC7135076.tar.gz", lib)
    (lib / "dup" / "PMC7135076").mkdir(parents=True)
    shutil.copy(articles_dir / "PMC7135076/main.nxml", lib / "dup" / "PMC7135076")
    src = LocalSource(lib)
    refs = list(src.list_articles())
    assert [(r.pmcid, r.extra["kind"]) for r in refs] == [("PMC7135076", "dir"), ("PMC10802347", "tar")]  # dup/ < nested/
    assert src.unlisted == [("PMC7135076.tar.gz", "duplicate_id: PMC7135076 (kept dup/PMC7135076)")]
    cache = tmp_path / "cache"
    t = src.fetch(refs[1], cache)
    assert t.root == cache / "PMC10802347"
    assert ("<archive>", "truncated_archive") in t.problems
    assert t.xml_files == ["nihpp-2023.12.31.573776v1.nxml"]
    assert len(t.files) == 8

    one_tar = LocalSource(lib / "PMC7135076.tar.gz")
    (ref,) = one_tar.list_articles()
    assert one_tar.fetch(ref, cache).xml_files == ["main.nxml"]
    one_xml = LocalSource(articles_dir / "PMC7159286" / "main.nxml")
    (ref,) = one_xml.list_articles()
    pkg = one_xml.fetch(ref, cache)
    assert ref.pmcid == "PMC7159286"
    assert pkg.xml_files == ["main.nxml"]
    assert "gr3a_lrg.jpg" in pkg.files


def test_make_source_factory(cloud_tree):
    assert isinstance(make_source("local", path=cloud_tree.root), LocalSource)
    assert isinstance(make_source("cloud", base_url="http://127.0.0.1:9", pmcids=["PMC1"]), CloudSource)
    with pytest.raises(ValueError):
        make_source("ftp")
    with pytest.raises(ValueError):
        make_source("cloud")  # nothing to list


def test_cloud_metadata_json_format(cloud_tree, filelists_dir):
    """The built tree uses exactly the 2026 field set of the real samples."""
    sample = json.loads((filelists_dir / "pmc_cloud_2026" / "s3_meta_PMC4599423.1_media.json").read_text())
    built = json.loads(cloud_tree.metadata_path("PMC7112410.1").read_text())
    assert set(built) <= set(sample)
    assert ({"pmcid", "version", "xml_url", "media_urls", "license_code",
                                          "is_pmc_openaccess"} <= set(built))
    assert built["xml_url"].startswith("s3://pmc-oa-opendata/PMC7112410.1/PMC7112410.1.xml?md5=")


def test_make_source_download_options(cloud_server, tmp_path):
    src = make_source("cloud", base_url=cloud_server.url, pmcids=["PMC7135076"], rate=50, retries=1,
                      pmcid_file=None, filelist=None, list_all=False)
    assert src.downloader.limiter is not None
    assert src.downloader.limiter.rate == 50
    assert src.downloader.retries == 1
    assert src.fetch(next(src.list_articles()), tmp_path).xml_files == ["PMC7135076.1.xml"]
    src.close()
    assert isinstance(make_source("local", path=str(tmp_path), rate=None), LocalSource)


def test_bad_listing_rows_are_reported(cloud_server, tmp_path):
    with CloudSource(cloud_server.url, pmcids=["PMC1", "nope"], downloader=fast()) as src:
        assert [r.pmcid for r in src.list_articles()] == ["PMC1"]
        assert src.listing_problems == [("pmcids[1]", "bad_pmcid: 'nope'")]
        assert src.unlisted == []


def test_a_local_build_never_imports_the_http_client_or_pandas(tmp_path):
    """``requests`` (and urllib3) are for remote sources: a build from local packages (the bundled sample: .tar.gz
    packages and folders) runs without importing them, ~0.07 s of every local build's listing (issue 28). Nor does
    the ``biomedica`` command import pandas, which pyarrow's first list conversion would (0.2-0.3 s, ~30 MB:
    io/pandas_probe.py); invoked in-process (``main``) it leaves pyarrow's probe alone, and so pandas is imported."""
    def imported(entry: str, out: Path) -> str:
        code = ("import atexit, sys\n"
                "atexit.register(lambda: print('IMPORTED', sorted(m for m in ('pandas', 'requests', 'urllib3')"
                " if m in sys.modules)))\n"
                "from biomedica_hf.cli import main, run\n"
                "args = ['build', '--sample', '--out', sys.argv[1], '--workers', '1', '--no-progress']\n"
                "if sys.argv[2] == 'run':\n"
                "    sys.argv = ['biomedica', *args]\n"
                "    run()\n"
                "else:\n"
                "    main(args, standalone_mode=False)\n")
        r = subprocess.run([sys.executable, "-c", code, str(out), entry], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        assert (out / "figures.parquet").exists()
        return r.stdout

    assert "IMPORTED []" in imported("run", tmp_path / "run")              # the console script
    assert "IMPORTED ['pandas']" in imported("main", tmp_path / "main")    # in-process: pyarrow as it is
