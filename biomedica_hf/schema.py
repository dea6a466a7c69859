"""Records that cross module boundaries, and the one schema every stage uses.

Data flows one way: source -> parse -> media -> shard writer -> Hub folder.

* :class:`ArticleRef`     - an entry of a listing (what a source knows before fetching).
* :class:`ArticlePackage` - the files of one article, fetched and on local disk.
* :class:`Article`        - article-level metadata parsed from JATS (one row of ``articles.parquet``).
* :class:`Figure`         - one ``<fig>`` with its caption, graphics and in-text references.
* :class:`ImageRecord`    - one decoded / verified image (bytes as they go into the shard).
* :class:`Sample`         - one image-caption pair as written into a WebDataset shard.
* :class:`LedgerEntry`    - the fate of every article, figure (panel) and file.

``SAMPLE_FIELDS`` / ``ARTICLE_FIELDS`` / ``LEDGER_FIELDS`` are the single definition of the columns;
``pyarrow`` schemas (writer) and ``datasets.Features`` (dataset card, loader) are derived from them.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

SUBSETS = ("commercial", "noncommercial", "other")

# ledger states
KEPT = "kept"
SKIPPED = "skipped"
FAILED = "failed"
STATES = (KEPT, SKIPPED, FAILED)


@dataclass
class ArticleRef:
    """One article as named by a listing (file list, PMCID list, S3 listing, local folder scan)."""

    pmcid: str                      # "PMC7112410" (or a stable local id when the file has none)
    location: str                   # URL, S3 key prefix, or local path the source fetches from
    version: int | None = None      # PMC Cloud article version (None: latest / unknown)
    pmid: str | None = None
    citation: str | None = None
    license_hint: str | None = None  # licence as stated by the listing ("CC BY", "NO-CC CODE", ...)
    last_updated: str | None = None  # ISO "YYYY-MM-DD HH:MM:SS" when known
    retracted: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArticlePackage:
    """The files of one article on local disk, after fetching.

    ``files`` maps the file's name *relative to the package root* (what ``xlink:href`` resolves
    against) to its local path. ``problems`` lists (file name, reason) for files that could not be
    obtained (truncated archive, md5 mismatch, 404): they go to the ledger as failed files.
    """

    ref: ArticleRef
    root: Path
    files: dict[str, Path]
    xml_files: list[str]                      # names (keys of ``files``) of the article XML(s)
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. PMC Cloud metadata JSON
    problems: list[tuple[str, str]] = field(default_factory=list)
    # the bytes of files held in memory (an archive read without extracting it: ``files`` then names paths
    # that were never written); read every file through :meth:`source` / :meth:`open` / :meth:`size`
    data: dict[str, bytes] = field(default_factory=dict)

    def source(self, name: str) -> bytes | Path:
        """The file's bytes when held in memory, else its path."""
        return self.data[name] if name in self.data else self.files[name]

    def read(self, name: str) -> bytes:
        """The file's bytes."""
        return self.data[name] if name in self.data else self.files[name].read_bytes()

    def open(self, name: str) -> BinaryIO:
        """The file opened for reading (binary, seekable)."""
        return io.BytesIO(self.data[name]) if name in self.data else open(self.files[name], "rb")  # noqa: SIM115

    def size(self, name: str) -> int:
        """The file's size in bytes (0 when it cannot be read)."""
        if name in self.data:
            return len(self.data[name])
        try:
            return self.files[name].stat().st_size
        except OSError:
            return 0


@dataclass
class Reference:
    """An in-text reference (``<xref ref-type="fig">``) to a figure."""

    sentence: str
    paragraph: str
    xref_text: str = ""


