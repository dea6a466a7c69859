"""Publishing a built folder: the upload plan (pure) and the push against a real loopback Hub server.

The loopback server (:class:`FakeHub`, a ``ThreadingHTTPServer`` on 127.0.0.1) answers the Hub API
endpoints that ``huggingface_hub``'s ``HfApi`` calls for a push: ``POST /api/repos/create``, repo info,
``POST .../branch/<name>``, ``POST /api/validate-yaml``, ``POST .../preupload/<rev>`` (every file
answered as a ``regular`` upload, so no LFS / Xet storage is involved) and ``POST .../commit/<rev>``
(the ndjson commit, base64 file contents stored per branch). The real ``HfApi`` talks to it over HTTP.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import math
import re
import time
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from support.hub_server import loopback_only

from biomedica_hf.dataset import hub
from biomedica_hf.dataset.hub import (
    UPLOAD_ALLOW,
    UPLOAD_IGNORE,
    HubError,
    InvalidRepoIdError,
    UploadBlockedError,
    plan_upload,
    push_folder,
    validate_repo_id,
)
from biomedica_hf.io.sizes import human_size
from biomedica_hf.layout import folder_files, sizes_dirs
from biomedica_hf.schema import SUBSETS

BIOMEDICA = Path(sys.executable).parent / "biomedica"
CARD_TEXT = """---
license: other
task_categories: [image-to-text]
configs:
- config_name: commercial
  data_files: commercial/**/*.tar
