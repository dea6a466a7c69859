"""Hostile input on the build side (issue 13): archive budgets, duplicate members, decode budgets,
symlinks out of the input folder, long XML prologs, a full disk. Every input is generated here."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.hostile_inputs import (
    REPO,
    article_xml,
    float_tiff_stream,
    noise_png,
    png16_stream,
    run_measured,
    small_jpeg,
    write_targz,
)
from support.pmc_server import PMCServer

from biomedica_hf.ingest.download import Downloader
from biomedica_hf.ingest.media import MediaError, decoded_bytes, process_image
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.ingest.sources.base import OUTSIDE_INPUT, looks_like_jats
from biomedica_hf.ingest.sources.legacy import ARCHIVE_PROBLEM, ArchiveLimits, extract_package
from biomedica_hf.ingest.sources.local import LocalSource

GIB = 1 << 30


def _ledger(out: Path) -> dict[tuple[str, str], dict]:
    rows = pq.read_table(out / "ledger.parquet").to_pylist()
    table = {(r["kind"], r["id"]): r for r in rows}
    assert len(table) == len(rows), "every item exactly once"
    return table


def _good_article(root: Path, pmcid: str = "PMC900001", seed: int = 1) -> Path:
    d = root / pmcid
    d.mkdir(parents=True)
    (d / "main.nxml").write_bytes(article_xml(pmcid, ["fig1", "fig2"]))
    (d / "fig1.jpg").write_bytes(small_jpeg(seed))
    (d / "fig2.jpg").write_bytes(small_jpeg(seed + 100))
    return d


def _samples(out: Path) -> set[str]:
    return set(pq.read_table(out / "figures.parquet", columns=["key"]).column("key").to_pylist())


# ------------------------------------------------------------------------------------ archives
def _compressed_tar(kind: str, members: list[tuple[str, bytes | int]]) -> bytes:
    """A tar stream of ``members`` ((name, bytes) or (name, N zero bytes)) compressed as ``kind`` (bz2, xz)."""
    import bz2
    import lzma

    comp = bz2.BZ2Compressor(9) if kind == "bz2" else lzma.LZMACompressor(preset=1)
    out = []
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = data if isinstance(data, int) else len(data)
        out.append(comp.compress(info.tobuf(tarfile.GNU_FORMAT)))
        if isinstance(data, int):
            zero = bytes(1 << 24)
            for _ in range(data >> 24):
                out.append(comp.compress(zero))
            out.append(comp.compress(bytes(data & ((1 << 24) - 1))))
        else:
            out.append(comp.compress(data))
        out.append(comp.compress(bytes(-info.size % tarfile.BLOCKSIZE)))
    out.append(comp.compress(bytes(2 * tarfile.BLOCKSIZE)))
    out.append(comp.flush())
    return b"".join(out)


def test_bzip2_and_xz_packages_are_refused_unread(tmp_path):
    """A package named ``.tar.gz`` holding a bzip2 (or xz) tar: ``tarfile`` would inflate it with no bound on one
    read (208 bytes of bzip2 are 256 MiB of zeros in one call). It is ledgered ``bad_package`` naming the
    compression, without a byte inflated; the good article next to it is built. Measured in a fresh process."""
    inp = tmp_path / "in"
    _good_article(inp)
    for pmcid, kind in (("PMC900004", "bz2"), ("PMC900005", "xz")):
        data = _compressed_tar(kind, [(f"{pmcid}/main.nxml", article_xml(pmcid, ["fig1"])),
                                      (f"{pmcid}/fig1.jpg", 256 << 20)])
        assert len(data) < 100_000
        (inp / f"{pmcid}.tar.gz").write_bytes(data)
    out = tmp_path / "out"
    m = run_measured(f"""
from biomedica_hf.ingest.pipeline import BuildConfig, build
r = build(BuildConfig(out={str(out)!r}, source="local", source_opts={{"path": {str(inp)!r}}}, workers=1,
                      progress=False))
