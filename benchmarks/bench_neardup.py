#!/usr/bin/env python
"""Near-duplicate machinery: hash speed, threshold calibration, grouping at scale.

* **Hashes per second per core** on the real fixture figures, already decoded (as in the per-article
  worker): the build's 256-bit pHash, the other candidates, and the naive ``imagehash.phash`` on the full
  image; the anchor is decoding the same files (``Image.open().load()``), which the worker pays anyway.
* **Calibration**: each fixture figure (hashed as the build hashes it) vs its re-encoded (JPEG q60-95), resized
  (0.5-2x), PNG<->JPEG and resized+q60 copies, made from its full-size pixels (positives) and every pair of distinct figures (negatives): distance distributions
  per candidate hash, precision / recall at the chosen threshold.
* **Grouping** (``find_near_duplicates``) at 100 k and 1 M synthetic 256-bit hashes: uniform random
  (pHash bits are balanced) with 1% planted near-duplicate pairs at distances 0..30 and 0.1% rows in
  groups of identical hashes (blank panels); time, peak RSS of the grouping process, recall by distance.
  Anchor: reading the same ``phash`` column with pyarrow. Extrapolated to 24 M rows.
* **Caption near-duplicates** (``caption_near_duplicates``) on real fixture captions replicated with edits.

    python benchmarks/bench_neardup.py                       # everything, sizes 100k and 1M
    python benchmarks/bench_neardup.py --sizes 100000 --skip-calibration
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("BIOMEDICA_SHARED", REPO.parent / "shared"))

from biomedica_hf.neardup import hashing
from biomedica_hf.neardup.calibrate import calibrate, choose_threshold, figure_files, full_image
from biomedica_hf.neardup.groups import DEFAULT_THRESHOLD
from biomedica_hf.neardup.hashing import HASH_NAME, HASHERS, _gray, image_phash, open_image


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def figures() -> list[Path]:
    return figure_files([SHARED / "fixtures" / "pmc", REPO / "biomedica_hf" / "sample_data"])


def bench_hash(files: list[Path], min_seconds: float = 3.0) -> None:
    import imagehash

    data = [f.read_bytes() for f in files]
    t = time.perf_counter()
    full = [full_image(d) for d in data]
    decode = time.perf_counter() - t
    t = time.perf_counter()
    images = [open_image(d) for d in data]
    decode_hash = time.perf_counter() - t
    pixels = sum(im.width * im.height for im in full) / len(full)
    print(f"\n## Hash speed ({HASH_NAME}): {len(images)} real fixture figures, mean {pixels / 1e6:.2f} Mpixel, one core\n")
    print("| what | images/s per core | ms per image |")
    print("|---|---:|---:|")
    print(f"| anchor: decode the files at full size (Image.open + load) | {len(images) / decode:,.0f} | "
          f"{1000 * decode / len(images):.2f} |")
    print(f"| decode as the hash does (open_image: a JPEG at its DCT scale) | {len(images) / decode_hash:,.0f} | "
          f"{1000 * decode_hash / len(images):.2f} |")

    def rate(fn) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            for im in images:
                fn(im)
            n += len(images)
        return n / (time.perf_counter() - t0)

    image_phash(images[0])                   # first call imports scipy's DCT: not part of the rate
    r = rate(image_phash)
    print(f"| **image_phash (256-bit pHash, the build's)** | **{r:,.0f}** | **{1000 / r:.2f}** |")
    for name, fn in HASHERS.items():
        r = rate(lambda im, fn=fn: fn(_gray(im)))
        print(f"| candidate {name} (same normalisation) | {r:,.0f} | {1000 / r:.2f} |")
    images = full
    r = rate(lambda im: imagehash.phash(im, hash_size=16))
    print(f"| naive imagehash.phash(hash_size=16) on the full image | {r:,.0f} | {1000 / r:.2f} |")


def bench_calibration(files: list[Path]) -> None:
    cal = calibrate(files)
    print(f"\n## Calibration ({HASH_NAME}): {len(files)} distinct real figures, {len(cal.all_positives('phash256'))} "
          f"generated copies, {len(cal.negatives['phash256']):,} distinct pairs\n")
    print("| hash | bits | copies: max | p99 | median | distinct: min | p0.1 | p1 | median | gap (min distinct - max copy) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in cal.positives:
        pos, neg = cal.all_positives(name), np.asarray(cal.negatives[name])
        bits = 64 if name.endswith("64") else 256
        print(f"| {name} | {bits} | {pos.max()} | {np.percentile(pos, 99):.0f} | {np.median(pos):.0f} | {neg.min()} | "
              f"{np.percentile(neg, 0.1):.0f} | {np.percentile(neg, 1):.0f} | {np.median(neg):.0f} | {neg.min() - pos.max()} |")
    print("\nCopies by transform (max distance), phash256 / dhash256:\n")
    print("| transform | phash256 max | phash256 mean | dhash256 max |")
    print("|---|---:|---:|---:|")
    for t, ds in cal.positives["phash256"].items():
        print(f"| {t} | {max(ds)} | {np.mean(ds):.1f} | {max(cal.positives['dhash256'][t])} |")
    print("\nPrecision / recall of `distance <= threshold` (precision over all distinct pairs):\n")
    print("| hash | threshold | precision | recall | false positives | false negatives |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, th in [("phash256", t) for t in (8, 12, 16, DEFAULT_THRESHOLD, 24, 32, 40)] + \
                    [("dhash256", 13), ("dhash256", 20), ("phash64", 4), ("phash64", 8), ("dhash64", 8)]:
        p, r, fp, fn = cal.precision_recall(name, th)
        mark = "**" if (name, th) == ("phash256", DEFAULT_THRESHOLD) else ""
        print(f"| {mark}{name}{mark} | {mark}{th}{mark} | {p:.4f} | {r:.4f} | {fp} | {fn} |")
    a, b, d = cal.closest_negative["phash256"]
    print(f"\nClosest distinct pair (phash256, {d} bits): {Path(a).name} vs {Path(b).name}; "
          f"midpoint of the gap: {choose_threshold(cal, 'phash256')}; chosen: {DEFAULT_THRESHOLD} (nearer the copies: "
          "distinct figures drawn from one template are the risk).")


# ------------------------------------------------------------------ grouping at size (child processes)

def _make(n: int, folder: str, seed: int = 0) -> None:
    """Write n synthetic rows in parts of 100k, plus the truth (planted pairs) as JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64 - 1, size=(n, 4), dtype=np.uint64, endpoint=True)
    perm = rng.permutation(n)
    npairs, nblank = n // 100, n // 1000
    src, dst = perm[:npairs], perm[npairs:2 * npairs]
    dist = rng.integers(0, 31, npairs)
    flips = rng.random((npairs, 256)).argsort(axis=1)
    for k in range(31):
        sel = np.flatnonzero(dist == k)
        w = words[src[sel]].copy()
        for c in range(k):
            bit = flips[sel, c]
            w[np.arange(len(sel)), bit // 64] ^= np.uint64(1) << (np.uint64(63) - (bit % 64).astype(np.uint64))
        words[dst[sel]] = w
    blank = perm[2 * npairs:2 * npairs + nblank]
    words[blank] = words[blank[0]]
    hexes = np.char.mod("%016x", words).reshape(n, 4)
    hexes = ["".join(r) for r in hexes.tolist()]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    subsets = np.array(["commercial", "noncommercial", "other"])[rng.integers(0, 3, n)]
    for i, lo in enumerate(range(0, n, 100_000)):
        hi = min(n, lo + 100_000)
        pq.write_table(pa.table({"key": [f"PMC{j:09d}_f" for j in range(lo, hi)], "subset": subsets[lo:hi],
                                 "phash": hexes[lo:hi]}), out / f"part-{i:05d}.parquet")
    json.dump({"src": src.tolist(), "dst": dst.tolist(), "dist": dist.tolist(), "blank": blank.tolist()},
              open(out / "truth.json", "w"))


def _group(folder: str, workdir: str) -> None:
    import pyarrow.parquet as pq

    from biomedica_hf.neardup.groups import GroupStats, find_near_duplicates

    parts = sorted(Path(folder).glob("part-*.parquet"))
    import scipy.sparse.csgraph  # noqa: F401 - imported by the grouping: part of the baseline
    base_mb = peak_mb()
    t = time.perf_counter()
    n = sum(pq.read_table(p, columns=["phash"]).num_rows for p in parts)
    read = time.perf_counter() - t
    stats = GroupStats()
    t = time.perf_counter()
    out = {k: d for k, _, d in find_near_duplicates(parts, workdir, stats=stats)}
    sec = time.perf_counter() - t
    truth = json.load(open(Path(folder) / "truth.json"))
    found = {}
    for s, d, k in zip(truth["src"], truth["dst"], truth["dist"]):
        a, b = f"PMC{s:09d}_f", f"PMC{d:09d}_f"
        found.setdefault(k, []).append(a in out or b in out)
    blank_found = sum(f"PMC{b:09d}_f" in out for b in truth["blank"])
    print(json.dumps({"rows": n, "read_s": read, "group_s": sec, "rss_mb": peak_mb(), "base_mb": base_mb,
                      "stats": stats.__dict__, "recall": {k: float(np.mean(v)) for k, v in sorted(found.items())},
                      "blank_flagged": blank_found, "blank": len(truth["blank"]), "flagged": len(out)}))


def _faiss(folder: str) -> None:
    """The in-memory alternative: faiss IndexBinaryMultiHash (9 x 26-bit tables, 1 bit flip probed), self range search."""
    import faiss
    import pyarrow.parquet as pq

    from biomedica_hf.neardup.hashing import hex_to_words

    faiss.omp_set_num_threads(1)
    parts = sorted(Path(folder).glob("part-*.parquet"))
    base_mb = peak_mb()
    t = time.perf_counter()
    codes = np.concatenate([hex_to_words(pq.read_table(p, columns=["phash"])["phash"].to_pylist())
                            for p in parts]).astype(">u8").view(np.uint8).reshape(-1, 32)
    index = faiss.IndexBinaryMultiHash(256, 9, 26)
    index.nflip = 1
    index.add(codes)
    flagged: set[int] = set()
    for lo in range(0, len(codes), 100_000):
        lims, _, ids = index.range_search(codes[lo:lo + 100_000], DEFAULT_THRESHOLD + 1)
        q = np.repeat(np.arange(lo, lo + len(lims) - 1), np.diff(lims.astype(np.int64)))
        flagged.update(ids[ids != q].tolist())
    sec = time.perf_counter() - t
    truth = json.load(open(Path(folder) / "truth.json"))
    found = {}
    for s_, d, k in zip(truth["src"], truth["dst"], truth["dist"]):
        found.setdefault(k, []).append(s_ in flagged or d in flagged)
    print(json.dumps({"rows": len(codes), "group_s": sec, "rss_mb": peak_mb(), "base_mb": base_mb,
                      "recall": {k: float(np.mean(v)) for k, v in sorted(found.items())}}))


def bench_grouping(sizes: list[int], tmp: Path) -> None:
    print("\n## Grouping (find_near_duplicates, threshold %d, default memory budget 512 MB)\n" % DEFAULT_THRESHOLD)
    print("| rows | anchor: read phash column | grouping | rows/s | peak RSS (after imports) | partitions | candidate pairs | "
          "recall d<=8 | d 9-15 | d 16-20 | flagged d 21-30 | blank rows flagged |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for n in sizes:
        folder = tmp / f"syn{n}"
        if not (folder / "truth.json").exists():
            subprocess.run([sys.executable, __file__, "--_make", str(n), str(folder)], check=True)
        r = subprocess.run([sys.executable, __file__, "--_group", str(folder), str(tmp / "work")], check=True,
                           capture_output=True, text=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        results.append(res)
        rec = {int(k): v for k, v in res["recall"].items()}

        def band(lo, hi):
            return np.mean([rec[k] for k in range(lo, hi + 1) if k in rec])

        print(f"| {n:,} | {res['read_s']:.1f} s | {res['group_s']:.1f} s | {n / res['group_s']:,.0f} | "
              f"{res['rss_mb']:,.0f} MB ({res['base_mb']:,.0f} MB) | {res['stats']['partitions']} | {res['stats']['candidate_pairs']:,} | "
              f"{band(0, 8):.4f} | {band(9, 15):.4f} | {band(16, 20):.4f} | {band(21, 30):.4f} | "
              f"{res['blank_flagged']:,} of {res['blank']:,} |")
    print("\nThe in-memory alternative on the same data: faiss `IndexBinaryMultiHash(256, 9 tables, 26 bits)`, "
          "nflip 1, a range search of every row (pairs only, no grouping), one thread:\n")
    print("| rows | seconds | rows/s | peak RSS (after imports) | recall d<=8 | d 9-15 | d 16-20 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        r = subprocess.run([sys.executable, __file__, "--_faiss", str(tmp / f"syn{n}")], check=True,
                           capture_output=True, text=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rec = {int(k): v for k, v in res["recall"].items()}
        band = lambda lo, hi: np.mean([rec[k] for k in range(lo, hi + 1) if k in rec])  # noqa: E731
        print(f"| {n:,} | {res['group_s']:.1f} | {n / res['group_s']:,.0f} | {res['rss_mb']:,.0f} MB "
              f"({res['base_mb']:,.0f} MB) | {band(0, 8):.4f} | {band(9, 15):.4f} | {band(16, 20):.4f} |")
    if results:
        big = results[-1]
        rate = big["rows"] / big["group_s"]
        n24 = 24_000_000
        random_pairs = n24 * (n24 - 1) / 2 * 36 / 2 ** 26
        from biomedica_hf.neardup.hashing import hamming

        rng = np.random.default_rng(1)
        h = rng.integers(0, 2**63, size=(2_000_000, 4), dtype=np.uint64)
        i, j = rng.integers(0, len(h), 4_000_000), rng.integers(0, len(h), 4_000_000)
        t = time.perf_counter()
        hamming(h[i], h[j])
        cand_rate = len(i) / (time.perf_counter() - t)   # gather + XOR + popcount of random pairs
        print(f"\nExtrapolation to 24 M rows: the scan and the records grow linearly ({rate:,.0f} rows/s on one core at "
              f"{big['rows']:,} rows: ~{n24 / rate / 60:,.0f} min); random key collisions grow as n^2 (36 tables "
              f"x 2^-26: ~{random_pairs / 1e6:,.0f} M candidate pairs at 24 M vs "
              f"{big['stats']['candidate_pairs'] / 1e6:,.1f} M at {big['rows']:,}; a random pair is verified at "
              f"{cand_rate / 1e6:,.1f} M pairs/s measured here: ~{random_pairs / max(cand_rate, 1) / 60:,.1f} extra min). "
              f"Disk: records 24 M x 36 x 8 B = {n24 * 36 * 8 / 1e9:.1f} GB in "
              f"{int(np.ceil(n24 * 36 * 8 / (128 << 20)))} partitions of <= 128 MB, hashes 24 M x 32 B = "
              f"{n24 * 32 / 1e9:.2f} GB memory-mapped. Resident memory: one partition (~3x its 128 MB while "
              "sorted and verified) plus the rows that have a near duplicate, the same at 1 M and 24 M.")


def bench_captions(articles: Path, tmp: Path, copies: int = 200) -> None:
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from biomedica_hf.ingest.parse import ParseError, parse_jats
    from biomedica_hf.neardup.captions import caption_near_duplicates
    from biomedica_hf.neardup.groups import GroupStats

    caps = []
    for xml in sorted(articles.glob("*/*.xml")):
        try:
            caps += [f.caption for a in parse_jats(xml) for f in a.figures if f.caption]
        except ParseError:
            continue
    caps = list(dict.fromkeys(caps))
    rng = random.Random(0)
    rows = []
    for c in range(copies):          # each real caption re-used with 0-3 words changed, or templated anew
        for i, cap in enumerate(caps):
            words = cap.split()
            for _ in range(rng.randint(0, 3) if c else 0):
                words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
            rows.append(" ".join(words) if c % 2 == 0 else f"{c} {rng.random()} " + " ".join(words[: rng.randint(1, 6)]))
    t = pa.table({"key": [f"k{i:08d}" for i in range(len(rows))], "subset": ["commercial"] * len(rows), "caption": rows})
    path = tmp / "captions.parquet"
    pq.write_table(t, path)
    import datasketch  # noqa: F401 - part of the baseline
    import scipy.sparse.csgraph  # noqa: F401

    base = peak_mb()
    stats = GroupStats()
    t0 = time.perf_counter()
    n = sum(1 for _ in caption_near_duplicates([path], tmp / "work", stats=stats))
    sec = time.perf_counter() - t0
    print(f"\n## Caption near-duplicates: {len(rows):,} captions ({len(caps)} real fixture captions x {copies}, "
          "edited or templated)\n")
    print("| captions | seconds | captions/s (one core) | groups | flagged | peak RSS (before the call) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(rows):,} | {sec:.1f} | {len(rows) / sec:,.0f} | {stats.groups:,} | {n:,} | "
          f"{peak_mb():,.0f} MB ({base:,.0f} MB) |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_make":
        return _make(int(sys.argv[2]), sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "--_group":
        return _group(sys.argv[2], sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "--_faiss":
        return _faiss(sys.argv[2])
    if len(sys.argv) > 1 and sys.argv[1] == "--_captions":
        return bench_captions(Path(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--tmp", default="/tmp/bench_neardup")
    ap.add_argument("--skip-calibration", action="store_true")
    ap.add_argument("--skip-hash", action="store_true")
    ap.add_argument("--skip-captions", action="store_true")
    ap.add_argument("--input-side", type=int, default=None,
                    help="explore another hash input (short side the DCT scale and box-reduce keep; the build's: "
                         f"{hashing._INPUT_SIDE}); 64 is the 1/8-scale variant measured and rejected in the README")
    args = ap.parse_args()
    if args.input_side:
        hashing._INPUT_SIDE = args.input_side
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    files = figures()
    if not args.skip_hash:
        bench_hash(files)
    if not args.skip_calibration:
        bench_calibration(files)
    bench_grouping([int(s) for s in args.sizes.split(",") if s], tmp)
    if not args.skip_captions:            # a fresh process: its peak memory is its own
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--_captions", str(SHARED / "fixtures" / "pmc" / "articles"),
                        str(tmp)], check=True)


if __name__ == "__main__":
    main()
