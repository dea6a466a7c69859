"""Core I/O (``biomedica_hf.io``): markers, atomic writes, shard range helpers, the safe XML parser, retry and
sizes - on a real dataset folder built from the bundled sample, real files and real loopback servers."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import random
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomedica_hf.ingest.download import Downloader
from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.ingest.shards import shard_done
from biomedica_hf.ingest.sources.filelists import parse_s3_list
from biomedica_hf.ingest.staging import PartitionStage
from biomedica_hf.concepts.embed import shard_outputs
from biomedica_hf.io.atomic import (
    TEMP_GLOB,
    KeepOld,
    atomic_open,
    atomic_path,
    atomic_write_json,
    remove_temporaries,
    save_npy,
    write_table,
)
from biomedica_hf.io.markers import (
    CHUNK_DONE,
    DONE,
    STAGED,
    STATS,
    clear_marker,
    is_done,
    marker_path,
    piece_stem,
    read_marker,
    write_marker,
)
from biomedica_hf.io.ranges import (
    LocalFile,
    RangeReader,
    ReadOptions,
    ShardFiles,
    ShardTruncatedError,
    copy_ranges,
    iter_many,
    read_files,
    read_many,
    read_range,
)
from biomedica_hf.io.retry import Backoff, RateLimiter, parse_retry_after
from biomedica_hf.io.sizes import human_size, parse_size
from biomedica_hf.io.tars import end_of_archive
from biomedica_hf.io.xml import safe_parser
from biomedica_hf.layout import shard_paths

SAMPLE = Path(__file__).resolve().parents[2] / "biomedica_hf" / "sample_data" / "articles"


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The bundled sample built by the pipeline (4 samples per shard), and its index rows."""
    out = tmp_path_factory.mktemp("io") / "ds"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(SAMPLE)}, shard_max_samples=4,
                      progress=False))
    rows = pq.read_table(out / "figures.parquet").to_pylist()
    assert len({r["shard"] for r in rows}) >= 3
    return out, rows


# ------------------------------------------------------------------------------------ markers
def test_marker_round_trip_and_done_rules(tmp_path):
    piece = tmp_path / "sub" / "000007"
    m = marker_path(piece, DONE)
    assert m == tmp_path / "sub" / "000007_done.json"
    assert piece_stem(m, DONE) == "000007"
    assert read_marker(m) is None
    assert not is_done(m)
    data = piece.with_suffix(".npy")
    data.parent.mkdir(parents=True)
    data.write_bytes(b"x")
    write_marker(m, {"digest": "d1", "count": 3})
    assert read_marker(m) == {"digest": "d1", "count": 3}
    assert is_done(m, {"digest": "d1"}, files=[data])
    assert is_done(m)
    assert not is_done(m, {"digest": "d2"}, files=[data])           # made for another input
    assert not is_done(m, {"digest": "d1"}, files=[data, tmp_path / "gone"])   # a file of the piece is missing
    m.write_text("{half")                                            # a torn marker is "not done", never an error
    assert read_marker(m) is None
    assert not is_done(m)
    m.write_text("[1, 2]")
    assert read_marker(m) is None
    clear_marker(m)
    clear_marker(m)
    assert not m.exists()
    with pytest.raises(ValueError):
        piece_stem(m, STATS)


def test_every_stage_keeps_its_marker_name(tmp_path):
    """The four spellings are data of the one API: old folders keep resuming."""
    assert shard_paths(tmp_path, "commercial/x-000")[2].name == "x-000_stats.json"
    assert shard_outputs(tmp_path, "commercial/000001.tar")[2].name == "000001_done.json"
    assert PartitionStage(tmp_path / "p").marker.name == STAGED == "staged.json"
    from biomedica_hf.search.build import _chunk_paths

    assert _chunk_paths(tmp_path, "image", 3)[1].name == "000003" + CHUNK_DONE == "000003.done.json"


