"""Which samples: one :class:`Selection` (subset, split, licences, concepts, years, caption length, exclusions,
near-duplicates) shared by ``load_biomedica``, the search API, eval and the training recipes, and the one rule
that checks its values.

A :class:`Selection` is checked once, when it is made (an unknown subset, split or near-duplicate policy, a years
range without a bound: ``ValueError``), and turned into the ``figures.parquet`` filter by
:meth:`Selection.expression` (the scalar columns) and :meth:`Selection.concept_mask` (the list columns).
Licence codes and concepts are checked against a build by :meth:`Selection.resolved`:

* Values match case-insensitively and resolve to the build's own spelling (``"cc by"`` -> ``"CC BY"``).
* A value of the vocabulary that this build does not have (``"CC0"`` in a build without CC0 figures, a taxonomy
  concept no figure carries) is **not an error**: it selects nothing, and the caller can say what the build has.
* Any other value is a misspelling: :class:`UnknownFilterValue` (a ``ValueError``) names the closest valid values
  (``difflib``) and what the build has.

The vocabularies: :data:`LICENSE_CODES` (every code :mod:`biomedica_hf.licenses` produces) and the concept names
of the label taxonomy (:func:`biomedica_hf.hooks.concept_names`; the concepts layer provides them).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import numbers
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_hf.licenses import COMMERCIAL, NONCOMMERCIAL, OTHER, PHE, UNKNOWN
from biomedica_hf.schema import SUBSETS

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

LICENSE_CODES: tuple[str, ...] = tuple(sorted(COMMERCIAL | NONCOMMERCIAL | {PHE, OTHER, UNKNOWN}))


def _folded(text: str) -> str:
    """Lower case, letters and digits only: ``"CC-BY-4"`` and ``"CC BY"`` compare as ``ccby4`` / ``ccby``."""
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


def closest(value: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` closest to ``value`` (``difflib`` ratio >= 0.5 on case- and punctuation-folded
    text)."""
    by_folded: dict[str, str] = {}
    for c in choices:
        by_folded.setdefault(_folded(c), c)
    hits = difflib.get_close_matches(_folded(value), list(by_folded), n=n, cutoff=0.5)
    return [by_folded[h] for h in hits]


class UnknownFilterValue(ValueError):
    """A filter value that is neither in this build nor in the vocabulary (a misspelling)."""

    def __init__(self, what: str, unknown: Sequence[object], has: Sequence[str], vocabulary: Sequence[str],
                 where: str = "") -> None:
        self.what, self.unknown, self.has = what, list(unknown), list(has)
        valid = sorted(set(has) | set(vocabulary))
        self.suggestions = {str(u): closest(str(u), valid) for u in unknown}
        hints = "; ".join(f"{u!r}: did you mean {', '.join(repr(s) for s in sugg)}?" if sugg else f"{u!r}: no close match"
                          for u, sugg in self.suggestions.items())
        place = f" for {where}" if where else ""
        super().__init__(f"unknown {what} {self.unknown}{place} ({hints}); the index has {self.has}")


@dataclass(frozen=True)
class Resolved:
    """Asked values resolved against a build: ``values`` to filter on (the build's spelling; absent ones kept, they
    select nothing), ``absent`` (valid but not in this build) and ``has`` (what the build has, sorted)."""

    values: list[str]
    absent: list[str] = field(default_factory=list)
    has: list[str] = field(default_factory=list)

    def note(self, what: str) -> str:
        """``"licence code 'CC0' is not in this build, which has ['CC BY', ...]"`` (empty when none is absent)."""
        if not self.absent:
            return ""
        return f"{what} {', '.join(repr(a) for a in self.absent)} not in this build, which has {self.has}"


def resolve(what: str, asked: str | Sequence[str], present: Iterable[str], vocabulary: Iterable[str],
            where: str = "") -> Resolved:
    """Check ``asked`` against the build's values (``present``) and the ``vocabulary``, case-insensitively
    (``where``: the dataset, named in the error)."""
    asked_list = [asked] if isinstance(asked, str) else list(asked)
    has = sorted({str(v) for v in present if v is not None})
    vocab = sorted({str(v) for v in vocabulary})
    in_build = {v.lower(): v for v in has}
    in_vocab = {v.lower(): v for v in vocab}
    unknown = [a for a in asked_list
               if not isinstance(a, str) or (a.strip().lower() not in in_build and a.strip().lower() not in in_vocab)]
    if unknown:
        raise UnknownFilterValue(what, unknown, has, vocab, where)
    values, absent = [], []
    for a in asked_list:
        low = a.strip().lower()
        if low in in_build:
            values.append(in_build[low])
        else:
            values.append(in_vocab[low])
            absent.append(in_vocab[low])
    return Resolved(values=values, absent=absent, has=has)


