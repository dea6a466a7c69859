"""A retrieval helper for LLM agents: figures as passages, formatted as grounded context with numbered citations.

>>> r = Retriever("ds/search_index")
>>> ctx = r.context("What does ground-glass opacity look like on chest CT?", k=5)
>>> prompt = ctx.prompt()          # instructions + [1]..[k] passages + question
>>> ctx.citations()                # "[1] <title>. PMC123. https://pmc.ncbi.nlm.nih.gov/articles/PMC123/"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from biomedica_hf.filters import Selection
from biomedica_hf.search.engine import SearchEngine
from biomedica_hf.search.meta import Filters

INSTRUCTIONS = ("Answer the question using only the numbered figure sources below. Cite the sources you use "
                "by their number in square brackets, e.g. [1] or [2][3]. If the sources do not answer the "
                "question, say so.")


def _clip(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1].rsplit(" ", 1)[0] + "\u2026"


@dataclass
class Passage:
    """One retrieved figure (all its panels: one passage, one caption)."""

    n: int                         # citation number, from 1
    key: str
    pmcid: str
    caption: str
    references: list[str]
    title: str | None
    score: float
    figure_label: str | None = None
    journal: str | None = None
    year: int | None = None
    license_code: str | None = None
    url: str | None = None         # PMC article page (only for real PMCIDs)
    panels: list[str] = field(default_factory=list)  # keys of the figure's panels (several for a multi-panel figure)

    def format(self, max_caption_chars: int = 700, max_references: int = 2, max_reference_chars: int = 300) -> str:
        """``[n] Figure 2 of "Title" (PMC123, 2020, CC BY; figure PMC123_gr2)`` + caption + citing sentences."""
        head = f"[{self.n}] " + (f"{self.figure_label} of " if self.figure_label else "Figure of ")
        head += f"\"{_clip(self.title or 'untitled article', 200)}\""
        facts = ", ".join(str(x) for x in (self.pmcid, self.year, self.license_code) if x)
        where = f"figure {self.key}" if len(self.panels) < 2 else f"figure {self.key}, {len(self.panels)} panels"
        lines = [f"{head} ({facts}; {where})", f"Caption: {_clip(self.caption, max_caption_chars)}"]
        refs = [_clip(r, max_reference_chars) for r in self.references[:max_references] if r and r.strip()]
        if refs:
            lines.append("Cited in the text: " + " ".join(f"\"{r}\"" for r in refs))
        return "\n".join(lines)


@dataclass
class Context:
    """Grounded context for one query: passages numbered [1]..[k]."""

    query: str
    passages: list[Passage]
    format_options: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(p.format(**self.format_options) for p in self.passages)

    def citations(self) -> str:
        """One line per source: ``[n] Title. PMCID. URL``."""
        return "\n".join(f"[{p.n}] {p.title or 'untitled'}. {p.pmcid}" + (f". {p.url}" if p.url else "")
                         + f" (figure {p.key})" for p in self.passages)

    def prompt(self, question: str | None = None, instructions: str = INSTRUCTIONS) -> str:
        """A plain-text prompt for a base model: instructions, sources, question, ``Answer:``."""
        return f"{instructions}\n\nSources:\n{self.text}\n\nQuestion: {question or self.query}\nAnswer:"

    def messages(self, question: str | None = None, instructions: str = INSTRUCTIONS) -> list[dict[str, str]]:
        """The same as chat messages (for ``apply_chat_template`` / chat pipelines)."""
        return [{"role": "system", "content": instructions},
                {"role": "user", "content": f"Sources:\n{self.text}\n\nQuestion: {question or self.query}"}]


class Retriever:
    """Hybrid figure retrieval over an index folder (or a loaded :class:`SearchEngine`)."""

    def __init__(self, index: str | Path | SearchEngine, k: int = 5, filters: Selection | Filters | None = None,
                 sources: Sequence[str] | None = None, dataset: str | Path | None = None, **format_options: int):
        self.engine = index if isinstance(index, SearchEngine) else SearchEngine(index, dataset=dataset)
        self.k, self.filters, self.sources = k, filters, sources
        self.format_options = format_options

    def retrieve(self, query: str, k: int | None = None, image: bytes | Any | None = None,
                 filters: Selection | Filters | None = None) -> list[Passage]:
        """The top ``k`` figures for a text (and/or image) query as passages numbered from 1."""
        res = self.engine.search(text=query, image=image, filters=filters or self.filters, limit=k or self.k,
                                 sources=self.sources)
        return [Passage(n=i, key=h["key"], pmcid=h["pmcid"], caption=h.get("caption") or "",
                        references=list(h.get("references") or []), title=h.get("title"), score=float(h["score"]),
                        figure_label=h.get("figure_label"), journal=h.get("journal"), year=h.get("year"),
                        license_code=h.get("license_code"), url=h.get("pmc_url"),
                        panels=[p["key"] for p in h.get("panels") or []])
                for i, h in enumerate(res.hits, start=1)]

    def context(self, query: str, k: int | None = None, **kwargs: Any) -> Context:
        """Retrieve and wrap as :class:`Context`."""
        return Context(query, self.retrieve(query, k, **kwargs), dict(self.format_options))

    def __call__(self, query: str, k: int | None = None) -> str:
        """Tool form for agents: the formatted, numbered context as one string."""
        return self.context(query, k).text
