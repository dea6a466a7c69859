"""Packages read in memory (issue 28): an archive read without extracting it gives the package extraction gives
(same files in the same order, same XML order, same problems, same bytes, same error) and writes nothing; the
build of an article from it (samples, ledger) is the same. Real fixture packages (one really truncated) and
hostile ones generated here."""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from support.hostile_inputs import article_xml, small_jpeg, write_targz

from biomedica_hf.ingest.article import process_package
from biomedica_hf.ingest.sources.base import FetchError
from biomedica_hf.ingest.sources.legacy import ArchiveLimits, package_from_archive, read_package
from biomedica_hf.ingest.sources.local import LocalSource
from biomedica_hf.schema import ArticleRef

FIXTURE_TARS = sorted((Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "pmc" / "articles")
                      .resolve().glob("*/package/*.tar.gz"))


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _outcome(archive: Path, dest: Path, in_memory: bool, limits: ArchiveLimits | None = None):
    """(kind, value): the package's observable content, or the error raised."""
    shutil.rmtree(dest, ignore_errors=True)
    ref = ArticleRef(pmcid=dest.name, location=str(archive))
    try:
        pkg = package_from_archive(ref, archive, dest, limits, in_memory=in_memory)
    except (FetchError, OSError) as e:
        return "error", (type(e).__name__, str(e))
    files = list(pkg.files.items())
    content = {n: (pkg.data[n] if n in pkg.data else p.read_bytes()) for n, p in files
               if n in pkg.data or p.is_file()}
    return "package", (files, pkg.xml_files, pkg.problems, content, {n: pkg.size(n) for n in content}, pkg)


def _same(archive: Path, tmp_path: Path, limits: ArchiveLimits | None = None, *, wrote_nothing: bool = True):
    dest = tmp_path / "cache" / "PMCX"
    disk = _outcome(archive, dest, False, limits)
    mem = _outcome(archive, dest, True, limits)
    assert mem[0] == disk[0]
    if disk[0] == "error":
        assert mem[1] == disk[1]
        return disk
    files, xml, problems, content, sizes, pkg = mem[1]
    assert files == disk[1][0]
    assert xml == disk[1][1]
    assert problems == disk[1][2]
    assert content == {n: disk[1][3][n] for n in content}
    assert sizes == {n: disk[1][4][n] for n in content}
    if wrote_nothing:   # every file the build reads (XML, images) is in memory, byte for byte what extraction wrote
        readable = {n for n, _ in files if n.lower().endswith((".xml", ".nxml", ".jpg", ".png", ".gif"))}
        assert readable <= set(pkg.data)
        assert not dest.exists()
        assert not dest.with_name(dest.name + ".extracting").exists()
    return mem


@pytest.mark.parametrize("archive", FIXTURE_TARS, ids=lambda p: p.name)
def test_fixture_packages_read_in_memory_as_extracted(archive, tmp_path):
    kind, (files, xml, problems, *_rest) = _same(archive, tmp_path)
    assert kind == "package"
    assert xml
    assert files
    if "truncated" in archive.name:
        assert ("<archive>", "truncated_archive") in problems


def test_fixture_articles_build_the_same_from_memory(tmp_path):
    """The samples and ledger of each fixture package: the same whether it was extracted or read in memory."""
    for archive in FIXTURE_TARS:
        dest = tmp_path / "cache" / archive.name.split(".")[0]
        results = []
        for in_memory in (False, True):
            shutil.rmtree(dest, ignore_errors=True)
            pkg = package_from_archive(ArticleRef(pmcid=dest.name, location=archive.name), archive, dest,
                                       in_memory=in_memory)
            res = process_package(pkg)
            results.append(([(s.key, s.caption, s.meta, s.image.data) for s in res.samples],
                            [e.as_dict() for e in res.ledger], res.articles))
        assert results[0] == results[1]
        assert results[1][0], archive          # the fixture packages do give samples


