"""Streaming from a Hub: ``load_biomedica`` next to a plain download, ``datasets`` and ``webdataset``.

The benchmark dataset of ``bench_stream.py`` (fixture articles replicated, ``--shard-samples 500``) is
served by the loopback Hub (``tests/support/hub_server.py``, a separate process: real HTTP on 127.0.0.1 with the
Hub's resolve / paths-info / tree / revision routes) whose link has ``--latency`` seconds per request (each
of 0, 30 and 100 ms by default) and ``--bandwidth`` bytes/s shared by all connections. This process
talks to it through ``HF_ENDPOINT``, as a user would talk to the Hub. For each latency, one after another:

* plain sequential GET of every shard (the limit: what a download of the same bytes costs);
* ``datasets``: ``load_dataset(repo, "all", split="train", streaming=True).decode(False)`` (the anchor);
* ``webdataset`` over HTTP (``curl``), no decoding;
* ``load_biomedica(repo, subset="all")``: decode off, decode on (thread pool), and a seeded random 10% of
  the samples (``exclude=`` the other 90%), decode off.

Prints, per latency, a Markdown table: seconds, samples/s, requests and bytes the server counted, bytes
wanted (the selected samples' tar bytes), and the ratios the issue asks for (unfiltered vs the plain download
and vs ``datasets``; 10% filter vs unfiltered time and transferred / wanted bytes).

    python benchmarks/bench_stream_remote.py [--keep DIR] [--min-figures 2000] [--latencies 0,0.03,0.1]
        [--bandwidth 250e6] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = "bench/biomedica"


def control(url: str, route: str, **params: object) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
    with urllib.request.urlopen(f"{url}/_loopback/{route}" + (f"?{query}" if query else "")) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-figures", type=int, default=2000)
    ap.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the input and dataset in this folder")
    ap.add_argument("--latencies", default="0,0.03,0.1", help="seconds per request, comma-separated")
    ap.add_argument("--bandwidth", type=float, default=250e6, help="bytes/s of the link (0: unlimited)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per latency; the best time is reported")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_stream_remote_")) if args.keep is None else args.keep
    # built in a child process: bench_stream imports datasets offline, and this process must import it online
    code = f"from bench_stream import build_dataset; build_dataset(__import__('pathlib').Path({str(root)!r}), " \
           f"{args.min_figures})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])})
    ds = root / "ds"
    if not (ds / "README.md").exists():
        subprocess.run([str(Path(sys.executable).parent / "biomedica"), "card", str(ds)], check=True,
                       capture_output=True)
    server = subprocess.Popen([sys.executable, str(HERE.parent / "tests" / "support" / "hub_server.py"), f"{REPO}={ds}"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        os.environ.update({"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
                           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                           "HF_HOME": str(root / "hf_home")})
        run(url, ds, args)
    finally:
        server.terminate()
        server.wait()
        if args.keep is None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def run(url: str, ds: Path, args: argparse.Namespace) -> None:
    import datasets
    import numpy as np
    import pyarrow.parquet as pq
    import requests
    import webdataset as wds
    from huggingface_hub import hf_hub_url

    from biomedica_hf.dataset.loader import load_biomedica
    from biomedica_hf.io.sizes import human_size

    datasets.disable_progress_bars()
    index = pq.read_table(ds / "figures.parquet", columns=["key", "shard", "tar_size"])
    shards = list(dict.fromkeys(index["shard"].to_pylist()))
    shard_urls = [hf_hub_url(REPO, s, repo_type="dataset", endpoint=url) for s in shards]
    all_bytes = int(np.sum(index["tar_size"].to_numpy()))
    keys = index["key"].to_pylist()
    keep = np.random.default_rng(0).random(len(keys)) < 0.1
    drop_file = ds.parent / "bench_remote_drop90.txt"
    drop_file.write_text("\n".join(k for k, m in zip(keys, keep) if not m))
    tenth_bytes = int(np.sum(index["tar_size"].to_numpy()[keep]))

    def plain() -> Iterable[object]:
        with requests.Session() as session:
            for u in shard_urls:
                with session.get(u, stream=True) as r:
                    r.raise_for_status()
                    yield from r.iter_content(2**20)

    def plain_count() -> int:
        return sum(1 for _ in plain()) and len(keys)

    readers: list[tuple[str, Callable[[], int], int]] = [
        ("plain sequential GET of every shard (the limit)", plain_count, all_bytes),
        ("datasets: load_dataset(repo, 'all', streaming=True), no decode",
         lambda: sum(1 for _ in datasets.load_dataset(REPO, "all", split="train", streaming=True).decode(False)),
         all_bytes),
        ("webdataset over HTTP (curl), no decode",
         lambda: sum(1 for _ in wds.WebDataset([f"pipe:curl -s -L {u}" for u in shard_urls], shardshuffle=False,
                                               empty_check=False)), all_bytes),
        ("load_biomedica, no decode", lambda: sum(1 for _ in load_biomedica(REPO, subset="all", decode=False)),
         all_bytes),
        ("load_biomedica, decode (8 threads)", lambda: sum(1 for _ in load_biomedica(REPO, subset="all")),
         all_bytes),
        ("load_biomedica, random 10%, no decode",
         lambda: sum(1 for _ in load_biomedica(REPO, subset="all", decode=False, exclude=drop_file)), tenth_bytes),
    ]
    bw = args.bandwidth or None
    print(f"{len(shards)} shards, {human_size(sum((ds / s).stat().st_size for s in shards))}, {len(keys)} samples; "
          f"loopback Hub link {'unlimited' if bw is None else f'{bw / 1e6:.0f} MB/s'}, one reader process, "
          f"best of {args.repeat}\n")
    for latency in (float(x) for x in args.latencies.split(",")):
        control(url, "link", latency=latency, bandwidth=bw or "")
        best: dict[str, tuple[int, float, dict]] = {}
        for _ in range(args.repeat):
            for name, fn, _ in readers:
                from huggingface_hub import HfFileSystem

                HfFileSystem.clear_instance_cache()      # every reader starts cold, as a new process would
                control(url, "reset")
                t0 = time.perf_counter()
                n = fn()
                dt = time.perf_counter() - t0
                stats = control(url, "stats")
                if name not in best or dt < best[name][1]:
                    best[name] = (n, dt, stats)
        print(f"### {latency * 1000:.0f} ms per request\n")
        print("| reader | samples | seconds | samples/s | requests | MB transferred | MB wanted | transferred / wanted |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, _, wanted in readers:
            n, dt, stats = best[name]
            req = sum(stats["requests"].values())
            print(f"| {name} | {n} | {dt:.2f} | {n / dt:.0f} | {req} | {stats['bytes_sent'] / 1e6:.1f} | "
                  f"{wanted / 1e6:.1f} | {stats['bytes_sent'] / wanted:.2f} |")
        t = {name: best[name][1] for name, _, _ in readers}
        lb, plain_t = t["load_biomedica, no decode"], t[readers[0][0]]
        ds_t, tenth = t[readers[1][0]], t["load_biomedica, random 10%, no decode"]
        tenth_stats = best["load_biomedica, random 10%, no decode"][2]
        print(f"\nunfiltered load_biomedica: {plain_t / lb:.2f}x the plain download's speed (goal >= 0.8), "
              f"{ds_t / lb:.2f}x datasets streaming (goal >= 2); random 10%: {tenth / lb:.3f}x the unfiltered time "
              f"(goal <= 0.15), {tenth_stats['bytes_sent'] / tenth_bytes:.2f}x the wanted bytes (goal <= 1.5)\n")


if __name__ == "__main__":
    main()