@dataclass
class Article:
    pmcid: str
    pmid: str | None = None
    doi: str | None = None
    title: str = ""
    journal: str | None = None
    publisher: str | None = None
    pub_date: str | None = None          # ISO, possibly partial: "2020", "2020-03", "2020-03-14"
    year: int | None = None
    article_type: str | None = None
    subjects: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    license_url: str | None = None
    license_type: str | None = None      # @license-type attribute
    license_text: str | None = None      # licence prose
    license_code: str = "unknown"        # normalised: "CC BY", "CC BY-NC-ND", "CC0", "PDM", "PHE", ...
    subset: str = "other"                # one of SUBSETS
    abstract: str = ""
    authors_count: int = 0
    full_text: str = ""
    dtd: str | None = None               # DTD / JATS version as declared
    version: int | None = None           # PMC Cloud article version
    source_file: str | None = None       # XML file name inside the package
    mesh_terms: list[str] = field(default_factory=list)        # from PubMed (enrich)
    publication_types: list[str] = field(default_factory=list)  # from PubMed (enrich)


@dataclass
class Figure:
    """One ``<fig>``: every ``graphic`` becomes one sample (panel)."""

    fig_id: str                           # @id or a positional id ("fig-3") when absent
    label: str = ""
    caption_title: str = ""
    caption_text: str = ""                # caption body (without the title): one line per paragraph
    caption_doi: str | None = None        # DOI of the figure stated at the caption's end (eLife), moved out
    graphics: list[str] = field(default_factory=list)  # xlink:href of each graphic, in order
    fig_type: str | None = None
    in_sub_article: bool = False
    sub_article_type: str | None = None
    sub_article_id: str | None = None
    fig_group_id: str | None = None
    position: int = 0                      # order of the figure in the document
    references: list[Reference] = field(default_factory=list)

    @property
    def caption(self) -> str:
        """Caption as used for training: title and text joined; empty stays empty."""
        parts = [p for p in (self.caption_title.strip(), self.caption_text.strip()) if p]
        return " ".join(parts)


@dataclass
class ParsedArticle:
    article: Article
    figures: list[Figure] = field(default_factory=list)


def flat_dict(record) -> dict[str, Any]:
    """A dataclass record's fields as a new dict, values as they are: what ``dataclasses.asdict`` gives for a
    record of plain values (str, numbers, bools, None, bytes), without its recursive deep copy (~25x cheaper; the
    build converts a record per figure and per ledger row)."""
    return {name: getattr(record, name) for name in _field_names(type(record))}


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class ImageRecord:
    data: bytes            # bytes written into the shard
    ext: str               # "jpg" or "png"
    width: int
    height: int
    orig_format: str       # "JPEG", "PNG", "GIF", "TIFF", ...
    orig_mode: str         # PIL mode of the source
    sha256: str            # of ``data``
    reencoded: bool        # False when the original bytes were kept
    source_name: str = ""  # file name in the package


@dataclass
class Sample:
    """One image-caption pair as written into a shard: ``<key>.<ext>``, ``<key>.txt``, ``<key>.json``."""

    key: str
    image: ImageRecord
    caption: str
    meta: dict[str, Any]   # values for SAMPLE_FIELDS


@dataclass
class LedgerEntry:
    kind: str              # "article" | "figure" | "file"
    id: str                # pmcid / sample key / file name
    pmcid: str
    state: str             # kept | skipped | failed
    reason: str = ""       # machine-friendly reason code ("image_missing", "duplicate_image", ...)
    detail: str = ""       # human detail (exception text, duplicate key, ...)
    source: str = ""       # where it came from (location)

    def as_dict(self) -> dict[str, Any]:
        return flat_dict(self)


# --------------------------------------------------------------------------------------------
# Column definitions: (name, arrow type name, description). The arrow type names are mapped
# to pyarrow / datasets types by ``arrow_schema`` / ``hf_features`` below.
# --------------------------------------------------------------------------------------------

