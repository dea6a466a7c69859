"""Package -> samples: parse every XML of a fetched package, resolve and decode every figure graphic,
and account for every article, figure panel and file in ledger entries.

This is the per-article unit of work of a build (one call per listed article), free of global state:
duplicates across articles and shard assignment are decided later by :mod:`biomedica_hf.ingest.dedup` and :mod:`biomedica_hf.ingest.pipeline`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from biomedica_hf.ingest.media import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_METADATA_BYTES,
    PNG_STRATEGY,
    MediaError,
    alternate_renditions,
    check_image_file,
    is_image_name,
    process_figure,
    resolve_graphic,
)
from biomedica_hf.ingest.parse import ParseError, parse_jats
from biomedica_hf.neardup.hashing import HASH_NAME
from biomedica_hf.ingest.timings import timed
from biomedica_hf.licenses import normalize_license
from biomedica_hf.schema import FAILED, KEPT, SKIPPED, Article, ArticlePackage, Figure, LedgerEntry, Sample, safe_key

# media errors that mean "not a usable figure" rather than "broken input"
SKIP_MEDIA_REASONS = {"too_small"}


@dataclass
class MediaOptions:
    min_side: int = 20
    max_pixels: int = 178_956_970
    keep_empty_captions: bool = False
    png_compress_level: int = 3    # converted images only; with png_strategy "default": 3 is ~3x faster than 6
    png_strategy: str = PNG_STRATEGY   # converted images: Up rows, zlib RLE (media.PNG_STRATEGIES); an
                                       # update keeps its folder's (ingest.snapshots.folder_options)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES   # decode budget (bit depth and bands count): image_too_large
    reduce_to_pixels: int | None = None              # `build --max-pixels`: downscale larger images instead
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES   # JPEG/PNG metadata budget: metadata_too_large
    phash: str = HASH_NAME        # the perceptual hash's definition (neardup.hashing.DEFINITIONS): an update keeps
                                  # its folder's (ingest.snapshots.folder_options)


@dataclass
class PackageResult:
    """Everything one package contributes to the build."""

    ref_id: str
    articles: list[dict] = field(default_factory=list)    # Article fields + n_figures, n_samples
    samples: list[Sample] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (ingest.timings.ARTICLE_STAGES)


def sample_key(pmcid: str, href: str, taken: set[str]) -> str:
    """Dot-free, unique key ``<pmcid>_<graphic stem>`` (``PMC7159286_gr3a_lrg``)."""
    name = PurePosixPath(href.replace("\\", "/")).name
    stem = name.rsplit(".", 1)[0] if is_image_name(name) else name  # "fig.1" has a dot, not an extension
    base = safe_key(f"{pmcid}_{stem}").strip("_")
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def _resolve_license(article: Article, hint: str | None) -> None:
    """The XML's own licence wins; the listing's licence fills in when the XML states none."""
    if article.license_code in ("unknown", "other") and hint:
        code, subset = normalize_license(hint=hint)
        if code not in ("unknown", "other"):
            article.license_code, article.subset = code, subset


def _figure_meta(article: Article, fig: Figure, panel: int, href: str) -> dict:
    return {
        "pmcid": article.pmcid,
        "figure_id": fig.fig_id,
        "figure_label": fig.label,
        "caption_title": fig.caption_title,
        "caption": fig.caption,
        "caption_doi": fig.caption_doi,
        "panel_index": panel,
        "panel_count": len(fig.graphics),
        "image_href": href,
        "fig_type": fig.fig_type,
        "in_sub_article": fig.in_sub_article,
        "sub_article_type": fig.sub_article_type,
        "fig_group_id": fig.fig_group_id,
        "references": [r.sentence for r in fig.references],
        "reference_paragraphs": list(dict.fromkeys(r.paragraph for r in fig.references)),
        "also_in": [],
        "license_code": article.license_code,
        "subset": article.subset,
        "year": article.year,
    }


def _file_fate(name: str, used: dict[str, tuple[str, str]],
               xml_fates: dict[str, tuple[str, str, str]]) -> tuple[str, str]:
    if name in xml_fates:
        state, reason, _ = xml_fates[name]
        return state, reason
    if name in used:
        return used[name]
    if is_image_name(name):
        return SKIPPED, "image_not_a_figure"   # inline formulas, table images, supplementary images
    if name.lower().endswith((".tar.gz", ".tgz")):
        return SKIPPED, "archive_copy"
    return SKIPPED, "not_figure_media"         # pdf, txt, supplementary data, videos, ...


def process_package(pkg: ArticlePackage, opts: MediaOptions | None = None) -> PackageResult:
    """Parse, resolve and decode everything in one package; never raises for bad content."""
    opts = opts or MediaOptions()
    ref = pkg.ref
    res = PackageResult(ref_id=ref.pmcid)
    src = ref.location
    used: dict[str, tuple[str, str]] = {}              # file name -> (state, reason) from figure use
    xml_fates: dict[str, tuple[str, str, str]] = {}    # xml name -> (state, reason, detail)
    seen_pmcids: set[str] = set()

    parsed_all = []
    for xml_name in pkg.xml_files:
        try:
            with timed(res.timings, "parse"):
                parsed = parse_jats(pkg.source(xml_name), source_file=xml_name)
        except ParseError as e:
            state = SKIPPED if e.reason == "not_jats" else FAILED
            xml_fates[xml_name] = (state, e.reason, str(e.detail)[:500])
            continue
        except Exception as e:  # noqa: BLE001 - a parser crash is a failed file, not a failed build
            xml_fates[xml_name] = (FAILED, "parse_error", f"{type(e).__name__}: {e}"[:500])
            continue
        xml_fates[xml_name] = (KEPT, "article_xml", "")
        parsed_all.extend((xml_name, i, len(parsed), pa) for i, pa in enumerate(parsed))

    for xml_name, i, n_in_file, pa in parsed_all:
        article = pa.article
        if not article.pmcid:
            article.pmcid = ref.pmcid if n_in_file == 1 else f"{ref.pmcid}_{i + 1}"
        if article.pmcid in seen_pmcids:      # the same article twice in one package
            res.ledger.append(LedgerEntry("article", f"{article.pmcid}@{xml_name}", article.pmcid, SKIPPED,
                                          "duplicate_in_package", xml_name, src))
            continue
        seen_pmcids.add(article.pmcid)
        if article.pmid is None and ref.pmid:
            article.pmid = ref.pmid
        if article.version is None:
            article.version = ref.version
        _resolve_license(article, ref.license_hint)
        res.articles.append(_article_row(article, pa.figures, res, pkg, opts, used, src))

    for name in sorted(pkg.files):
        state, reason = _file_fate(name, used, xml_fates)
        detail = xml_fates.get(name, ("", "", ""))[2]
        res.ledger.append(LedgerEntry("file", name, ref.pmcid, state, reason, detail, src))
    for name, reason in pkg.problems:
        res.ledger.append(LedgerEntry("file", name, ref.pmcid, FAILED, reason, "", src))

    if not res.articles:
        failed = [f for f in xml_fates.values() if f[0] == FAILED]
        if failed:
            res.ledger.append(LedgerEntry("article", ref.pmcid, ref.pmcid, FAILED, failed[0][1], failed[0][2], src))
        elif not any(e.kind == "article" for e in res.ledger):
            res.ledger.append(LedgerEntry("article", ref.pmcid, ref.pmcid, SKIPPED, "no_article_xml", "", src))
    return res


def _article_row(article: Article, figures: list[Figure], res: PackageResult, pkg: ArticlePackage,
                 opts: MediaOptions, used: dict[str, tuple[str, str]], src: str) -> dict:
    taken: set[str] = set()
    problems = dict(pkg.problems)
    n_samples = n_failed = 0
    for fig in figures:
        if not fig.graphics:
            fid = sample_key(article.pmcid, fig.fig_id, taken)
            res.ledger.append(LedgerEntry("figure", fid, article.pmcid, SKIPPED, "no_graphic", fig.label, src))
            continue
        for panel, href in enumerate(fig.graphics):
            key = sample_key(article.pmcid, href, taken)
            entry = _panel(article, fig, panel, href, key, pkg, problems, opts, used, res)
            entry.source = src
            res.ledger.append(entry)
            n_samples += entry.state == KEPT
            n_failed += entry.state == FAILED
    row = dataclasses.asdict(article)
    row.update(n_figures=len(figures), n_samples=n_samples)
    if n_samples:
        state, reason = KEPT, "has_samples"
    elif not figures:
        state, reason = SKIPPED, "no_figures"
    else:
        state, reason = (FAILED if n_failed else SKIPPED), "no_usable_images"
    res.ledger.append(LedgerEntry("article", article.pmcid, article.pmcid, state, reason,
                                  f"{n_samples} samples from {len(figures)} figures", src))
    return row


def _panel(article: Article, fig: Figure, panel: int, href: str, key: str, pkg: ArticlePackage,
           problems: dict[str, str], opts: MediaOptions, used: dict[str, tuple[str, str]],
           res: PackageResult) -> LedgerEntry:
    pmcid = article.pmcid
    if not fig.caption and not opts.keep_empty_captions:
        return LedgerEntry("figure", key, pmcid, SKIPPED, "empty_caption", href)
    # resolve as if the files we failed to obtain were there: a failed full-size image must fail the
    # panel, not silently fall back to its .gif thumbnail
    name = resolve_graphic(href, {**pkg.files, **{p: Path(p) for p in problems if p not in pkg.files}},
                           lambda n: pkg.size(n) if n in pkg.files else 0)
    if name is None:
        return LedgerEntry("figure", key, pmcid, FAILED, "image_missing", href)
    if name in problems:
        return LedgerEntry("figure", key, pmcid, FAILED, problems[name], f"{href}: {name}")
    for alt in alternate_renditions(name, pkg.files):
        used.setdefault(alt, (SKIPPED, "alternate_rendition"))
    try:
        with timed(res.timings, "media"):
            with pkg.open(name) as f:     # budgets checked before the file is read whole
                check_image_file(f, name, opts.max_metadata_bytes)
                f.seek(0)
                data = f.read()
            # one decode verifies the file, converts it when needed and gives the pixels of its perceptual hash
            image, phash = process_figure(data, name, max_pixels=opts.max_pixels, min_side=opts.min_side,
                                          compress_level=opts.png_compress_level,
                                          png_strategy=opts.png_strategy, max_image_bytes=opts.max_image_bytes,
                                          reduce_to_pixels=opts.reduce_to_pixels, phash_definition=opts.phash)
    except MediaError as e:
        state = SKIPPED if e.reason in SKIP_MEDIA_REASONS else FAILED
        used[name] = (state, e.reason if e.reason.startswith("image_") else f"image_{e.reason}")
        return LedgerEntry("figure", key, pmcid, state, e.reason, f"{name}: {e.detail}"[:500])
    except OSError as e:
        return LedgerEntry("figure", key, pmcid, FAILED, "read_error", f"{name}: {e}"[:500])
    used[name] = (KEPT, "figure_image")
    meta = {"key": key, **_figure_meta(article, fig, panel, href), "image_file": name,
            "image_format": image.orig_format, "image_ext": image.ext, "width": image.width,
            "height": image.height, "sha256": image.sha256, "reencoded": image.reencoded,
            "phash": phash}
    res.samples.append(Sample(key=key, image=image, caption=fig.caption, meta=meta))
    return LedgerEntry("figure", key, pmcid, KEPT, "sample", name)
