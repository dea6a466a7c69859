"""Build throughput: parse + decode + serialize from local packages, next to a raw baseline.

The fixture articles that ship their figure images are replicated (new PMCIDs, half of the copies
as .tar.gz packages) until there are >= --min-figures figures, in two corpora:

* ``tiff-heavy``: every copy holds all eight image-bearing articles (19 JPEG, 3 TIFF figures a copy:
  the TIFF->PNG conversions are most of the work);
* ``realistic``: PMC's own mix, mostly JPEG with a tail: the six JPEG articles in every copy; one copy in
  ten also holds the two eLife TIFF articles, one in ten ships a figure as a PNG (the fixtures' real
  PNG in place of the JPEG), one in ten a figure only as its GIF thumbnail (as PMC10802347 does).

Each corpus is measured in one run:

* raw baseline: read every image file of every package (tar members or files) and decode it (PIL)
* raw baseline of the same figures: read every package the same way and decode only its figure files, the ones the
  build makes pairs of (from the ledger of this checkout's 1-worker build: GIF thumbnails next to their figure and
  images no figure points to are read, inflated inside a .tar.gz, but not decoded). This is the issue's anchor
  ("a raw read-and-decode of the same figures"): the every-image row counts ~1.6 files per pair on these corpora,
  0.6 of them thumbnails that decode in ~0.1 ms
* the build's per-article work alone: each article fetched and processed by ``process_package`` (parse,
  resolve, one decode per figure, conversion, pHash, sha256) in a child process, its clocks started after its
  imports and the listing, nothing written (``--no-article-work`` leaves it out): the build's time beyond it is
  its bookkeeping (staging, shards, tables, the near-duplicate and caption passes, the card) and its start
* biomedica build: list -> parse JATS -> resolve + decode/convert -> ledger -> plan -> shards -> card,
  with 1 and 2 worker processes
* the raw baseline of the same figures in 2 processes (the packages dealt by bytes to two forked processes): the
  anchor's own 2-core scaling in this run, next to the build's 2-worker speed-up. On a shared machine two busy cores
  are often slower than one (1.3-2.0x within minutes on the 2-core machine of issue 28's rounds): no 2-worker build
  can scale past what plain decoding gets from the same two cores at that time

Prints a Markdown table per corpus: pairs/s (wall clock), pairs/s per core, CPU seconds (user + sys of
the build's processes), pairs per CPU second, the build against raw decoding (pairs/s against the raw
rows' files/s, wall clock and CPU: every image file, and the figure files only), the 2-worker speed-up and
peak memory. On a shared machine wall clock is noisy: compare CPU seconds, and rows of one run. BIOMEDICA's
serializer did about 2 pairs/s per process.

    python benchmarks/bench_build.py [--min-figures 2000] [--corpus both|tiff-heavy|realistic] [--keep DIR]
                                     [--baseline CHECKOUT] [--no-article-work]

``--baseline CHECKOUT`` also runs another checkout's ``biomedica`` (``CHECKOUT/.venv/bin/biomedica``, e.g. a
``git worktree`` of main with its own virtual environment) on the same corpora, alternating with this one in
every repeat, so that a change is compared with what it replaces in one run (same load, same inputs).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARTICLES = REPO.parent / "shared" / "fixtures" / "pmc" / "articles"
WITH_IMAGES = ["PMC7112410", "PMC7135076", "PMC7159286", "PMC10802347", "eLife_19405", "eLife_00353",
               "eLife_32671_texture", "eLife_39122_subarticles"]
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff"}
PMC_ID = re.compile(rb'(pub-id-type="pmc(?:id)?"[^>]*>)(?:PMC)?\d+(<)')


TIFF_ARTICLES = ["eLife_19405", "eLife_00353"]
REAL_PNG = ARTICLES.parent / "images_other" / "misc" / "open_clip_with_biomedica_CT.png"
CORPORA = ("tiff-heavy", "realistic")


def _copy_articles(mix: str, c: int) -> list[str]:
    if mix == "tiff-heavy" or c % 10 == 4:
        return WITH_IMAGES
    return [a for a in WITH_IMAGES if a not in TIFF_ARTICLES]


def _copy_files(mix: str, c: int, article: str) -> dict[str, bytes]:
    """The files of one copy of ``article``; in the realistic mix one copy in ten ships PMC7135076's figure as a
    real PNG and one in ten PMC7112410's figure 2 only as its GIF thumbnail."""
    src = ARTICLES / article
    files = {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()}
    if mix == "realistic" and c % 10 == 3 and article == "PMC7135076":
        del files["gr1_lrg.jpg"]
        files["gr1_lrg.png"] = REAL_PNG.read_bytes()
    if mix == "realistic" and c % 10 == 8 and article == "PMC7112410":
        del files["gr2_lrg.jpg"]
    return files


