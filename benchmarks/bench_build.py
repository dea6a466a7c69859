"""Build throughput: parse + decode + serialize from local packages, next to a raw baseline.

The fixture articles that ship their figure images are replicated (new PMCIDs, half of the copies
as .tar.gz packages) until there are >= --min-figures figures, then measured in one run:

* raw baseline: read every image file of every package (tar members or files) and decode it (PIL)
* biomedica build: list -> parse JATS -> resolve + decode/convert -> ledger -> plan -> shards,
  with 1 and 2 worker processes

Prints a Markdown table: pairs/s, pairs/s per core and peak memory. BIOMEDICA's serializer did
about 2 pairs/s per process.

    python benchmarks/bench_build.py [--min-figures 2000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import io
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARTICLES = REPO.parent / "shared" / "fixtures" / "pmc" / "articles"
WITH_IMAGES = ["PMC7112410", "PMC7135076", "PMC7159286", "PMC10802347", "eLife_19405", "eLife_00353",
               "eLife_32671_texture", "eLife_39122_subarticles"]
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff"}
PMC_ID = re.compile(rb'(pub-id-type="pmc(?:id)?"[^>]*>)(?:PMC)?\d+(<)')


def replicate(dest: Path, min_figures: int) -> tuple[int, int]:
    """Copies of the image-bearing articles with fresh PMCIDs; returns (packages, image files)."""
    per_copy = sum(1 for a in WITH_IMAGES for f in (ARTICLES / a).iterdir()
                   if f.suffix.lower() in IMAGE_EXT and not f.name.endswith(".gif"))
    copies = -(-min_figures // per_copy)
    n_pkg = n_img = 0
    for c in range(copies):
        for a in WITH_IMAGES:
            new_id = f"PMC{90_000_000 + c * 100 + WITH_IMAGES.index(a)}"
            src = ARTICLES / a
            files = {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()}
            for name, data in files.items():
                if name.endswith((".xml", ".nxml")):
                    files[name] = PMC_ID.sub(rb"\g<1>" + new_id.encode() + rb"\g<2>", data)
            n_img += sum(Path(n).suffix.lower() in IMAGE_EXT for n in files)
            if c % 2:
                with tarfile.open(dest / f"{new_id}.tar.gz", "w:gz", compresslevel=1) as t:
                    for name, data in files.items():
                        info = tarfile.TarInfo(f"{new_id}/{name}")
                        info.size = len(data)
                        t.addfile(info, io.BytesIO(data))
            else:
                d = dest / f"{new_id}_{a}"
                d.mkdir()
                for name, data in files.items():
                    (d / name).write_bytes(data)
            n_pkg += 1
    return n_pkg, n_img


def raw_baseline(src: Path) -> int:
    """Read and fully decode every image of every package: the floor any builder pays."""
    n = 0
    for p in sorted(src.iterdir()):
        if p.is_dir():
            blobs = [f.read_bytes() for f in p.iterdir() if f.suffix.lower() in IMAGE_EXT]
        else:
            with tarfile.open(p) as t:
                blobs = [t.extractfile(m).read() for m in t.getmembers()
                         if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXT]
        for b in blobs:
            Image.open(io.BytesIO(b)).load()
            n += 1
    return n


def run_build(src: Path, out: Path, workers: int, executor: str = "local") -> tuple[float, int, float]:
    cmd = [str(Path(sys.executable).parent / "biomedica"), "build", "--input", str(src), "--out", str(out),
           "--workers", str(workers), "--no-dedup", "--no-progress", "--executor", executor, "--address", "local"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    dt = time.perf_counter() - t0
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    import json

    samples = sum(json.loads((out / "build_summary.json").read_text())["samples"].values())
    return dt, samples, peak


def _noop(x):
    return x


def task_overhead(n: int = 400) -> dict[str, float]:
    """Milliseconds per no-op task through each executor (start-up excluded)."""
    from biomedica_hf.build.executors import make_executor

    out = {}
    for kind in ("local", "ray"):
        with make_executor(kind, workers=2, address="local") as ex:
            list(ex.map(_noop, range(20)))  # warm the workers
            t0 = time.perf_counter()
            assert len(list(ex.map(_noop, range(n)))) == n
            out[kind] = (time.perf_counter() - t0) / n * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-figures", type=int, default=2000)
    ap.add_argument("--keep", type=Path, default=None, help="keep inputs/outputs in this folder")
    ap.add_argument("--ray", action="store_true", help="also run with --executor ray (local Ray instance)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_build_")) if args.keep is None else args.keep
    src = root / "input"
    src.mkdir(parents=True, exist_ok=True)
    n_pkg, n_img = replicate(src, args.min_figures)
    print(f"input: {n_pkg} packages, {n_img} image files (incl. .gif thumbnails) in {src}\n")

    rows = []
    t0 = time.perf_counter()
    n_raw = raw_baseline(src)
    dt = time.perf_counter() - t0
    rows.append(("raw: read packages + decode every image", 1, n_raw, dt,
                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    for executor in ("local", "ray") if args.ray else ("local",):
        for w in (1, 2):
            out = root / f"out_{executor}_w{w}"
            shutil.rmtree(out, ignore_errors=True)
            dt, n, peak = run_build(src, out, w, executor)
            rows.append((f"biomedica build --executor {executor}", w, n, dt, peak))

    print("| pipeline | workers | pairs | seconds | pairs/s | pairs/s per core | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, w, n, dt, peak in rows:
        print(f"| {name} | {w} | {n} | {dt:.1f} | {n / dt:.1f} | {n / dt / w:.1f} | {peak:.0f} |")
    print("| BIOMEDICA serializer (published) | 1 | - | - | ~2 | ~2 | - |")
    if args.ray:
        print("\nper-task overhead (no-op task, 2 workers):")
        for kind, ms in task_overhead().items():
            print(f"- {kind}: {ms:.2f} ms per task")
    print("\nraw counts every image file (thumbnails too); build counts written pairs. "
          "Peak RSS of the build is the largest single process (driver or worker).")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