# --------------------------------------------------------------------------------------------- the selection
SPLITS: tuple[str, ...] = ("train", "validation", "test")
NEAR_DUPLICATES: tuple[str, ...] = ("keep", "drop")
#: the index columns holding a sample's concepts (``concepts=`` / ``exclude_concepts=`` match either)
CONCEPT_COLUMNS: tuple[str, ...] = ("concepts", "local_concepts")
#: the fields of :class:`Selection`, in the order messages name them (also the recipes' ``data`` filter keys)
FIELDS: tuple[str, ...] = ("subset", "concepts", "exclude_concepts", "licenses", "years", "min_caption_chars",
                           "split", "exclude", "near_duplicates")

Years = int | Sequence[int] | tuple[int | None, int | None]


def described_filters(values: Any) -> list[tuple[str, str]]:
    """The filters a recipe config's ``data`` section (or any mapping of :data:`FIELDS`) sets beyond the subset, as
    ``(field, text)`` for a model card: unset fields and the ``keep`` default of ``near_duplicates`` are left out,
    and an ``exclude`` file is named by its file name only (a card names no local path), a key list by its size."""
    out = []
    for k in FIELDS:
        v = values.get(k) if hasattr(values, "get") else getattr(values, k, None)
        if k == "subset" or v is None or v == "" or (k == "near_duplicates" and v == "keep"):
            continue
        if k == "exclude":
            v = Path(v).name if isinstance(v, (str, os.PathLike)) else f"{len(list(v))} keys"
        elif isinstance(v, (list, tuple, frozenset, set)):
            if not v:
                continue
            v = ", ".join(str(x) for x in (sorted(v) if isinstance(v, (set, frozenset)) else v))
        out.append((k, str(v)))
    return out


class NoMatchWarning(UserWarning):
    """``load_biomedica``'s filters select no sample (issued on every call, at the caller's line)."""


@dataclass(frozen=True)
class YearRange:
    """An inclusive range of publication years; ``None``: an open end (at least one bound is set)."""

    lo: int | None = None
    hi: int | None = None

    def __post_init__(self) -> None:
        if self.lo is None and self.hi is None:
            raise ValueError("years as a tuple is a (min, max) range with at least one bound, got (None, None)")
        for bound in (self.lo, self.hi):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Integral)):
                raise TypeError(f"years range bounds must be integers or None, got ({self.lo!r}, {self.hi!r})")


#: how :meth:`Selection.resolved` names licence codes and concepts in its errors and notes: (what, note word)
LOADER_WORDS = {"licenses": ("licence code(s)", "licence code"), "concepts": ("concept(s)", "concept")}


def _strings(value: str | Iterable[str] | None) -> str | tuple[str, ...] | None:
    """A filter's values kept as given (one string, or a tuple of them; non-strings are left for :func:`resolve`
    to name as unknown)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, dict)):
        raise TypeError(f"expected a string or a list of strings, got {type(value).__name__}")
    return tuple(value)


def as_list(value: str | Sequence[str]) -> list[str]:
    """A filter's values as a list (one string: a list of it)."""
    return [value] if isinstance(value, str) else list(value)


def _years(years: Any) -> int | frozenset[int] | YearRange | None:
    """int: that year; a ``(min, max)`` tuple: a :class:`YearRange`; any other sequence: any of those years."""
    if years is None or isinstance(years, (YearRange, frozenset)):
        return years
    bad = TypeError(f"years must be a year, a list of years or a (min, max) tuple, got {years!r}")
    if isinstance(years, (bool, str, bytes, dict)):
        raise bad
    if isinstance(years, numbers.Integral):
        return int(years)
    if isinstance(years, tuple):
        if len(years) != 2 or years == (None, None):
            raise ValueError(f"years as a tuple is a (min, max) range with at least one bound, got {years!r}")
        return YearRange(*years)
    try:
        values = list(years)
    except TypeError:
        raise bad from None
    if not all(isinstance(y, numbers.Integral) and not isinstance(y, bool) for y in values):
        raise bad
    return frozenset(int(y) for y in values)


