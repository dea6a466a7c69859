"""Downloader against a real HTTP server on 127.0.0.1 with injected faults."""
from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import time

import pytest
from support.pmc_server import pmc_server  # noqa: F401 - pytest fixture

from biomedica_hf.ingest.download import (
    CHECKSUM_MISMATCH,
    CONNECTION,
    HTTP_ERROR,
    NOT_FOUND,
    SIZE_MISMATCH,
    TIMEOUT,
    Downloader,
    DownloadError,
    DownloadItem,
    split_md5,
)
from biomedica_hf.io.retry import RateLimiter

REAL_JPG = "PMC7112410/gr2_lrg.jpg"      # 154,468 bytes
REAL_JPG2 = "PMC7159286/gr1_lrg.jpg"     # 187,292 bytes
REAL_GIF = "PMC7112410/gr1_lrg.gif"


def fast(**kw) -> Downloader:
    """Small backoff so retries cost milliseconds."""
    kw.setdefault("backoff", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("retries", 3)
    kw.setdefault("timeout", 5)
    return Downloader(**kw)


@pytest.fixture
def served(pmc_server, articles_dir):
    """Copy a few real images into the server root; returns (server, {key: bytes})."""
    data = {}
    for rel in (REAL_JPG, REAL_JPG2, REAL_GIF):
        key = "files/" + rel.split("/")[-1] if rel != REAL_JPG2 else "files/other_" + rel.split("/")[-1]
        dest = pmc_server.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(articles_dir / rel, dest)
        data[key] = dest.read_bytes()
    return pmc_server, data


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_plain_download_md5_from_url_and_counters(served, tmp_path):
    srv, data = served
    key = "files/gr2_lrg.jpg"
    with fast() as dl:
        out = dl.download(f"{srv.url_for(key)}?md5={md5(data[key])}", tmp_path / "a.jpg")
        assert out.read_bytes() == data[key]
        assert not (tmp_path / "a.jpg.part").exists()
        snap = dl.stats.snapshot()
    assert snap["bytes"] == len(data[key])
    assert snap["completed"] == 1
    assert snap["retries"] == 0
    assert snap["mb_per_s"] > 0
    reqs = srv.requests_for(key)
    assert len(reqs) == 1 and reqs[0].query == {}, "the md5 query must not be sent"
    assert reqs[0].headers["user-agent"].startswith("biomedica-hf/")


def test_500_then_success(served, tmp_path):
    srv, data = served
    key = "files/gr2_lrg.jpg"
    srv.add_fault(key, "status", times=2, status=500)
    with fast() as dl:
        dl.download(srv.url_for(key), tmp_path / "x", md5=md5(data[key]))
        assert dl.stats.retries == 2
    assert [r.status for r in srv.requests_for(key)] == [500, 500, 200]
    assert (tmp_path / "x").read_bytes() == data[key]


def test_503_forever_fails_as_http_error(served, tmp_path):
    srv, _ = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "status", times=None, status=503)
    with fast(retries=2) as dl, pytest.raises(DownloadError) as ei:
        dl.download(srv.url_for(key), tmp_path / "x")
    assert ei.value.reason == HTTP_ERROR
    assert ei.value.status == 503
    assert len(srv.requests_for(key)) == 3
    assert not (tmp_path / "x").exists()


def test_429_retry_after_is_honoured(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "retry_after", retry_after=1)
    with fast() as dl:
        t0 = time.monotonic()
        got = dl.get_bytes(srv.url_for(key))
        elapsed = time.monotonic() - t0
    assert got == data[key]
    assert elapsed >= 0.95, f"Retry-After: 1 not honoured ({elapsed:.2f}s)"
    assert [r.status for r in srv.requests_for(key)] == [429, 200]


