"""A loopback Hugging Face Hub serving built dataset folders read-only, for tests and benchmarks.

A real HTTP/1.1 server (``ThreadingHTTPServer`` on 127.0.0.1) answering the read endpoints that
``huggingface_hub`` (``HfApi``, ``HfFileSystem``, ``hf_hub_download``) and ``datasets`` call for a dataset repo:

* ``GET /api/datasets/{repo}[/revision/{rev}]`` - repo info (``id``, ``sha``, ``siblings``, ``cardData``...);
* ``POST /api/datasets/{repo}/paths-info/{rev}`` - ``paths=`` form fields, answered with file / directory entries;
* ``GET /api/datasets/{repo}/tree/{rev}[/{path}][?recursive=true]`` - folder listings;
* ``GET|HEAD /datasets/{repo}/resolve/{rev}/{path}`` - the file, with ``ETag`` (git blob sha1, or sha256 for
  files the Hub would store in LFS, i.e. > 10 MB or binary), ``X-Repo-Commit``, ``Accept-Ranges`` and
  ``Range: bytes=a-b`` / ``a-`` / ``-n`` answered with ``206`` and ``Content-Range`` (``416`` past the end).

Every request waits ``latency`` seconds before its answer; bodies go through one shared token bucket of
``bandwidth`` bytes/s (``None``: unlimited), so concurrent requests share the link like a real one. Counters:
``requests`` (per route), ``bytes_sent`` (body bytes), ``log`` (method, path, range, status).

Used through the endpoint: ``HubServer.env()`` gives ``HF_ENDPOINT`` for a subprocess, and
``point_libraries_at(url)`` re-points an already imported ``huggingface_hub`` / ``datasets`` in this process.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 10 * 2**20
CHUNK = 64 * 2**10


class _Bucket:
    """One link shared by every connection: bytes are released at ``rate`` bytes/s."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.lock, self.next_free = rate, threading.Lock(), 0.0

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            wait = self.next_free - now
        if wait > 0:
            time.sleep(wait)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open_sockets: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop kept-alive connections: a later server on the same port must not find them answered by us."""
        for sock in list(self.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):   # a client that hung up
            super().handle_error(request, client_address)


class HubServer:
    """Serve ``repos`` (``{"org/name": folder}``) like the Hub serves dataset repos, read-only."""

    def __init__(self, repos: dict[str, str | os.PathLike], latency: float = 0.0, bandwidth: float | None = None,
                 commit: str = "c0ffee" * 6 + "c0ff") -> None:
        self.repos = {rid: Path(p) for rid, p in repos.items()}
        self.latency, self.commit = latency, commit
        self.bucket = _Bucket(bandwidth)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes_sent = 0
        self.log: list[dict[str, Any]] = []
        self._hashes: dict[tuple[str, int, int], tuple[str, str | None]] = {}
        self.commits = [commit]
        self.snapshots: dict[tuple[str, str], Path] = {}     # (repo, older commit) -> its folder (push)
        self._listing_cache: dict[str, dict[str, Path]] = {}
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def new_commit(self) -> str:
        """Call after changing a served file, as a push would: the Hub gives every change a new commit, and
        clients (``hf_hub_download``'s cache, ``HfFileSystem``'s listings) key what they keep by commit."""
        self.commit = hashlib.sha1(f"{self.commits[0]}:{len(self.commits)}".encode()).hexdigest()
        self.commits.append(self.commit)
        self._listing_cache.clear()
        return self.commit

    def push(self, repo: str, folder: str | os.PathLike) -> str:
        """A new commit whose tree is ``folder`` (``main`` moves to it); the previous commit stays served at
        ``resolve/<its sha>`` as the Hub keeps every commit. Returns the new commit's sha."""
        with self.lock:
            self.snapshots[(repo, self.commit)] = self.repos[repo]
            self.repos[repo] = Path(folder)
        return self.new_commit()

    def _root(self, repo: str, rev: str) -> Path:
        """The folder serving ``repo`` at ``rev`` (``main`` and the current commit: the repo's folder)."""
        return self.snapshots.get((repo, rev), self.repos[repo])

    # ----------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> HubServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.close_connections()
        self.server.server_close()

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should use this Hub."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0
            self.log.clear()

    def set_link(self, latency: float, bandwidth: float | None) -> None:
        self.latency, self.bucket = latency, _Bucket(bandwidth)

    # ----------------------------------------------------------------------------- repo content
    def _files(self, repo: str, rev: str = "main") -> dict[str, Path]:
        """The repo's files at ``rev`` (hidden names, ``_work/`` and symlinks left out), listed afresh."""
        root = self._root(repo, rev)
        out = {}
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_work")))
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for name in sorted(files):
                p = Path(dirpath) / name
                if not name.startswith(".") and not p.is_symlink():
                    out[name if rel_dir == "." else f"{rel_dir}/{name}"] = p
        with self.lock:
            self._listing_cache[str(root)] = out
        return out

    def _file(self, repo: str, rel: str, rev: str = "main") -> Path | None:
        """One file for ``resolve``: from the cached listing, listed again when it is not there or gone."""
        path = self._listing_cache.get(str(self._root(repo, rev)), {}).get(rel)
        if path is None or not path.is_file():
            path = self._files(repo, rev).get(rel)
        return path

    def _oids(self, path: Path) -> tuple[str, str | None]:
        """(git blob sha1, sha256 for LFS-sized files else None), cached by (path, size, mtime)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            data = path.read_bytes()
            sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            lfs = hashlib.sha256(data).hexdigest() if (len(data) > LFS_THRESHOLD or path.suffix in
                                                       (".tar", ".parquet", ".png", ".jpg")) else None
            self._hashes[key] = (sha1, lfs)
        return self._hashes[key]

    def _entry(self, rel: str, path: Path | None) -> dict[str, Any]:
        if path is None:
            return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel}
        size = path.stat().st_size
        sha1, lfs = self._oids(path)
        entry: dict[str, Any] = {"type": "file", "oid": sha1, "size": size, "path": rel}
        if lfs:
            entry["lfs"] = {"oid": lfs, "size": size, "pointerSize": 134}
        return entry

    def _listing(self, repo: str, folder: str, recursive: bool, rev: str = "main") -> list[dict[str, Any]] | None:
        files = self._files(repo, rev)
        prefix = folder + "/" if folder else ""
        if folder and not any(f.startswith(prefix) for f in files):
            return None
        out, dirs = [], set()
        for rel, path in files.items():
            if not rel.startswith(prefix):
                continue
            parts = rel[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(self._entry(rel, path))
        return [self._entry(d, None) for d in sorted(dirs)] + out

    # ----------------------------------------------------------------------------- routes
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as real front ends (nginx, CDNs) set it: without it, the body written after the headers
            # waits for the client's delayed ACK (~40 ms on Linux loopback), a latency no real Hub request pays
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._serve(self, "GET")

            def do_HEAD(self) -> None:
                hub._serve(self, "HEAD")

            def do_POST(self) -> None:
                hub._serve(self, "POST")

        return Handler

    def _count(self, route: str, method: str, path: str, rng: str | None, status: int, n: int) -> dict[str, Any]:
        """Record a request BEFORE its body is sent (a client that has its answer finds it counted)."""
        entry = {"route": route, "method": method, "path": path, "range": rng, "status": status, "bytes": n}
        with self.lock:
            self.requests[route] += 1
            self.bytes_sent += n
            self.log.append(entry)
        return entry

    def _sent(self, entry: dict[str, Any], n: int) -> None:
        with self.lock:
            entry["bytes"] += n
            self.bytes_sent += n

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(h.path)
        path, query = unquote(split.path), parse_qs(split.query)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        try:
            if path.startswith("/_loopback/"):     # control routes for a server in another process
                return self._control(h, method, path, query)
            if self.latency:
                time.sleep(self.latency)
            if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(h, method, m[1], m[2], m[3])
            if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/(.+))?", path):
                return self._info(h, method, m[1], m[2] or "main")
            if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", path):
                paths = parse_qs(body.decode()).get("paths", [])
                return self._paths_info(h, method, m[1], m[2], paths)
            if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                return self._tree(h, method, m[1], m[2], (m[3] or "").strip("/"),
                                  query.get("recursive", ["false"])[0].lower() == "true")
            self._json(h, method, "other", 404, {"error": f"no route {method} {path}"})
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _control(self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, list[str]]) -> None:
        """``/_loopback/stats`` (counters), ``/_loopback/reset``, ``/_loopback/link?latency=&bandwidth=``.
        Not counted, and answered without the link's latency or bandwidth."""
        if path == "/_loopback/reset":
            self.reset_counters()
        elif path == "/_loopback/link":
            bw = query.get("bandwidth", [""])[0]
            self.set_link(float(query.get("latency", ["0"])[0]), float(bw) if bw else None)
        data = json.dumps({"requests": dict(self.requests), "bytes_sent": self.bytes_sent,
                           "latency": self.latency, "bandwidth": self.bucket.rate}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _check(self, h: BaseHTTPRequestHandler, method: str, route: str, repo: str, rev: str) -> bool:
        if repo not in self.repos:
            self._json(h, method, route, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return False
        if rev not in ("main", self.commit) and (repo, rev) not in self.snapshots:
            self._json(h, method, route, 404, {"error": f"Invalid rev id: {rev}"},
                       {"X-Error-Code": "RevisionNotFound"})
            return False
        return True

    def _json(self, h: BaseHTTPRequestHandler, method: str, route: str, status: int, obj: Any,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        self._count(route, method, h.path, None, status, 0 if method == "HEAD" else len(data))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)

    def _info(self, h: BaseHTTPRequestHandler, method: str, repo: str, rev: str) -> None:
        if not self._check(h, method, "info", repo, rev):
            return
        files = self._files(repo, rev)
        self._json(h, method, "info", 200, {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": repo.split("/")[0],
            "sha": rev if (repo, rev) in self.snapshots else self.commit, "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "lastModified": "2026-12-01T00:00:00.000Z", "createdAt": "2026-12-01T00:00:00.000Z",
            "cardData": {}, "siblings": [{"rfilename": rel} for rel in files]})

    def _paths_info(self, h: BaseHTTPRequestHandler, method: str, repo: str, rev: str, paths: list[str]) -> None:
        if not self._check(h, method, "paths-info", repo, rev):
            return
        files = self._files(repo, rev)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                out.append(self._entry(p, files[p]))
            elif p == "" or any(f.startswith(p + "/") for f in files):
                out.append(self._entry(p, None))
        self._json(h, method, "paths-info", 200, out)

    def _tree(self, h: BaseHTTPRequestHandler, method: str, repo: str, rev: str, folder: str,
              recursive: bool) -> None:
        if not self._check(h, method, "tree", repo, rev):
            return
        listing = self._listing(repo, folder, recursive, rev)
        if listing is None:
            self._json(h, method, "tree", 404, {"error": f"{folder} does not exist on {rev}"},
                       {"X-Error-Code": "EntryNotFound"})
        else:
            self._json(h, method, "tree", 200, listing)

    def _resolve(self, h: BaseHTTPRequestHandler, method: str, repo: str, rev: str, rel: str) -> None:
        if not self._check(h, method, "resolve", repo, rev):
            return
        path = self._file(repo, rel, rev)
        commit = rev if (repo, rev) in self.snapshots else self.commit
        if path is None:
            self._json(h, method, "resolve", 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                                "X-Repo-Commit": commit})
            return
        size = path.stat().st_size
        sha1, lfs = self._oids(path)
        headers = {"ETag": f'"{lfs or sha1}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "Content-Disposition":
                   f"inline; filename*=UTF-8''{quote(rel.rsplit('/', 1)[-1])}"}
        if lfs:
            headers.update({"X-Linked-Size": str(size), "X-Linked-Etag": f'"{lfs}"'})
        rng = h.headers.get("Range")
        start, end, status = 0, size, 200
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m[1] and not m[2]):
                return self._json(h, method, "resolve", 416, {"error": f"bad range {rng}"})
            if m[1]:
                start, end = int(m[1]), min(size, int(m[2]) + 1) if m[2] else size
            else:
                start, end = max(0, size - int(m[2])), size
            if start >= size or end <= start:
                return self._json(h, method, "resolve", 416, {"error": "Range Not Satisfiable"},
                                  {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(end - start))
        entry = self._count("resolve", method, h.path, rng, status, 0)
        h.end_headers()
        if method != "GET":
            return
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < end - start:
                chunk = f.read(min(CHUNK, end - start - sent))
                if not chunk:
                    break
                self.bucket.take(len(chunk))
                self._sent(entry, len(chunk))
                h.wfile.write(chunk)
                sent += len(chunk)


def loopback_only(monkeypatch: Any) -> None:
    """Make any connection outside loopback fail the test (``socket.connect`` guarded for its duration)."""
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"connection outside loopback: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def point_libraries_at(url: str, monkeypatch: Any, cache_dir: str | os.PathLike | None = None) -> None:
    """Re-point the imported ``huggingface_hub`` and ``datasets`` at ``url`` (what ``HF_ENDPOINT`` does at import).

    ``cache_dir``: the hub cache for this server's files (give a test's ``tmp_path``: it goes with it); None: a
    new temporary folder, removed at exit."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    old = constants.ENDPOINT
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(old, url))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # a cache of this server's files only (the loopback repos reuse names and commits across tests)
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="loopback-hub-cache-")
        atexit.register(shutil.rmtree, cache_dir, True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.fspath(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True, raising=False)
    try:
        import datasets.config as dconfig
    except ImportError:  # pragma: no cover
        return
    monkeypatch.setattr(dconfig, "HF_ENDPOINT", url)
    monkeypatch.setattr(dconfig, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(dconfig, "HUB_DATASETS_HFFS_URL", "hf://datasets/{repo_id}@{revision}/{path}", raising=False)
    monkeypatch.setattr(dconfig, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dconfig, "HF_DATASETS_OFFLINE", False, raising=False)
    # HfFileSystem instances are cached per (endpoint, token, ...): drop the ones bound to another endpoint
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()


def main() -> None:
    """Serve folders until killed: ``python tests/support/hub_server.py org/name=DIR [...] [--latency S] [--bandwidth B/s]``.
    Prints ``URL`` on its first line of stdout."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("repos", nargs="+", help="REPO_ID=FOLDER")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--bandwidth", type=float, default=None, help="bytes/s shared by all connections")
    args = ap.parse_args()
    repos = dict(r.split("=", 1) for r in args.repos)
    server = HubServer(repos, latency=args.latency, bandwidth=args.bandwidth)
    for repo in server.repos:     # hash every file now, not inside the first timed listing
        for path in server._files(repo).values():
            server._oids(path)
    print(server.url, flush=True)
    server.server.serve_forever()


if __name__ == "__main__":
    main()
