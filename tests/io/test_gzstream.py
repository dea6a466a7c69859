"""``io.gzstream.open_tar_stream`` (issue 28): a package read through ISA-L's inflate, through the stdlib's zlib in
the same reader, and through ``tarfile.open(mode="r|*")`` (the reader before) gives the same members, bytes, errors
and the same point of failure - on the real fixture packages (one really truncated), on them cut short at many
points (inside the gzip header too), with bytes flipped, and on a plain tar."""
from __future__ import annotations

import ast
import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from biomedica_hf.io import gzstream
from biomedica_hf.io.gzstream import ENGINES, open_tar_stream

FIXTURE_TARS = sorted((Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "pmc" / "articles")
                      .resolve().glob("*/package/*.tar.gz"))
FIXTURE_XML = sorted((FIXTURE_TARS[0].parents[2]).glob("*/*.nxml"))
READERS = ["reference", *sorted(ENGINES)]


def _reference(raw):
    return tarfile.open(fileobj=raw, mode="r|*")


def _walk(data: bytes, reader: str, skip_odd: bool = False) -> list:
    """What a reader gives for ``data``: each member (name, size, type, digest of its bytes read as the build reads
    them - blocks of up to 1 MiB), and the error that ended the walk (type and message), if any. ``skip_odd``:
    every second member's bytes are left unread (the stream reads through them)."""
    seen: list = []
    raw = io.BytesIO(data)
    try:
        tf = _reference(raw) if reader == "reference" else open_tar_stream(raw, reader)
        with tf:
            i = 0
            while (m := tf.next()) is not None:
                entry = [m.name, m.size, m.type]
                seen.append(entry)
                i += 1
                if m.isfile() and not (skip_odd and i % 2):
                    src = tf.extractfile(m)
                    h, n = hashlib.sha256(), 0
                    while n < m.size:
                        block = src.read(min(1 << 20, m.size - n))
                        if not block:
                            break
                        h.update(block)
                        n += len(block)
                    entry += [n, h.hexdigest()]
    except Exception as e:  # noqa: BLE001 - the error is part of the outcome compared
        seen.append(("error", type(e).__name__, str(e)))
    return seen


