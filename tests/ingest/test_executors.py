"""`--executor ray` against a real local Ray instance (2 CPUs): identical output to `--executor local`,
a killed worker's task is retried, a killed driver resumes without redoing finished work."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from support.models import save_tiny_dinov2

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "biomedica"
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import replicate  # noqa: E402  (real fixture articles with fresh PMCIDs)


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "_work" not in p.parts and not p.name.endswith("_stats.json")
            and p.name not in ("build_summary.json", "README.md")}


def _args(inp: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN), "build", "--input", str(inp), "--out", str(out), "--no-progress", "--shard-samples", "40",
            "--workers", "2", *extra]


RAY = ("--executor", "ray", "--address", "local")


def _staged_articles(out: Path) -> int:
    """Articles finished in the staging logs of every partition (``_work/stage/<pid>/log.jsonl``)."""
    stage = out / "_work" / "stage"
    return sum(len(p.read_bytes().splitlines()) for p in stage.glob("*/log.jsonl")) if stage.is_dir() else 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    inp = tmp_path_factory.mktemp("ray_in")
    replicate(inp, 150)
    ref = tmp_path_factory.mktemp("ray_ref")
    r = subprocess.run(_args(inp, ref, "--executor", "local"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return inp, ref


def _ray_sessions(pid: int) -> list[str]:
    """The local Ray instances that the process ``pid`` started: Ray names each one's folder ``session_<time>_<pid>``
    under ``ray`` in its temporary directory (``RAY_TMPDIR``, else ``TMPDIR``, else /tmp)."""
    root = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"
    return [p.name for p in root.glob(f"session_*_{pid}")] if root.is_dir() else []


def test_ray_output_equals_local_byte_for_byte(corpus, tmp_path):
    """Also: the build's phases (stage, near-duplicates, write, captions) share one local Ray instance, started
    once (each phase started and stopped its own before: ~5 s a phase)."""
    inp, ref = corpus
    out = tmp_path / "ray"
    proc = subprocess.Popen(_args(inp, out, *RAY), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert _outputs(out) == _outputs(ref)
    assert '"executor": "ray"' in (out / "build_summary.json").read_text()
    assert len(_ray_sessions(proc.pid)) == 1


def _ray_task_workers() -> list[psutil.Process]:
    """Ray worker processes that are running one of our tasks right now (process title ray::<task>)."""
    return [p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []).startswith("ray::_ray_call")]


def test_killed_worker_task_is_retried(corpus, tmp_path):
    inp, ref = corpus
    out = tmp_path / "ray_kill"
    proc = subprocess.Popen(_args(inp, out, *RAY), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    t0 = time.time()
    while killed is None and time.time() - t0 < 300 and proc.poll() is None:
        if _staged_articles(out) >= 10:
            workers = _ray_task_workers()
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed is not None, "no running Ray task worker was seen"
    assert proc.returncode == 0, stderr[-3000:]
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    assert not [r for r in ledger if r["reason"] == "internal_error"]
    assert _outputs(out) == _outputs(ref)


def test_driver_killed_then_resumed_by_the_other_executor(corpus, tmp_path):
    inp, ref = corpus
    out = tmp_path / "ray_driver"
    proc = subprocess.Popen(_args(inp, out, *RAY), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
        if _staged_articles(out) >= 40:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    n_done = _staged_articles(out)
    assert n_done >= 40
    assert not (out / "ledger.parquet").exists()
    r = subprocess.run(_args(inp, out, "--executor", "local"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    resumed = int(re.search(r"resumed: (\d+)", r.stdout).group(1))
    assert resumed >= n_done
    assert _outputs(out) == _outputs(ref)


def test_embed_on_ray_equals_local(tmp_path, articles_dir):
    """`biomedica embed --executor ray`: one task per shard, same files as the local run."""
    import numpy as np

    from biomedica_hf.ingest.pipeline import BuildConfig, build
    from biomedica_hf.concepts.embed import embed_dataset

    model_dir = save_tiny_dinov2(tmp_path / "dino")
    ds = tmp_path / "ds"
    build(BuildConfig(out=ds, source="local", source_opts={"path": str(articles_dir)}, shard_max_samples=6,
                      progress=False))
    local = tmp_path / "local"
    shutil.copytree(ds, local)
    embed_dataset(local, model_dir, batch_size=4, device="cpu", image_size=56, progress=False)
    embed_dataset(ds, model_dir, batch_size=4, device="cpu", image_size=56, progress=False, executor="ray",
                  address="local")
    a = sorted((local / "embeddings").rglob("*.npy"))
    b = sorted((ds / "embeddings").rglob("*.npy"))
    assert [p.relative_to(local) for p in a] == [p.relative_to(ds) for p in b]
    assert len(a) > 2
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.load(x), np.load(y), atol=1e-5)