RESULT = r.samples_per_subset
""")
    print(f"\nbzip2 + xz packages of 256 MiB zero members: peak RSS {m['max_rss_mb']:.0f} MB")
    assert m["max_rss_mb"] < 400
    ledger = _ledger(out)
    for pmcid, name in (("PMC900004", "bzip2"), ("PMC900005", "xz")):
        row = ledger[("article", pmcid)]
        assert (row["state"], row["reason"]) == ("failed", "bad_package")
        assert f"CompressionError: a {name}-compressed stream" in row["detail"]
    assert _samples(out) == {"PMC900001_fig1", "PMC900001_fig2"}


def test_zero_member_over_budget_is_ledgered_not_written(tmp_path):
    """Row 1 + row 2: a tiny .tar.gz with a > 1 GiB zero member, and a package with two members named
    alike under different top folders, next to a good article. Measured in a fresh process."""
    inp = tmp_path / "in"
    _good_article(inp)
    huge = 1 * GIB + (1 << 20)
    write_targz(inp / "PMC900002.tar.gz", [
        ("PMC900002/main.nxml", article_xml("PMC900002", ["fig1", "fig2"])),
        ("PMC900002/fig1.jpg", small_jpeg(2)),
        ("PMC900002/fig2.png", huge),
    ])
    first, second = small_jpeg(3), small_jpeg(4)
    write_targz(inp / "PMC900003.tar.gz", [
        ("PMC900003/main.nxml", article_xml("PMC900003", ["fig1"])),
        ("PMC900003/fig1.jpg", first),
        ("other/fig1.jpg", second),
    ])
    assert (inp / "PMC900002.tar.gz").stat().st_size < 2_000_000
    out = tmp_path / "out"
    m = run_measured(f"""
from biomedica_hf.ingest.pipeline import BuildConfig, build
r = build(BuildConfig(out={str(out)!r}, source="local", source_opts={{"path": {str(inp)!r}}}, workers=1,
                      progress=False, keep_downloads=True))
