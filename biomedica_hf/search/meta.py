"""Figure metadata of an index (``meta.parquet``): row lookups, filter masks (of a
:class:`~biomedica_hf.filters.Selection`) and facet counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.filters import Selection, YearRange, as_list, read_keys

# columns meta.parquet takes from figures.parquet (those present), then from articles.parquet
FIGURE_COLUMNS = ("key", "pmcid", "figure_id", "figure_label", "caption", "references", "subset", "license_code",
                  "year", "concepts", "panel_type", "panel_index", "panel_count", "image_ext", "width", "height",
                  "shard", "image_offset", "image_size")
ARTICLE_COLUMNS = ("title", "journal")
ARTICLE_TABLE_COLUMNS = ("pmcid", "pmid", "doi", "title", "journal", "publisher", "pub_date", "year", "article_type",
                         "license_code", "license_url", "subset", "abstract", "keywords", "subjects", "mesh_terms",
                         "n_figures", "n_samples")
MISSING_YEAR = -1


@dataclass
class Filters:
    """The search's original filter fields (kept for callers that make one): within a field any value matches
    (OR); across fields all must match (AND). :meth:`selection` is the same filter as the one
    :class:`~biomedica_hf.filters.Selection` the search API, the loader and the recipes share."""

    subsets: Sequence[str] = ()
    licenses: Sequence[str] = ()
    year_min: int | None = None
    year_max: int | None = None
    concepts: Sequence[str] = ()

    def active(self) -> bool:
        return bool(self.subsets or self.licenses or self.concepts or self.year_min is not None
                    or self.year_max is not None)

    def as_dict(self) -> dict[str, Any]:
        return {"subset": list(self.subsets), "license": list(self.licenses), "year_min": self.year_min,
                "year_max": self.year_max, "concept": list(self.concepts)}

    def selection(self) -> Selection:
        """This filter as a :class:`~biomedica_hf.filters.Selection` (no subset: ``"all"``)."""
        return selection_of(list(self.subsets), list(self.licenses), self.year_min, self.year_max,
                            list(self.concepts))


def selection_of(subsets: Sequence[str] = (), licenses: Sequence[str] = (), year_min: int | None = None,
                 year_max: int | None = None, concepts: Sequence[str] = ()) -> Selection:
    """The search API's parameters (empty: no filter on that field) as one :class:`Selection`."""
    return Selection(subset=tuple(subsets) or "all", licenses=tuple(licenses) or None,
                     years=None if year_min is None and year_max is None else YearRange(year_min, year_max),
                     concepts=tuple(concepts) or None)


def as_query(selection: Selection) -> dict[str, Any]:
    """A selection of the search API's fields as the ``query`` of a response (:meth:`Filters.as_dict`'s shape)."""
    def values(v: str | Sequence[str] | None) -> list[str]:
        return [] if v is None else [v] if isinstance(v, str) else list(v)

    year_min, year_max = selection.year_bounds
    return {"subset": [] if selection.subset == "all" else values(selection.subset),
            "license": values(selection.licenses), "year_min": year_min, "year_max": year_max,
            "concept": values(selection.concepts)}


#: what a search index cannot filter on: meta.parquet has no caption length, split or near-duplicate columns
UNSUPPORTED = ("min_caption_chars", "split", "near_duplicates")


def build_meta_table(figures: pa.Table, articles: pa.Table | None) -> pa.Table:
    """meta.parquet: the figure columns plus article title/journal joined by pmcid (row order kept)."""
    cols = [c for c in FIGURE_COLUMNS if c in figures.column_names]
    table = figures.select(cols)
    if "concepts" not in cols:
        table = table.append_column("concepts", pa.array([[]] * table.num_rows, pa.list_(pa.string())))
    titles: dict[str, tuple[str | None, str | None]] = {}
    if articles is not None and articles.num_rows:
        have = [c for c in ("pmcid", *ARTICLE_COLUMNS) if c in articles.column_names]
        for row in articles.select(have).to_pylist():
            titles[row["pmcid"]] = (row.get("title"), row.get("journal"))
    pmcids = table["pmcid"].to_pylist()
    for i, name in enumerate(ARTICLE_COLUMNS):
        table = table.append_column(name, pa.array([titles.get(p, (None, None))[i] for p in pmcids], pa.string()))
    return table