---
# BIOMEDICA (test card)
"""
TOKEN = "hf_test_token_0123456789"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A real `biomedica build --sample` folder (built once per module), with a card (a minimal one if the
    build did not write its own)."""
    out = tmp_path_factory.mktemp("built") / "ds"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(BIOMEDICA), "build", "--sample", "--out", str(out), "--workers", "1"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    if not (out / "README.md").exists():
        (out / "README.md").write_text(CARD_TEXT)
        (out / "card").mkdir(exist_ok=True)
        (out / "card" / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    return out


@pytest.fixture()
def ds(built, tmp_path) -> Path:
    """A private copy of the built folder that a test may change."""
    return Path(shutil.copytree(built, tmp_path / "ds"))


SHARD_NAME_RE = re.compile(r"(?P<subset>[a-z]+)-(?:train|validation|test)-s\d{3}-p\d{5}-\d{3}(?:-r\d{3})?")


def _stem(folder: Path, subset: str) -> str:
    """The first shard (sorted) of a subset folder, relative to it, without suffix: the build writes it in its
    Hub-scale sub-folder, ``s000/g000/other-train-s000-p00000-000`` (``layout.shard_folder``)."""
    tars = folder_files(folder / subset, "*.tar")
    assert tars, f"no shard in {folder / subset}"
    return tars[0].relative_to(folder / subset).with_suffix("").as_posix()


def _dir(stem: str) -> str:
    """The sub-folder of a shard stem from :func:`_stem`: ``s000/g000``."""
    return stem.rsplit("/", 1)[0]


def dataset_files(folder: Path) -> dict[str, int]:
    """{relative path: size} of every file outside _work/: what a finished build + card publishes."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] != "_work"}


# ---------------------------------------------------------------------------------------- the plan


def test_plan_lists_exactly_the_dataset_files(ds):
    plan = plan_upload(ds)
    assert plan.ok, plan.problems
    expected = dataset_files(ds)
    stems = {s: _stem(ds, s) for s in SUBSETS}
    assert {p for p in expected if p.endswith(".tar") and "/" in p and p.split("/")[0] in SUBSETS} == \
        {f"{s}/{stems[s]}.tar" for s in SUBSETS}   # the sample build: one shard per subset
    for s, stem in stems.items():
        m = SHARD_NAME_RE.fullmatch(stem.rsplit("/", 1)[-1])
        assert m and m["subset"] == s, stem
        assert _dir(stem) == "s000/g000", stem              # the sub-folder layout the build writes
    c = stems["commercial"]
    assert {"README.md", "figures.parquet", "articles.parquet", "ledger.parquet", "duplicates.parquet",
            "near_duplicates.parquet", "caption_duplicates.parquet", "ledger_summary.txt", "build_summary.json",
            f"commercial/{_dir(c)}/sizes.json", f"commercial/{c}_stats.json", f"commercial/{c}.parquet"} <= set(expected)
    assert plan.paths == sorted(expected)
    assert not [p for p in plan.paths if p.startswith("_work")]
    assert (ds / "_work").is_dir()
    assert [e.path for e in plan.excluded] == ["_work/"]
    for f in plan.files:  # sizes are the files' sizes
        assert f.size == (ds / f.path).stat().st_size
    assert plan.total_bytes == sum(expected.values())
    kinds = {f.path: f.kind for f in plan.files}
    o = stems["other"]
    assert kinds[f"other/{o}.tar"] == "shard"
    assert kinds[f"other/{o}.parquet"] == "index"
    assert kinds[f"other/{o}_stats.json"] == "stats"
    assert kinds[f"other/{_dir(o)}/sizes.json"] == "stats"
    assert kinds["figures.parquet"] == "table"
    assert kinds["README.md"] == "card"
    assert kinds["near_duplicates.parquet"] == kinds["caption_duplicates.parquet"] == "table"
    assert [p for p, k in kinds.items() if k == "plot"] == sorted(p for p in expected if p.startswith("card/"))
    assert all(kinds[p] == "table" for p in expected if p.startswith(("articles/", "figures/")))
    assert kinds["build_summary.json"] == "summary"
    assert plan.by_kind["shard"] == (3, sum(v for p, v in expected.items() if p.endswith(".tar")
                                            and p.split("/")[0] in SUBSETS))
    assert sum(n for n, _ in plan.by_kind.values()) == len(plan.files)
    assert sum(b for _, b in plan.by_subset.values()) == plan.total_bytes
    assert plan.by_subset["other"][0] == 4  # tar, parquet, stats, sizes.json
    assert not plan.warnings


def test_plan_matches_what_huggingface_hub_would_upload(ds):
    """The plan uses the patterns exactly as upload_folder applies them to the whole folder (_work/ included)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    c = _stem(ds, "commercial")
    (ds / "commercial" / _dir(c) / f".{c.rsplit('/', 1)[-1]}.tar.tmp-42").write_bytes(b"partial")
    (ds / ".cache" / "huggingface" / "upload").mkdir(parents=True)
    (ds / ".cache" / "huggingface" / "upload" / "x.parquet").write_text("{}")
    (ds / "_work" / "stage" / "p00000").mkdir(parents=True, exist_ok=True)
    (ds / "_work" / "stage" / "p00000" / "leftover.parquet").write_bytes(b"x")
    every = sorted(p.relative_to(ds).as_posix() for p in ds.glob("**/*") if p.is_file())
    hf = list(filter_repo_objects(every, allow_patterns=list(UPLOAD_ALLOW),
                                  ignore_patterns=list(UPLOAD_IGNORE) + DEFAULT_IGNORE_PATTERNS))
    assert plan_upload(ds).paths == hf


def test_missing_card_blocks(ds):
    (ds / "README.md").unlink()
    plan = plan_upload(ds)
    assert not plan.ok
    assert any("README.md" in p and "biomedica card" in p for p in plan.problems)
    with pytest.raises(UploadBlockedError, match="README.md") as exc:
        push_folder(ds, "org/name", api=_NoNetwork())
    assert exc.value.plan.problems == plan.problems
    assert "PROBLEMS (1)" in plan.text()


def test_card_configs_must_match_uploaded_files(ds):
    card = (ds / "README.md").read_text()
    (ds / "README.md").write_text(card.replace("configs:\n", "configs:\n- config_name: ghost\n"
                                               "  data_files: ghost/*.tar\n", 1))
    problems = plan_upload(ds).problems
    assert len(problems) == 1
    assert "'ghost/*.tar'" in problems[0]
    (ds / "ghost").mkdir()
    (ds / "ghost" / "000000.tar").write_bytes(b"\0" * 1024)
    plan = plan_upload(ds)  # a config's files are uploaded even outside the built-in layout
    assert plan.ok
    assert {f.path: f.kind for f in plan.files}["ghost/000000.tar"] == "config"
    assert "ghost/000000.tar" in plan.allow_patterns
    assert "ghost/*.tar" not in UPLOAD_ALLOW
    (ds / "README.md").write_text("---\nconfigs: [unclosed\n---\n# x\n")
    assert any("front matter is invalid" in p for p in plan_upload(ds).problems)


def test_card_without_front_matter_warns(ds):
    (ds / "README.md").write_text("# no yaml\n")
    plan = plan_upload(ds)
    assert plan.ok
    assert any("front matter" in w for w in plan.warnings)


def test_shard_without_stats_marker_blocks(ds):
    o = _stem(ds, "other")
    (ds / "other" / f"{o}_stats.json").unlink()
    plan = plan_upload(ds)
    assert len(plan.problems) == 1
    assert f"other/{o}.tar" in plan.problems[0]
    assert f"other/{o}_stats.json" in plan.problems[0]
    with pytest.raises(UploadBlockedError, match=re.escape(f"other/{o}_stats.json")):
        push_folder(ds, "org/name", dry_run=True)


def test_truncated_shard_and_unfinished_build_block(ds):
    c = _stem(ds, "commercial")
    tar = ds / "commercial" / f"{c}.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    (ds / "build_summary.json").unlink()
    problems = plan_upload(ds).problems
    assert any(f"commercial/{c}.tar" in p and "truncated" in p for p in problems)
    assert any("build_summary.json" in p for p in problems)


def test_stale_shard_blocks(ds):
    o = _stem(ds, "other")
    stale = o[:-3] + f"{int(o[-3:]) + 1:03d}"      # the next shard number of the same partition
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(ds / "other" / f"{o}{suffix}", ds / "other" / f"{stale}{suffix}")
    problems = plan_upload(ds).problems
    assert any(f"other/{_dir(o)}/sizes.json" in p for p in problems)
    assert any("not listed in build_summary.json" in p and f"other/{stale}.tar" in p for p in problems)


def test_empty_or_missing_folder(tmp_path):
    assert any("no shards" in p for p in plan_upload(tmp_path).problems)
    assert "not a folder" in plan_upload(tmp_path / "nope").problems[0]


def test_temp_files_and_upload_cache_are_excluded(ds):
    before = plan_upload(ds).paths
    (ds / "commercial" / ".000000.tar.tmp-4242").write_bytes(b"x" * 10)
    (ds / "noncommercial" / "000001.tar.part").write_bytes(b"x")
    (ds / ".DS_Store").write_bytes(b"x")
    (ds / "notes.txt").write_text("mine")
    state = ds / ".cache" / "huggingface" / "upload" / "commercial"
    state.mkdir(parents=True)
    (state / "000000.tar.metadata").write_text("abc")
    (ds / ".cache" / "huggingface" / ".gitignore").write_text("*")
    plan = plan_upload(ds)
    assert plan.ok
    assert plan.paths == before
    reasons = {e.path: e.reason for e in plan.excluded}
    assert reasons["commercial/.000000.tar.tmp-4242"].startswith("temporary")
    assert reasons["noncommercial/000001.tar.part"] == "partial download"
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons["notes.txt"] == "not part of the dataset layout"
    assert ".cache/" in reasons
    assert "_work/" in reasons
    assert not [p for p in reasons if p.startswith((".cache/h", "_work/s"))]  # pruned, not walked
    assert any("temporary" in w for w in plan.warnings)
    assert {e.path: e.size for e in plan.excluded}["commercial/.000000.tar.tmp-4242"] == 10


def test_dry_run_text_has_totals(ds):
    plan = push_folder(ds, "org/biomedica", dry_run=True, api=_NoNetwork())
    text = plan.text()
    n, total = len(plan.files), human_size(plan.total_bytes)
    assert re.search(rf"^total\s+{n}\s+{re.escape(total)}$", text, re.MULTILINE), text
    assert f"Ready to upload {n} files, {total}." in text
    for kind in ("shard", "index", "stats", "table", "card", "plot"):
        assert re.search(rf"^{kind}\s+\d+", text, re.MULTILINE)
    shard = f"other/{_stem(ds, 'other')}.tar"
    assert shard in text
    assert "_work/" in text
    assert "near_duplicates.parquet" in text.split("Not uploaded")[0]   # a dataset table: uploaded
    short = plan.text(max_files=3)
    assert f"... and {n - 3} more" in short
    assert shard not in short.split("Not uploaded")[0]


@pytest.mark.parametrize("bad", ["biomedica", "org/", "/name", "a/b/c", "org/na me", "-org/name", "org/name-",
                                 "org/na--me", "org/na..me", "org/name.git", "o" * 97 + "/name", ""])
def test_invalid_repo_id_rejected_before_anything(bad, tmp_path):
    with pytest.raises(InvalidRepoIdError, match="repo id"):
        push_folder(tmp_path / "does-not-exist", bad, api=_NoNetwork())


@pytest.mark.parametrize("good", ["org/name", "BMD-lab/biomedica_hf.v1", "a/b"])
def test_valid_repo_ids(good):
    assert validate_repo_id(good) == good


def test_dry_run_and_offline_make_no_network_call(ds, monkeypatch):
    from huggingface_hub import constants

    plan = push_folder(ds, "org/name", dry_run=True, private=True, revision="v1", api=_NoNetwork())
    assert plan.ok
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push_folder(ds, "org/name", api=_NoNetwork())


# ------------------------------------------------------------------------------- loopback Hub server


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: int = 0


class FakeHub:
    """The Hub API endpoints a push uses, over real HTTP on 127.0.0.1; every request is logged."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[dict[str, Any]] = []
        self.fail: dict[str, list[int]] = {}  # endpoint name -> statuses to answer, one per request
        #: the Hub's commit rate limit (it allows 128 per hour): at most ``commits`` per ``window`` seconds, more are
        #: answered 429 with ``Retry-After`` (whole seconds until the oldest commit of the window ages out)
        self.commit_limit: tuple[int, float] | None = None
        self.commit_times: list[float] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def calls(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.log if c["name"] == name]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hubself = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while (size := int(self.rfile.readline().strip(), 16)) > 0:
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self, method: str) -> None:
                path = urlsplit(self.path).path
                body = self._body() if method == "POST" else b""
                name, status, obj, headers = hubself._route(method, path, body)
                with hubself.lock:
                    hubself.log.append({"name": name, "method": method, "path": path, "status": status,
                                        "auth": self.headers.get("Authorization"), "body": body,
                                        "t": time.monotonic()})
                self._send(status, obj, headers)

        return Handler

    def _route(self, method: str, path: str, body: bytes) -> tuple[str, int, Any, dict[str, str] | None]:
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/(branch|preupload|commit|revision|tree)/([^/]+).*)?", path)
        name = ("create" if path == "/api/repos/create" else "validate-yaml" if path == "/api/validate-yaml"
                else (m.group(2) or "info") if m else "other")
        if self.fail.get(name):
            return name, self.fail[name].pop(0), {"error": f"injected failure on {name}"}, None
        with self.lock:
            if name == "create" and method == "POST":
                p = json.loads(body)
                if p.get("type") != "dataset":
                    return name, 400, {"error": "expected a dataset repo"}, None
                repo_id = f"{p['organization']}/{p['name']}"
                if repo_id in self.repos:
                    return name, 409, {"error": "You already created this dataset repo",
                                      "url": f"{self.url}/datasets/{repo_id}"}, None
                self.repos[repo_id] = Repo(private=p.get("visibility") == "private" or p.get("private") is True)
                return name, 200, {"url": f"{self.url}/datasets/{repo_id}", "name": repo_id}, None
            if name == "validate-yaml":
                return name, 200, {"errors": [], "warnings": []}, None
            if not m or m.group(1) not in self.repos:
                return name, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            repo, rev = self.repos[m.group(1)], unquote(m.group(3) or "main")
            if name == "info" or (name == "revision" and method == "GET"):
                return name, 200, {"id": m.group(1), "private": repo.private, "sha": f"{repo.commits:040x}"}, None
            if name == "branch":
                if rev in repo.branches:
                    return name, 409, {"error": "Branch already exists"}, None
                repo.branches[rev] = dict(repo.branches["main"])
                return name, 200, {}, None
            if rev not in repo.branches:
                return name, 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
            files = repo.branches[rev]
            if name == "tree":   # recursive listing of the branch (what list_repo_tree / list_repo_files read)
                dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
                return name, 200, [{"type": "directory", "oid": "0" * 40, "path": d} for d in dirs] + [
                    {"type": "file", "oid": _git_oid(data), "size": len(data), "path": p}
                    for p, data in sorted(files.items())], None
            if name == "preupload":
                return name, 200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                     "oid": _git_oid(files[f["path"]]) if f["path"] in files else None}
                    for f in json.loads(body)["files"]]}, None
            if name == "commit":
                if self.commit_limit is not None:
                    limit, window = self.commit_limit
                    now = time.monotonic()
                    self.commit_times = [t for t in self.commit_times if now - t < window]
                    if len(self.commit_times) >= limit:
                        wait = max(1, math.ceil(window - (now - self.commit_times[0])))
                        return name, 429, {"error": "You have exceeded the rate limit for repository commits "
                                                    f"({limit} per {window:g} s)"}, {"Retry-After": str(wait)}
                    self.commit_times.append(now)
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                    elif item["key"] != "header":
                        return name, 400, {"error": f"unexpected commit item {item['key']}"}, None
                repo.commits += 1
                oid = f"{repo.commits:040x}"
                return name, 200, {"commitUrl": f"{self.url}/datasets/{m.group(1)}/commit/{oid}",
                                   "commitOid": oid}, None
        return name, 404, {"error": f"no route {method} {path}"}, None


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    """A running FakeHub, with huggingface_hub online and pointed at it (nothing else is reachable)."""
    from huggingface_hub import constants

    server = FakeHub()
    server.thread.start()
    loopback_only(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # library-wide lookups go to loopback too
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.server.shutdown()
    server.server.server_close()


def _api(server: FakeHub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=server.url, token=TOKEN)


def test_push_uploads_exactly_the_plan(ds, fake_hub):
    ignore_before = UPLOAD_IGNORE
    plan = push_folder(ds, "bmd/biomedica", private=True, api=_api(fake_hub))
    create = fake_hub.calls("create")
    assert len(create) == 1
    payload = json.loads(create[0]["body"])
    assert payload["type"] == "dataset"
    assert payload["organization"] == "bmd"
    assert payload["name"] == "biomedica"
    assert payload.get("visibility") == "private" or payload.get("private") is True
    assert all(c["auth"] == f"Bearer {TOKEN}" for c in fake_hub.log if c["name"] != "other")
    files = fake_hub.repos["bmd/biomedica"].branches["main"]
    assert sorted(files) == plan.paths
    for path, data in files.items():
        assert data == (ds / path).read_bytes(), path
    commit = fake_hub.calls("commit")
    assert len(commit) == 1
    assert commit[0]["path"] == "/api/datasets/bmd/biomedica/commit/main"
    header = json.loads(commit[0]["body"].splitlines()[0])
    assert header["key"] == "header"
    assert "14 figures" in header["value"]["summary"]
    assert UPLOAD_IGNORE is ignore_before
    assert list(UPLOAD_IGNORE) == list(hub.UPLOAD_IGNORE)
    assert not [c for c in fake_hub.log if c["status"] >= 500]
    assert [c["name"] for c in fake_hub.log if c["name"] != "other"] == \
        ["create", "info", "tree", "validate-yaml", "preupload", "commit"]
    assert plan.uploaded == plan.paths
    assert plan.deleted == []


def test_second_push_is_idempotent_and_only_commits_changes(ds, fake_hub):
    api = _api(fake_hub)
    push_folder(ds, "bmd/biomedica", api=api)
    push_folder(ds, "bmd/biomedica", api=api)  # create_repo answers 409: accepted; nothing changed: no commit
    assert [c["status"] for c in fake_hub.calls("create")] == [200, 409]
    assert fake_hub.repos["bmd/biomedica"].commits == 1
    (ds / "README.md").write_text(CARD_TEXT + "\nMore.\n")
    push_folder(ds, "bmd/biomedica", api=api)
    assert fake_hub.repos["bmd/biomedica"].commits == 2
    last = [json.loads(x) for x in fake_hub.calls("commit")[-1]["body"].splitlines()]
    assert [i["value"]["path"] for i in last if i["key"] == "file"] == ["README.md"]
    assert fake_hub.repos["bmd/biomedica"].branches["main"]["README.md"].endswith(b"More.\n")


def test_push_to_a_branch(ds, fake_hub):
    api = _api(fake_hub)
    push_folder(ds, "bmd/biomedica", revision="v1.0", api=api)
    push_folder(ds, "bmd/biomedica", revision="v1.0", api=api)
    assert [(c["path"], c["status"]) for c in fake_hub.calls("branch")] == \
        [("/api/datasets/bmd/biomedica/branch/v1.0", 200), ("/api/datasets/bmd/biomedica/branch/v1.0", 409)]
    repo = fake_hub.repos["bmd/biomedica"]
    assert repo.branches["main"] == {}
    assert f"other/{_stem(ds, 'other')}.tar" in repo.branches["v1.0"]
    assert {c["path"] for c in fake_hub.calls("commit")} == {"/api/datasets/bmd/biomedica/commit/v1.0"}


def test_private_push_refused_on_existing_public_repo(ds, fake_hub):
    fake_hub.repos["bmd/biomedica"] = Repo(private=False)
    with pytest.raises(HubError, match="public"):
        push_folder(ds, "bmd/biomedica", private=True, api=_api(fake_hub))
    assert not fake_hub.calls("preupload")
    assert not fake_hub.calls("commit")


def test_interrupted_push_fails_clearly_then_resumes(ds, fake_hub):
    from huggingface_hub.errors import HfHubHTTPError

    api = _api(fake_hub)
    fake_hub.fail["preupload"] = [403]
    with pytest.raises(HfHubHTTPError, match="403") as exc:
        push_folder(ds, "bmd/biomedica", api=api)
    assert exc.value.response.status_code == 403
    assert "injected failure on preupload" in str(exc.value)
    fake_hub.fail["commit"] = [403] * 100  # every commit refused
    with pytest.raises(HfHubHTTPError, match="403"):
        push_folder(ds, "bmd/biomedica", api=api)
    assert fake_hub.repos["bmd/biomedica"].branches["main"] == {}
    fake_hub.fail["commit"] = []
    plan = push_folder(ds, "bmd/biomedica", api=api)  # the rerun completes the upload
    assert sorted(fake_hub.repos["bmd/biomedica"].branches["main"]) == plan.paths


def _committed(hub: FakeHub) -> list[list[str]]:
    """The files of each accepted commit, in order."""
    return [[json.loads(x)["value"]["path"] for x in c["body"].splitlines() if json.loads(x)["key"] == "file"]
            for c in hub.calls("commit") if c["status"] == 200]


@pytest.mark.slow
def test_push_waits_out_the_hubs_commit_rate_limit(ds, fake_hub):
    """The Hub answers 429 with ``Retry-After`` past its commit rate (here 2 commits per 2 s, the push in
    commits of 5 files): the push waits each one out and completes, every file committed exactly once."""
    fake_hub.commit_limit = (2, 2.0)
    plan = push_folder(ds, "bmd/biomedica", api=_api(fake_hub), files_per_commit=5)
    refused = [c for c in fake_hub.calls("commit") if c["status"] == 429]
    accepted = [c for c in fake_hub.calls("commit") if c["status"] == 200]
    assert len(plan.paths) > 10
    assert len(accepted) == -(-len(plan.paths) // 5) >= 3
    assert refused                                               # the limit was hit ...
    assert all(b["t"] - a["t"] >= 1.0 for a, b in zip(accepted, accepted[2:]))   # ... and waited out
    committed = [p for batch in _committed(fake_hub) for p in batch]
    assert sorted(committed) == sorted(set(committed)) == plan.paths
    assert max(len(b) for b in _committed(fake_hub)) <= 5
    assert "README.md" in _committed(fake_hub)[-1]
    assert sorted(fake_hub.repos["bmd/biomedica"].branches["main"]) == plan.paths


@pytest.mark.slow
def test_a_push_interrupted_while_rate_limited_resumes(ds, fake_hub, tmp_path):
    """A push in its own process, killed while it waits out the Hub's rate limit (2 commits per 30 s): the commits
    that went through stay (the card not among them: it goes last); a rerun uploads only the rest, every file is
    committed once over both pushes."""
    fake_hub.commit_limit = (2, 30.0)
    code = ("import sys; from huggingface_hub import HfApi; from biomedica_hf.dataset.hub import push_folder; "
            "push_folder(sys.argv[1], 'bmd/biomedica', api=HfApi(endpoint=sys.argv[2], token=sys.argv[3]), "
            "files_per_commit=5)")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": fake_hub.url, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(ds), fake_hub.url, TOKEN], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(c["name"] == "commit" and c["status"] == 429 for c in fake_hub.log):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    first = _committed(fake_hub)
    remote = dict(fake_hub.repos["bmd/biomedica"].branches["main"])
    assert len(first) == 2
    assert sorted(remote) == sorted(p for b in first for p in b)
    assert "README.md" not in remote
    fake_hub.commit_limit = None                                  # the window has passed
    plan = push_folder(ds, "bmd/biomedica", api=_api(fake_hub), files_per_commit=5)
    committed = [p for batch in _committed(fake_hub) for p in batch]
    assert sorted(committed) == sorted(set(committed)) == plan.paths     # every file once, over both pushes
    assert sorted(plan.uploaded) == sorted(set(plan.paths) - set(remote))
    assert sorted(fake_hub.repos["bmd/biomedica"].branches["main"]) == plan.paths


def test_one_refused_commit_is_split_and_retried_by_huggingface_hub(ds, fake_hub):
    fake_hub.fail["commit"] = [403]
    plan = push_folder(ds, "bmd/biomedica", api=_api(fake_hub))
    assert sorted(fake_hub.repos["bmd/biomedica"].branches["main"]) == plan.paths
    assert [c["status"] for c in fake_hub.calls("commit")] == [403, 200]


def test_create_repo_http_error_is_not_swallowed(ds, fake_hub):
    from huggingface_hub.errors import HfHubHTTPError

    fake_hub.fail["create"] = [400]
    with pytest.raises(HfHubHTTPError, match="injected failure on create"):
        push_folder(ds, "bmd/biomedica", api=_api(fake_hub))
    assert not fake_hub.calls("preupload")


def test_upload_large_folder_is_used_where_available(ds, fake_hub):
    """huggingface_hub 0.25-1.x: the resumable upload_large_folder gets the patterns and num_workers.

    Only its arguments are checked (a recording stand-in; 2.x has no such method); create_repo is real.
    """
    from huggingface_hub import HfApi

    seen: dict[str, Any] = {}

    class LegacyApi(HfApi):
        def upload_large_folder(self, **kwargs: Any) -> None:
            seen.update(kwargs)

    plan = push_folder(ds, "bmd/biomedica", private=True, revision="v2", num_workers=3,
                api=LegacyApi(endpoint=fake_hub.url, token=TOKEN))
    assert seen == {"repo_id": "bmd/biomedica", "folder_path": str(ds), "repo_type": "dataset", "revision": "v2",
                    "private": True, "allow_patterns": plan.paths, "ignore_patterns": list(UPLOAD_IGNORE),
                    "num_workers": 3}
    assert plan.uploaded == plan.paths
    assert plan.deleted == []   # a new branch: every file is new
    assert [c["name"] for c in fake_hub.log if c["name"] != "other"] == ["create", "info", "branch", "tree"]


class _NoNetwork:
    """An ``api`` that fails the test on any use."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"network API used: {name}")



# ------------------------------------------------------------------------ exactly the dataset's files


def test_plan_leaves_out_secrets_symlinks_hidden_and_stray_files(ds, tmp_path):
    before = plan_upload(ds).paths
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    (ds / "card" / "credentials.json").write_text('{"token": "x"}')
    (ds / "card" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    (ds / "card" / "unlinked.png").write_bytes(b"\x89PNG")
    (ds / "card" / "link.png").symlink_to(outside)
    (ds / "commercial" / "evil.tar").symlink_to(outside)
    (ds / "secrets.parquet").write_bytes(b"PAR1")
    (ds / ".env").write_text("HF_TOKEN=x")
    (ds / "other" / ".hidden.tar").write_bytes(b"x")
    (ds / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    plan = plan_upload(ds)
    assert plan.ok, plan.problems
    assert plan.paths == before
    assert plan.allow_patterns == before
    reasons = {e.path: e.reason for e in plan.excluded}
    assert reasons["card/credentials.json"] == reasons["card/id_rsa"] == "not linked from README.md"
    assert reasons["card/unlinked.png"] == "not linked from README.md"
    assert reasons["card/link.png"].startswith("symbolic link")
    assert reasons["commercial/evil.tar"].startswith("symbolic")
    assert reasons["linked_dir/"].startswith("symbolic link")
    assert reasons["secrets.parquet"] == "not part of the dataset layout"
    assert reasons[".env"] == reasons["other/.hidden.tar"] == "hidden file"
    linked = sorted(p for p in before if p.startswith("card/"))
    assert linked
    assert (all(f"]({p})" in (ds / "README.md").read_text() or p in (ds / "README.md").read_text()
                          for p in linked))


def test_push_sends_nothing_outside_the_plan(ds, fake_hub, tmp_path):
    (ds / "card" / "credentials.json").write_text('{"token": "x"}')
    (ds / "secrets.parquet").write_bytes(b"PAR1")
    (tmp_path / "outside.bin").write_bytes(b"outside")
    (ds / "card" / "link.png").symlink_to(tmp_path / "outside.bin")
    plan = push_folder(ds, "bmd/biomedica", api=_api(fake_hub))
    assert sorted(fake_hub.repos["bmd/biomedica"].branches["main"]) == plan.paths
    sent = [json.loads(x)["value"]["path"] for c in fake_hub.calls("commit") for x in c["body"].splitlines()
            if json.loads(x)["key"] == "file"]
    assert sorted(sent) == plan.paths


def test_push_refuses_a_duplicated_shard_from_a_killed_rebuild(ds):
    """A rebuild with another shard size killed midway leaves complete shards the index does not list."""
    c = _stem(ds, "commercial")
    name = f"commercial/{_dir(c)}/commercial-train-s000-p00001-000"
    assert not (ds / f"{name}.tar").exists()
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(ds / f"commercial/{c}{suffix}", ds / f"{name}{suffix}")
    plan = plan_upload(ds)
    assert any(f"{name}.tar is not in figures.parquet" in p and "stale or duplicated" in p for p in plan.problems)
    with pytest.raises(UploadBlockedError, match="stale or duplicated"):
        push_folder(ds, "org/name", dry_run=True)


def test_push_refuses_shards_that_disagree_with_the_index(ds):
    import pyarrow.parquet as pq

    table = pq.read_table(ds / "figures.parquet")
    offsets = table["tar_offset"].to_pylist()
    offsets[0] += 512
    table = table.set_column(table.schema.get_field_index("tar_offset"), "tar_offset",
                             __import__("pyarrow").array(offsets, __import__("pyarrow").int64()))
    pq.write_table(table, ds / "figures.parquet")
    assert any("the index is stale" in p for p in plan_upload(ds).problems)


def _rename_shard(ds: Path, subset: str, old: str, new: str) -> None:
    """What an update does to a shard: a new name (and index, sizes.json, build summary pointing at it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for suffix in (".tar", ".parquet", "_stats.json"):
        (ds / subset / f"{old}{suffix}").rename(ds / subset / f"{new}{suffix}")
    table = pq.read_table(ds / "figures.parquet")
    shards = [f"{subset}/{new}.tar" if s == f"{subset}/{old}.tar" else s for s in table["shard"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("shard"), "shard", pa.array(shards)),
                   ds / "figures.parquet")
    old_name, new_name = old.rsplit("/", 1)[-1], new.rsplit("/", 1)[-1]
    for folder in sizes_dirs(ds):   # every folder's sizes.json lists every shard of the dataset
        sizes = json.loads((folder / "sizes.json").read_text())
        sizes[f"{new_name}.tar"] = sizes.pop(f"{old_name}.tar")
        (folder / "sizes.json").write_text(json.dumps(sizes))
    summary = json.loads((ds / "build_summary.json").read_text())
    summary["shards"][subset] = [n.replace(old_name, new_name) for n in summary["shards"][subset]]
    (ds / "build_summary.json").write_text(json.dumps(summary))


def test_update_uploads_only_what_changed_and_deletes_replaced_shards(ds, fake_hub):
    api = _api(fake_hub)
    push_folder(ds, "bmd/biomedica", api=api)
    assert push_folder(ds, "bmd/biomedica", api=api).uploaded == []       # unchanged: nothing sent
    old = _stem(ds, "other")
    new = f"{old}-r001"   # the name an update gives a shard it rewrites
    _rename_shard(ds, "other", old, new)
    plan = push_folder(ds, "bmd/biomedica", api=api)
    assert plan.ok
    assert sorted(plan.uploaded) == sorted([f"other/{new}.tar", f"other/{new}.parquet", f"other/{new}_stats.json",
                                            *(f"{s}/{_dir(old)}/sizes.json" for s in SUBSETS), "figures.parquet",
                                            "build_summary.json"])
    assert plan.deleted == [f"other/{old}.parquet", f"other/{old}.tar", f"other/{old}_stats.json"]
    files = fake_hub.repos["bmd/biomedica"].branches["main"]
    assert sorted(files) == plan.paths
    assert all(files[p] == (ds / p).read_bytes() for p in plan.paths)
    last = [json.loads(x) for x in fake_hub.calls("commit")[-1]["body"].splitlines()]
    assert sorted(i["value"]["path"] for i in last if i["key"] == "deletedFile") == plan.deleted
    assert fake_hub.repos["bmd/biomedica"].commits == 2


def test_remote_files_outside_the_dataset_layout_are_not_deleted(ds, fake_hub):
    api = _api(fake_hub)
    push_folder(ds, "bmd/biomedica", api=api)
    main = fake_hub.repos["bmd/biomedica"].branches["main"]
    main[".gitattributes"] = b"*.tar filter=lfs\n"
    main["LICENSE"] = b"theirs"
    main["commercial/999999.tar"] = b"old shard"
    plan = push_folder(ds, "bmd/biomedica", api=api)
    assert plan.deleted == ["commercial/999999.tar"]
    assert plan.uploaded == []
    assert {".gitattributes", "LICENSE"} <= set(main)
    assert "commercial/999999.tar" not in main


def test_verify_cli_fast_and_deep(ds):
    r = subprocess.run([str(BIOMEDICA), "verify", str(ds)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "OK:" in r.stdout, r.stdout + r.stderr
    import pyarrow.parquet as pq

    row = next(x for x in pq.read_table(ds / "figures.parquet").to_pylist() if x["subset"] == "other")
    tar = ds / row["shard"]
    data = bytearray(tar.read_bytes())
    data[row["image_offset"] + 100] ^= 0xFF
    tar.write_bytes(bytes(data))
    fast = subprocess.run([str(BIOMEDICA), "verify", str(ds)], capture_output=True, text=True, timeout=120, check=False)
    assert fast.returncode == 0   # sizes and headers are intact: only --deep sees flipped image bytes
    deep = subprocess.run([str(BIOMEDICA), "verify", "--deep", str(ds)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert deep.returncode == 1
    assert f"sample {row['key']}: image sha256 differs" in deep.stdout
    c, n = _stem(ds, "commercial"), _stem(ds, "noncommercial")
    other = ds / "commercial" / f"{c}.tar"
    other.write_bytes(other.read_bytes()[:-1024])
    (ds / "noncommercial" / f"{n}_stats.json").unlink()
    r = subprocess.run([str(BIOMEDICA), "verify", str(ds)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1
    assert f"commercial/{c}.tar is" in r.stdout
    assert "truncated" in r.stdout
    assert f"noncommercial/{n}.tar has no completion marker" in r.stdout


def test_push_commits_fewer_than_100_files_at_a_time(tmp_path, fake_hub):
    """The Hub refuses commits of 100 files or more over HTTP: a folder of hundreds of files (one sample per shard)
    goes up in several commits of < 100 files each, and all of it arrives."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_scale import synth_corpus

    inp, out = tmp_path / "in", tmp_path / "many"
    synth_corpus(inp, 15)                       # 15 articles x 4 distinct figures
    r = subprocess.run([str(BIOMEDICA), "build", "--input", str(inp), "--out", str(out), "--workers", "1",
                        "--shard-samples", "1", "--no-progress"], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    plan = plan_upload(out)
    assert plan.ok and len(plan.paths) > 150, (len(plan.paths), plan.problems)
    push_folder(out, "bmd/many", api=_api(fake_hub))
    sizes = [sum(1 for line in c["body"].splitlines() if b'"file"' in line or b'"lfsFile"' in line)
             for c in fake_hub.calls("commit")]
    assert len(sizes) >= 2 and max(sizes) < 100 and sum(sizes) == len(plan.paths), sizes
    assert sorted(fake_hub.repos["bmd/many"].branches["main"]) == plan.paths


def test_flat_and_sub_folder_layouts_push_and_read_back(ds, tmp_path, monkeypatch):
    """The sub-folder layout the build writes and the flat one of folders built before both go up whole (every
    folder's sizes.json, shards, stats) and every licence config reads back from the Hub with ``datasets``."""
    import datasets
    from support.flat_layout import flatten
    from support.hub_server import HubServer, point_libraries_at

    flat = Path(shutil.copytree(ds, tmp_path / "flat"))
    flat_tars = flatten(flat)
    nested_tars = [t.relative_to(ds).as_posix() for s in SUBSETS for t in folder_files(ds / s, "*.tar")]
    assert all(t.count("/") == 3 for t in nested_tars)
    assert all(t.count("/") == 1 for t in flat_tars)
    from huggingface_hub import constants

    fake_hub = FakeHub()
    fake_hub.thread.start()
    loopback_only(monkeypatch)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    plans = {}
    try:
        with monkeypatch.context() as m:
            m.setattr(constants, "HF_HUB_OFFLINE", False)
            m.setattr(constants, "ENDPOINT", fake_hub.url)
            for folder, repo in ((ds, "bmd/nested"), (flat, "bmd/flat")):
                plans[repo] = push_folder(folder, repo, api=_api(fake_hub))
    finally:
        fake_hub.server.shutdown()
    for folder, repo, tars in ((ds, "bmd/nested", nested_tars), (flat, "bmd/flat", flat_tars)):
        plan = plans[repo]
        files = fake_hub.repos[repo].branches["main"]
        assert sorted(files) == plan.paths
        assert set(tars) <= set(files)
        assert {f"{Path(t).parent.as_posix()}/sizes.json" for t in tars} <= set(files)
        mirror = tmp_path / repo.replace("/", "_")
        for rel, data in files.items():
            (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
            (mirror / rel).write_bytes(data)
        index = pq_read(folder / "figures.parquet")
        with HubServer({repo: mirror}) as server:
            point_libraries_at(server.url, monkeypatch, tmp_path / f"cache_{repo.split('/')[1]}")
            for subset in SUBSETS:
                rows = list(datasets.load_dataset(repo, subset, split="train", streaming=True))
                assert sorted(r["__key__"] for r in rows) == sorted(r["key"] for r in index
                                                                    if r["subset"] == subset and r["split"] == "train")
                assert rows


def pq_read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["key", "subset", "split"]).to_pylist()


#: the last commit whose build wrote every shard flat in ``<subset>/`` (the parent of the sub-folder layout's)
FLAT_LAYOUT_COMMIT = "fc17ba7^"


@pytest.mark.slow
def test_a_build_begun_flat_by_the_old_code_and_resumed_by_the_new_one(articles_dir, fake_hub, tmp_path):
    """Mixed layout for real: the code of before the sub-folders (``git archive``) builds with a SIGKILL after its
    first partition (``BIOMEDICA_FAULT_AT``), leaving flat shards; this code resumes the build. Those partitions hold
    hashes of the legacy perceptual-hash definition, so they are redone and their flat shards removed: the finished
    folder has the very tars (by path and bytes) of a fresh build by this code, verifies, holds every sample once,
    loads every subset, and pushes every file once."""
    import hashlib
    import signal
    import tarfile as _tarfile

    from biomedica_hf.dataset.loader import load_biomedica
    from biomedica_hf.dataset.verify import verify_folder

    repo = Path(__file__).resolve().parents[2]
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", FLAT_LAYOUT_COMMIT, "biomedica_hf"],
                             capture_output=True)
    if archive.returncode:
        pytest.skip(f"no git history with {FLAT_LAYOUT_COMMIT}: {archive.stderr.decode()[-200:]}")
    with _tarfile.open(fileobj=__import__("io").BytesIO(archive.stdout)) as tf:
        tf.extractall(old, filter="data")
    args = ["build", "--input", str(articles_dir), "--no-progress", "--workers", "1", "--partition-size", "8",
            "--splits", "60/20/20"]
    out, fresh = tmp_path / "ds", tmp_path / "fresh"
    env = {**os.environ, "PYTHONPATH": str(old), "BIOMEDICA_FAULT_AT": "partition_written:2"}
    r = subprocess.run([sys.executable, "-m", "biomedica_hf.cli", *args, "--out", str(out)], cwd=old, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    flat = sorted(p.relative_to(out).as_posix() for s in SUBSETS for p in (out / s).glob("*.tar"))
    assert flat
    assert not (out / "figures.parquet").exists()
    biomedica = Path(sys.executable).with_name("biomedica")
    for dest in (out, fresh):
        r = subprocess.run([str(biomedica), *args, "--out", str(dest)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    tars = {d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for s in SUBSETS for p in folder_files(d / s, "*.tar")}
            for d in (out, fresh)}
    assert tars[out] == tars[fresh]                                   # the same shards, byte for byte
    mixed = [p.relative_to(out).as_posix() for s in SUBSETS for p in folder_files(out / s, "*.tar")]
    # the old code's partitions carry perceptual hashes of the legacy definition: this code redoes them, writes them
    # where it writes shards and removes their flat shards (else every sample of them would be indexed twice)
    assert not set(flat) & set(mixed)
    assert sorted(mixed) == sorted(p.relative_to(fresh).as_posix() for s in SUBSETS
                                   for p in folder_files(fresh / s, "*.tar"))
    report = verify_folder(out)
    assert report.ok, report.problems
    index = pq_read(out / "figures.parquet")
    assert sorted(r["key"] for r in index) == sorted(r["key"] for r in pq_read(fresh / "figures.parquet"))
    assert len({r["key"] for r in index}) == len(index)
    loaded = [r["key"] for s in SUBSETS for r in load_biomedica(out, s, split=None, decode=False)]
    assert sorted(loaded) == sorted(r["key"] for r in index)          # every sample once
    plan = push_folder(out, "bmd/mixed", api=_api(fake_hub), files_per_commit=20)
    committed = [p for batch in _committed(fake_hub) for p in batch]
    assert sorted(committed) == sorted(set(committed)) == plan.paths
    assert set(mixed) <= set(plan.paths)