SAMPLE_FIELDS: list[tuple[str, str, str]] = [
    ("key", "string", "sample key (dot-free): <pmcid>_<graphic>"),
    ("pmcid", "string", "article PMCID; join with the articles table"),
    ("figure_id", "string", "@id of the <fig>"),
    ("figure_label", "string", "figure label, e.g. 'Figure 3'"),
    ("caption_title", "string", "caption title"),
    ("caption", "string", "full caption (title + text, paragraphs separated by a newline), the .txt member"),
    ("caption_doi", "string", "DOI of the figure when its caption ended with one (eLife), moved out of the caption"),
    ("panel_index", "int32", "index of this graphic within its figure"),
    ("panel_count", "int32", "number of graphics in the figure (>1: panels of one figure)"),
    ("image_href", "string", "xlink:href of the graphic"),
    ("image_file", "string", "file name of the image in the package"),
    ("image_format", "string", "format of the source image (JPEG, PNG, GIF, TIFF)"),
    ("image_ext", "string", "member extension in the shard (jpg or png)"),
    ("width", "int32", "image width in pixels"),
    ("height", "int32", "image height in pixels"),
    ("sha256", "string", "SHA-256 of the image bytes in the shard"),
    ("phash", "string", "256-bit perceptual hash (pHash, hex) of the image: near-duplicates within 20 bits"),
    ("reencoded", "bool", "True when the image was converted (not the original bytes)"),
    ("fig_type", "string", "@fig-type"),
    ("in_sub_article", "bool", "figure comes from a <sub-article> (peer review, reply, ...)"),
    ("sub_article_type", "string", "@article-type of the sub-article"),
    ("fig_group_id", "string", "@id of the enclosing <fig-group>"),
    ("references", "list<string>", "sentences citing the figure"),
    ("reference_paragraphs", "list<string>", "paragraphs citing the figure"),
    ("also_in", "list<string>", "other PMCIDs using the same image bytes (exact duplicates)"),
    ("license_code", "string", "normalised licence of the article"),
    ("subset", "string", "commercial / noncommercial / other"),
    ("year", "int32", "publication year of the article"),
    ("split", "string", "train / validation / test, by a stable hash of the PMCID (every panel of an article)"),
]

ARTICLE_FIELDS: list[tuple[str, str, str]] = [
    ("pmcid", "string", "PMCID"),
    ("pmid", "string", "PubMed id"),
    ("doi", "string", "DOI"),
    ("title", "string", "article title"),
    ("journal", "string", "journal title"),
    ("publisher", "string", "publisher name"),
    ("pub_date", "string", "publication date (ISO, possibly partial)"),
    ("year", "int32", "publication year"),
    ("article_type", "string", "@article-type"),
    ("subjects", "list<string>", "subject headings"),
    ("keywords", "list<string>", "author keywords"),
    ("license_url", "string", "licence URL"),
    ("license_type", "string", "@license-type"),
    ("license_text", "string", "licence prose"),
    ("license_code", "string", "normalised licence code"),
    ("subset", "string", "commercial / noncommercial / other"),
    ("abstract", "string", "abstract"),
    ("authors_count", "int32", "number of contributing authors"),
    ("full_text", "string", "body text"),
    ("dtd", "string", "DTD / JATS version"),
    ("version", "int32", "PMC article version"),
    ("source_file", "string", "XML file the article was parsed from"),
    ("mesh_terms", "list<string>", "MeSH descriptors (PubMed)"),
    ("publication_types", "list<string>", "PubMed publication types"),
    ("n_figures", "int32", "number of <fig> parsed"),
    ("n_samples", "int32", "number of samples written for the article"),
]

# Columns a shard's Parquet adds to SAMPLE_FIELDS: where the sample lives in its tar.
SHARD_INDEX_FIELDS: list[tuple[str, str, str]] = [
    ("shard", "string", "tar file, relative to the dataset root"),
    ("tar_offset", "int64", "byte offset of the sample's first tar header"),
    ("tar_size", "int64", "bytes from the sample's first header to the end of its last member"),
    ("image_offset", "int64", "byte offset of the image bytes in the tar"),
    ("image_size", "int64", "size of the image bytes"),
]

# The ``figures.parquet`` index of a dataset folder: one row per sample, every shard.
FIGURES_INDEX_FIELDS: list[tuple[str, str, str]] = SAMPLE_FIELDS + SHARD_INDEX_FIELDS + [
    ("caption_chars", "int32", "length of the caption in characters"),
    ("near_dup_of", "string", "key kept for this sample's near-duplicate image group (null: kept or unique)"),
    ("caption_dup_of", "string", "key kept for this sample's near-duplicate caption group (null: kept or unique)"),
]