def test_old_search_chunk_marker_resumes(tmp_path):
    """A chunk marked done by the previous code (compact JSON) is reused: nothing is encoded again."""
    from biomedica_hf.search.build import _chunk_paths, _keys_sha, embed_in_chunks

    keys = ["a", "b", "c"]
    npy, done = _chunk_paths(tmp_path, "image", 0)
    npy.parent.mkdir(parents=True)
    np.save(npy, np.ones((3, 2), np.float32))
    fingerprint = {"encoder": "x", "dim": 2}
    done.write_bytes(json.dumps({**fingerprint, "start": 0, "rows": 3, "keys_sha256": _keys_sha(keys)}).encode())

    def never(start, stop):
        raise AssertionError("a finished chunk was encoded again")

    chunks = embed_in_chunks(tmp_path, "image", keys, never, fingerprint, chunk_size=3, progress=False)
    assert np.asarray(chunks[0]).tolist() == [[1.0, 1.0]] * 3
    # another encoder: the chunk is redone and re-marked
    calls = []
    chunks = embed_in_chunks(tmp_path, "image", keys, lambda s, e: calls.append((s, e)) or np.zeros((e - s, 2)),
                             {"encoder": "y", "dim": 2}, chunk_size=3, progress=False)
    assert calls == [(0, 3)]
    assert read_marker(done)["encoder"] == "y"
    assert not list(tmp_path.rglob(TEMP_GLOB))


def test_built_shards_are_done_by_their_stats_marker(sample_ds):
    out, rows = sample_ds
    name = rows[0]["shard"].removesuffix(".tar")
    tar, parquet, stats = shard_paths(out, name)
    digest = read_marker(stats)["digest"]
    assert shard_done(out, name, digest)
    assert not shard_done(out, name, "other")
    assert is_done(stats, {"count": sum(r["shard"] == rows[0]["shard"] for r in rows)}, files=[tar, parquet])


# ------------------------------------------------------------------------------------ atomic
def test_atomic_writes_leave_no_temporary_on_failure(tmp_path):
    path = tmp_path / "d" / "table.parquet"
    write_table(path, pa.table({"a": [1, 2]}))
    before = path.read_bytes()
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write(b"half a file")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == before
    assert not list(tmp_path.rglob(TEMP_GLOB))
    npy = tmp_path / "d" / "x.npy"
    with pytest.raises(ValueError, match="allow_pickle"):   # the temporary is open when numpy refuses
        save_npy(npy, np.array([{"an": "object"}], dtype=object))
    assert not npy.exists()
    assert not list(tmp_path.rglob(TEMP_GLOB))
    with atomic_path(path, fsync=True) as tmp:      # KeepOld: nothing changed, the old bytes stay
        tmp.write_bytes(b"new")
        raise KeepOld
    assert path.read_bytes() == before
    assert not list(tmp_path.rglob(TEMP_GLOB))
    assert pq.read_table(path)["a"].to_pylist() == [1, 2]