RESULT = r.samples_per_subset
""")
    print(f"\nzero member of {huge / 1e9:.2f} GB: peak RSS {m['max_rss_mb']:.0f} MB, "
          f"written {m['written_mb']:.1f} MB")
    assert m["max_rss_mb"] < 400
    assert m["written_mb"] < 50
    ledger = _ledger(out)
    assert ledger[("file", "PMC900002/fig2.png")]["reason"] == "archive_too_large"
    assert ledger[("file", "PMC900002/fig2.png")]["state"] == "failed"
    fig2 = ledger[("figure", "PMC900002_fig2")]
    assert (fig2["state"], fig2["reason"]) == ("failed", "archive_too_large")
    assert not (out / "_work" / "cache" / "PMC900002" / "fig2.png").exists()
    dup = ledger[("file", "PMC900003/other/fig1.jpg")]
    assert (dup["state"], dup["reason"]) == ("failed", "duplicate_member")
    # the first fig1.jpg stays, byte for byte; the second never overwrote it
    assert (out / "_work" / "cache" / "PMC900003" / "fig1.jpg").read_bytes() == first
    assert {"PMC900001_fig1", "PMC900001_fig2", "PMC900002_fig1", "PMC900003_fig1"} <= _samples(out)
    assert "PMC900002_fig2" not in _samples(out)


def test_package_budget_stops_reading(tmp_path):
    arc = write_targz(tmp_path / "p.tar.gz", [
        ("P/main.nxml", article_xml("PMC1", ["a", "b"])),
        ("P/a.bin", 3 << 20), ("P/b.bin", 3 << 20), ("P/c.bin", 3 << 20), ("P/d.txt", b"never read"),
    ])
    ext = extract_package(arc, tmp_path / "x", ArchiveLimits(max_package_bytes=7 << 20, max_member_bytes=4 << 20))
    assert sorted(ext.files) == ["a.bin", "b.bin", "main.nxml"]
    assert (ARCHIVE_PROBLEM, "archive_too_large") in ext.problems
    assert ("c.bin", "archive_too_large") in ext.problems
    assert "d.txt" not in {p[0] for p in ext.problems}
    assert "7340032" in ext.detail
    assert sum(p.stat().st_size for p in (tmp_path / "x").rglob("*") if p.is_file() and p.suffix == ".bin") == 6 << 20
    # a member over the member budget is skipped, the rest goes on
    ext = extract_package(arc, tmp_path / "y", ArchiveLimits(max_package_bytes=1 << 30, max_member_bytes=2 << 20))
    assert sorted(ext.files) == ["d.txt", "main.nxml"]
    assert {p for p in ext.problems} == {("a.bin", "archive_too_large"), ("b.bin", "archive_too_large"),
                                         ("c.bin", "archive_too_large")}


def test_archive_budget_cli_flags(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    write_targz(inp / "PMC900004.tar.gz", [("PMC900004/main.nxml", article_xml("PMC900004", ["fig1"])),
                                           ("PMC900004/fig1.jpg", small_jpeg(5)), ("PMC900004/big.dat", 5 << 20)])
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "biomedica_hf.cli", "build", "--input", str(inp), "--out", str(out),
                        "--workers", "1", "--no-progress", "--max-member-bytes", "4MiB", "--max-pixels", "2000"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    ledger = _ledger(out)
    assert ledger[("file", "PMC900004/big.dat")]["reason"] == "archive_too_large"
    fig = pq.read_table(out / "figures.parquet").to_pylist()
    assert [(f["key"], f["width"] * f["height"] <= 2000, f["reencoded"]) for f in fig] == [
        ("PMC900004_fig1", True, True)]                        # 64x48 = 3072 pixels, reduced by --max-pixels


# ------------------------------------------------------------------------------------ images
@pytest.fixture(scope="module")
def huge_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("huge")
    return png16_stream(d / "ramp16.png", 12000, 12000), float_tiff_stream(d / "float.tif", 12000, 12000)


def test_decode_budget_counts_bytes_before_decoding(huge_images):
    png16, tif = huge_images
    assert png16.stat().st_size < 1_000_000
    assert tif.stat().st_size < 1_000_000
    assert decoded_bytes("I;16", (12000, 12000)) == 288_000_000
    assert decoded_bytes("F", (12000, 12000)) == 576_000_000
    assert decoded_bytes("L", (12000, 12000)) == 144_000_000
    for path in huge_images:
        m = run_measured(f"""
from pathlib import Path
from biomedica_hf.ingest.media import MediaError, process_image
try:
    process_image(Path({str(path)!r}).read_bytes(), "x")
    RESULT = "kept"
except MediaError as e:
    RESULT = [e.reason, e.detail]
""")
        print(f"\n{path.name}: {m['result']}; peak RSS {m['max_rss_mb']:.0f} MB")
        assert m["result"][0] == "image_too_large"
        assert "bytes >" in m["result"][1]
        assert m["max_rss_mb"] < 1024


def test_max_pixels_reduces_within_budget(huge_images):
    """--max-pixels: the 16-bit PNG and the float TIFF are decoded within a raised budget and reduced, with
    RSS < 1 GB; the outputs are real ramps (not black)."""
    for path, mode in zip(huge_images, ("I;16", "F")):
        m = run_measured(f"""