def _exclude(exclude: Any) -> str | os.PathLike | frozenset[str] | None:
    """A file of keys (kept as its path, read by :func:`read_keys` when the filter is made) or the keys."""
    if exclude is None or isinstance(exclude, (str, os.PathLike, frozenset)):
        return exclude
    if isinstance(exclude, bytes):
        raise TypeError("exclude= takes keys (str), not bytes")
    return frozenset(str(k) for k in exclude)


@dataclass(frozen=True)
class Selection:
    """Which samples of a dataset: the filters of ``load_biomedica``, the search API, eval and the recipes.

    Fields (every one optional; the default selects the ``commercial`` subset, every sample of it):
        subset: ``"commercial"``, ``"noncommercial"``, ``"other"``, ``"all"`` or a list of subsets.
        concepts: keep samples having any of these in ``concepts`` or ``local_concepts``.
        exclude_concepts: drop samples having any of these (same columns).
        licenses: licence code(s) of ``license_code`` (``"CC BY"``, ``"cc0"``, ...), matched case-insensitively.
        years: a year, a list of years, or an inclusive ``(min, max)`` tuple (``None``: open end) /
            :class:`YearRange`.
        min_caption_chars: keep captions of at least this many characters.
        split: ``"train"``, ``"validation"`` or ``"test"`` (the index's ``split`` column); ``None``: every split.
        exclude: keys to leave out: an iterable of keys, or a ``.txt`` (one key per line), ``.parquet`` or ``.json``
            file with a ``key`` column (:func:`read_keys`).
        near_duplicates: ``"keep"`` or ``"drop"`` (samples whose ``near_dup_of`` is set).

    Made once and checked then (``ValueError`` naming the valid values); lists are kept as tuples, a list of years
    as a ``frozenset``, a ``(min, max)`` tuple as a :class:`YearRange`, keys to exclude as a ``frozenset``.
    """

    subset: str | tuple[str, ...] = "commercial"
    concepts: str | tuple[str, ...] | None = None
    exclude_concepts: str | tuple[str, ...] | None = None
    licenses: str | tuple[str, ...] | None = None
    years: int | frozenset[int] | YearRange | None = None
    min_caption_chars: int | None = None
    split: str | None = None
    exclude: str | os.PathLike | frozenset[str] | None = None
    near_duplicates: str = "keep"

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)
        subset = self.subset if isinstance(self.subset, str) else _strings(self.subset)
        names = list(SUBSETS) if subset == "all" else [subset] if isinstance(subset, str) else list(subset or ())
        if not names or sorted(set(names) - set(SUBSETS)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"subset must be 'all' or among {list(SUBSETS)} (or a list of them), got {self.subset!r}")
        put("subset", subset)
        for name in ("concepts", "exclude_concepts", "licenses"):
            put(name, _strings(getattr(self, name)))
        put("years", _years(self.years))
        m = self.min_caption_chars
        if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0):
            raise ValueError(f"min_caption_chars must be a non-negative integer, got {m!r}")
        put("min_caption_chars", None if m is None else int(m))
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)} (or None for all), got {self.split!r}")
        if self.near_duplicates not in NEAR_DUPLICATES:
            raise ValueError(f"near_duplicates must be one of {list(NEAR_DUPLICATES)}, got {self.near_duplicates!r}")
        put("exclude", _exclude(self.exclude))

    # ----------------------------------------------------------------------------------------- reading it
    @property
    def subsets(self) -> tuple[str, ...]:
        """The licence subsets selected (``"all"`` expanded)."""
        return tuple(SUBSETS) if self.subset == "all" else (self.subset,) if isinstance(self.subset, str) \
            else self.subset

    @property
    def every_subset(self) -> bool:
        return set(self.subsets) == set(SUBSETS)

    @property
    def year_bounds(self) -> tuple[int | None, int | None]:
        """``(min, max)`` of a single year or a :class:`YearRange` (``(None, None)`` without ``years``);
        ``ValueError`` for a list of years (the search API takes a range only)."""
        if self.years is None:
            return None, None
        if isinstance(self.years, int):
            return self.years, self.years
        if isinstance(self.years, YearRange):
            return self.years.lo, self.years.hi
        raise ValueError(f"a list of years ({sorted(self.years)}) cannot be a (min, max) range")

    def replace(self, **changes: Any) -> Selection:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def asked(self) -> dict[str, Any]:
        """The filters set, as a user would write them (``subset`` always; ``exclude`` as ``"..."``), for messages."""
        out: dict[str, Any] = {}
        for name in FIELDS:
            v = getattr(self, name)
            if name == "near_duplicates":
                v = None if v == "keep" else v
            elif name == "exclude" and v is not None:
                v = "..."
            elif isinstance(v, YearRange):
                v = (v.lo, v.hi)
            elif isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, tuple):
                v = list(v)
            if v is not None:
                out[name] = v
        return out

    def describe(self) -> str:
        """``"subset='all', licenses=['CC BY'], years=(2019, None)"``: the filters set."""
        return ", ".join(f"{k}={v!r}" for k, v in self.asked().items())

    def filters(self) -> dict[str, Any]:
        """The filters set other than ``subset`` (as :meth:`asked`, ``exclude`` kept): what a model card lists."""
        out = {k: v for k, v in self.asked().items() if k != "subset"}
        if self.exclude is not None:
            out["exclude"] = self.exclude if not isinstance(self.exclude, frozenset) else sorted(self.exclude)
        return out

    # ----------------------------------------------------------------------------------------- against a build
    def resolved(self, licences: Callable[[], Iterable[str]], concepts: Callable[[], Iterable[str]],
                 where: str = "", words: dict[str, tuple[str, str]] | None = None) -> tuple[Selection, list[str]]:
        """This selection with its licence codes and concepts in the build's spelling (case-insensitive), and a
        note per valid value the build lacks (it selects nothing); a misspelt value raises
        :class:`UnknownFilterValue` naming the closest. ``licences`` / ``concepts``: the build's values, asked
        only when the selection names some; the concept vocabulary is the label taxonomy
        (:func:`biomedica_hf.hooks.concept_names`)."""
        from biomedica_hf import hooks

        words = words or LOADER_WORDS
        notes: list[str] = []
        changes: dict[str, Any] = {}
        if self.licenses is not None:
            what, word = words["licenses"]
            r = resolve(what, self.licenses, licences(), LICENSE_CODES, where)
            changes["licenses"] = tuple(r.values)
            notes += [r.note(word)] if r.absent else []
        if self.concepts is not None or self.exclude_concepts is not None:
            what, word = words["concepts"]
            present, vocab = list(concepts()), hooks.concept_names()
            for name in ("concepts", "exclude_concepts"):
                if getattr(self, name) is not None:
                    r = resolve(what, getattr(self, name), present, vocab, where)
                    changes[name] = tuple(r.values)
                    notes += [r.note(word)] if r.absent else []
        return (dataclasses.replace(self, **changes) if changes else self), notes

    def columns(self) -> dict[str, bool]:
        """Index column -> whether this selection filters on it."""
        return {"subset": True, "license_code": self.licenses is not None, "year": self.years is not None,
                "caption_chars": self.min_caption_chars is not None, "split": self.split is not None,
                "near_dup_of": self.near_duplicates == "drop", "key": self.exclude is not None,
                "concepts": self.concepts is not None or self.exclude_concepts is not None}

    def check_columns(self, names: Iterable[str], where: str) -> None:
        """``ValueError`` naming the fix when the index (columns ``names``) lacks a column this selection needs."""
        names = set(names)
        if (self.concepts is not None or self.exclude_concepts is not None) and "concepts" not in names:
            raise ValueError(f"{where} has no `concepts` column: concepts= / exclude_concepts= need the concept "
                             f"annotation stage to have been run on this dataset")
        if self.split is not None and "split" not in names:
            raise ValueError(f"{where} has no `split` column: this dataset has no train/validation/test splits "
                             f"(rebuild it with a biomedica version that assigns them), so split={self.split!r} "
                             f"cannot apply")
        if self.near_duplicates == "drop" and "near_dup_of" not in names:
            raise ValueError(f"{where} has no `near_dup_of` column: near-duplicate detection has not been run on "
                             f"this dataset, so near_duplicates='drop' cannot apply")

    def expression(self) -> pc.Expression | None:
        """The scalar part of the filter (subset, licences, years, caption length, split, near-duplicates,
        exclusions) as a pyarrow expression on the index columns (``None``: every row). Licence codes are used as
        they are: :meth:`resolved` gives the build's spelling."""
        import pyarrow as pa
        import pyarrow.compute as pc

        exprs = []
        if not self.every_subset:
            exprs.append(pc.field("subset").isin(list(self.subsets)))
        if self.licenses is not None:
            exprs.append(pc.field("license_code").isin(as_list(self.licenses)))
        if self.years is not None:
            exprs.append(_years_expr(self.years))
        if self.min_caption_chars is not None:
            exprs.append(pc.field("caption_chars") >= self.min_caption_chars)
        if self.split is not None:
            exprs.append(pc.field("split") == self.split)
        if self.near_duplicates == "drop":
            exprs.append(pc.field("near_dup_of").is_null())
        if self.exclude is not None:
            keys = read_keys(self.exclude)
            if keys:
                exprs.append(~pc.field("key").isin(pa.array(keys, pa.string())))
        return functools.reduce(operator.and_, exprs) if exprs else None

    @property
    def concept_filters(self) -> list[tuple[list[str], bool]]:
        """``(values, keep)`` of the list filters: ``concepts`` (keep rows having any), ``exclude_concepts``
        (drop them)."""
        return [(as_list(v), keep) for v, keep in ((self.concepts, True), (self.exclude_concepts, False))
                if v is not None]

    def concept_mask(self, table: pa.Table, columns: Sequence[str]) -> np.ndarray | None:
        """Rows of ``table`` the concept filters keep (its ``columns`` among :data:`CONCEPT_COLUMNS`); ``None``
        without concept filters."""
        import numpy as np

        filters = self.concept_filters
        if not filters:
            return None
        keep = np.ones(table.num_rows, dtype=bool)
        for values, include in filters:
            hit = np.zeros(table.num_rows, dtype=bool)
            for col in columns:
                hit |= has_any(table[col], values)
            keep &= hit if include else ~hit
        return keep