def replicate(dest: Path, min_figures: int, mix: str = "tiff-heavy") -> tuple[int, int]:
    """Copies of the image-bearing articles with fresh PMCIDs; returns (packages, image files)."""
    if mix not in CORPORA:
        raise ValueError(f"unknown corpus {mix!r}: one of {CORPORA}")
    n_pkg = n_img = n_fig = c = 0
    while n_fig < min_figures:
        for a in _copy_articles(mix, c):
            new_id = f"PMC{90_000_000 + c * 100 + WITH_IMAGES.index(a)}"
            files = _copy_files(mix, c, a)
            n_fig += sum(1 for n in files if Path(n).suffix.lower() in IMAGE_EXT and not n.endswith(".gif"))
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
        c += 1
    return n_pkg, n_img


def _in_package(name: str) -> str:
    """A member's path inside its package: a tar member's without its top folder (``PMCID/``), as in the ledger."""
    return name.split("/", 1)[-1]


def _tar_images(p: Path, inflate: str, only: set[str] | None = None) -> list[bytes]:
    """The image members of a ``.tar.gz`` package (``only``: those whose path in the package is in it; the whole
    package is still inflated: a reader cannot skip a member of a gzip stream)."""
    def wanted(m) -> bool:
        return m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXT and (only is None or _in_package(m.name) in only)

    if inflate == "stdlib":
        with tarfile.open(p) as t:
            return [t.extractfile(m).read() for m in t.getmembers() if wanted(m)]
    from biomedica_hf.io.gzstream import open_tar_stream

    with open(p, "rb") as raw, open_tar_stream(raw, inflate) as t:
        return [t.extractfile(m).read() for m in t if wanted(m)]


def raw_baseline(src: Path, inflate: str = "stdlib", figures: dict[str, set[str]] | None = None,
                 packages: list[Path] | None = None) -> int:
    """Read and fully decode every image of every package: the floor any builder pays. ``inflate``: how ``.tar.gz``
    packages are gunzipped, ``stdlib`` (tarfile, the issue's anchor) or ``isal`` (ISA-L, as the build does).
    ``figures`` (:func:`figure_files`): decode only the figure files (package -> paths in it), the same figures the
    build makes pairs of; the thumbnails and the other non-figure images are left undecoded (in a ``.tar.gz`` they
    are still inflated, as every reader must). ``packages``: these packages of ``src`` only (default: all)."""
    n = 0
    for p in sorted(src.iterdir()) if packages is None else packages:
        only = None if figures is None else figures.get(p.name, set())
        if p.is_dir():
            blobs = [f.read_bytes() for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_EXT
                     and (only is None or f.name in only)]
        else:
            blobs = _tar_images(p, inflate, only)
        for b in blobs:
            Image.open(io.BytesIO(b)).load()
            n += 1
    return n


def figure_files(out: Path) -> dict[str, set[str]]:
    """The figure files of a built corpus, from the build's ledger (``out/ledger.parquet``): package name (a
    ``.tar.gz`` or a folder) -> the paths in it of the files read as figure images. GIF thumbnails next to their
    figure (``alternate_rendition``) and images no figure points to (``image_not_a_figure``) are not among them.
    Read in a child process (:func:`run_child`): this process, whose peak RSS the raw rows report, never imports
    pyarrow."""
    code = ("import json, sys, pyarrow.parquet as pq; "
            "t = pq.read_table(sys.argv[1], columns=['kind', 'id', 'state', 'reason', 'source']).to_pylist(); "
            "print(json.dumps([(r['source'], r['id']) for r in t if r['kind'] == 'file' and r['state'] == 'kept' "
            "and r['reason'] == 'figure_image']))")
    text, _, _ = run_child([sys.executable, "-c", code, str(out / "ledger.parquet")], "reading the ledger")
    found: dict[str, set[str]] = {}
    for source, fid in json.loads(text.strip().splitlines()[-1]):
        found.setdefault(source, set()).add(_in_package(fid))
    return found