# Columns of the ``figures`` config (tars of JSON rows that ``load_dataset(DIR, "figures")`` reads):
# the index without the long text fields, which the shards and figures.parquet carry.
FIGURES_CONFIG_FIELDS: list[tuple[str, str, str]] = [
    f for f in FIGURES_INDEX_FIELDS if f[0] not in ("caption", "caption_title", "references", "reference_paragraphs")
]

LEDGER_FIELDS: list[tuple[str, str, str]] = [
    ("kind", "string", "article | figure | file"),
    ("id", "string", "pmcid, sample key or file name"),
    ("pmcid", "string", "article"),
    ("state", "string", "kept | skipped | failed"),
    ("reason", "string", "reason code"),
    ("detail", "string", "detail"),
    ("source", "string", "where the item came from"),
]


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(text: str) -> str:
    """A WebDataset key: every run of characters other than letters, digits, ``_`` and ``-`` -> ``_``."""
    return _KEY_UNSAFE.sub("_", text)


def _arrow_type(name: str):
    import pyarrow as pa

    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(_arrow_type(name[5:-1]))
    return {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
            "bool": pa.bool_(), "float32": pa.float32(), "float64": pa.float64()}[name]


def arrow_schema(fields: list[tuple[str, str, str]], extra: list[tuple[str, str, str]] | None = None):
    """pyarrow schema for a column definition list."""
    import pyarrow as pa

    return pa.schema([pa.field(n, _arrow_type(t)) for n, t, _ in list(fields) + list(extra or [])])


def hf_value(name: str):
    """``datasets`` feature for an arrow type name."""
    from datasets import List, Value

    if name.startswith("list<") and name.endswith(">"):
        return List(hf_value(name[5:-1]))
    return Value({"bool": "bool"}.get(name, name))


def hf_features(fields: list[tuple[str, str, str]]):
    from datasets import Features

    return Features({n: hf_value(t) for n, t, _ in fields})


def sample_json_features():
    """Features of the per-sample ``json`` member (what ``datasets`` sees inside WebDataset)."""
    return {n: hf_value(t) for n, t, _ in SAMPLE_FIELDS}


#: the label fields ``biomedica label`` writes into each sample's ``json`` member (licence shards and concept
#: configs): (name, arrow type name, description)
LABEL_JSON_FIELDS: list[tuple[str, str, str]] = [
    ("panel_type", "string", "panel type of the sample's cluster (concept labels)"),
    ("concepts", "list<string>", "global concepts of the sample's cluster (concept labels)"),
    ("local_concepts", "list<string>", "local concepts of the sample's cluster (concept labels)"),
]


def webdataset_features(image_ext: str | None = None, json_extra: dict | None = None, labels: bool = True):
    """Explicit ``datasets.Features`` for a shard: images, caption and the metadata JSON.

    Every sample carries exactly one image member, ``jpg`` or ``png``; ``datasets``' webdataset
    builder maps each member extension to a column, so both are declared (one is None per row).
    ``labels`` (default): the concept label fields (:data:`LABEL_JSON_FIELDS`) are declared too, so that
    ``load_dataset("webdataset", ..., features=webdataset_features())`` keeps them on a labelled folder (an
    undeclared field is silently dropped); on unlabelled shards they are null.
    ``json_extra``: fields some configs' samples carry beyond these.
    """
    from datasets import Features, Image, Value

    feats = {"__key__": Value("string"), "__url__": Value("string")}
    if image_ext in (None, "jpg"):
        feats["jpg"] = Image()
    if image_ext in (None, "png"):
        feats["png"] = Image()
    feats["txt"] = Value("string")
    label_feats = {n: hf_value(t) for n, t, _ in LABEL_JSON_FIELDS} if labels else {}
    feats["json"] = {**sample_json_features(), **label_feats, **(json_extra or {})}
    return Features(feats)