import io
from pathlib import Path
from PIL import Image
from biomedica_hf.ingest.media import process_image
rec = process_image(Path({str(path)!r}).read_bytes(), "x", reduce_to_pixels=4_000_000, max_image_bytes=600_000_000)
im = Image.open(io.BytesIO(rec.data))
RESULT = [rec.width, rec.height, rec.reencoded, rec.orig_mode, im.mode, im.getextrema()]
""")
        w, h, reencoded, orig_mode, out_mode, extrema = m["result"]
        print(f"\n{path.name} 12000x12000 reduced to {w}x{h}: peak RSS {m['max_rss_mb']:.0f} MB")
        assert w * h <= 4_000_000
        assert w == h
        assert w >= 1990
        assert reencoded
        assert orig_mode == mode
        assert out_mode == "L"
        assert extrema[0] == 0
        assert extrema[1] == 255          # the ramp is stretched, not a black image
        assert m["max_rss_mb"] < 1024


def test_max_pixels_jpeg_draft_never_decodes_full_size():
    data = small_jpeg(7, (4000, 3000))
    with pytest.raises(MediaError) as ei:  # full decode: 4000 x 3000 x 4 = 48 MB > 20 MB
        process_image(data, "big.jpg", max_image_bytes=20_000_000)
    assert ei.value.reason == "image_too_large"
    # draft decodes at 1/2 scale (12 MB): within the budget, then resized to <= 1 M pixels
    rec = process_image(data, "big.jpg", max_image_bytes=20_000_000, reduce_to_pixels=1_000_000)
    assert rec.reencoded
    assert rec.ext == "png"
    assert rec.width * rec.height <= 1_000_000
    assert abs(rec.width / rec.height - 4 / 3) < 0.01
    small = small_jpeg(8)
    assert process_image(small, reduce_to_pixels=1_000_000).data == small   # under the limit: untouched


def test_image_too_large_in_a_build(tmp_path, huge_images):
    png16, _ = huge_images
    inp = tmp_path / "in"
    d = _good_article(inp)
    shutil.copyfile(png16, d / "fig2.png")
    (d / "fig2.jpg").unlink()
    out = tmp_path / "out"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False))
    ledger = _ledger(out)
    row = ledger[("figure", "PMC900001_fig2")]
    assert (row["state"], row["reason"]) == ("failed", "image_too_large")
    assert _samples(out) == {"PMC900001_fig1"}


# ------------------------------------------------------------------------------------ symlinks
def test_local_source_refuses_files_outside_the_input(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "photo.jpg").write_bytes(small_jpeg(9))
    (secret / "other.nxml").write_bytes(article_xml("PMC900009", []))
    inp = tmp_path / "in"
    _good_article(inp)
    b = inp / "PMC900002"
    b.mkdir()
    (b / "main.nxml").write_bytes(article_xml("PMC900002", ["fig1", "fig2"]))
    (b / "fig1.jpg").write_bytes(small_jpeg(10))
    (b / "fig2.jpg").symlink_to(secret / "photo.jpg")
    c = inp / "PMC900003"
    c.mkdir()
    (c / "main.nxml").symlink_to(secret / "other.nxml")
    (inp / "PMC900004.tar.gz").symlink_to(write_targz(secret / "PMC900004.tar.gz", [
        ("PMC900004/main.nxml", article_xml("PMC900004", ["fig1"])), ("PMC900004/fig1.jpg", small_jpeg(11))]))
    inside = inp / "PMC900005"
    inside.mkdir()
    (inside / "main.nxml").write_bytes(article_xml("PMC900005", ["fig1"]))
    (inside / "fig1.jpg").symlink_to(inp / "PMC900001" / "fig1.jpg")   # a link that stays inside is fine

    src = LocalSource(inp)
    assert [r.pmcid for r in src.list_articles()] == ["PMC900001", "PMC900002", "PMC900005"]
    assert sorted(src.unlisted) == [(f"{c.relative_to(inp).as_posix()}/main.nxml", OUTSIDE_INPUT),
                                    ("PMC900004.tar.gz", OUTSIDE_INPUT)]
    out = tmp_path / "out"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                      dedup_images=False))
    ledger = _ledger(out)
    assert (ledger[("figure", "PMC900002_fig2")]["state"], ledger[("figure", "PMC900002_fig2")]["reason"]) == (
        "failed", OUTSIDE_INPUT)
    assert ledger[("file", "PMC900002/fig2.jpg")]["reason"] == OUTSIDE_INPUT
    assert ledger[("file", f"{c.relative_to(inp).as_posix()}/main.nxml")]["reason"] == OUTSIDE_INPUT   # no local path
    assert _samples(out) == {"PMC900001_fig1", "PMC900001_fig2", "PMC900002_fig1", "PMC900005_fig1"}


def test_local_scan_resolves_only_symlinks_and_names_paths_as_before(tmp_path, monkeypatch):
    """The scan checks a file it walked to by one ``lstat`` (the walk never enters a symlinked folder) and resolves
    only symlinks; ``public`` names paths by string. What is listed, refused and how it is named is unchanged: links
    out (chained too), links that stay inside, a symlinked folder out of the input, the input itself a symlink."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "other.nxml").write_bytes(article_xml("PMC900009", []))
    _good_article(secret, "PMC900008")                   # an article folder outside the input
    inp = tmp_path / "in"
    _good_article(inp)
    (inp / "hop.nxml").symlink_to(secret / "other.nxml")
    c = inp / "PMC900003"
    c.mkdir()
    (c / "main.nxml").symlink_to(inp / "hop.nxml")       # a chain that ends outside
    (inp / "PMC900008").symlink_to(secret / "PMC900008", target_is_directory=True)   # never walked into
    store = inp / ".store"                                # skipped by the walk, but inside the input
    store.mkdir()
    (store / "main.nxml").write_bytes(article_xml("PMC900006", ["fig1"]))
    d = inp / "PMC900006"
    d.mkdir()
    (d / "main.nxml").symlink_to(store / "main.nxml")    # a link that stays inside
    write_targz(store / "PMC900007.tar.gz", [("PMC900007/main.nxml", article_xml("PMC900007", ["fig1"]))])
    (inp / "PMC900007.tar.gz").symlink_to(Path("..") / "in" / ".store" / "PMC900007.tar.gz")   # relative, inside
    (inp / "gone.tar.gz").symlink_to(tmp_path / "nowhere.tar.gz")                              # dangling, outside

    def old_public(src, path):                            # the listing's names before this change
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(src.root)).as_posix()
        except ValueError:
            return Path(path).name
        return rel or "."

    link = tmp_path / "link-to-in"
    link.symlink_to(inp, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    listings = []
    for top in (inp, link, Path("in"), Path("./link-to-in/")):
        src = LocalSource(top)
        refs = list(src.list_articles())
        listings.append(([(r.pmcid, r.location, r.extra["kind"]) for r in refs], sorted(src.unlisted)))
        for path in (top, Path(top) / "PMC900001", Path(top) / "PMC900001" / "main.nxml", Path(top) / ".." / "x",
                     Path(os.path.abspath(top)) / "PMC900006", tmp_path / "secret" / "other.nxml", "/", "in/../in/a"):
            assert src.public(path) == old_public(src, path), (top, path)
    assert listings[0] == ([("PMC900001", "PMC900001", "dir"), ("PMC900006", "PMC900006", "dir"),
                            ("PMC900007", "PMC900007.tar.gz", "tar")],
                           [("PMC900003/main.nxml", OUTSIDE_INPUT), ("gone.tar.gz", OUTSIDE_INPUT),
                            ("hop.nxml", OUTSIDE_INPUT)])
    assert all(x == listings[0] for x in listings), listings
    src = LocalSource(inp)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    monkeypatch.chdir(moved)                              # a relative path is named from the working folder of now
    rel = Path("..") / "in" / "PMC900001"
    assert src.public(rel) == old_public(src, rel) == "PMC900001"


# ------------------------------------------------------------------------------------ prolog
def test_article_with_a_prolog_longer_than_the_sniff_window(tmp_path):
    prolog = "<!-- " + "padding " * 20_000 + "-->\n" + '<!DOCTYPE article [ <!ENTITY x "y"> ]>\n' + \
             "<?pi " + "z" * 70_000 + "?>\n"
    inp = tmp_path / "in"
    d = _good_article(inp)
    (d / "main.nxml").write_bytes(article_xml("PMC900001", ["fig1", "fig2"], prolog=prolog))
    assert (d / "main.nxml").stat().st_size > 200_000
    assert looks_like_jats(d / "main.nxml")
    not_article = tmp_path / "manifest.xml"
    not_article.write_bytes(b"<?xml version='1.0'?>\n<!-- " + b"x" * 100_000 + b" -->\n<dar><documents/></dar>")
    assert not looks_like_jats(not_article)
    unclosed = tmp_path / "unclosed.xml"
    unclosed.write_bytes(b"<!-- " + b"x" * 300_000)            # never ends: bounded read, False
    assert not looks_like_jats(unclosed, max_prolog=200_000)
    out = tmp_path / "out"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False))
    assert _samples(out) == {"PMC900001_fig1", "PMC900001_fig2"}