@dataclass
class Run:
    name: str
    workers: int
    n: int
    seconds: float      # wall clock
    cpu: float          # user + sys, every process of the run
    peak_mb: float      # largest resident set of one process of the run
    build: bool = True  # a build (its speed-up against its own 1-worker row is reported), not a reference row


RAW = "raw: read packages + decode every image"
RAW_FIGURES = "raw: read packages + decode the figure files only (the same figures)"
ISAL = " (isal inflate)"     # the name suffix measure_raw gives a raw row of ISA-L's inflate


def measure_raw(src: Path, inflate: str = "stdlib", figures: dict[str, set[str]] | None = None,
                packages: list[Path] | None = None) -> Run:
    """:func:`raw_baseline` timed in this process: wall clock, CPU and peak RSS (``packages``: these only)."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = raw_baseline(src, inflate, figures, packages)
    name = (RAW if figures is None else RAW_FIGURES) + ("" if inflate == "stdlib" else f" ({inflate} inflate)")
    return Run(name, 1, n, time.perf_counter() - t0, time.process_time() - c0,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, build=False)


def _package_bytes(p: Path, only: set[str]) -> int:
    """What a process reads of a package: a ``.tar.gz`` whole, a folder's figure files."""
    return p.stat().st_size if p.is_file() else sum((p / name).stat().st_size for name in only if (p / name).exists())


def deal(packages: list[Path], figures: dict[str, set[str]], workers: int) -> list[list[Path]]:
    """The packages dealt to ``workers`` processes by the bytes each reads, largest first, each to the least loaded
    (an even share of the work: dealing them alternately by name gave one process the same articles every time)."""
    shares: list[list[Path]] = [[] for _ in range(workers)]
    load = [0] * workers
    sized = sorted(((_package_bytes(p, figures.get(p.name, set())), p.name, p) for p in packages), reverse=True)
    for size, _, p in sized:
        i = load.index(min(load))
        shares[i].append(p)
        load[i] += size
    return [sorted(s) for s in shares]


def measure_raw_parallel(src: Path, figures: dict[str, set[str]], workers: int = 2) -> Run:
    """The raw baseline of the same figures (tarfile's inflate) in ``workers`` forked processes, the packages dealt
    by size (:func:`deal`): how far plain decoding scales on this machine's cores at this time. Wall clock until
    the last one ends; CPU of the processes; peak RSS of the largest."""
    import functools
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:     # a share: measure_raw of it
        parts = list(pool.map(functools.partial(measure_raw, src, "stdlib", figures),
                              deal(sorted(src.iterdir()), figures, workers)))
    return Run(RAW_FIGURES, workers, sum(p.n for p in parts), time.perf_counter() - t0, sum(p.cpu for p in parts),
               max(p.peak_mb for p in parts), build=False)


def scaling_line(raw_one: Run, raw_two: Run, one: Run, two: Run) -> str:
    """The line after a corpus' table: the raw anchor's 2-process scaling in this run, the build's next to it."""
    anchor, build = raw_one.seconds / raw_two.seconds, one.seconds / two.seconds
    return (f"2 cores in this run: the raw read-and-decode of the same figures ran {anchor:.2f}x faster in "
            f"{two.workers} processes than in one; the build ran {build:.2f}x faster with {two.workers} workers "
            f"({build / anchor:.0%} of the anchor's scaling)")


ARTICLE_WORK = "the build's per-article work alone (fetch + process_package, nothing written)"