def article_table(articles: pa.Table) -> pa.Table:
    """The article columns the index keeps (no full text)."""
    return articles.select([c for c in ARTICLE_TABLE_COLUMNS if c in articles.column_names])


@dataclass
class Metadata:
    """meta.parquet in memory, with numpy columns for fast filter masks."""

    table: pa.Table
    subset: np.ndarray = field(init=False)
    license_codes: np.ndarray = field(init=False)
    license_values: list[str] = field(init=False)
    year: np.ndarray = field(init=False)
    key_to_row: dict[str, int] = field(init=False)
    group: np.ndarray = field(init=False)            # row -> figure id (panels of one <fig> share it)
    group_rows: dict[int, list[int]] = field(init=False)  # figure id -> its rows, in panel order (multi-panel only)
    _concepts: dict[str, np.ndarray] | None = field(init=False, default=None)
    _concept_names: dict[str, str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        t = self.table
        enc = pc.fill_null(t["subset"], "").combine_chunks().dictionary_encode()
        self.subset_values = [str(v) for v in enc.dictionary.to_pylist()]
        self.subset = enc.indices.to_numpy(zero_copy_only=False).astype(np.int16)
        enc = pc.fill_null(t["license_code"], "unknown").combine_chunks().dictionary_encode()
        self.license_values = [str(v) for v in enc.dictionary.to_pylist()]
        self.license_codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int16)
        self.year = pc.fill_null(pc.cast(t["year"], pa.int32()), MISSING_YEAR).to_numpy(zero_copy_only=False)
        self.key_to_row = {k: i for i, k in enumerate(t["key"].to_pylist())}
        self._group_panels()

    def _group_panels(self) -> None:
        """Panels (several ``<graphic>`` of one ``<fig>``) share a figure id: (pmcid, figure_id) when the index
        has ``figure_id`` (indexes built before it have one figure per row)."""
        t = self.table
        n = t.num_rows
        self.group = np.arange(n, dtype=np.int64)
        self.group_rows = {}
        if "figure_id" not in t.column_names or not n:
            return
        pmcids, figs = t["pmcid"].to_pylist(), t["figure_id"].to_pylist()
        panel = t["panel_index"].to_pylist() if "panel_index" in t.column_names else [0] * n
        first: dict[tuple[str, str], int] = {}
        for row, (p, f) in enumerate(zip(pmcids, figs)):
            if f is None or f == "":
                continue
            g = first.setdefault((p, f), row)
            self.group[row] = g
            if g != row:
                self.group_rows.setdefault(g, [g]).append(row)
        for g, rows in self.group_rows.items():
            rows.sort(key=lambda r: (panel[r] if panel[r] is not None else 0, r))

    def panels(self, row: int) -> list[int]:
        """All rows of the figure ``row`` belongs to, in panel order (``[row]`` for a single-panel figure)."""
        return self.group_rows.get(int(self.group[row]), [row])

    @classmethod
    def load(cls, path: Path) -> "Metadata":
        return cls(pq.read_table(path))

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def figure_rows(self) -> np.ndarray:
        """One row per figure (the first row of its panels): what ``total``, ``/health`` and the facets count."""
        return np.flatnonzero(self.group == np.arange(len(self)))

    @property
    def n_figures(self) -> int:
        """Figures, not panels: a search result is a figure (panels of one ``<fig>`` are one hit)."""
        return len(self.figure_rows)

    @property
    def concept_rows(self) -> dict[str, np.ndarray]:
        """concept (lower case, for case-insensitive filters) -> sorted row ids; built on first use."""
        if self._concepts is None:
            index: dict[str, list[int]] = {}
            spellings: dict[str, dict[str, int]] = {}
            for row, values in enumerate(self.table["concepts"].to_pylist()):
                for v in dict.fromkeys(values or ()):
                    index.setdefault(v.lower(), []).append(row)
                    seen = spellings.setdefault(v.lower(), {})
                    seen[v] = seen.get(v, 0) + 1
            self._concepts = {c: np.unique(np.asarray(r, np.int64)) for c, r in index.items()}
            # the name as stored (the most frequent spelling when several differ only in case)
            self._concept_names = {c: max(s, key=lambda v: (s[v], v)) for c, s in spellings.items()}
        return self._concepts

    @property
    def concept_names(self) -> dict[str, str]:
        """concept (lower case) -> the name as stored, e.g. ``"plots and charts" -> "Plots and Charts"``."""
        self.concept_rows
        return self._concept_names or {}

    def _codes(self, values: Sequence[str], vocab: list[str]) -> list[int]:
        lower = {v.lower(): i for i, v in enumerate(vocab)}
        return [lower[v.lower()] for v in values if v.lower() in lower]

    def mask(self, f: Selection | Filters) -> np.ndarray | None:
        """Boolean row mask for a selection (None: no filter). Licence codes and concepts match
        case-insensitively; a selection on what the index lacks (caption length, split, near-duplicates) is a
        ``ValueError``."""
        sel = f.selection() if isinstance(f, Filters) else f
        asked = sel.asked()
        unsupported = [k for k in UNSUPPORTED if k in asked]
        if unsupported:
            raise ValueError(f"a search index cannot filter on {', '.join(unsupported)} (meta.parquet has no such "
                             f"column); filters: subset, licenses, years, concepts, exclude_concepts, exclude")
        if sel.subset == "all" and len(asked) == 1:
            return None
        m = np.ones(len(self), bool)
        if sel.subset != "all":
            m &= np.isin(self.subset, self._codes(sel.subsets, self.subset_values))
        if sel.licenses is not None:
            m &= np.isin(self.license_codes, self._codes(as_list(sel.licenses), self.license_values))
        if isinstance(sel.years, frozenset):
            m &= np.isin(self.year, sorted(sel.years))
        elif sel.years is not None:
            year_min, year_max = sel.year_bounds
            if year_min is not None:
                m &= (self.year >= year_min) & (self.year != MISSING_YEAR)
            if year_max is not None:
                m &= (self.year <= year_max) & (self.year != MISSING_YEAR)
        if sel.concepts is not None:
            m &= self._concept_hits(as_list(sel.concepts))
        if sel.exclude_concepts is not None:
            m &= ~self._concept_hits(as_list(sel.exclude_concepts))
        if sel.exclude is not None:
            drop = [self.key_to_row[k] for k in read_keys(sel.exclude) if k in self.key_to_row]
            m[drop] = False
        return m

    def _concept_hits(self, concepts: Sequence[str]) -> np.ndarray:
        hit = np.zeros(len(self), bool)
        for c in concepts:
            rows = self.concept_rows.get(c.lower())
            if rows is not None:
                hit[rows] = True
        return hit

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The metadata of the given rows, in order."""
        if not len(ids):
            return []
        return self.table.take(pa.array(np.asarray(ids, np.int64))).to_pylist()

    def facets(self, top_concepts: int = 200) -> dict[str, Any]:
        """Counts for the search page's filters, in figures (like the results: panels of one figure count once)."""
        figures = self.figure_rows

        def counts(codes: np.ndarray, vocab: list[str]) -> dict[str, int]:
            c = np.bincount(codes[figures], minlength=len(vocab))
            return {vocab[i]: int(c[i]) for i in np.argsort(-c, kind="stable") if c[i]}
        years = self.year[self.year != MISSING_YEAR]
        names = self.concept_names
        concepts = sorted(((names[c], len(np.unique(self.group[r]))) for c, r in self.concept_rows.items()),
                          key=lambda x: (-x[1], x[0]))
        return {"total": len(figures), "subset": counts(self.subset, self.subset_values),
                "license": counts(self.license_codes, self.license_values),
                "year": {"min": int(years.min()) if len(years) else None,
                         "max": int(years.max()) if len(years) else None},
                "concept": dict(concepts[:top_concepts])}
