"""``biomedica build --dry-run`` on a synthetic PMC-scale listing: time, peak memory and the plan's folder counts.

Writes a legacy ``oa_file_list.csv`` of N articles (default 6,000,000: PMC-OA's size) with PMC-like licences
(68% CC BY / CC0, 26% CC BY-NC*, 6% no CC licence, as the field notes' 4.2 / 1.6 / 0.4 M split), then runs
``biomedica build --source legacy --input DIR --out OUT --dry-run --json`` in a subprocess, sampling its RSS.

    python benchmarks/bench_plan.py [--n 6000000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LICENCES = [("CC BY", 0.60), ("CC0", 0.08), ("CC BY-NC", 0.10), ("CC BY-NC-ND", 0.10), ("CC BY-NC-SA", 0.06),
            ("NO-CC CODE", 0.06)]


def write_listing(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    names, weights = zip(*LICENCES)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License\n")
        lic = rng.choices(names, weights, k=n)
        for i in range(n):
            pmc = 1_000_000 + i
            fh.write(f"oa_package/{pmc % 256:02x}/{pmc // 256 % 256:02x}/PMC{pmc}.tar.gz,J. {2000 + i % 25};"
                     f" {i % 50}:{i % 997},PMC{pmc},2024-01-01 00:00:00,{30_000_000 + i},{lic[i]}\n")


def measure(listing_dir: Path, out: Path) -> dict:
    import psutil

    exe = Path(sys.executable).with_name("biomedica")
    cmd = [str(exe), "build", "--source", "legacy", "--input", str(listing_dir), "--out", str(out), "--dry-run",
           "--json", "--workers", "64"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        proc = psutil.Process(p.pid)
        while p.poll() is None:
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = p.communicate()
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"dry run failed: {stderr[-2000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "plan": json.loads(stdout), "out_created": out.exists()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the listing in this folder.")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_plan_"))
    root.mkdir(parents=True, exist_ok=True)
    listing = root / "oa_file_list.csv"
    t0 = time.perf_counter()
    if not listing.exists():
        write_listing(listing, args.n)
    print(f"listing: {args.n:,} rows, {listing.stat().st_size / 2**20:.0f} MB, written in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        res = measure(root, root / "out")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    plan = res.pop("plan")
    res.update(articles=plan["articles"], listing_seconds=round(plan["listing_seconds"], 1),
               partitions=plan["partitions"], shards=plan["shards"],
               folders={f["folder"]: [f["entries"], f["entries_after_updates"]] for f in plan["folders"]},
               files=[plan["files_total"], plan["files_total_after_updates"]], commits=plan["commits"],
               push_hours=round(plan["push_hours"], 1), build_hours=round(plan["build_hours"], 1),
               bytes_tb=round(plan["bytes_total"] / 1e12, 2),
               nested=[plan["nested_folder_example"], plan["nested_folders"], plan["nested_max_entries"]], checks=[(c["what"], c["value"], c["ok"])
                                                                       for c in plan["checks"]])
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