def article_work(src: Path) -> tuple[int, dict[str, float], float, float]:
    """The build's per-article work and nothing else: every listed article fetched from the local source (the
    build's reader, packages read in memory) and processed by ``process_package`` (parse, resolve, one decode per
    figure, conversion, pHash, sha256: what a worker does per article), in this process, nothing staged, written
    or counted in a ledger file. Returns the samples made, the seconds per stage (``fetch``, and
    ``process_package``'s own ``parse`` and ``media``), and the wall-clock and CPU seconds of the work: the clocks
    start after the imports, the first figure's warm-up and the listing, which the build also pays outside it."""
    from biomedica_hf.ingest.article import process_package
    from biomedica_hf.ingest.media import warm_up
    from biomedica_hf.ingest.sources.local import LocalSource

    warm_up()
    source = LocalSource(src)
    refs = list(source.list_articles())
    stages = {"fetch": 0.0, "parse": 0.0, "media": 0.0}
    n = 0
    with tempfile.TemporaryDirectory() as cache:
        w0, c0 = time.perf_counter(), time.process_time()
        for ref in refs:
            t0 = time.perf_counter()
            pkg = source.fetch(ref, Path(cache))
            stages["fetch"] += time.perf_counter() - t0
            res = process_package(pkg)
            n += len(res.samples)
            for k in ("parse", "media"):
                stages[k] += res.timings.get(k, 0.0)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return n, stages, wall, cpu


def measure_article_work(src: Path) -> tuple[Run, dict[str, float]]:
    """:func:`article_work` as a table row, run in a child process of this Python (:func:`run_child`): its own peak
    RSS, and this process (the raw rows' peak RSS) never holds the package's imports."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from bench_build import article_work; n, stages, wall, cpu = article_work(Path(sys.argv[2])); "
            "print(json.dumps({'n': n, 'stages': stages, 'wall': wall, 'cpu': cpu}))")
    text, ru, _ = run_child([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(src)],
                            "the per-article work")
    out = json.loads(text.strip().splitlines()[-1])
    return Run(ARTICLE_WORK, 1, out["n"], out["wall"], out["cpu"], ru.ru_maxrss / 1024, build=False), out["stages"]


def run_child(cmd: list[str], what: str) -> tuple[str, Any, float]:
    """Run ``cmd`` to its end: its output (stdout and stderr), its resource usage (``wait4``: its own CPU and peak
    RSS) and its wall clock; the benchmark stops, showing the output's end, when it fails (``what`` names it)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        dt = time.perf_counter() - t0
        log.seek(0)
        text = log.read().decode(errors="replace")
    if proc.returncode:
        sys.exit(f"{what} failed ({proc.returncode}):\n{text[-3000:]}")
    return text, ru, dt


def run_build(src: Path, out: Path, workers: int, executor: str = "local", exe: Path | None = None,
              label: str = "") -> Run:
    """One ``biomedica build`` in a child process; its own wall clock, CPU and peak RSS (``wait4``). ``exe``: the
    ``biomedica`` to run (default: this environment's), ``label`` names it in the table."""
    exe = exe or Path(sys.executable).parent / "biomedica"
    cmd = [str(exe), "build", "--input", str(src), "--out", str(out),
           "--workers", str(workers), "--no-dedup", "--no-progress", "--executor", executor, "--address", "local"]
    shutil.rmtree(out, ignore_errors=True)
    _, ru, dt = run_child(cmd, "build")
    samples = sum(json.loads((out / "build_summary.json").read_text())["samples"].values())
    return Run(f"{label}biomedica build --executor {executor}", workers, samples, dt, ru.ru_utime + ru.ru_stime,
               ru.ru_maxrss / 1024)


def best(runs: list[Run]) -> Run:
    """The repeat with the least CPU, with the least wall clock of all repeats (each is a lower bound of noise)."""
    b = min(runs, key=lambda r: r.cpu)
    return Run(b.name, b.workers, b.n, min(r.seconds for r in runs), b.cpu, max(r.peak_mb for r in runs), b.build)


def _vs(r: Run, base: Run | None, cpu: bool = False) -> str:
    """``r``'s pairs/s (per CPU second with ``cpu``) against ``base``'s files/s (a table cell; '-' without it)."""
    if base is None:
        return "-"
    ratio = (r.n / r.cpu) / (base.n / base.cpu) if cpu else (r.n / r.seconds) / (base.n / base.seconds)
    return f"{ratio:.2f}"


