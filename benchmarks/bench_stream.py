"""Streaming throughput: ``load_biomedica`` next to raw ``tarfile`` reads, ``webdataset`` and ``datasets``.

The fixture articles are replicated (``bench_build.replicate``) to >= --min-figures figures and built
once (``biomedica build --no-dedup --shard-samples 500``); then, in one run on the same local shards
(page cache warm, best of --repeat interleaved rounds, one process):

* raw: ``tarfile`` over every shard, PIL decode of every image, caption and JSON parsed (the limit)
* ``webdataset``: ``wds.WebDataset(tars).decode("pil")``
* ``datasets``: ``load_dataset("webdataset", data_files=tars, streaming=True, features=...)``
* ``load_biomedica``: decode on and off, unfiltered and with two filters keeping ~10% of the samples,
  spread over every shard: the ``min_caption_chars`` threshold closest to 10% (long captions go with
  small images, so it keeps fewer bytes), and a seeded random 10% (``concepts=`` on a copy of the
  index that marks them; the shards are symlinked)

Prints a Markdown table and the ratios: filtered / unfiltered time (goal ~ the kept fraction) and
``load_biomedica`` with decode / raw with decode in samples/s (goal >= 0.8). Times include reading
the index.

    python benchmarks/bench_stream.py [--min-figures 2000] [--keep DIR] [--repeat 3]
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import replicate

from biomedica_hf.dataset.loader import load_biomedica, select_ranges
from biomedica_hf.io.sizes import human_size
from biomedica_hf.schema import SUBSETS, webdataset_features

datasets.disable_progress_bars()


def build_dataset(root: Path, min_figures: int) -> Path:
    """The benchmark dataset under ``root/ds`` (reused when ``root`` already holds one)."""
    out = root / "ds"
    if (out / "figures.parquet").exists():
        return out
    src = root / "input"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    replicate(src, min_figures)
    cmd = [str(Path(sys.executable).parent / "biomedica"), "build", "--input", str(src), "--out", str(out),
           "--no-dedup", "--shard-samples", "500", "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def raw(tars: list[Path]) -> Iterable[object]:
    """Every sample with ``tarfile``: image decoded by PIL, caption and JSON parsed."""
    for path in tars:
        with tarfile.open(path) as tar:
            for m in tar:
                data = tar.extractfile(m).read()
                ext = m.name.partition(".")[2]
                if ext == "json":
                    yield json.loads(data)
                elif ext == "txt":
                    data.decode()
                else:
                    Image.open(io.BytesIO(data)).load()


def timed(runs: list[tuple[str, Callable[[], Iterable[object]]]], repeat: int) -> dict[str, tuple[int, float]]:
    """name -> (samples, best seconds) over ``repeat`` rounds; a round runs every pipeline once, so
    that load changes on the machine hit all pipelines alike."""
    best: dict[str, tuple[int, float]] = {}
    for _ in range(repeat):
        for name, make in runs:
            t0 = time.perf_counter()
            n = sum(1 for _ in make())
            dt = time.perf_counter() - t0
            best[name] = (n, min(dt, best.get(name, (n, dt))[1]))
    return best


def ten_percent_threshold(ds: Path) -> int:
    """The ``min_caption_chars`` whose kept fraction of samples is closest to 10%."""
    chars = pq.read_table(ds / "figures.parquet", columns=["caption_chars"])["caption_chars"].to_numpy()
    return int(min(np.unique(chars), key=lambda t: abs((chars >= t).mean() - 0.1)))


def random_tenth(ds: Path, seed: int = 0) -> Path:
    """``ds`` seen through an index whose ``concepts`` marks a random 10% of samples ``"bench10"``.

    The shard folders are symlinked; only ``figures.parquet`` is new.
    """
    view = ds.parent / "ds_random10"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir()
    index = pq.read_table(ds / "figures.parquet")
    for subset in SUBSETS:
        (view / subset).symlink_to(ds / subset, target_is_directory=True)
    marked = np.random.default_rng(seed).random(index.num_rows) < 0.1
    concepts = pa.array([["bench10"] if m else [] for m in marked], pa.list_(pa.string()))
    pq.write_table(index.append_column("concepts", concepts), view / "figures.parquet")
    return view


def kept(ds: Path, **filters) -> tuple[float, float]:
    """Fractions of the samples and of the tar bytes that ``filters`` keep."""
    def totals(**kw) -> tuple[int, int]:
        ranges = select_ranges(str(ds / "figures.parquet"), subset="all", **kw).values()
        return sum(len(r) for r in ranges), sum(int(r[:, 1].sum()) for r in ranges)

    (n, b), (n_all, b_all) = totals(**filters), totals()
    return n / n_all, b / b_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-figures", type=int, default=2000)
    ap.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the input and dataset in this folder")
    ap.add_argument("--repeat", type=int, default=3, help="passes per pipeline; the best is reported")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_stream_")) if args.keep is None else args.keep
    ds = build_dataset(root, args.min_figures)
    shards = pq.read_table(ds / "figures.parquet", columns=["shard"])["shard"].to_pylist()
    tars = [ds / shard for shard in dict.fromkeys(shards)]
    urls = [str(p) for p in tars]
    for p in tars:   # warm the page cache: every pipeline reads from memory
        p.read_bytes()
    random10 = random_tenth(ds)
    threshold = ten_percent_threshold(ds)
    filters = {f"min_caption_chars={threshold}": (ds, {"min_caption_chars": threshold}),
               "random 10% (concepts='bench10')": (random10, {"concepts": "bench10"})}

    runs: list[tuple[str, Callable[[], Iterable[object]]]] = [
        ("raw: tarfile + PIL decode (the limit)", lambda: raw(tars)),
        ("webdataset: WebDataset(tars).decode('pil')",
         lambda: wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")),
        ("datasets: load_dataset('webdataset', streaming=True), decode",
         lambda: datasets.load_dataset("webdataset", data_files={"train": urls}, split="train", streaming=True,
                                       features=webdataset_features())),
    ]
    for decode in (True, False):
        runs.append((f"load_biomedica, {'decode' if decode else 'no decode'}",
                     functools.partial(load_biomedica, ds, subset="all", decode=decode)))
        for name, (path, kw) in filters.items():
            runs.append((f"load_biomedica, {name}, {'decode' if decode else 'no decode'}",
                         functools.partial(load_biomedica, path, subset="all", decode=decode, **kw)))
    times = timed(runs, args.repeat)
    raw_n, raw_t = times[runs[0][0]]

    print(f"{len(tars)} shards, {human_size(sum(p.stat().st_size for p in tars))}, {raw_n} samples in {ds}; "
          f"one process, page cache warm, best of {args.repeat} interleaved rounds\n")
    print("| pipeline | samples | seconds | samples/s | samples/s vs raw |")
    print("|---|---:|---:|---:|---:|")
    for name, (n, t) in times.items():
        print(f"| {name} | {n} | {t:.2f} | {n / t:.0f} | {n / t / (raw_n / raw_t):.2f} |")
    print()
    for name, (path, kw) in filters.items():
        frac, byte_frac = kept(path, **kw)
        ratios = ", ".join(f"{d} {times[f'load_biomedica, {name}, {d}'][1] / times[f'load_biomedica, {d}'][1]:.3f}"
                           for d in ("decode", "no decode"))
        print(f"filter {name}: keeps {frac:.1%} of samples, {byte_frac:.1%} of tar bytes; "
              f"filtered / unfiltered time: {ratios}")
    n_dec, t_dec = times["load_biomedica, decode"]
    print(f"load_biomedica decode / raw decode (samples/s): {n_dec / t_dec / (raw_n / raw_t):.2f} (goal >= 0.8)")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
