"""The ``biomedica`` command line."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from biomedica_hf import __version__
from biomedica_hf.ingest.options import BuildOptions, default
from biomedica_hf.ingest.sources.base import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_PACKAGE_BYTES
from biomedica_hf.ingest.sources.spec import DEFAULT_RATE, DEFAULT_RETRIES, SourceSpec
from biomedica_hf.io.sizes import parse_size, size_text

SAMPLE_DIR = Path(__file__).parent / "sample_data"
# True once :func:`run` (the console script, ``python -m biomedica_hf.cli``) runs the command: the process is the
# command's alone and ends with it. A command invoked in-process (``main([...])``, click's CliRunner, a notebook)
# leaves process-wide state alone (:func:`_skip_pandas_probe`).
_OWNS_PROCESS = False


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _debug_env() -> bool:
    return os.environ.get("BIOMEDICA_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _translate(exc: BaseException) -> BaseException:
    """A known failure of a library below us as a :class:`BiomedicaError` (else ``exc`` itself)."""
    from biomedica_hf.errors import BiomedicaError, NetworkError, unreachable

    if isinstance(exc, BiomedicaError) or not isinstance(exc, Exception):
        return exc
    if unreachable(exc):
        return NetworkError(f"a server could not be reached ({type(exc).__name__}: {_first_line(exc)})",
                            "check the network connection (or the proxy / *_URL / HF_ENDPOINT settings) "
                            "and rerun the same command")
    return exc


def _raised_in(exc: BaseException, package: str) -> bool:
    """The innermost frame of ``exc``'s traceback is in ``package`` (an installed top-level package)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:200]


class BiomedicaGroup(click.Group):
    """The error layer: a :class:`~biomedica_hf.errors.BiomedicaError` (raised where the failure
    happens, or translated from a network failure) becomes one ``Error: ...`` line on stderr and its
    exit code; ``--debug`` / ``BIOMEDICA_DEBUG=1`` lets the traceback through instead."""

    def invoke(self, ctx: click.Context):
        from biomedica_hf.errors import BiomedicaError

        try:
            return super().invoke(ctx)
        except Exception as exc:  # noqa: BLE001 - translated or re-raised unchanged
            err = _translate(exc)
            if not isinstance(err, BiomedicaError) or ctx.params.get("debug") or _debug_env():
                raise
            click.echo(f"Error: {err.line()}", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=BiomedicaGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="biomedica")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line "
                                            "(also BIOMEDICA_DEBUG=1).")
def main(debug: bool) -> None:
    """Build the BIOMEDICA image-caption dataset from PubMed Central Open Access, the Hugging Face way.

    \b
    Typical use:
      biomedica build --sample --out demo_out                       # bundled real sample, offline
      biomedica build --source cloud --pmcids ids.txt --out ds       # today's PMC Cloud Service
      biomedica build --source legacy --input /mirror --filelist /mirror/oa_file_list.csv --out ds
      biomedica build --source local --input ./packages --out ds    # extracted or .tar.gz packages
      biomedica inspect article.nxml                                 # what the parser sees (a folder too)
      biomedica card DATASET                                         # rewrite the dataset card

    Errors a user can fix (missing model weights, no network, no Ray cluster, a model of the wrong
    kind) are printed as one line with the fix; `biomedica --debug CMD` shows the traceback.
    """


def source_spec(source: str, input_path: Path | None, base_url: str | None, filelist: Path | None,
                pmcids: Path | None, list_all: bool, rate: float | None, retries: int | None = None,
                timeout: float | None = None, deadline: float | None = None, max_package_bytes: int | None = None,
                max_member_bytes: int | None = None) -> SourceSpec:
    """The :class:`SourceSpec` of the CLI flags (a usage error names the flag a source kind needs)."""
    archive = {"max_package_bytes": max_package_bytes, "max_member_bytes": max_member_bytes}
    download = {"rate": rate, "retries": retries, "timeout": timeout, "deadline": deadline}
    if source == "local":
        if input_path is None:
            raise click.UsageError("--source local needs --input PATH")
        return SourceSpec("local", str(input_path), **archive, cli=True)
    if source == "cloud":
        if not (pmcids or filelist or list_all):
            raise click.UsageError("--source cloud needs --pmcids FILE, --filelist FILE or --all")
        return SourceSpec("cloud", base_url or None, pmcid_file=str(pmcids) if pmcids else None,
                          filelist=str(filelist) if filelist else None, list_all=list_all, **download, cli=True)
    if source == "legacy":
        root = base_url or (str(input_path) if input_path else None)
        if root is None:
            raise click.UsageError("--source legacy needs --base-url URL or --input MIRROR_DIR")
        list_path = filelist or (Path(input_path) / "oa_file_list.csv" if input_path else None)
        if list_path is None:
            raise click.UsageError("--source legacy needs --filelist FILE")
        return SourceSpec("legacy", root, filelist=str(list_path), **download, **archive, cli=True)
    raise click.UsageError(f"unknown source {source!r}")


