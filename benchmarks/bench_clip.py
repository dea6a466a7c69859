"""Training throughput: our CLIP recipe loop vs open_clip's own training loop (``open_clip_train``).

    python benchmarks/bench_clip.py [--data DATASET_DIR] [--min-figures 400] [--steps 100] [--batch-size 4] [--workers 1]

Same tiny random open_clip model (``TINY_OPEN_CLIP_CFG``), same shards (all subsets of a ``biomedica
build`` folder; when ``--data`` is not given, the fixture articles replicated to >= --min-figures
figures, as in ``bench_stream.py``: the ~23 fixture samples alone make an epoch every 5 steps, and the
loaders' per-epoch restarts then dominate), one process each, fp32, CPU (or CUDA when present).
Reported samples/s exclude the first step (start-up); "data wait" is the fraction of step time spent
waiting for the next batch.

open_clip_train 3.x wants an old webdataset: with webdataset >= 1.0 its ``group_by_keys_nothrow`` gets
the end-of-shard marker ``{}`` and fails with ``KeyError: 'fname'``; the benchmark runs it with
``tar_file_expander(eof_value=None)`` patched in (a benchmark-only shim).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_stream import build_dataset

from biomedica_hf.clip.tiny import TINY_OPEN_CLIP_CFG
from biomedica_hf.train.config import bundled_configs

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}

OPEN_CLIP_MAIN = """
import functools, sys
import open_clip
open_clip.add_model_config(sys.argv.pop(1))
import open_clip_train.data as d, webdataset.tariterators as t
d.tar_file_expander = functools.partial(t.tar_file_expander, eof_value=None)
from open_clip_train.main import main
main(sys.argv[1:])
"""
LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/.*Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)")


def n_samples(data: Path) -> int:
    return sum(sum(json.loads(p.read_text()).values()) for p in data.glob("*/sizes.json"))


def ours(data: Path, work: Path, steps: int, bs: int, workers: int) -> dict:
    cfg = yaml.safe_load(bundled_configs("clip")["cpu_smoke"].read_text())
    cfg["output_dir"] = str(work / "ours")
    cfg["data"].update(path=str(data), num_workers=workers)
    cfg["train"].update(batch_size=bs, max_steps=steps, save_every=None, log_every=1, warmup_steps=1, max_epochs=10**6)
    cfg["export"]["enabled"] = False
    (work / "ours.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "finetune/clip/train.py"), "--config", str(work / "ours.yaml"),
                        "--threads", "1"], env=ENV, capture_output=True, text=True,
                       check=False)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    log = [json.loads(line) for line in (work / "ours" / "log.jsonl").read_text().splitlines()][1:]
    n = [bs] * len(log)
    dt = [b / rec["samples_per_s"] for b, rec in zip(n, log)]
    wait = sum(rec["data_wait_frac"] * t for rec, t in zip(log, dt))
    return {"steps": len(log) + 1, "samples_per_s": sum(n) / sum(dt), "data_wait": wait / sum(dt), "wall_s": wall,
            "final_loss": log[-1]["loss"]}


def open_clip_loop(data: Path, work: Path, steps: int, bs: int, workers: int) -> dict:
    try:
        import open_clip_train.main  # noqa: F401
    except Exception as exc:   # noqa: BLE001
        return {"error": f"open_clip_train not importable: {exc}"}
    (work / "tiny-bench.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    from biomedica_hf.layout import folder_files

    shards = "::".join(str(p) for s in ("commercial", "noncommercial", "other")
                       for p in folder_files(data / s, "*.tar"))   # flat or in sub-folders
    per_epoch = n_samples(data) // bs * bs
    epochs = -(-steps * bs // per_epoch)
    args = [str(work / "tiny-bench.json"), "--train-data", shards, "--dataset-type", "webdataset",
            "--train-num-samples", str(per_epoch), "--batch-size", str(bs), "--epochs", str(epochs),
            "--model", "tiny-bench", "--workers", str(workers), "--lr", "1e-3", "--warmup", "1",
            "--precision", "fp32", "--logs", str(work / "oc_logs"), "--log-every-n-steps", "1",
            "--save-frequency", "0", "--name", "bench", "--report-to", "", "--seed", "0"]
    if not _cuda():
        args += ["--device", "cpu"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", OPEN_CLIP_MAIN, *args], env=ENV, capture_output=True, text=True,
                       check=False)
    wall = time.perf_counter() - t0
    rows = [(float(m.group(2)), float(m.group(3))) for m in LINE.finditer(r.stdout + r.stderr)]
    if r.returncode or not rows:
        return {"error": (r.stdout + r.stderr)[-2000:]}
    rows = rows[1:steps]
    losses = re.findall(r"Contrastive_loss: ([\d.]+)", r.stdout + r.stderr)
    return {"steps": len(rows) + 1, "samples_per_s": bs * len(rows) / sum(b for _, b in rows),
            "data_wait": sum(d for d, _ in rows) / sum(b for _, b in rows), "wall_s": wall,
            "final_loss": float(losses[min(len(losses), steps) - 1]) if losses else None}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a `biomedica build` folder (default: built from the PMC fixtures)")
    ap.add_argument("--min-figures", type=int, default=400, help="replicate the fixtures to this many (no --data)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (both loops)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_clip_") as tmp:
        work = Path(tmp)
        data = a.data or build_dataset(work, a.min_figures)
        n = n_samples(data)
        results = {"ours (biomedica_hf.clip, load_biomedica stream)": ours(data, work, a.steps, a.batch_size, a.workers),
                   "open_clip_train (webdataset)": open_clip_loop(data, work, a.steps, a.batch_size, a.workers)}
    print(f"\ntiny open_clip model, {n} samples, batch {a.batch_size}, "
          f"{a.steps} steps, workers {a.workers}, 1 process, {'CUDA' if _cuda() else 'CPU'}\n")
    print("| loop | steps | samples/s (excl. 1st step) | data wait | wall s (incl. start-up) | last loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} | | | | |")
            continue
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
        print(f"| {name} | {r['steps']} | {r['samples_per_s']:.1f} | {100 * r['data_wait']:.0f}% | "
              f"{r['wall_s']:.1f} | {loss} |")


if __name__ == "__main__":
    main()