# ------------------------------------------------------------------------------------ disk full
@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MiB tmpfs (we run as root); skipped where mounting is not permitted."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biomedica_hf.cli", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)


def test_disk_full_stops_the_build_and_a_rerun_repairs(tmp_path, small_tmpfs):
    inp = tmp_path / "in"
    _good_article(inp)
    big = noise_png(12, (2000, 1700))            # ~10 MB, incompressible: more than the disk holds
    assert len(big) > 9_000_000
    write_targz(inp / "PMC900002.tar.gz", [("PMC900002/main.nxml", article_xml("PMC900002", ["fig1"])),
                                           ("PMC900002/fig1.png", big)])
    out = small_tmpfs / "out"
    args = ("build", "--input", str(inp), "--out", str(out), "--workers", "1", "--no-progress",
            "--max-image-bytes", "64MiB")
    r = _cli(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("Error: build stopped: disk full"), r.stderr
    assert "Traceback" not in r.stderr
    assert "rerun" in err[0]
    assert not (out / "ledger.parquet").exists()          # nothing recorded as truncated or bad
    assert not list((out / "_work").rglob("*.extracting"))   # the cut extraction freed its space
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    ledger = _ledger(out)
    assert not [k for k, v in ledger.items() if "truncat" in v["reason"] or v["reason"] == "bad_package"]
    assert _samples(out) == {"PMC900001_fig1", "PMC900001_fig2", "PMC900002_fig1"}


def test_download_disk_full_raises_enospc_and_keeps_no_part(tmp_path, small_tmpfs):
    srv_root = tmp_path / "srv"
    srv_root.mkdir()
    (srv_root / "big.bin").write_bytes(os.urandom(12 << 20))
    with PMCServer(srv_root) as srv, Downloader(retries=3, backoff=0.01) as dl:
        with pytest.raises(OSError) as ei:
            dl.download(srv.url_for("big.bin"), small_tmpfs / "big.bin")
        assert ei.value.errno == errno.ENOSPC
        assert len(srv.requests_for("/big.bin")) == 1          # not retried as if the network failed
    assert list(small_tmpfs.iterdir()) == []                    # no .part left filling the disk


def test_disk_full_while_downloading_stops_the_build(tmp_path, small_tmpfs):
    """Legacy mirror over HTTP: the package download hits ENOSPC -> one fatal line, no ledger; with space,
    the rerun downloads it again and keeps its figure (never a truncated or bad package)."""
    root = tmp_path / "mirror"
    key = "oa_package/aa/bb/PMC900020.tar.gz"
    (root / key).parent.mkdir(parents=True)
    write_targz(root / key, [("PMC900020/main.nxml", article_xml("PMC900020", ["fig1"])),
                             ("PMC900020/fig1.png", noise_png(13, (2000, 1700)))])
    (root / "oa_file_list.csv").write_text(
        "File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\r\n"
        f"{key},J. 2020,PMC900020,2020-01-01 00:00:00,,CC BY\r\n")
    out = small_tmpfs / "out"
    with PMCServer(root) as srv:
        args = ("build", "--source", "legacy", "--base-url", srv.url, "--filelist", str(root / "oa_file_list.csv"),
                "--out", str(out), "--workers", "1", "--no-progress", "--retries", "1")
        r = _cli(*args)
        assert r.returncode == 1, r.stdout + r.stderr
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("Error: build stopped: disk full"), r.stderr
        assert len(srv.requests_for("/" + key)) == 1          # a full disk is not retried as a network error
        assert not list(out.rglob("*.part"))
        assert not (out / "ledger.parquet").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
        r = _cli(*args)
        assert r.returncode == 0, r.stderr[-2000:]
    ledger = _ledger(out)
    assert (ledger[("article", "PMC900020")]["state"], ledger[("article", "PMC900020")]["reason"]) == (
        "kept", "has_samples")
    assert _samples(out) == {"PMC900020_fig1"}