def _variants(data: bytes) -> dict[str, bytes]:
    """The package whole, cut at many points (in the gzip header, in the first blocks, spread over the whole, just
    before the end), and with one byte flipped at spread positions."""
    n = len(data)
    cuts = sorted({1, 2, 3, 4, 9, 10, 11, 20, 100, 511, 512, 513, 10240, 10753, n - 9, n - 8, n - 1,
                   *range(n // 17, n, n // 17)} - {0} & set(range(1, n)))
    out = {"whole": data}
    out.update({f"cut{c}": data[:c] for c in cuts})
    for p in sorted({12, 30, 600, 11000, *range(n // 11, n - 8, n // 11)}):
        if p < n:
            out[f"flip{p}"] = data[:p] + bytes([data[p] ^ 0x5A]) + data[p + 1:]
    return out


@pytest.mark.parametrize("archive", FIXTURE_TARS, ids=lambda p: p.name)
def test_engines_read_packages_as_tarfile_does(archive):
    data = archive.read_bytes()
    failures, errors = [], 0
    for label, variant in _variants(data).items():
        for skip_odd in (False, True):
            ref = _walk(variant, "reference", skip_odd)
            for engine in sorted(ENGINES):
                got = _walk(variant, engine, skip_odd)
                if ref and ref[-1][:2] == ("error", "TypeError"):   # stdlib: ord('') on a header cut at 3 bytes
                    assert got == [("error", "ReadError", "not a gzip file")], (label, engine)
                elif got != ref:
                    failures.append((label, engine, skip_odd))
            errors += bool(ref and ref[-1][0] == "error")
    assert not failures, failures[:5]
    assert errors >= 20          # the cut and flipped variants really end in errors (the walk reached them)
    whole = _walk(data, gzstream.ENGINE)
    assert [e for e in whole if e[0] != "error"]
    assert any(len(e) == 5 and e[3] > 0 for e in whole)
    if "truncated" in archive.name:
        assert whole[-1][0] == "error"
    else:
        assert whole[-1][0] != "error"


def test_engines_fail_where_tarfile_fails_on_compressed_text():
    """Small, well-compressed members (the fixtures' real JATS XML, gzip level 9: ~10 members in one 10 kB read of
    compressed bytes) and the compressed stream replaced by garbage from 80 points on: each reader stops at the same
    member with the same error, having given the same bytes before."""
    xml = sorted(FIXTURE_XML)[:24]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tf:
        for path in xml:
            payload = path.read_bytes()
            for part in range(0, len(payload), 4096):
                info = tarfile.TarInfo(f"PMC1/{path.stem}.{part}.xml")
                info.size = len(payload[part:part + 4096])
                tf.addfile(info, io.BytesIO(payload[part:part + 4096]))
    data = buf.getvalue()
    garbage = b"\xff" * 4096     # ones: an invalid code in most Huffman tables, so inflate fails near the cut
    errors = set()
    for p in range(500, len(data), len(data) // 80):
        variant = data[:p] + garbage
        ref = _walk(variant, "reference")
        errors.add(ref[-1][1:] if ref[-1][0] == "error" else None)
        for engine in ENGINES:
            assert _walk(variant, engine) == ref, (p, engine)
    assert ("ReadError", "invalid compressed data") in errors


def test_isal_is_the_default_engine_when_installed():
    pytest.importorskip("isal")
    assert gzstream.ENGINE == "isal"
    assert set(ENGINES) == {"isal", "zlib"}


def test_plain_tar_and_bad_input(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, payload in (("PMC1/a.nxml", b"<article/>" * 100), ("PMC1/b.jpg", bytes(range(256)) * 300)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    plain = buf.getvalue()
    for engine in ENGINES:
        got = _walk(plain, engine)
        assert got == _walk(plain, "reference")
        assert [e[0] for e in got] == ["PMC1/a.nxml", "PMC1/b.jpg"]
        for bad in (b"", b"not an archive at all", b"\x1f\x8b\x08"):
            assert _walk(bad, engine)[-1][:2] == ("error", "ReadError")


def test_raw_stream_is_left_open():
    data = FIXTURE_TARS[0].read_bytes()
    raw = io.BytesIO(data)
    with open_tar_stream(raw) as tf:
        assert tf.next() is not None
    assert not raw.closed


def test_without_isal_the_stdlib_reads_the_same(tmp_path):
    """A platform without isal's wheels: the import fails, zlib is the engine, the package reads the same."""
    archive = next(p for p in FIXTURE_TARS if "truncated" in p.name)
    code = (
        "import sys\n"
        "sys.modules['isal'] = None\n"     # `import isal` now raises ImportError
        "from biomedica_hf.io import gzstream\n"
        "assert gzstream.ENGINE == 'zlib' and list(gzstream.ENGINES) == ['zlib'], gzstream.ENGINES\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_gzstream import _walk\n"
        "print(repr(_walk(open(sys.argv[2], 'rb').read(), 'zlib')))\n")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(archive)],
                         capture_output=True, text=True, check=True).stdout
    got = ast.literal_eval(out)
    assert got == _walk(archive.read_bytes(), gzstream.ENGINE)
    assert got[-1][:2] == ("error", "ReadError")
    assert len(got) > 5    # the members before the cut, then the cut


def test_a_zero_run_inflating_a_thousandfold_reads_as_tarfile_does(tmp_path):
    """A member of zeros (a 10 kB read of compressed bytes inflates to ~10 MB: the reader keeps the rest of the
    inflated bytes and hands them out by offset) between small members, read whole, with odd members skipped, cut
    inside the run and just after it: the same members, bytes and errors as ``tarfile``. The hostile-input build
    test reads a 1 GiB run the same way (tests/ingest/test_hostile_build.py)."""
    from support.hostile_inputs import write_targz

    path = write_targz(tmp_path / "PMC1.tar.gz", [("PMC1/a.nxml", b"<article/>" * 300), ("PMC1/zero.tif", 24 << 20),
                                                  ("PMC1/b.jpg", bytes(range(256)) * 40), ("PMC1/c.png", 3 << 20)])
    data = path.read_bytes()
    assert len(data) < 100_000        # ~1,000-fold
    n = len(data)
    for label, variant in {"whole": data, "cut_in_run": data[:n // 3], "cut_late": data[:n - 2_000],
                           "flip": data[:n // 2] + bytes([data[n // 2] ^ 0x5A]) + data[n // 2 + 1:]}.items():
        for skip_odd in (False, True):
            ref = _walk(variant, "reference", skip_odd)
            for engine in ENGINES:
                assert _walk(variant, engine, skip_odd) == ref, (label, engine, skip_odd)
            if label == "whole":
                assert [e[0] for e in ref] == ["PMC1/a.nxml", "PMC1/zero.tif", "PMC1/b.jpg", "PMC1/c.png"]
            else:
                assert ref[-1][0] == "error", label


@pytest.mark.parametrize("mode", ["w|bz2", "w|xz"])
def test_bzip2_and_xz_streams_are_refused_before_any_inflate(mode):
    """``tarfile``'s ``r|*`` inflates bzip2 and xz with no bound on one read (a bzip2 block of zeros is ~45 MB per
    46 bytes): a package is read as gzip or plain tar only, and any other compression ``tarfile`` would detect is
    refused at its first block, naming it (the build ledgers ``bad_package``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        info = tarfile.TarInfo("PMC1/a.nxml")
        info.size = 10
        tf.addfile(info, io.BytesIO(b"<article/>"))
    data = buf.getvalue()
    assert _walk(data, "reference")[0][0] == "PMC1/a.nxml"     # tarfile itself would read it
    kind = "bzip2" if "bz2" in mode else "xz"
    raw = io.BytesIO(data)
    with pytest.raises(tarfile.CompressionError, match=f"a {kind}-compressed stream"):
        open_tar_stream(raw)
    assert raw.tell() <= 512                                    # only the first block was read
    for engine in ENGINES:
        assert _walk(data, engine)[-1][:2] == ("error", "CompressionError")