def table(rows: list[Run]) -> str:
    """``rows``: the raw baseline (tarfile's inflate, the issue's anchor), the raw baseline with the build's inflate
    (ISA-L), then the builds and reference rows (``build=False``), among them, when measured, the raw baseline of the
    same figures (:data:`RAW_FIGURES`, with tarfile's and with ISA-L's inflate). 'vs raw' compares with the first,
    'vs raw, ISA-L' with the second, 'vs raw, same figures' with the figures-only rows ('-' without them): pairs/s
    against files/s each time."""
    raw, raw_isal = rows[0], rows[1]
    figs = next((r for r in rows if r.name == RAW_FIGURES), None)
    figs_isal = next((r for r in rows if r.name == RAW_FIGURES + ISAL), None)
    one = {r.name: r for r in rows if r.workers == 1}    # each row's own 1-worker row
    lines = ["| pipeline | workers | pairs | seconds | pairs/s | pairs/s per core | CPU s | pairs per CPU s | "
             "vs raw (wall) | vs raw (CPU) | vs raw, ISA-L (wall) | vs raw, same figures (wall) | "
             "vs raw, same figures (CPU) | vs raw, same figures, ISA-L (wall) | speed-up vs 1 worker | "
             "peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rate, per_cpu = r.n / r.seconds, r.n / r.cpu
        ratios = [_vs(r, raw), _vs(r, raw, cpu=True), _vs(r, raw_isal), _vs(r, figs), _vs(r, figs, cpu=True),
                  _vs(r, figs_isal)]
        w1 = one.get(r.name)
        speed = f"{w1.seconds / r.seconds:.2f}x" if (r.build or r.workers > 1) and w1 is not None else "-"
        lines.append(f"| {r.name} | {r.workers} | {r.n} | {r.seconds:.1f} | {rate:.1f} | {rate / r.workers:.1f} | "
                     f"{r.cpu:.1f} | {per_cpu:.1f} | {' | '.join(ratios)} | {speed} | {r.peak_mb:.0f} |")
    lines.append("| BIOMEDICA serializer (published) | 1 | - | - | ~2 | ~2 | - | - | - | - | - | - | - | - | - | - |")
    return "\n".join(lines)


def _noop(x):
    return x


def task_overhead(n: int = 400) -> dict[str, float]:
    """Milliseconds per no-op task through each executor (start-up excluded)."""
    from biomedica_hf.executors import make_executor

    out = {}
    for kind in ("local", "ray"):
        with make_executor(kind, workers=2, address="local") as ex:
            list(ex.map(_noop, range(20)))  # warm the workers
            t0 = time.perf_counter()
            assert len(list(ex.map(_noop, range(n)))) == n
            out[kind] = (time.perf_counter() - t0) / n * 1000
    return out


def compile_package(exe: Path) -> None:
    """Byte-compile the package ``exe`` (a ``biomedica`` entry point) runs, as ``pip install`` does for an installed
    one: with ``PYTHONDONTWRITEBYTECODE`` set (as on CI machines) an editable checkout would otherwise compile its
    ~200 modules from source in every timed build (~0.2 s), a cost no installed build pays."""
    python = exe.parent / "python"
    where = subprocess.run([str(python), "-c", "import biomedica_hf, os; print(os.path.dirname(biomedica_hf.__file__))"],
                           check=True, capture_output=True, text=True, cwd="/").stdout.strip()
    subprocess.run([str(python), "-m", "compileall", "-q", where], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-figures", type=int, default=2000)
    ap.add_argument("--corpus", choices=("both", *CORPORA), default="both")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each row (alternating); the best is reported")
    ap.add_argument("--keep", type=Path, default=None, help="keep inputs/outputs in this folder")
    ap.add_argument("--ray", action="store_true", help="also run with --executor ray (local Ray instance)")
    ap.add_argument("--no-article-work", dest="article_work", action="store_false",
                    help="leave out the row of the build's per-article work alone (fetch + process_package in a "
                         "child process, nothing written): what the build adds to it is its bookkeeping and start")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (with its own .venv) whose build runs alternately with this one")
    args = ap.parse_args()
    builds = [(None, "")]
    if args.baseline is not None:
        base = args.baseline.resolve() / ".venv" / "bin" / "biomedica"
        if not base.exists():
            sys.exit(f"--baseline: {base} does not exist")
        builds = [(base, f"baseline ({args.baseline.name}): "), (None, "this checkout: ")]
    for exe, _ in builds:
        compile_package(exe or Path(sys.executable).parent / "biomedica")
    root = Path(tempfile.mkdtemp(prefix="bench_build_")) if args.keep is None else args.keep
    for mix in CORPORA if args.corpus == "both" else (args.corpus,):
        src = root / f"input-{mix}"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        n_pkg, n_img = replicate(src, args.min_figures, mix)
        print(f"\n### corpus {mix}: {n_pkg} packages, {n_img} image files (incl. .gif thumbnails) in {src}\n")
        configs = [(b, e, w) for w in (1, 2) for e in (("local", "ray") if args.ray else ("local",))
                   for b in range(len(builds))]                # baseline and this checkout back to back
        refs = [("raw", 1), ("raw-isal", 1), ("raw-figures", 1), ("raw-figures-isal", 1), ("raw-figures", 2)] + (
            [("articles", 1)] if args.article_work else [])
        runs: dict = {c: [] for c in [*refs, *configs]}
        stage_runs = []
        figures = None          # the figure files, from this checkout's first 1-worker build's ledger
        for _ in range(max(1, args.repeat)):       # the builds first: the figures-only rows need a ledger
            for b, executor, w in configs:
                exe, label = builds[b]
                runs[(b, executor, w)].append(run_build(src, root / f"out-{mix}-{b}-{executor}-w{w}", w, executor,
                                                        exe, label))
            if figures is None:
                figures = figure_files(root / f"out-{mix}-{len(builds) - 1}-local-w1")
            runs[("raw", 1)].append(measure_raw(src))            # the raw rows back to back: the same conditions
            runs[("raw-isal", 1)].append(measure_raw(src, "isal"))
            runs[("raw-figures", 1)].append(measure_raw(src, figures=figures))
            runs[("raw-figures-isal", 1)].append(measure_raw(src, "isal", figures=figures))
            runs[("raw-figures", 2)].append(measure_raw_parallel(src, figures))
            if args.article_work:
                run, stages = measure_article_work(src)
                runs[("articles", 1)].append(run)
                stage_runs.append((run.cpu, stages))
        print(table([best(v) for v in runs.values()]))
        n_figures, pairs = sum(map(len, figures.values())), runs[(len(builds) - 1, "local", 1)][-1].n
        print(f"\n{n_img} image files: {n_figures} figure files (the build's ledger), {n_img - n_figures} thumbnails "
              f"and other images no figure points to" + ("" if n_figures == pairs else
                                                           f"; the build wrote {pairs} pairs from them"))
        print("\n" + scaling_line(best(runs[("raw-figures", 1)]), best(runs[("raw-figures", 2)]),
                                  *(best(runs[(len(builds) - 1, "local", w)]) for w in (1, 2))))
        if stage_runs:
            stages = min(stage_runs, key=lambda x: x[0])[1]     # the repeat reported in the table
            print("\n" + ARTICLE_WORK + ", by stage (s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    if args.ray:
        print("\nper-task overhead (no-op task, 2 workers):")
        for kind, ms in task_overhead().items():
            print(f"- {kind}: {ms:.2f} ms per task")
    print("\nThe first raw row counts every image file (thumbnails too), the figures-only row the figure files (the "
          "issue's 'same figures'); build counts written pairs; 'vs raw' is pairs/s over raw files/s, 'vs raw, same "
          "figures' over the figures-only row's (wall clock, and per CPU second). CPU s: user + sys of all the "
          "build's processes. Peak RSS: the largest single process (driver or worker). The per-article work row "
          "counts the samples process_package made (the build's pairs before de-duplication); it runs in a child "
          "process, its clocks started after its imports and the listing.")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