def test_dropped_connection_is_resumed_with_range(served, tmp_path):
    srv, data = served
    key = "files/gr2_lrg.jpg"
    srv.add_fault(key, "drop", at=100_000)
    with fast(chunk_size=8192) as dl:
        out = dl.download(srv.url_for(key), tmp_path / "x.jpg", md5=md5(data[key]))
        assert dl.stats.resumed == 1
        assert dl.stats.retries == 1
    assert out.read_bytes() == data[key]
    reqs = srv.requests_for(key)
    assert reqs[0].range is None
    assert reqs[0].fault == "drop"
    ranged = [r for r in reqs[1:] if r.range]
    assert ranged, "the retry must ask for the missing bytes with Range"
    start = int(ranged[0].range.split("=")[1].rstrip("-"))
    assert 0 < start <= 100_000
    assert ranged[0].status == 206


def test_truncated_body_with_full_content_length_is_retried(served, tmp_path):
    srv, data = served
    key = "files/other_gr1_lrg.jpg"
    srv.add_fault(key, "truncate", times=2, at=50_000)
    with fast(chunk_size=8192) as dl:
        out = dl.download(srv.url_for(key), tmp_path / "y.jpg", md5=md5(data[key]))
    assert out.read_bytes() == data[key]
    reqs = srv.requests_for(key)
    assert len(reqs) == 3
    assert [r.fault for r in reqs] == ["truncate", "truncate", None]
    assert reqs[1].range == "bytes=50000-"  # resumed after the first cut


def test_truncated_small_object_in_memory_is_retried(served):
    srv, data = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "truncate", at=100)
    with fast() as dl:
        assert dl.get_bytes(srv.url_for(key)) == data[key]
    assert len(srv.requests_for(key)) == 2


def test_server_ignoring_range_restarts_cleanly(served, tmp_path):
    srv, data = served
    key = "files/gr2_lrg.jpg"
    srv.add_fault(key, "truncate", at=60_000)
    srv.add_fault(key, "ignore_range")
    with fast(chunk_size=8192) as dl:
        out = dl.download(srv.url_for(key), tmp_path / "z.jpg", md5=md5(data[key]))
    assert out.read_bytes() == data[key]
    reqs = srv.requests_for(key)
    assert reqs[1].range == "bytes=60000-"
    assert reqs[1].status == 200
    assert reqs[1].fault == "ignore_range"


def test_wrong_md5_is_retried_then_fails_without_leftovers(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "corrupt", times=None)
    dest = tmp_path / "bad.gif"
    with fast(retries=2) as dl, pytest.raises(DownloadError) as ei:
        dl.download(srv.url_for(key), dest, md5=md5(data[key]))
    assert ei.value.reason == CHECKSUM_MISMATCH
    assert len(srv.requests_for(key)) == 3
    assert not dest.exists()
    assert not (tmp_path / "bad.gif.part").exists()
    assert list(tmp_path.iterdir()) == []


def test_wrong_md5_once_then_right(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "corrupt")
    with fast() as dl:
        dl.download(srv.url_for(key), tmp_path / "ok.gif", md5=md5(data[key]))
    assert (tmp_path / "ok.gif").read_bytes() == data[key]
    assert [r.range for r in srv.requests_for(key)] == [None, None], "a bad file restarts from 0"


def test_size_mismatch(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    with fast(retries=1) as dl, pytest.raises(DownloadError) as ei:
        dl.download(srv.url_for(key), tmp_path / "s.gif", size=len(data[key]) + 1)
    assert ei.value.reason == SIZE_MISMATCH
    assert not (tmp_path / "s.gif").exists()
    assert not (tmp_path / "s.gif.part").exists()
    with fast() as dl:
        assert dl.download(srv.url_for(key), tmp_path / "s.gif", size=len(data[key])).stat().st_size == len(data[key])


def test_404_is_not_found_without_retries(served, tmp_path):
    srv, _ = served
    with fast(retries=5) as dl, pytest.raises(DownloadError) as ei:
        dl.download(srv.url_for("files/missing.jpg"), tmp_path / "m.jpg")
    assert ei.value.reason == NOT_FOUND
    assert ei.value.status == 404
    assert not ei.value.retryable
    assert len(srv.requests_for("files/missing.jpg")) == 1
    assert list(tmp_path.iterdir()) == []


def test_403_fails_at_once(served, tmp_path):
    srv, _ = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "status", times=None, status=403)
    with fast(retries=5) as dl, pytest.raises(DownloadError) as ei:
        dl.get_bytes(srv.url_for(key))
    assert ei.value.reason == HTTP_ERROR
    assert ei.value.status == 403
    assert len(srv.requests_for(key)) == 1