def _parse_splits(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.replace(",", "/").split("/")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise click.BadParameter(f"--splits wants three percentages like 98/1/1, got {text!r}")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def _splits_text(fractions: tuple[float, ...]) -> str:
    """``(0.98, 0.01, 0.01)`` -> ``98/1/1`` (the default of ``--splits``)."""
    return "/".join(f"{100 * f:g}" for f in fractions)


def _parse_bytes(text: str) -> int:
    """``"500MB"`` -> 500_000_000, ``"2GiB"`` -> 2 * 2**30, ``"1234"`` -> 1234."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.option("--source", type=click.Choice(["cloud", "legacy", "local"]), default="local", show_default=True,
              help="cloud: PMC Cloud Service (2026 layout); legacy: oa_file_list.csv + oa_package mirror; "
                   "local: a folder of extracted packages, .tar.gz packages or Cloud-layout folders.")
@click.option("--sample", is_flag=True, help="Build from the real sample bundled with the package (offline).")
@click.option("--input", "input_path", type=click.Path(path_type=Path, readable=False),   # checked by check_input
              help="Local folder / legacy mirror root.")
@click.option("--base-url", help="Cloud bucket URL (default https://pmc-oa-opendata.s3.amazonaws.com) or legacy mirror URL.")
@click.option("--filelist", type=click.Path(path_type=Path, exists=True),
              help="oa_file_list.csv / bulk *.filelist.csv / Cloud *.filelist.csv.")
@click.option("--pmcids", type=click.Path(path_type=Path, exists=True),
              help="Text file of PMCIDs (PMC123 or PMC123.2 for a version), one per line.")
@click.option("--all", "list_all", is_flag=True, help="Cloud: list every article of the bucket (ListObjectsV2).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output dataset folder.")
@click.option("--workers", type=int, default=None,
              help="Processes for parse/decode/write [default: CPU count]; with --executor ray and "
                   "--address local, the CPUs of the local Ray instance.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a process pool on this machine; ray: tasks on a Ray cluster (pip install "
                   "'biomedica-hf[ray]'). Same tasks and completion markers: either can resume the other.")
@click.option("--address", "ray_address", default="auto", show_default=True,
              help="Ray cluster address: auto, ray://HOST:10001, or local (start a Ray instance here).")
@click.option("--limit", type=int, default=None, help="Only the first N listed articles.")
@click.option("--shard-samples", type=int, default=default("shard_max_samples"), show_default=True,
              help="Max samples per shard.")
@click.option("--shard-bytes", default=size_text(default("shard_max_bytes")), show_default=True,
              help="Target max shard size (e.g. 500MB).")
@click.option("--seed", type=int, default=default("seed"), show_default=True,
              help="Seed of the write-time shard shuffle.")
@click.option("--no-dedup", is_flag=True, help="Keep every occurrence of an image (default: exact duplicates once).")
@click.option("--min-side", type=int, default=default("media.min_side"), show_default=True, help="Skip images narrower/shorter than this.")
@click.option("--keep-empty-captions", is_flag=True, help="Keep figures whose caption is empty (default: ledgered).")
@click.option("--retry-failed", is_flag=True,
              help="Re-process articles whose earlier run left failed items (downloads, images).")
@click.option("--keep-downloads", is_flag=True, help="Keep fetched packages in OUT/_work/cache after staging.")
@click.option("--rate", type=float, default=DEFAULT_RATE, show_default=True,
              help="Max HTTP requests per second for the whole build (cloud/legacy politeness limit).")
@click.option("--retries", type=int, default=DEFAULT_RETRIES, show_default=True,
              help="Retries per download (5xx, 429, timeouts, dropped or truncated bodies, bad checksums).")
@click.option("--splits", default=_splits_text(default("split_fractions")), show_default=True,
              help="train/validation/test percentages, by a stable hash of the PMCID (an article's figures stay in "
                   "one split; an article never changes split across updates).")
@click.option("--partition-size", type=int, default=None,
              help="Articles per partition, the unit of work of a worker [default: chosen from the listing "
                   "size: 2,000 at PMC-OA scale, fewer (>= 64) for small listings so that every worker has work].")
@click.option("--near-dedup", is_flag=True,
              help="Drop near-duplicate images (256-bit pHash within 20 bits: re-encoded / resized copies) like "
                   "exact duplicates, keeping the most permissive copy; by default they are only flagged "
                   "(near_dup_of in figures.parquet).")
@click.option("--allow-shrink", is_flag=True,
              help="Update: accept a listing that drops more than half of the dataset's articles (withdrawn).")
@click.option("--allow-downgrade", is_flag=True,
              help="Update: accept a listing whose version of an article is older than the dataset's (by default "
                   "the newer version stays and the listing row is ledgered older_version_listed).")
@click.option("--rebuild-state", is_flag=True,
              help="The folder's _work/ resume state is gone: reconstruct it from the published files before "
                   "updating (says what it cannot reconstruct); without it such a folder is refused.")
@click.option("--timeout", type=float, default=None,
              help="Seconds without a byte before a download attempt is abandoned (inactivity; retried) "
                   "[default: 10 s to connect, 60 s between bytes].")
@click.option("--deadline", type=float, default=None,
              help="Most seconds one file may take to download, every attempt and wait included "
                   "(a server trickling bytes fails here; the partial file is resumed by a rerun) [default: 1800].")
@click.option("--max-package-bytes", default=size_text(DEFAULT_MAX_PACKAGE_BYTES), show_default=True,
              help="Budget on a package archive's uncompressed bytes; over it the rest of the archive is "
                   "not extracted (ledger: archive_too_large).")
@click.option("--max-member-bytes", default=size_text(DEFAULT_MAX_MEMBER_BYTES), show_default=True,
              help="Budget on one archive member's uncompressed bytes; over it the member is skipped "
                   "(ledger: archive_too_large).")
@click.option("--max-image-bytes", default=size_text(default("media.max_image_bytes")), show_default=True,
              help="Decode budget per image: width x height x bands x bytes per band, checked from the header "
                   "before decoding; over it the figure is ledgered image_too_large.")
@click.option("--max-pixels", type=int, default=None,
              help="Downscale images with more pixels than this (aspect kept; JPEGs decoded at reduced scale) "
                   "instead of keeping them at full size; the decode budget still applies.")
@click.option("--enrich", is_flag=True, help="After the build, add PubMed MeSH terms etc. (see `biomedica enrich`).")
@click.option("--eutils-url", default=None, help="E-utilities base URL for --enrich.")
@click.option("--no-progress", is_flag=True, help="No progress output (no bar, no stage lines).")
@click.option("--progress-every", type=float, default=default("progress_every"), show_default=True,
              help="Without a terminal (a log file, CI): seconds between progress lines (articles, rate, ETA); "
                   "on a terminal a bar over articles is shown instead.")
@click.option("--dry-run", is_flag=True,
              help="List and partition the source without fetching or writing anything and print the plan: "
                   "articles, partitions, expected shards, files per folder and in total against the Hub's limits, "
                   "expected bytes and time (rates measured on OUT's build when there is one).")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def build(**params):
    """Build WebDataset shards (per licence subset and split) + articles table + ledger from PMC-OA.

    \b
    The listing is cut into partitions by a stable hash of the PMCID; each partition is processed,
    deduplicated against the whole build and written as its own shards, so memory and disk stay flat.
    Rerunning the same command resumes a killed build (byte-identical output). Rerunning against a
    newer listing updates the folder: new articles and versions are added as new shards; retracted,
    withdrawn and superseded articles are removed (only the shards holding them are rewritten, under
    new names). Every article, figure and file ends up in OUT/ledger.parquet as kept, skipped or
    failed, with a reason. A partly failed build exits 0 with its summary. Errors are one line with the
    fix: --input missing or unreadable, a folder with no article or an empty listing (exit 7, nothing
    written); a build that kept no figure (exit 1, the ledger's top reasons); a full disk (exit 1: rerun
    the same command once there is space, and what was cut short is redone); another build running.
    """
    import biomedica_hf.concepts  # noqa: F401 - registers its hooks: labels survive a rebuilt index uninstalled too
    from biomedica_hf.ingest.inputs import check_input, nothing_kept
    from biomedica_hf.ingest.lock import BuildLockedError
    from biomedica_hf.ingest.pipeline import build as run_build
    from biomedica_hf.ingest.sources.base import FatalBuildError, fatal_disk_error, is_disk_error

    p = params
    _setup_logging(p["verbose"])
    if p["sample"]:
        p.update(source="local", input_path=SAMPLE_DIR / "articles")
    if p["max_pixels"] is not None and p["max_pixels"] < 1:
        raise click.UsageError("--max-pixels must be >= 1")
    spec = source_spec(p["source"], p["input_path"], p["base_url"], p["filelist"], p["pmcids"], p["list_all"],
                       p["rate"], p["retries"], p["timeout"], p["deadline"], _parse_bytes(p["max_package_bytes"]),
                       _parse_bytes(p["max_member_bytes"]))
    check_input(spec.kind, None if p["base_url"] and spec.kind == "legacy" else p["input_path"], p["filelist"])
    cfg = build_options(p, spec)      # after the input checks: before any write
    if p["dry_run"]:
        _dry_run(cfg, p["as_json"])
        return
    _skip_pandas_probe()
    try:
        report = run_build(cfg)
    except BuildLockedError as e:
        raise click.ClickException(str(e)) from None
    except FatalBuildError as e:
        raise click.ClickException(f"build stopped: {e}") from None
    except ConnectionError as exc:  # before OSError: ConnectionError is an OSError
        if cfg.executor == "ray" and _raised_in(exc, "ray"):
            from biomedica_hf.errors import NoClusterError

            raise NoClusterError(f"no Ray cluster at --address {cfg.ray_address} ({_first_line(exc)})",
                                 "pass --address local to start Ray on this machine, or ray://HOST:10001 "
                                 "for a running cluster") from exc
        raise
    except OSError as e:
        if not is_disk_error(e):
            raise
        raise click.ClickException(f"build stopped: {fatal_disk_error(e)}") from None
    click.echo(report.text())
    empty = nothing_kept(report.summary, cfg.out, sum(report.samples_per_subset.values()))
    if empty is not None:   # every article failed or was skipped: exit 1 with the ledger's top reasons, no card
        raise empty
    if p["enrich"]:
        _run_enrich(cfg.out, p["eutils_url"], None, fatal=False)
    _write_card(cfg.out, None, workers=cfg.workers)
    click.echo(f"Dataset folder: {Path(cfg.out).resolve()}")


def build_options(params: dict, spec: SourceSpec) -> BuildOptions:
    """The one :class:`BuildOptions` of ``biomedica build``'s parameters (every stage reads it; none re-parses)."""
    from biomedica_hf.ingest.article import MediaOptions
    from biomedica_hf.ingest.provenance import public_command

    p = params
    return BuildOptions(
        out=p["out"], source=spec, workers=p["workers"] or os.cpu_count() or 1, limit=p["limit"],
        shard_max_samples=p["shard_samples"], shard_max_bytes=_parse_bytes(p["shard_bytes"]), seed=p["seed"],
        dedup_images=not p["no_dedup"],
        media=MediaOptions(min_side=p["min_side"], keep_empty_captions=p["keep_empty_captions"],
                           max_image_bytes=_parse_bytes(p["max_image_bytes"]), reduce_to_pixels=p["max_pixels"]),
        keep_downloads=p["keep_downloads"], retry_failed=p["retry_failed"], progress=not p["no_progress"],
        progress_every=p["progress_every"], executor=p["executor"], ray_address=p["ray_address"],
        split_fractions=_parse_splits(p["splits"]), partition_target=p["partition_size"],
        allow_shrink=p["allow_shrink"], near_dedup=p["near_dedup"], allow_downgrade=p["allow_downgrade"],
        rebuild_state=p["rebuild_state"],
        # the card's imports (plots, template, YAML header, the hooks' sections), done while the workers stage
        preload=("matplotlib.figure", "matplotlib.backends.backend_agg", "jinja2", "huggingface_hub.repocard_data",
                 "biomedica_hf.concepts.hooks", "biomedica_hf.panels.hooks"),
        command=public_command("biomedica", sys.argv[1:]))


def _dry_run(cfg: BuildOptions, as_json: bool) -> None:
    """``build --dry-run``: the plan (biomedica_hf.ingest.plan), nothing fetched, nothing written."""
    import json as _json

    from biomedica_hf.ingest.plan import plan_build
    from biomedica_hf.ingest.sources import make_source

    src = make_source(cfg.source)
    try:
        plan = plan_build(src, source_name=cfg.source.kind, out=cfg.out, limit=cfg.limit,
                          fractions=cfg.split_fractions, partition_target=cfg.partition_target,
                          shard_max_samples=cfg.shard_max_samples, shard_max_bytes=cfg.shard_max_bytes,
                          workers=cfg.workers, progress=cfg.progress and not as_json)
    finally:
        src.close()
    click.echo(_json.dumps(plan.to_json(), indent=2) if as_json else plan.text())


def _skip_pandas_probe() -> None:
    """Where the command owns its process (:data:`_OWNS_PROCESS`): pyarrow's pandas probe answered without importing
    pandas, which the build and the card never use (0.2-0.3 s and ~30 MB of every build: io/pandas_probe.py)."""
    if _OWNS_PROCESS:
        from biomedica_hf.io.pandas_probe import skip_pandas_probe

        skip_pandas_probe()


def _write_card(out: Path, repo_id: str | None, workers: int = 1) -> None:
    from biomedica_hf.dataset.card import write_card

    path = write_card(out, repo_id=repo_id, workers=workers)   # with the build's workers: plots drawn in parallel
    click.echo(f"Dataset card: {path} (plots in {path.parent / 'card'})")


@main.command()
@click.argument("dataset", required=False, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", "out_alias", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="The dataset folder, as the older spelling `biomedica card --out DATASET`.")
@click.option("--repo-id", default=None, help="Hub repo id used in the card's usage examples (ORG/NAME).")
def card(dataset, out_alias, repo_id):
    """Write the dataset card of DATASET (the output of `biomedica build`): DATASET/README.md with the
    YAML Hugging Face reads (configs per subset, `all`, `articles`, `figures`; features; licence; tags)
    and a body from the folder's real statistics, with PNG plots in DATASET/card/. `biomedica build`
    runs this at the end."""
    if dataset is not None and out_alias is not None and Path(dataset).resolve() != Path(out_alias).resolve():
        raise click.UsageError(f"two dataset folders: DATASET {dataset} and --out {out_alias}; give one")
    dataset = dataset if dataset is not None else out_alias
    if dataset is None:
        raise click.UsageError("give the dataset folder: biomedica card DATASET")
    _skip_pandas_probe()
    _write_card(dataset, repo_id)


@main.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a text report.")
def inspect(path, as_json):
    """Show what the parser extracts from PATH: an XML file, a .tar.gz package, an article folder
    or a folder of them (listed as `build --source local --input PATH` lists it).

    Exits 1 with one line when no article could be parsed (not XML, not JATS, no XML in the package,
    no article in the folder). Articles, licence (normalised code and subset), figures with captions,
    graphics and in-text references: the tool to debug one article.
    """
    from biomedica_hf.ingest.inspect import format_any, inspect_any

    report = inspect_any(path)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    if not report["articles"]:  # nothing the parser could read: say why on one line, exit 1
        why = "; ".join(report["warnings"]) or "no JATS article in it"
        raise click.ClickException(f"{path}: no article parsed ({_clip_line(why)}): inspect takes a JATS "
                                   ".xml/.nxml file, a PMC .tar.gz package or a folder of them")
    if not as_json:
        click.echo(format_any(report))


def _clip_line(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _run_enrich(out: Path, base_url: str | None, api_key: str | None, refresh: bool | str = False,
                fatal: bool = True, retries: int | None = None) -> None:
    """Enrich ``out``/articles.parquet; when every efetch request failed, one clear line: an error
    (exit 1) with ``fatal``, else a warning (``build --enrich`` keeps the built dataset)."""
    from biomedica_hf.dataset.enrich import EutilsClient, enrich_articles_parquet
    from biomedica_hf.layout import ARTICLES_TABLE, WORK_DIR

    client = EutilsClient(**({"base_url": base_url} if base_url else {}), **({"api_key": api_key} if api_key else {}),
                          **({"max_retries": retries} if retries is not None else {}))
    report = enrich_articles_parquet(Path(out) / ARTICLES_TABLE, client, Path(out) / WORK_DIR / "pubmed",
                                     refresh=refresh)
    click.echo(str(report))
    if report.n_requests and len(report.failed_batches) == report.n_requests:
        first = " ".join(report.failed_batches[0].error.split())[:300]
        msg = (f"enrich: every efetch request failed ({report.n_requests} batches, {len(report.failed_pmids)} "
               f"PMIDs), nothing enriched; first error: {first}. Check the network (or --base-url) and rerun: "
               "only what is missing is fetched.")
        if fatal:
            raise click.ClickException(msg)
        click.echo(f"Warning: {msg}", err=True)


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--base-url", default=None, help="E-utilities base URL (default NCBI).")
@click.option("--api-key", default=None, envvar="NCBI_API_KEY", help="NCBI API key (10 requests/s instead of 3).")
@click.option("--refresh", is_flag=True, help="Fetch every PMID again, ignoring the cache (e.g. after a bad run).")
@click.option("--refresh-missing", is_flag=True, help="Fetch again only the PMIDs PubMed did not return last time.")
@click.option("--retries", type=int, default=5, show_default=True,
              help="Retries per efetch request (429, 5xx, timeouts, dropped connections, answers cut short).")
def enrich(dataset, base_url, api_key, refresh, refresh_missing, retries):
    """Add PubMed metadata (MeSH terms, publication types, missing abstracts) to DATASET/articles.parquet.

    Batches of <= 200 PMIDs via efetch, rate-limited, cached in DATASET/_work/pubmed (reruns only
    fetch what is missing); records are joined by PMID, and PMIDs PubMed did not return are reported.
    Answers cut short or malformed are asked again and never cached. Exits 1 with one line when
    every request failed (no network, wrong --base-url).
    """
    from biomedica_hf.layout import ARTICLES_TABLE

    if not (Path(dataset) / ARTICLES_TABLE).exists():
        raise click.UsageError(f"{dataset} has no articles.parquet: run `biomedica build` first")
    if retries < 0:
        raise click.UsageError("--retries must be >= 0")
    _run_enrich(dataset, base_url, api_key, refresh=True if refresh else ("missing" if refresh_missing else False),
                retries=retries)


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--repo-id", required=True, help="Hub dataset repository, ORG/NAME.")
@click.option("--private", is_flag=True, help="Create the repository private (refused if it exists and is public).")
@click.option("--revision", default=None, help="Branch to push to (created if missing) [default: main].")
@click.option("--dry-run", is_flag=True, help="Only print the plan: files, sizes, what is left out and why.")
@click.option("--num-workers", type=int, default=None,
              help="Parallel uploads (upload_large_folder on huggingface_hub < 2; 2.x manages this itself).")
def push(dataset, repo_id, private, revision, dry_run, num_workers):
    """Upload DATASET to the Hugging Face Hub as a dataset repository.

    Uploads exactly the dataset's own files (shards with their Parquet and stats, sizes.json, the
    tables, README.md, the plots the card links, the table-config tars), never _work/, symlinks, hidden,
    temporary or stray files. Runs `biomedica verify`'s fast check first: an unfinished build, shards that
    disagree with the index or a missing card block the push. Only files that differ from the remote
    (size and hash from the Hub API) are uploaded, and remote dataset files the folder no longer has
    (e.g. shards replaced by an update) are deleted in the same commit. Run the same command again to
    complete an interrupted push.
    """
    from biomedica_hf.dataset.hub import HubError, push_folder

    try:
        plan = push_folder(dataset, repo_id, private=private, revision=revision, dry_run=dry_run,
                           num_workers=num_workers)
    except HubError as e:
        raise click.ClickException(str(e)) from e
    except Exception as e:  # noqa: BLE001 - only a network failure is translated
        from biomedica_hf.errors import NetworkError, unreachable

        if not unreachable(e):
            raise
        raise NetworkError(f"the Hugging Face Hub could not be reached ({type(e).__name__}: {_first_line(e)})",
                           "check the network (or HF_ENDPOINT) and rerun the same command: the push resumes; "
                           "--dry-run checks the folder offline") from e
    click.echo(plan.text())
    if not dry_run:
        from huggingface_hub import constants

        click.echo(f"Uploaded {len(plan.uploaded or [])} new or changed file(s), deleted {len(plan.deleted or [])} "
                   f"remote file(s) the dataset no longer has"
                   + (": " + ", ".join(plan.deleted[:10]) if plan.deleted else "") + ".")
        click.echo(f"Pushed to {constants.ENDPOINT}/datasets/{repo_id}")


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--deep", is_flag=True, help="Also read every image and check its sha256 against figures.parquet.")
def verify(dataset, deep):
    """Check every shard of DATASET against its _stats.json, sizes.json and figures.parquet.

    \b
    Fast (default): shard files paired by stem (<subset>/sNNN/gNNN/*.tar, or <subset>/*.tar in folders built
    before the sub-folder layout, with .parquet and _stats.json), tar sizes and sample counts against the
    stats, each folder's sizes.json listing its shards, the index listing only
    existing shards (paths inside the dataset, no key twice, no stale or duplicated shard), and every tar
    header where the index puts it. --deep: plus the sha256 of every image.
    Exit status 0 when consistent, 1 with the list of problems otherwise. `biomedica push` runs the fast check.
    """
    from biomedica_hf.dataset.verify import verify_folder

    report = verify_folder(dataset, deep=deep)
    click.echo(report.text())
    if not report.ok:
        sys.exit(1)


def _register_commands() -> None:
    """Commands of the other stages live next to their code; their modules import only click at load."""
    from biomedica_hf.concepts.cli import COMMANDS as CONCEPT_COMMANDS
    from biomedica_hf.eval.cli import COMMANDS as EVAL_COMMANDS
    from biomedica_hf.eval.decontaminate_cli import COMMANDS as NEARDUP_COMMANDS
    from biomedica_hf.search.cli import COMMANDS as SEARCH_COMMANDS
    from biomedica_hf.train.plot import COMMANDS as TRAIN_COMMANDS
    from biomedica_hf.vlm.cli import COMMANDS as VLM_COMMANDS

    for command in CONCEPT_COMMANDS + EVAL_COMMANDS + NEARDUP_COMMANDS + SEARCH_COMMANDS + VLM_COMMANDS + TRAIN_COMMANDS:
        main.add_command(command)


_register_commands()


def _register_panel_commands() -> None:
    """``biomedica panels ...`` (biomedica_hf/panels/cli.py)."""
    from biomedica_hf.panels.cli import COMMANDS as PANEL_COMMANDS

    for command in PANEL_COMMANDS:
        main.add_command(command)


_register_panel_commands()


def run() -> None:
    """The ``biomedica`` console script: :func:`main`, then an exit without the interpreter's teardown.

    At exit CPython frees, one by one, every object of every module the command imported (numpy, pyarrow, pandas,
    lxml, matplotlib, scipy): ~0.3 s after a build has finished (benchmarks/bench_build.py), for memory the
    operating system takes back at once. Once the command has returned, the process ends as CPython's own exit
    begins (threads that are not daemons joined, every ``atexit`` handler run: logging's flush, multiprocessing's
    and Ray's clean-up, those of any library; stdout and stderr flushed) and then leaves with ``os._exit`` and the
    command's exit status, the way Instagram skips the same teardown. Under a tracer or profiler (coverage,
    ``python -m cProfile``: they save after the script returns), in ``-X dev`` mode, or with
    ``BIOMEDICA_FULL_EXIT=1``, the interpreter exits as usual."""
    global _OWNS_PROCESS
    _OWNS_PROCESS = True
    try:
        main()                          # click's standalone mode: always ends in SystemExit
    except SystemExit as e:
        _exit(e.code)
    _exit(0)


def _exit(code) -> None:
    """``sys.exit(code)``, without the teardown when nothing can need it (:func:`run`)."""
    if (sys.gettrace() is not None or sys.getprofile() is not None or sys.flags.dev_mode
            or os.environ.get("BIOMEDICA_FULL_EXIT", "").strip().lower() in ("1", "true", "yes", "on")):
        sys.exit(code)
    import atexit
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:                               # sys.exit("message"): printed to stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()            # (runs and clears them: none runs twice)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):   # a closed pipe: CPython's exit reports it with status 120
            status = status or 120
    os._exit(status & 0xFF)


if __name__ == "__main__":
    run()