def test_atomic_helpers_write_complete_files(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_npy(tmp_path / "x.npy", arr)                # np.save(path) would have appended .npy to a temp name
    assert np.array_equal(np.load(tmp_path / "x.npy"), arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": "é"})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    stray = tmp_path / "deep" / ".shard.tar.tmp-4242"  # what a killed run leaves
    stray.parent.mkdir()
    stray.write_bytes(b"partial")
    (tmp_path / "deep" / "keep.tmp").write_bytes(b"not ours")
    assert remove_temporaries(tmp_path) == 1
    assert not stray.exists()
    assert (tmp_path / "deep" / "keep.tmp").exists()


# ------------------------------------------------------------------------------------ ranges
def test_range_helpers_read_the_indexed_samples(sample_ds):
    out, rows = sample_ds
    for r in rows:
        data = read_range(out / r["shard"], r["image_offset"], r["image_size"])
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    order += order[:2]                                  # repeated rows are read again
    shards = [rows[i]["shard"] for i in order]
    offsets = [rows[i]["image_offset"] for i in order]
    sizes = [rows[i]["image_size"] for i in order]
    many = read_many(out, shards, offsets, sizes)
    assert [hashlib.sha256(d).hexdigest() for d in many] == [rows[i]["sha256"] for i in order]
    assert list(iter_many(out, shards, offsets, sizes)) == many
    with ShardFiles(out) as files:
        assert files.read(shards[0], offsets[0], sizes[0]) == many[0]
        assert files.file(shards[0]) is files.file(shards[0])     # opened once


def test_sync_helpers_agree_with_the_range_reader(sample_ds):
    out, rows = sample_ds
    shard = rows[0]["shard"]
    mine = sorted((r for r in rows if r["shard"] == shard), key=lambda r: r["tar_offset"])
    ranges = np.array([[r["tar_offset"], r["tar_size"]] for r in mine], dtype=np.int64)
    prefetched = [bytes(v) for _, v in RangeReader(str(out / shard), ranges, ReadOptions(in_flight=4))]
    with LocalFile(out / shard) as f:
        assert list(f.ranges(ranges[:, 0], ranges[:, 1])) == prefetched


def test_copy_ranges_makes_a_valid_tar_of_chosen_samples(sample_ds, tmp_path):
    out, rows = sample_ds
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    picked = [sorted(rs, key=lambda r: r["tar_offset"])[-1:] for rs in by_shard.values()]   # last sample of each
    dest = tmp_path / "picked.tar"
    with atomic_open(dest) as fh:
        n = sum(copy_ranges(out / rs[0]["shard"], [r["tar_offset"] for r in rs], [r["tar_size"] for r in rs], fh)
                for rs in picked)
        fh.write(end_of_archive(n))
    assert dest.stat().st_size % tarfile.RECORDSIZE == 0
    with tarfile.open(dest) as tf:
        names = tf.getnames()
        keys = [rs[0]["key"] for rs in picked]
        assert sorted({m.partition(".")[0] for m in names}) == sorted(keys)
        assert len(names) == 3 * len(keys)
        for rs in picked:
            r = rs[0]
            data = tf.extractfile(f"{r['key']}.{r['image_ext']}").read()
            assert hashlib.sha256(data).hexdigest() == r["sha256"]


def test_range_helpers_say_what_is_wrong(sample_ds, tmp_path):
    out, rows = sample_ds
    r = rows[0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes((out / r["shard"]).read_bytes()[:r["image_offset"] + 10])
    with pytest.raises(ShardTruncatedError, match="truncated"):
        read_range(cut, r["image_offset"], r["image_size"])
    with pytest.raises(FileNotFoundError, match="missing"):
        read_range(tmp_path / "nope.tar", 0, 1)
    with pytest.raises(ShardTruncatedError):
        list(iter_many(tmp_path, ["cut.tar"], [r["image_offset"]], [r["image_size"]]))
    with pytest.raises(OSError, match="512-byte"), io.BytesIO() as sink:
        copy_ranges(out / r["shard"], [r["tar_offset"]], [r["tar_size"] - 1], sink,
                    check=lambda off, size, data: (_ for _ in ()).throw(OSError("not 512-byte blocks"))
                    if size % 512 else None)


# ------------------------------------------------------------------------------------ loopback server
@contextlib.contextmanager
def loopback(answers):
    """A real threaded HTTP/1.1 server on 127.0.0.1 answering the n-th GET with ``answers(n, path, request
    headers)`` = ``(status, body, headers)`` (the headers may promise another ``Content-Length``, and
    ``Connection: close`` hangs up after the body); yields its URL and the (time, path, request headers) of each
    request."""
    seen: list[tuple[float, str, dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append((time.monotonic(), self.path, dict(self.headers)))
            status, body, headers = answers(len(seen), self.path, self.headers)
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = headers.get("Connection") == "close"

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_prefetch_refills_as_requests_complete_not_as_they_are_consumed():
    """A slow first request must not stall the window: the requests behind it complete, and their slots go to
    the next pieces at once. A real HTTP server answers byte ranges of a real file, but holds the answer for the
    first piece until the last piece has been requested (or 10 s). A window refilled only when the consumer
    reaches a request would wait the 10 s, then ask for the last piece after the first was answered."""
    body = bytes(random.Random(0).randbytes(6 * 1000))
    last_asked, log = threading.Event(), []

    def answer(n, path, headers):
        start, end = (int(x) for x in headers["Range"].removeprefix("bytes=").split("-"))
        if start == 5000:
            log.append("last asked")
            last_asked.set()
        if start == 0:
            last_asked.wait(10)
            log.append("first answered")
        return 206, body[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(body)}"}

    ranges = np.array([[i * 1000, 900] for i in range(6)], dtype=np.int64)    # gaps: six requests
    with loopback(answer) as (url, _):
        t0 = time.monotonic()
        got = [bytes(v) for _, _, v in read_files([(f"{url}/shard.tar", ranges)], ReadOptions(in_flight=4,
                                                                                             gap_bytes=0))]
        elapsed = time.monotonic() - t0
    assert got == [body[i * 1000:i * 1000 + 900] for i in range(6)]
    assert log == ["last asked", "first answered"], log
    assert elapsed < 5


def test_a_connection_dropped_mid_body_is_retried():
    """The server promises a range, sends half of it and hangs up (a dropped connection): the request is retried
    and the bytes are whole; a server that always does so ends in an error naming the range, not in short data."""
    body = bytes(random.Random(1).randbytes(4000))
    asked = []

    def answer(n, path, request, always=False):
        start, end = (int(x) for x in request["Range"].removeprefix("bytes=").split("-"))
        asked.append(start)
        headers = {"Content-Range": f"bytes {start}-{end}/{len(body)}"}
        if always or len(asked) == 1:
            return 206, body[start:start + 100], {**headers, "Content-Length": str(end + 1 - start),
                                                  "Connection": "close"}
        return 206, body[start:end + 1], headers

    ranges = np.array([[0, 1000], [2000, 1000]], dtype=np.int64)
    fast = ReadOptions(in_flight=1, gap_bytes=0, retries=2, timeout=5)
    with loopback(answer) as (url, _):
        got = [bytes(v) for _, _, v in read_files([(f"{url}/shard.tar", ranges)], fast)]
    assert got == [body[:1000], body[2000:3000]]
    assert asked == [0, 0, 2000]
    with loopback(lambda n, path, request: answer(n, path, request, always=True)) as (url, _), \
            pytest.raises(OSError, match=r"bytes 0\.\.1000 failed after 3 attempts"):
        list(read_files([(f"{url}/shard.tar", ranges)], fast))


def test_a_cdn_redirect_is_followed_without_the_token_and_resolved_again_when_it_expires():
    """As the Hub does: ``/resolve/`` answers 302 to a signed CDN URL on another host. The token goes to the Hub
    only; later ranges go straight to the CDN; a 403 from the CDN (the signature expired) resolves again."""
    body = bytes(random.Random(2).randbytes(4000))

    def cdn(n, path, request):
        if "Authorization" in request:
            return 400, b"token leaked to the CDN", {}
        if n == 3:
            return 403, b"expired", {}
        start, end = (int(x) for x in request["Range"].removeprefix("bytes=").split("-"))
        return 206, body[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(body)}"}

    ranges = np.array([[i * 1000, 500] for i in range(4)], dtype=np.int64)
    with loopback(cdn) as (cdn_url, cdn_log):
        def hub(n, path, request):
            if request.get("Authorization") != "Bearer hf_secret":
                return 401, b"", {}
            return 302, b"", {"Location": f"{cdn_url}/shard.tar?signature={n}"}

        with loopback(hub) as (hub_url, hub_log):
            got = [bytes(v) for _, _, v in read_files([(f"{hub_url}/shard.tar", ranges)],
                                                      ReadOptions(in_flight=1, gap_bytes=0), token="hf_secret")]
    assert got == [body[i * 1000:i * 1000 + 500] for i in range(4)]
    assert len(hub_log) == 2                                             # once, then again after the expiry
    assert [p for _, p, _ in cdn_log] == ["/shard.tar?signature=1"] * 3 + ["/shard.tar?signature=2"] * 2
    assert not any("Authorization" in h for _, _, h in cdn_log)


# ------------------------------------------------------------------------------------ XML
@pytest.fixture
def counting_server():
    with loopback(lambda n, path, request: (200, b'<!ENTITY leak "FROM-THE-NETWORK">', {})) as (url, seen):
        yield url, seen


def test_safe_parser_refuses_entities_and_network(tmp_path, counting_server):
    from lxml import etree

    url, hits = counting_server
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    local = (f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY inner "EXPANDED"><!ENTITY file SYSTEM "{secret.as_uri()}">]>'
             f"<r><a>&inner;</a><b>&file;</b></r>").encode()
    root = etree.fromstring(local, safe_parser())
    text = etree.tostring(root).decode()
    assert "EXPANDED" not in text
    assert "TOP-SECRET" not in text
    remote = (f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "{url}/evil.dtd">'
              f'<!-- --><r>&leak;</r>').encode()
    for parser in (safe_parser(), safe_parser(recover=True), safe_parser(huge_tree=True)):
        try:
            root = etree.fromstring(remote, parser)
        except etree.XMLSyntaxError:
            continue
        assert "FROM-THE-NETWORK" not in etree.tostring(root).decode()
    assert hits == []          # no request ever left (no_network; some libxml2 builds have no HTTP client at all)
    with pytest.raises(ValueError, match="resolve_entities"):
        safe_parser(resolve_entities=True)
    with pytest.raises(ValueError, match="no_network"):
        safe_parser(no_network=False)
    # a caller: an S3 listing cannot smuggle a file in through an entity
    listing = (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY f SYSTEM "{secret.as_uri()}">]>'
               '<ListBucketResult><Prefix>&f;</Prefix><IsTruncated>false</IsTruncated></ListBucketResult>')
    assert "TOP-SECRET" not in repr(parse_s3_list(listing))


# ------------------------------------------------------------------------------------ retry
def test_backoff_schedule_and_retry_after():
    b = Backoff(base=0.5, cap=4.0, jitter=0.5, max_retry_after=30.0)
    assert [b.delay(i, rand=lambda: 0.0) for i in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [b.delay(i, rand=lambda: 1.0) for i in range(3)] == [0.75, 1.5, 3.0]
    assert all(0.5 <= b.delay(0) <= 0.75 for _ in range(50))
    assert b.delay(0, retry_after=10.0, rand=lambda: 0.0) == 10.0     # the server's wait wins when longer
    assert b.delay(3, retry_after=1.0, rand=lambda: 0.0) == 4.0       # ... never shortens ours
    assert b.delay(0, retry_after=3600.0) == 30.0                     # ... within reason
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1   # past date -> now
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < parse_retry_after(future) <= 120


def test_rate_limiter_spacing_fake_clock():
    now = [0.0]
    waits = []

    def sleep(s):
        waits.append(s)
        now[0] += s

    lim = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    starts = []
    for _ in range(5):
        lim.acquire()
        starts.append(now[0])
    assert starts == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    burst = RateLimiter(2, burst=3, clock=lambda: now[0], sleep=sleep)
    t0 = now[0]
    for _ in range(5):
        burst.acquire()
    assert now[0] - t0 == pytest.approx(1.0)   # 3 at once, then 0.5 s apart
    lim.pause(2.0)                             # a 429: every caller waits
    t0 = now[0]
    lim.acquire()
    assert now[0] - t0 == pytest.approx(2.0)


def test_downloader_honours_retry_after_on_a_real_server():
    def answers(n, path, request):
        return (429, b"", {"Retry-After": "1"}) if n == 1 else (200, b"payload", {})

    with loopback(answers) as (url, seen), Downloader(backoff=0.01, backoff_max=0.05, retries=2, timeout=5) as dl:
        data = dl.get_bytes(f"{url}/x.bin")
    assert data == b"payload"
    assert len(seen) == 2
    assert seen[1][0] - seen[0][0] >= 0.95      # backoff alone would have waited <= 0.075 s


# ------------------------------------------------------------------------------------ sizes
def test_human_size():
    assert [human_size(n) for n in (0, 999, 1000, 15_006, 1_085_440, 99_960, 4_180_000_000_000)] == \
        ["0 B", "999 B", "1.00 kB", "15.0 kB", "1.09 MB", "100 kB", "4.18 TB"]


def test_parse_size():
    assert [parse_size(t) for t in ("500MB", "2GiB", "1234", "1.5kb", "3k", "256MiB")] == \
        [500_000_000, 2 * 2**30, 1234, 1500, 3000, 256 * 2**20]
    assert parse_size("2GB", binary=True) == 2 * 2**30 == parse_size("2gib", binary=True)
    for bad in ("", "lots", "1.5", "MB"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


def test_member_bytes_are_what_tarfile_writes():
    from biomedica_hf.io.tars import member_bytes, tarinfo

    members = [("PMC1_f1.jpg", bytes(range(256)) * 7), ("PMC1_f1.txt", "café ü".encode()), ("PMC1_f1.json", b"{}")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(tarinfo(name, len(data)), io.BytesIO(data))
    raw = b"".join(member_bytes(name, data) for name, data in members)
    assert buf.getvalue()[:len(raw)] == raw
    assert len(raw) % tarfile.BLOCKSIZE == 0


def test_the_one_tar_reader_agrees_with_tarfile_on_ranges_files_and_damage(tmp_path):
    """``io.tars``: the members of a byte range (ustar and, past a long name, pax headers) and of a whole file are
    those ``tarfile`` reads, at the same offsets; the header walk names each kind of damage."""
    import tarfile

    from biomedica_hf.io.tars import (
        END_OF_ARCHIVE,
        member_bytes,
        member_spans,
        range_members,
        read_members,
        scan_file,
        tar_members,
    )

    long = "k" * 120
    data = (member_bytes("a.jpg", b"x" * 700) + member_bytes("a.txt", "légende".encode()) + member_bytes("a.json", b"{}")
            + member_bytes(f"{long}.txt", b"pax"))
    path = tmp_path / "x.tar"
    path.write_bytes(data + END_OF_ARCHIVE)
    with tarfile.open(path) as tf:
        want = [(m.name, m.offset_data, m.size, tf.extractfile(m).read()) for m in tf if m.isfile()]
    assert [(n, s, z, data[s:s + z]) for n, s, z in member_spans(data)] == want
    assert [(n, bytes(v)) for n, v in range_members(data)] == [(n, b) for n, _, _, b in want]
    assert [(m.name, m.offset, m.size) for m in tar_members(path)] == [w[:3] for w in want]     # pax: tarfile
    assert [(m.name, d) for m, d in read_members(path, lambda n: n.endswith(".txt"))] == \
        [(n, b) for n, _, _, b in want if n.endswith(".txt")]
    ustar = tmp_path / "u.tar"
    ustar.write_bytes(data[:member_spans(data)[3][1] - 3 * 512] + END_OF_ARCHIVE)   # the three ustar members
    scan = scan_file(ustar)
    assert scan.problem is None
    assert [m.name for m in scan.members] == ["a.jpg", "a.txt", "a.json"]
    assert scan.end == scan.members[-1].end == ustar.stat().st_size - len(END_OF_ARCHIVE)
    assert "not a regular file" in scan_file(path).problem                          # the pax header
    damaged = {"cut": ustar.read_bytes()[:1024], "tail": ustar.read_bytes() + b"junk",
               "checksum": b"\1" + ustar.read_bytes()[1:]}
    for what, raw in damaged.items():
        (tmp_path / f"{what}.tar").write_bytes(raw)
    assert scan_file(tmp_path / "cut.tar").problem.startswith("truncated")
    assert scan_file(tmp_path / "tail.tar").problem.startswith("data after the end-of-archive")
    assert scan_file(tmp_path / "checksum.tar").problem == "bad tar header checksum at byte 0"
    with pytest.raises(tarfile.ReadError, match="runs past the end"):
        range_members(data[:1024])


def test_the_tar_writer_writes_what_tarfile_writes(pmc_dir):
    """``io.tars.TarWriter`` (shards and table configs) against ``tarfile``'s PAX writer with the same members: the
    same bytes and the same data offsets, for real figure bytes and for the names and sizes that change a header
    (non-ASCII and long names: PAX records; empty data; data of whole blocks)."""
    from biomedica_hf.io.tars import TarWriter, tarinfo

    image = next(p for p in sorted(pmc_dir.rglob("*.jpg")) if p.is_file()).read_bytes()
    members = [("PMC1_gr1.jpg", image), ("PMC1_gr1.txt", "Figure 1. Café, α-helix.".encode()),
               ("PMC1_gr1.json", b"{}" + b" " * 1022), ("empty.txt", b""), ("block.bin", b"x" * 1024),
               ("métis-ñ/über.json", b'{"a":1}'), ("d/" + "n" * 150 + ".txt", b"long name")]
    expected, offsets = io.BytesIO(), []
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(tarinfo(name, len(data)), io.BytesIO(data))
            offsets.append(tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
    got = io.BytesIO()
    writer = TarWriter(got)
    starts = [writer.add(name, data) for name, data in members]
    writer.close()
    assert got.getvalue() == expected.getvalue()
    assert starts == offsets
    with tarfile.open(fileobj=io.BytesIO(got.getvalue())) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == members


def test_member_headers_are_tarfiles_for_every_name_and_size_at_the_limits(pmc_dir):
    """The spliced ustar header of ``member_header`` against ``TarInfo.tobuf``: every fixture file name as a member
    name, names of 99/100/101 characters, non-ASCII names and sizes at the 8 GiB edge (which need PAX records and
    go to ``tarfile``), and random printable names and sizes."""
    from biomedica_hf.io.tars import member_header, tarinfo

    def tarfiles(name: str, size: int) -> bytes:
        return tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")

    names = [str(p.relative_to(pmc_dir)) for p in sorted(pmc_dir.rglob("*"))][:3000]
    names += ["", "a", "x" * 99, "x" * 100, "x" * 101, "d/" + "y" * 98, "Größe.json", "日本.txt", "tab\t.txt", "\x7f"]
    sizes = [0, 1, 511, 512, 513, 10 ** 9, 8 ** 11 - 1, 8 ** 11, 2 ** 40]
    rnd = random.Random(0)
    cases = [(n, rnd.choice(sizes)) for n in names] + [(n, z) for n in names[-10:] for z in sizes]
    cases += [("".join(chr(rnd.randrange(32, 127)) for _ in range(rnd.randrange(0, 120))), rnd.randrange(0, 2 ** 36))
              for _ in range(3000)]
    assert len(names) > 100
    different = [(n, z) for n, z in cases if member_header(n, z) != tarfiles(n, z)]
    assert different == []
