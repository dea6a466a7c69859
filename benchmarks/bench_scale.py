"""Scale of the partitioned build: driver memory, worker memory, disk and speed against corpus size.

A source of N synthetic-but-realistic articles: the bundled real PMC article PMC10802347 (a 107 kB nXML
with full text, 4 figures) with new PMCIDs, in the PMC Cloud layout (``PMCid.1/PMCid.1.xml``), each with
4 small, distinct JPEGs (so exact dedup keeps them all). Each N is built from scratch with
``biomedica build --source local --workers W`` in a subprocess, measuring:

* driver peak RSS (the build process itself) and the largest worker's peak RSS (sampled with psutil);
* peak disk of OUT (output + ``_work``, sampled) against the final output (without ``_work``);
* seconds and articles/s.

    python benchmarks/bench_scale.py [--sizes 1000,4000,16000] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "biomedica_hf" / "sample_data" / "articles" / "PMC10802347"
XML_NAME = "nihpp-2023.12.31.573776v1.nxml"
FIG_STEMS = [f"nihpp-2023.12.31.573776v1-f000{i}" for i in range(1, 5)]
PMC_ID = re.compile(rb'(pub-id-type="pmc(?:id)?"[^>]*>)(?:PMC)?\d+(<)')


def _jpeg(seed: int, size: int = 96) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    px = img.load()
    for _ in range(64):                      # a few random blocks: distinct bytes, realistic small JPEG
        x, y = rng.randrange(size - 8), rng.randrange(size - 8)
        c = tuple(rng.randrange(256) for _ in range(3))
        for dx in range(8):
            for dy in range(8):
                px[x + dx, y + dy] = c
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def synth_article(dest: Path, pmcid_num: int, version: int = 1, image_seed: int | None = None,
                  retracted: bool = False, commercial: bool = False) -> Path:
    """One Cloud-layout article folder ``PMC<num>.<version>/``; returns it. The template is CC BY-NC-ND
    (noncommercial); ``commercial`` turns its licence into CC BY."""
    xml = (TEMPLATE / XML_NAME).read_bytes()
    xml = PMC_ID.sub(rb"\g<1>" + str(pmcid_num).encode() + rb"\g<2>", xml)
    if commercial:
        xml = xml.replace(b"licenses/by-nc-nd/4.0", b"licenses/by/4.0").replace(b"ccbyncndlicense", b"ccbylicense")
        xml = xml.replace(b"Attribution-NonCommercial-NoDerivatives 4.0", b"Attribution 4.0")
    d = Path(dest) / f"PMC{pmcid_num}.{version}"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{d.name}.xml").write_bytes(xml)
    seed = pmcid_num * 10 if image_seed is None else image_seed
    for i, stem in enumerate(FIG_STEMS):
        (d / f"{stem}.jpg").write_bytes(_jpeg(seed + i))
    if retracted:
        (d / f"{d.name}.json").write_text('{"is_retracted": true, "license_code": "CC BY-NC-ND"}')
    return d


def synth_corpus(dest: Path, n: int, start: int = 95_000_000) -> list[int]:
    """N articles with PMCIDs start..start+n-1."""
    Path(dest).mkdir(parents=True, exist_ok=True)
    ids = list(range(start, start + n))
    for i in ids:
        synth_article(dest, i)
    return ids


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def measure(src: Path, out: Path, workers: int) -> dict:
    import psutil

    cmd = [str(Path(sys.executable).parent / "biomedica"), "build", "--source", "local", "--input", str(src),
           "--out", str(out), "--workers", str(workers), "--no-progress"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = {"driver": 0, "worker": 0, "disk": 0}
    stop = threading.Event()

    def sample_disk():
        while not stop.is_set():
            if out.exists():
                peak["disk"] = max(peak["disk"], _du(out))
            stop.wait(0.5)

    t = threading.Thread(target=sample_disk, daemon=True)
    t.start()
    while proc.poll() is None:
        try:
            peak["driver"] = max(peak["driver"], ps.memory_info().rss)
            for c in ps.children(recursive=True):
                try:
                    peak["worker"] = max(peak["worker"], c.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.05)
    stop.set()
    t.join()
    secs = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.read().decode()[-2000:])
    final = _du(out) - _du(out / "_work")
    peak["disk"] = max(peak["disk"], _du(out))
    return {"secs": secs, "driver_mb": peak["driver"] / 1e6, "worker_mb": peak["worker"] / 1e6,
            "peak_disk_mb": peak["disk"] / 1e6, "final_mb": final / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,4000,16000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="Keep corpora and outputs here.")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    rows = []
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            src, out = base / f"src_{n}", base / f"out_{n}"
            if not src.exists():
                t = time.time()
                synth_corpus(src, n)
                print(f"# generated {n} articles in {time.time() - t:.0f} s", file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
            r = measure(src, out, args.workers)
            r["n"] = n
            rows.append(r)
            print(f"# N={n}: {r}", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(src, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{args.workers} workers, {os.cpu_count()} cores\n")
    print("| articles | driver peak RSS | largest worker RSS | peak disk / final output | seconds | articles/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['driver_mb']:.0f} MB | {r['worker_mb']:.0f} MB | "
              f"{r['peak_disk_mb'] / r['final_mb']:.2f}× ({r['final_mb']:.0f} MB) | {r['secs']:.1f} | "
              f"{r['n'] / r['secs']:.1f} |")


if __name__ == "__main__":
    main()