def test_hostile_archives_read_in_memory_as_extracted(tmp_path):
    xml = article_xml("PMC1", ["fig1", "sub/fig2", "fig3"])
    cases = {
        "problems": [("P/main.nxml", xml), ("P/fig1.jpg", small_jpeg(1)), ("P/other/fig1.jpg", small_jpeg(2)),
                     ("P/fig1.jpg", small_jpeg(3)),                      # duplicate member: the first stays
                     ("/abs.jpg", b"x"), ("P/../../up.jpg", b"x"),      # unsafe
                     ("P/fig3.jpg", b"not a jpeg at all"),              # named as an image: no signature
                     ("P/.hidden.xml", xml), ("P/notes.txt", b"text, never kept in memory"),
                     ("P/a-b/x.jpg", small_jpeg(4)), ("P/a/x.jpg", small_jpeg(5)),   # path order, not text order
                     ("P/fig2.gif", b"GIF89a" + bytes(30)), ("P/fig2.png", b"\x89PNG\r\n\x1a\n" + bytes(64))],
        "file where a folder goes": [("P/main.nxml", xml), ("P/sub", b"a file"), ("P/sub/fig2.jpg", small_jpeg(6))],
        "no xml": [("P/fig1.jpg", small_jpeg(7))],
        "hidden xml only": [("P/.main.nxml", xml)],
        "non-JATS xml first by name": [("P/a_manifest.xml", b"<manifest/>"), ("P/z.nxml", xml)],
    }
    for name, members in cases.items():
        _same(_tar(tmp_path / f"{name}.tar.gz", members), tmp_path)
    # a folder where a file goes, a `.part` name: left to extraction, which then decides as before
    odd = _tar(tmp_path / "odd.tar.gz", [("P/main.nxml", xml), ("P/fig1.jpg.part", small_jpeg(8)),
                                         ("P/fig1.jpg", small_jpeg(9))])
    assert read_package(odd, tmp_path / "r") is None
    _same(odd, tmp_path, wrote_nothing=False)
    clash = _tar(tmp_path / "clash.tar.gz", [("P/main.nxml", xml), ("P/d/x.jpg", small_jpeg(1)), ("P/d", b"x")])
    assert read_package(clash, tmp_path / "r") is None
    assert _same(clash, tmp_path, wrote_nothing=False)[0] == "error"
    # not an archive at all, an empty file, a plain (uncompressed) tar
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not a tarball")
    (tmp_path / "empty.tar.gz").write_bytes(b"")
    for p in ("junk.tar.gz", "empty.tar.gz"):
        assert _same(tmp_path / p, tmp_path)[0] == "error"
    _same(_tar(tmp_path / "plain.tar", [("P/main.nxml", xml), ("P/fig1.jpg", small_jpeg(1))], "w"), tmp_path)


def test_cut_and_corrupted_archives_keep_the_same_members(tmp_path):
    """Cut at many points, or with flipped bytes: the members kept and the problems are extraction's."""
    xml = article_xml("PMC1", ["fig1", "fig2"])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in [("P/main.nxml", xml), ("P/fig1.jpg", small_jpeg(1, (300, 200))),
                           ("P/fig2.jpg", small_jpeg(2, (300, 200)))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    whole = gzip.compress(raw.getvalue(), mtime=0)
    seen = set()
    for i, cut in enumerate(range(200, len(whole), max(1, len(whole) // 12))):
        (tmp_path / f"cut{i}.tar.gz").write_bytes(whole[:cut])
        kind, value = _same(tmp_path / f"cut{i}.tar.gz", tmp_path)
        seen.add(kind if kind == "error" else len(value[0]))
        flipped = bytearray(whole)
        flipped[cut] ^= 0xFF
        (tmp_path / f"flip{i}.tar.gz").write_bytes(bytes(flipped))
        _same(tmp_path / f"flip{i}.tar.gz", tmp_path)
    assert {"error", 1, 2} <= seen          # cut before the XML ended, after it, after the first figure


def test_budgets_and_memory_limit(tmp_path):
    xml = article_xml("PMC1", ["a"])
    arc = write_targz(tmp_path / "p.tar.gz", [("P/main.nxml", xml), ("P/a.jpg", small_jpeg(1)),
                                              ("P/video.mp4", 3 << 20), ("P/b.jpg", small_jpeg(2)),
                                              ("P/c.bin", 3 << 20), ("P/d.txt", b"never read")])
    for limits in (None, ArchiveLimits(max_package_bytes=5 << 20), ArchiveLimits(max_member_bytes=2 << 20)):
        _same(arc, tmp_path, limits)
    # the large members that the build never reads are not held in memory
    ext = read_package(arc, tmp_path / "r", max_bytes=1 << 20)
    assert ext is not None
    assert sorted(ext.data) == ["a.jpg", "b.jpg", "main.nxml"]
    assert sorted(ext.files) == ["a.jpg", "b.jpg", "c.bin", "d.txt", "main.nxml", "video.mp4"]
    # XML and images over the memory budget: left to extraction
    assert read_package(arc, tmp_path / "r", max_bytes=len(xml) + 100) is None
    assert not (tmp_path / "r").exists()


def test_local_source_reads_packages_in_memory_unless_kept(tmp_path):
    archive = next(p for p in FIXTURE_TARS if "truncated" not in p.name)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(archive, inp / archive.name)
    src = LocalSource(inp)
    ref = next(iter(src.list_articles()))
    pkg = src.fetch(ref, tmp_path / "cache")
    assert pkg.data
    assert not (tmp_path / "cache").exists()
    src.extract_to_disk = True                 # build --keep-downloads
    kept = src.fetch(ref, tmp_path / "cache")
    assert not kept.data
    assert all(p.is_file() for p in kept.files.values())
    assert list(kept.files) == list(pkg.files)
    assert kept.xml_files == pkg.xml_files