def _years_expr(years: int | frozenset[int] | YearRange) -> pc.Expression:
    """int: that year; a set: any of them; :class:`YearRange`: inclusive range, None for an open end."""
    import pyarrow.compute as pc

    col = pc.field("year")
    if isinstance(years, int):
        return col == years
    if isinstance(years, frozenset):
        return col.isin(sorted(years))
    bounds = []
    if years.lo is not None:
        bounds.append(col >= years.lo)
    if years.hi is not None:
        bounds.append(col <= years.hi)
    return functools.reduce(operator.and_, bounds)


def has_any(column: pa.ChunkedArray, values: Sequence[str]) -> np.ndarray:
    """Boolean mask: rows of a list<string> column containing any of ``values``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = np.zeros(len(column), dtype=bool)
    offset = 0
    for chunk in column.chunks:
        hit = pc.is_in(pc.list_flatten(chunk), value_set=pa.array(list(values), pa.string()))
        rows = pc.filter(pc.list_parent_indices(chunk), hit).to_numpy()
        mask[offset + rows] = True
        offset += len(chunk)
    return mask


def read_keys(exclude: str | os.PathLike | Iterable[str]) -> list[str]:
    """Keys to exclude: an iterable of keys, or a ``.txt`` (one per line), ``.parquet`` or ``.json`` file with
    a ``key`` column (JSON: a list of keys, a list of ``{"key": ...}`` rows, or ``{"key": [...]}``)."""
    if isinstance(exclude, (str, os.PathLike)):
        path = Path(exclude)
        if not path.is_file():
            raise FileNotFoundError(f"exclude={os.fspath(exclude)!r}: no such file (give keys, or a .txt, .parquet "
                                    f"or .json file of keys)")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            if "key" not in pq.read_schema(path).names:
                raise ValueError(f"exclude={os.fspath(path)!r} has no `key` column")
            return [k for k in pq.read_table(path, columns=["key"])["key"].to_pylist() if k]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "key" in data:
                data = data["key"]
            if isinstance(data, list):
                return [str(x["key"] if isinstance(x, dict) else x) for x in data
                        if (x.get("key") if isinstance(x, dict) else x)]
            raise ValueError(f"exclude={os.fspath(path)!r}: expected a list of keys, rows with a `key`, "
                             f"or {{'key': [...]}}")
        if suffix in (".txt", ".lst", ""):
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        raise ValueError(f"exclude={os.fspath(path)!r}: use a .txt, .parquet or .json file")
    if isinstance(exclude, bytes):
        raise TypeError("exclude= takes keys (str), not bytes")
    return sorted(exclude) if isinstance(exclude, frozenset) else [str(k) for k in exclude]
