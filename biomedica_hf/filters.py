"""Filter values (licence codes, concepts) checked by one rule everywhere: ``load_biomedica`` and the search API.

* Values match case-insensitively and resolve to the build's own spelling (``"cc by"`` -> ``"CC BY"``).
* A value of the vocabulary that this build does not have (``"CC0"`` in a build without CC0 figures, a taxonomy
  concept no figure carries) is **not an error**: it selects nothing, and the caller can say what the build has.
* Any other value is a misspelling: :class:`UnknownFilterValue` (a ``ValueError``) names the closest valid values
  (``difflib``) and what the build has.

The vocabularies: :data:`LICENSE_CODES` (every code :mod:`biomedica_hf.licenses` produces) and the concept names
of the label taxonomy (:func:`biomedica_hf.hooks.concept_names`; the concepts layer provides them).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from biomedica_hf.licenses import COMMERCIAL, NONCOMMERCIAL, OTHER, PHE, UNKNOWN

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