def test_partial_file_from_an_earlier_run_is_resumed(served, tmp_path):
    srv, data = served
    key = "files/gr2_lrg.jpg"
    dest = tmp_path / "r.jpg"
    (tmp_path / "r.jpg.part").write_bytes(data[key][:70_000])
    with fast() as dl:
        dl.download(srv.url_for(key), dest, md5=md5(data[key]))
    assert dest.read_bytes() == data[key]
    (req,) = srv.requests_for(key)
    assert req.range == "bytes=70000-"
    assert req.status == 206


def test_complete_part_file_gets_416_and_is_finished(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    (tmp_path / "c.gif.part").write_bytes(data[key])
    with fast() as dl:
        dl.download(srv.url_for(key), tmp_path / "c.gif", md5=md5(data[key]))
    assert (tmp_path / "c.gif").read_bytes() == data[key]
    assert [r.status for r in srv.requests_for(key)] == [416]


def test_oversized_part_file_restarts(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    (tmp_path / "o.gif.part").write_bytes(data[key] + b"junk" * 100)
    with fast() as dl:
        dl.download(srv.url_for(key), tmp_path / "o.gif")
    assert (tmp_path / "o.gif").read_bytes() == data[key]
    assert [r.status for r in srv.requests_for(key)] == [416, 200]


def test_verified_existing_file_is_not_fetched_again(served, tmp_path):
    srv, data = served
    key = "files/gr1_lrg.gif"
    with fast() as dl:
        dl.download(srv.url_for(key), tmp_path / "e.gif", md5=md5(data[key]))
        dl.download(srv.url_for(key), tmp_path / "e.gif", md5=md5(data[key]))
        assert dl.stats.skipped == 1
        (tmp_path / "e.gif").write_bytes(b"stale")  # a wrong file is replaced
        dl.download(srv.url_for(key), tmp_path / "e.gif", md5=md5(data[key]))
    assert len(srv.requests_for(key)) == 2
    assert (tmp_path / "e.gif").read_bytes() == data[key]


def test_read_timeout_is_retried(served):
    srv, data = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "delay", seconds=1.0)
    with fast(timeout=(2, 0.3)) as dl:
        assert dl.get_bytes(srv.url_for(key)) == data[key]
        assert dl.stats.retries == 1
    srv.add_fault(key, "delay", times=None, seconds=0.6)
    with fast(timeout=(2, 0.2), retries=1) as dl, pytest.raises(DownloadError) as ei:
        dl.get_bytes(srv.url_for(key))
    assert ei.value.reason == TIMEOUT


def test_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with fast(retries=1) as dl, pytest.raises(DownloadError) as ei:
        dl.get_bytes(f"http://127.0.0.1:{port}/x")
    assert ei.value.reason == CONNECTION
    assert dl.stats.retries == 1


def test_rate_limiter_token_bucket():
    rl = RateLimiter(rate_per_s=40, burst=4)
    t0 = time.monotonic()
    for _ in range(4):
        rl.acquire()
    assert time.monotonic() - t0 < 0.05, "the burst is free"
    n = 12
    t0 = time.monotonic()
    threads = [threading.Thread(target=rl.acquire) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= n / 40 - 0.02


def test_downloader_rate_limit_is_shared_by_threads(served, tmp_path):
    srv, _ = served
    rate, burst, n = 20.0, 2, 12
    items = [DownloadItem(srv.url_for("files/gr1_lrg.gif"), tmp_path / f"{i}.gif") for i in range(n)]
    with fast(rate_per_s=rate, burst=burst) as dl:
        t0 = time.monotonic()
        results = dl.download_many(items, max_workers=6)
        elapsed = time.monotonic() - t0
    assert all(r.ok for r in results)
    assert elapsed >= (n - burst) / rate - 0.02, f"{n} requests in {elapsed:.2f}s break {rate}/s"


def test_max_connections_caps_concurrency(served, tmp_path):
    srv, _ = served
    key = "files/gr1_lrg.gif"
    srv.add_fault(key, "delay", times=None, seconds=0.2)
    items = [(srv.url_for(key), tmp_path / f"{i}.gif") for i in range(6)]
    with fast(max_connections=2) as dl:
        t0 = time.monotonic()
        results = dl.download_many(items, max_workers=6)
        elapsed = time.monotonic() - t0
        assert len(dl._all_sessions) <= 2, "sessions are pooled, never more than max_connections"
        assert dl._dest_locks == {}
    assert all(r.ok for r in results)
    assert elapsed >= 3 * 0.2 - 0.02, "6 requests of 0.2 s through 2 connections need >= 0.6 s"


def test_download_many_returns_every_item_in_order(served, tmp_path):
    srv, data = served
    srv.add_fault("files/gr1_lrg.gif", "corrupt", times=None)
    items = [
        (srv.url_for("files/gr2_lrg.jpg"), tmp_path / "a.jpg", md5(data["files/gr2_lrg.jpg"])),
        (srv.url_for("files/nope.jpg"), tmp_path / "b.jpg"),
        {"url": srv.url_for("files/gr1_lrg.gif"), "dest": tmp_path / "c.gif", "md5": md5(data["files/gr1_lrg.gif"])},
        (srv.url_for("files/other_gr1_lrg.jpg"), tmp_path / "d.jpg"),
    ]
    with fast(retries=1) as dl:
        results = dl.download_many(items, max_workers=3)
    assert len(results) == 4
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error.reason == NOT_FOUND
    assert results[2].error.reason == CHECKSUM_MISMATCH
    assert results[3].path.read_bytes() == data["files/other_gr1_lrg.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "d.jpg"]


def test_split_md5():
    assert split_md5("https://h/PMC1.1/a.jpg?md5=ABCDEF0123456789abcdef0123456789") == \
        ("https://h/PMC1.1/a.jpg", "abcdef0123456789abcdef0123456789")
    assert split_md5("https://h/a.jpg") == ("https://h/a.jpg", None)
    assert split_md5("https://h/?list-type=2&prefix=x") == ("https://h/?list-type=2&prefix=x", None)


def test_error_is_picklable():
    import pickle

    e = pickle.loads(pickle.dumps(DownloadError("u", NOT_FOUND, "d", status=404, retryable=False)))
    assert (e.url, e.reason, e.detail, e.status, e.retryable) == ("u", NOT_FOUND, "d", 404, False)


def test_server_lists_objects_like_s3(pmc_server):
    from biomedica_hf.ingest.sources.filelists import parse_s3_list

    for key in ("PMC1.1/PMC1.1.xml", "PMC1.2/PMC1.2.xml", "PMC1.2/a.jpg", "PMC12.1/x.xml", "metadata/PMC1.1.json"):
        p = pmc_server.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(key.encode())
    with fast() as dl:
        page = parse_s3_list(dl.get_bytes(f"{pmc_server.url}/?list-type=2&prefix=PMC1.&delimiter=/"))
        assert page.common_prefixes == ["PMC1.1/", "PMC1.2/"]
        assert not page.is_truncated
        page = parse_s3_list(dl.get_bytes(f"{pmc_server.url}/?list-type=2&prefix=PMC1&max-keys=2"))
        assert [o.key for o in page.contents] == ["PMC1.1/PMC1.1.xml", "PMC1.2/PMC1.2.xml"]
        assert page.is_truncated
        assert page.contents[0].etag == md5(b"PMC1.1/PMC1.1.xml")
        assert page.contents[0].size == 17
        page2 = parse_s3_list(dl.get_bytes(
            f"{pmc_server.url}/?list-type=2&prefix=PMC1&max-keys=2&continuation-token={page.next_token}"))
        assert [o.key for o in page2.contents] == ["PMC1.2/a.jpg", "PMC12.1/x.xml"]
        assert not page2.is_truncated
        assert dl.head(pmc_server.url_for("PMC1.2/a.jpg"))["Content-Length"] == "12"
