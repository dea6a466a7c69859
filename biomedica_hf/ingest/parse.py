"""Safe JATS / NLM parsing: article metadata, figures, captions and in-text figure references.

The parser never loads a DTD, never touches the network and never expands an entity: named
entities that only the external DTD declares (``&Delta;``) and entities declared in the internal
subset with plain-text content are decoded here; external entities become nothing.

Text rules (captions, titles, paragraphs): inline markup adds no space (``Student's
<italic>t</italic>-test`` -> ``Student's t-test``); block elements (paragraphs, list items, table
cells, ``<break/>``) are separated by one space; runs of whitespace collapse to one space.
An inline formula reads as its MathML / TeX text, else its alt text, else ``[formula]``; an inline
graphic as its alt text, else ``[graphic]`` (never a silent gap).
A caption's paragraphs are separated by a newline, and a trailing DOI line ("DOI:
http://dx.doi.org/10.7554/eLife.00005.003", eLife) moves to ``Figure.caption_doi``; ``full_text`` and
``abstract`` separate blocks (section titles, paragraphs) by a blank line.

In-text references are the sentences of body paragraphs and table cells citing a figure; captions,
front matter and back matter (``<back>`` but for appendices, acknowledgements, author contributions,
footnotes, declarations) are never references.
"""
from __future__ import annotations

import dataclasses
import html.entities
import io
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lxml import etree

from biomedica_hf.io.gzstream import open_tar_stream
from biomedica_hf.io.xml import safe_parser
from biomedica_hf.licenses import normalize_license
from biomedica_hf.schema import Article, Figure, ParsedArticle, Reference

__all__ = ["ParseError", "parse_jats", "sentence_spans", "inspect_path", "format_inspection"]

XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
MATHML_NS = "http://www.w3.org/1998/Math/MathML"

# Elements that never flow inside a sentence: each is separated from its neighbours by a space.
_BLOCK = frozenset({
    "p", "title", "label", "caption", "sec", "list", "list-item", "def-list", "def-item", "term",
    "def", "disp-quote", "boxed-text", "fig", "fig-group", "table-wrap", "table-wrap-group",
    "table", "thead", "tbody", "tfoot", "tr", "td", "th", "table-wrap-foot", "fn", "fn-group",
    "supplementary-material", "media", "statement", "disp-formula", "disp-formula-group",
    "graphic", "attrib", "verse-group", "verse-line", "speech", "speaker", "ref", "ref-list",
    "mixed-citation", "element-citation", "address", "aff", "app", "abstract", "trans-abstract",
    "kwd", "array", "chem-struct-wrap", "code", "preformat", "question", "answer", "break",
})
# Elements whose text never belongs to the surrounding text.
_NEVER_TEXT = frozenset({"object-id", "alt-text", "long-desc", "processing-meta"})
# Inside a paragraph: nested blocks that are paragraphs (or floats) of their own.
_NOT_IN_PARAGRAPH = frozenset({
    "p", "list", "def-list", "disp-quote", "boxed-text", "fig", "fig-group", "table-wrap",
    "table-wrap-group", "supplementary-material", "media", "statement", "verse-group", "speech",
    "ref-list", "code", "preformat", "chem-struct-wrap", "question-wrap",
})
# Ancestors that keep a <p>/<title> out of full_text.
_NOT_IN_FULL_TEXT = frozenset({"fig", "fig-group", "supplementary-material", "media", "ref-list",
                               "sub-article", "front-stub"})
# Ancestors that keep a paragraph's figure xrefs from becoming in-text references.
_NOT_CITING = frozenset({"caption", "ref-list", "front", "front-stub", "article-meta", "back", "ack",
                         "fn", "fn-group", "author-notes", "notes", "glossary", "bio"})
# ... unless one of these is nearer (an appendix in <back> is article text).
_CITING_IN_BACK = frozenset({"app", "app-group"})
# Sections that are back matter wherever they sit (@sec-type or title, lower-cased, in words).
_BACK_MATTER_SECTIONS = re.compile(
    r"\b(acknowledge?ments?|author'?s?'? contributions?|contributions? of authors|competing interests?|"
    r"conflicts? of interests?|coi[- ]statement|declarations? of interests?|funding|financial disclosure|"
    r"data availability|ethics statement|footnotes?)\b")
# A caption paragraph that is only a DOI (eLife): moved to Figure.caption_doi.
_CAPTION_DOI = re.compile(r"(?:^|\s)DOI:\s*(?:https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+?)[.\s]*$", re.I)
# Caption children that are paragraphs of their own (separated by a newline).
_CAPTION_BLOCKS = frozenset({"p", "list", "def-list", "disp-quote", "disp-formula", "table-wrap", "boxed-text"})
# A graphic below one of these (inside a <fig>) is not an image of the figure.
_NOT_PANEL = frozenset({"caption", "disp-formula", "inline-formula", "table-wrap",
                        "supplementary-material", "media", "chem-struct-wrap", "label"})
# Between two figure xrefs, these make a range: "Figures 1–3", "Figs 3 to 5".
_RANGE_SEPARATORS = frozenset({"-", "\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2212",
                               "to", "through"})
# Pretty-printed mixed content ("<xref>..</xref>\n)."): a line break between markup and closing
# punctuation is layout, not a space.
_LINEBREAK_BEFORE_CLOSER = re.compile(r"^[\r\n][\r\n\t ]*(?=[)\]}.,;:!?])")
_MAIN_ABSTRACT_TYPES = frozenset({"", "abstract", "primary", "main", "structured", "precis"})
_PMCID_TYPES = ("pmcid", "pmc", "pmc-uid", "accession")
_WRAPPERS = frozenset({"articles", "pmc-articleset", "article-set", "collection"})


class ParseError(Exception):
    """The source is not parseable JATS; ``reason`` is "xml_syntax", "not_jats" or "empty"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _read_source(source: bytes | str | os.PathLike[str]) -> tuple[bytes | str, str | None]:
    """(XML data, file name); a ``str`` starting with ``<`` is XML text, any other a path."""
    if isinstance(source, bytes):
        return source, None
    if isinstance(source, str) and source.lstrip("\ufeff \t\r\n").startswith("<"):
        # lxml refuses str input that declares an encoding: the text is already decoded.
        text = source.lstrip("\ufeff")
        return re.sub(r"^(\s*<\?xml[^>]*?)\s+encoding\s*=\s*(['\"])[^'\"]*\2", r"\1", text), None
    path = Path(source)
    return path.read_bytes(), path.name


def _parse_tree(data: bytes | str) -> etree._Element:
    blank = data.strip() if isinstance(data, str) else data.strip(b"\xef\xbb\xbf \t\r\n")
    if not blank:
        raise ParseError("empty", "no content")
    try:
        return etree.fromstring(data, safe_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise ParseError("xml_syntax", str(exc)) from exc


def _local(el: etree._Element) -> str:
    """Local name of an element's tag (``etree.QName(el).localname`` without building a QName: this runs for
    every node of every article)."""
    tag = el.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _strip_namespace(root: etree._Element) -> None:
    """Drop the JATS namespace (whatever its URI) from ``root`` and the elements sharing it.

    MathML, ALI, XLink attributes and any other foreign namespace stay as they are.
    """
    uri = etree.QName(root).namespace
    if not uri:
        return
    for el in list(root.iter(f"{{{uri}}}*")):
        el.tag = el.tag.rpartition("}")[2]


def _is_jats_article(el: etree._Element) -> bool:
    return any(_local(c) in ("front", "body", "back", "floats-group", "sub-article") for c in el)


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------

class _Text:
    """Accumulates text with whitespace collapsed: the value is ``" ".join(raw.split())`` of everything added
    (:meth:`add`; :meth:`space` adds a separator), so that collapsing piece by piece and collapsing the whole give
    the same text. Pieces are kept raw and collapsed only when an offset is asked for (:meth:`next_offset`,
    :attr:`length`: the xrefs of a paragraph) and once at the end - not once per text node."""

    __slots__ = ("_length", "_space", "parts", "pending")

    def __init__(self) -> None:
        self.parts: list[str] = []      # collapsed text so far
        self.pending: list[str] = []    # raw pieces not collapsed yet
        self._length = 0
        self._space = False             # the collapsed text so far was followed by whitespace

    def add(self, s: str | None) -> None:
        if s:
            self.pending.append(s)

    def space(self) -> None:
        """A separator: the next word starts after one space (none at the very start)."""
        self.pending.append(" ")

    def _collapse(self) -> None:
        s = "".join(self.pending)
        self.pending.clear()
        words = s.split()
        if not words:
            if s:
                self._space = True
            return
        if (self._space or s[0].isspace()) and self._length:
            self.parts.append(" ")
            self._length += 1
        chunk = " ".join(words)
        self.parts.append(chunk)
        self._length += len(chunk)
        self._space = s[-1].isspace()

    @property
    def length(self) -> int:
        """Length of the collapsed text so far."""
        if self.pending:
            self._collapse()
        return self._length

    def next_offset(self) -> int:
        """Offset at which the next word will start."""
        if self.pending:
            self._collapse()
        return self._length + (1 if self._space and self._length else 0)

    def value(self) -> str:
        if not self.parts:      # no offset was asked for: collapse everything at once
            return " ".join("".join(self.pending).split())
        if self.pending:
            self._collapse()
        return "".join(self.parts)


@dataclass
class _Walk:
    skip: frozenset[str] = frozenset()
    entities: dict[str, str] = field(default_factory=dict)
    xrefs: list[tuple[etree._Element, int, int]] | None = None  # filled when not None


def _entity_text(node: etree._Entity, entities: dict[str, str]) -> str:
    name = node.name
    return entities.get(name) or html.entities.html5.get(f"{name};", "")


def _walk(el: etree._Element, out: _Text, ctx: _Walk) -> None:
    """Append the text of ``el``'s content (not its tail) to ``out``. The common child - an element of no special
    meaning here (``<italic>``, ``<p>``, ``<xref>``) - is handled in this loop, the others by :func:`_walk_special`
    (one Python call per element instead of three: this runs for every node of every article)."""
    pieces = out.pending
    if el.text:
        pieces.append(el.text)
    skip, xrefs = ctx.skip, ctx.xrefs
    for child in el:
        tag = child.tag
        if tag.__class__ is not str:          # entity, comment, processing instruction
            if isinstance(child, etree._Entity):
                out.add(_entity_text(child, ctx.entities))
        else:
            name = tag.rpartition("}")[2] if "}" in tag else tag
            if name in _SPECIAL or name in skip:
                _walk_special(child, name, out, ctx)
            else:
                block = name in _BLOCK
                if block:
                    pieces.append(" ")
                if xrefs is not None and name == "xref":
                    start = out.next_offset()
                    _walk(child, out, ctx)
                    xrefs.append((child, min(start, out.length), out.length))
                else:
                    _walk(child, out, ctx)
                if block:
                    pieces.append(" ")
        tail = child.tail
        if tail:
            pieces.append(_LINEBREAK_BEFORE_CLOSER.sub("", tail) if tail[0] in "\r\n" else tail)


#: elements :func:`_walk` leaves to :func:`_walk_special`
_SPECIAL = _NEVER_TEXT | {"alternatives", "tex-math", "inline-formula", "disp-formula", "inline-graphic"}


def _walk_child(child: etree._Element, out: _Text, ctx: _Walk) -> None:
    """Append one child node and its tail to ``out`` (as :func:`_walk` appends each child)."""
    _walk(_Only(child), out, ctx)  # type: ignore[arg-type]


class _Only:
    """A stand-in parent without text holding one node: :func:`_walk` walks it as one of its children."""

    __slots__ = ("node",)
    text = None

    def __init__(self, node: etree._Element) -> None:
        self.node = node

    def __iter__(self):
        return iter((self.node,))


def _walk_special(child: etree._Element, name: str, out: _Text, ctx: _Walk) -> None:
    """Append one element (not its tail) named ``name`` to ``out``: text never read, a skipped element (a
    separator), alternatives, TeX, formulas, inline graphics - and any other element (:func:`_walk_element`)."""
    if name in _NEVER_TEXT:
        pass
    elif name in ctx.skip:
        out.space()
    elif name == "alternatives":
        choice = _text_alternative(child)
        if choice is not None:
            _walk_element(choice, out, ctx)
        else:
            out.add(_alt_text(child) or "[graphic]")
    elif name == "tex-math":
        out.add(_tex_body("".join(child.itertext())))
    elif name in ("inline-formula", "disp-formula"):
        _walk_formula(child, out, ctx)
    elif name == "inline-graphic":
        out.add(_alt_text(child) or "[graphic]")
    else:
        _walk_element(child, out, ctx)


def _alt_text(el: etree._Element) -> str:
    """``<alt-text>`` of ``el`` or of the graphic / math inside it, or MathML's @alttext."""
    for node in el.iter():
        if not isinstance(node.tag, str):
            continue
        if _local(node) == "alt-text":
            text = " ".join("".join(node.itertext()).split())
            if text:
                return text
        alt = (node.get("alttext") or "").strip()
        if alt:
            return " ".join(alt.split())
    return ""


def _walk_formula(el: etree._Element, out: _Text, ctx: _Walk) -> None:
    """A formula's MathML / TeX text; its alt text, or ``[formula]``, when it is only an image."""
    inner = _Text()
    sub = _Walk(skip=ctx.skip | {"inline-graphic", "graphic"}, entities=ctx.entities)
    _walk(el, inner, sub)
    text = inner.value() or _alt_text(el) or "[formula]"
    block = _local(el) in _BLOCK
    if block:
        out.space()
    out.add(text)
    if block:
        out.space()


def _walk_element(el: etree._Element, out: _Text, ctx: _Walk) -> None:
    name = _local(el)
    block = name in _BLOCK
    if block:
        out.space()
    if ctx.xrefs is not None and name == "xref":
        start = out.next_offset()
        _walk(el, out, ctx)
        ctx.xrefs.append((el, min(start, out.length), out.length))
    else:
        _walk(el, out, ctx)
    if block:
        out.space()


def _text_alternative(alt: etree._Element) -> etree._Element | None:
    """The alternative whose text to use: MathML first, then anything but graphics / TeX."""
    children = [c for c in alt if isinstance(c.tag, str)]
    for c in children:
        if etree.QName(c).namespace == MATHML_NS:
            return c
    for c in children:
        if _local(c) not in ("graphic", "inline-graphic", "media", "tex-math"):
            return c
    return next((c for c in children if _local(c) == "tex-math"), None)


def _tex_body(tex: str) -> str:
    m = re.search(r"\\begin\{document\}(.*?)\\end\{document\}", tex, re.S)
    return m.group(1) if m else tex


def _text(el: etree._Element | None, ctx: _Walk | None = None) -> str:
    if el is None:
        return ""
    out = _Text()
    _walk(el, out, ctx or _Walk())
    return out.value()


def _has_ancestor(el: etree._Element, names: frozenset[str], stop: etree._Element) -> bool:
    for anc in el.iterancestors():
        if anc is stop:
            return False
        if _local(anc) in names:
            return True
    return False


def _blocks(container: etree._Element | None, exclude: frozenset[str],
            entities: dict[str, str], walked: dict | None = None) -> list[str]:
    """Section titles and paragraphs below ``container``, in order, each as one string. ``walked``: the paragraphs
    whose xref offsets the references need (element -> None); their text and xref offsets are kept there (the
    references reuse them: one walk of the body); the others are walked without tracking xrefs."""
    if container is None:
        return []
    ctx = _Walk(skip=_NOT_IN_PARAGRAPH, entities=entities)
    blocks = []
    # the paragraphs and titles below an excluded element (in any namespace, below ``container``): found from the
    # few excluded elements down instead of from each paragraph up
    left_out = {d for ex in container.iterdescendants(*(f"{{*}}{n}" for n in exclude))
                for d in ex.iterdescendants("p", "title")} if exclude else set()
    for el in container.iter("p", "title"):
        if el in left_out:
            continue
        track = walked is not None and el in walked
        ctx.xrefs = [] if track else None
        text = _text(el, ctx)
        if track:
            walked[el] = (text, ctx.xrefs)
        if text:
            blocks.append(text)
    return blocks


# --------------------------------------------------------------------------------------------
# sentences
# --------------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset({
    "fig", "figs", "al", "e.g", "i.e", "vs", "approx", "cf", "ca", "eq", "eqs", "ref", "refs",
    "no", "nos", "resp", "suppl", "dr", "mr", "mrs", "ms", "prof", "st", "sp", "spp", "var",
    "inc", "ltd", "co", "vol", "pp", "ch", "sect", "tab", "viz",
})
_SENTENCE_OPENERS = "\"'\u2018\u201c(["
# a sentence's end, if what follows fits (sentence_spans); group 1: the spaces after it
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d)\]]*(?=(\s+)\S)")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``.

    A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by space
    and an upper-case letter, a digit or an opening quote/bracket; not after abbreviations
    ("Fig.", "Figs.", "et al.", "e.g.", "i.e.", "vs.", "approx.", ...), single capital initials
    or dotted acronyms. Decimals ("3.5") never end a sentence: no space follows the point.
    """
    spans = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        at = m.end(1)                               # the next sentence's first character (no copy of the rest:
        c = text[at:at + 1]                         # long paragraphs stay linear)
        if not c or not (c.isupper() or c.isdigit() or c in _SENTENCE_OPENERS):
            continue
        if m.group(0)[0] == "." and (_is_abbreviation(text, m.start()) or _is_panel_after_number(text, m.start(), at)):
            continue
        spans.append((start, m.end()))
        start = at
    if start < len(text):
        spans.append((start, len(text)))
    return spans


_FIGURE_NUMBER_BEFORE = re.compile(r"\b(?:fig|figs|figure|figures|table|tables|suppl|supplementary)\.?\s+[A-Z]?\d+[A-Za-z]?$",
                                   re.I)


_PANEL_LETTER = re.compile(r"[A-Z][)\]},;:\u2013-]")


def _is_panel_after_number(text: str, dot: int, at: int) -> bool:
    """"(Fig. 9. B)": a figure number, a dot, then (at ``at``) a lone panel letter is one citation, not two
    sentences."""
    return bool(_PANEL_LETTER.match(text, at)) and bool(_FIGURE_NUMBER_BEFORE.search(text[max(0, dot - 40):dot]))


_WORD = re.compile(r"[^\s(\[]*")
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")


def _word_before(text: str, dot: int) -> str:
    """The word that ends at ``dot`` (after the last space, ``(`` or ``[``; at most 64 characters back): what
    ``re.search(r"[^\\s(\\[]*$", text[max(0, dot - 64):dot])`` finds - ``$`` also matches before a final newline -
    read backwards from ``dot`` instead of tried from each of the 64 positions."""
    seg = text[max(0, dot - 64):dot]
    end = len(seg) - 1 if seg.endswith("\n") else len(seg)
    if end <= 0:
        return ""
    return _WORD.match(seg[end - 1::-1]).group(0)[::-1]


def _is_abbreviation(text: str, dot: int) -> bool:
    last = text[dot - 1:dot]
    if not last.isalpha() and last != "\n":
        return False  # "[12].", "(Fig. 2).": every abbreviation, initial and acronym ends in a letter
    word = _word_before(text, dot)  # bounded: no quadratic scan
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True  # initial: "J. Smith"
    return _DOTTED.fullmatch(word) is not None  # "e.g", "U.S", "i.e"


# --------------------------------------------------------------------------------------------
# article metadata
# --------------------------------------------------------------------------------------------

def _child(el: etree._Element | None, *path: str) -> etree._Element | None:
    for name in path:
        if el is None:
            return None
        el = el.find(name)
    return el


def _href(el: etree._Element) -> str | None:
    value = el.get(XLINK_HREF)
    if value is None:  # unbound or odd xlink prefix: any attribute named href
        value = next((v for k, v in el.attrib.items() if k.rsplit("}", 1)[-1] == "href"), None)
    return value.strip() if value and value.strip() else None


def _internal_entities(root: etree._Element) -> dict[str, str]:
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is None:
        return {}
    return {e.name: e.content for e in dtd.iterentities()
            if e.content is not None and e.system_url is None and not set(e.content) & set("<&")}


_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}


def _date_parts(date: etree._Element) -> tuple[str, int] | None:
    """(ISO string, year) of a ``pub-date``; None when it holds no year."""
    iso = (date.get("iso-8601-date") or "").strip()
    if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", iso):
        return iso, int(iso[:4])
    year = re.search(r"\d{4}", _text(date.find("year")))
    if year is None:
        return None
    parts = [year.group(0)]
    month_text = _text(date.find("month")).lower()
    month = int(month_text) if month_text.isdigit() else _MONTHS.get(month_text[:3])
    if month and 1 <= month <= 12:
        parts.append(f"{month:02d}")
        day = _text(date.find("day"))
        if day.isdigit() and 1 <= int(day) <= 31:
            parts.append(f"{int(day):02d}")
    return "-".join(parts), int(parts[0])


def _date_rank(date: etree._Element) -> int:
    pub_type = (date.get("pub-type") or "").lower()
    date_type = (date.get("date-type") or "").lower()
    fmt = (date.get("publication-format") or "").lower()
    if pub_type in ("epub", "epub-ppub") or (
            date_type in ("pub", "publication") and fmt in ("", "electronic")):
        return 0
    if pub_type == "ppub" or (date_type in ("pub", "publication") and fmt == "print"):
        return 1
    if "collection" in (pub_type, date_type):
        return 2
    return 3


def _pub_date(meta: etree._Element | None) -> tuple[str | None, int | None]:
    if meta is None:
        return None, None
    best: tuple[int, tuple[str, int]] | None = None
    for date in meta.findall("pub-date"):
        parts = _date_parts(date)
        if parts is not None and (best is None or _date_rank(date) < best[0]):
            best = (_date_rank(date), parts)
    return best[1] if best else (None, None)


def _pmcid(meta: etree._Element | None) -> str:
    if meta is None:
        return ""
    ids = {}
    for aid in meta.findall("article-id"):
        kind = (aid.get("pub-id-type") or "").lower()
        ids.setdefault(kind, _text(aid))
    for kind in _PMCID_TYPES:
        m = re.fullmatch(r"(?:PMC)?\s*(\d+)(?:\.\d+)?", ids.get(kind, ""), re.IGNORECASE)
        if m and (kind != "accession" or ids[kind].upper().startswith("PMC")):
            return f"PMC{m.group(1)}"
    return ""


def _article_id(meta: etree._Element | None, kind: str) -> str | None:
    if meta is None:
        return None
    for aid in meta.findall("article-id"):
        if (aid.get("pub-id-type") or "").lower() == kind:
            return _text(aid) or None
    return None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _licence(meta: etree._Element | None, entities: dict[str, str]
             ) -> tuple[str | None, str | None, str | None]:
    """(url, @license-type, prose) from ``permissions`` (or NLM 2.3 ``copyright-statement``)."""
    if meta is None:
        return None, None, None
    ctx = _Walk(entities=entities)
    lic = next(meta.iter("license"), None)
    if lic is None:
        statement = " ".join(_text(c, ctx) for c in meta.iter("copyright-statement"))
        return None, None, statement or None
    url = _href(lic)
    if url is None:
        ref = next(lic.iter("{*}license_ref"), None)
        url = _text(ref) or None
    if url is None:
        url = next((h for link in lic.iter("ext-link", "uri") if (h := _href(link))
                    and "creativecommons.org" in h), None)
    prose = " ".join(t for p in lic.iter("license-p") if (t := _text(p, ctx)))
    return url, lic.get("license-type"), prose or None


def _abstract(meta: etree._Element | None, entities: dict[str, str]) -> str:
    if meta is None:
        return ""
    abstracts = meta.findall("abstract")
    main = [a for a in abstracts
            if (a.get("abstract-type") or "").lower() in _MAIN_ABSTRACT_TYPES] or abstracts[:1]
    texts = []
    for ab in main:
        blocks = _blocks(ab, frozenset(), entities)
        own_title = ab.find("title")
        if own_title is not None and blocks and blocks[0] == _text(own_title):
            blocks = blocks[1:]
        texts.extend(blocks)
    return "\n\n".join(texts)


def _dtd(el: etree._Element) -> str | None:
    docinfo = el.getroottree().docinfo
    if el.getparent() is None and docinfo.public_id:
        return docinfo.public_id
    return el.get("dtd-version")


def _article_meta(el: etree._Element, source_file: str | None,
                  entities: dict[str, str], walked: dict | None = None) -> Article:
    front = el.find("front")
    meta = _child(front, "article-meta")
    jmeta = _child(front, "journal-meta")
    ctx = _Walk(entities=entities)
    url, license_type, prose = _licence(meta, entities)
    code, subset = normalize_license(url=url, license_type=license_type, text=prose)
    pub_date, year = _pub_date(meta)
    journal = next(jmeta.iter("journal-title"), None) if jmeta is not None else None
    authors = 0 if meta is None else sum(
        1 for c in meta.iterfind("contrib-group/contrib") if c.get("contrib-type") == "author")
    body_blocks = _blocks(el.find("body"), _NOT_IN_FULL_TEXT, entities, walked)
    return Article(
        pmcid=_pmcid(meta),
        pmid=_article_id(meta, "pmid"),
        doi=_article_id(meta, "doi"),
        title=_text(_child(meta, "title-group", "article-title"), ctx),
        journal=_text(journal, ctx) or None,
        publisher=_text(_child(jmeta, "publisher", "publisher-name"), ctx) or None,
        pub_date=pub_date,
        year=year,
        article_type=el.get("article-type"),
        subjects=[] if meta is None else _unique(
            _text(s, ctx) for s in meta.iterfind("article-categories//subject")),
        keywords=[] if meta is None else _unique(
            _text(k, ctx) for k in meta.iterfind("kwd-group/kwd")),
        license_url=url,
        license_type=license_type,
        license_text=prose,
        license_code=code,
        subset=subset,
        abstract=_abstract(meta, entities),
        authors_count=authors,
        full_text="\n\n".join(body_blocks),
        dtd=_dtd(el),
        source_file=source_file,
    )


# --------------------------------------------------------------------------------------------
# figures and references
# --------------------------------------------------------------------------------------------

def _graphics(fig: etree._Element) -> list[str]:
    """xlink:href of each image of ``fig`` in order; one per ``<alternatives>``."""
    hrefs = []
    seen_alternatives: set[etree._Element] = set()
    for g in fig.iter("graphic"):
        if _has_ancestor(g, _NOT_PANEL, fig):
            continue
        alt = next((a for a in g.iterancestors("alternatives")), None)
        href = _href(g)
        if href is None or alt in seen_alternatives:
            continue
        if alt is not None:
            seen_alternatives.add(alt)
        hrefs.append(href)
    return hrefs


def _figure(fig: etree._Element, position: int, group_id: str | None,
            entities: dict[str, str]) -> Figure:
    ctx = _Walk(entities=entities)
    caption = fig.find("caption")
    sub = next(fig.iterancestors("sub-article"), None)
    caption_text, caption_doi = _caption_text(caption, entities)
    return Figure(
        fig_id=_fig_id(fig, position),
        label=_text(fig.find("label"), ctx),
        caption_title=_text(caption.find("title") if caption is not None else None, ctx),
        caption_text=caption_text,
        caption_doi=caption_doi,
        graphics=_graphics(fig),
        fig_type=fig.get("fig-type"),
        in_sub_article=sub is not None,
        sub_article_type=sub.get("article-type") if sub is not None else None,
        sub_article_id=sub.get("id") if sub is not None else None,
        fig_group_id=group_id,
        position=position,
    )


def _caption_text(caption: etree._Element | None, entities: dict[str, str]) -> tuple[str, str | None]:
    """(caption body without title and label, one line per paragraph; DOI of a trailing DOI line)."""
    if caption is None:
        return "", None
    ctx = _Walk(skip=frozenset({"title", "label"}), entities=entities)
    paragraphs: list[str] = []
    loose = _Text()  # text and inline markup directly in <caption>, between paragraphs
    loose.add(caption.text)
    for child in caption:
        if isinstance(child.tag, str) and _local(child) in _CAPTION_BLOCKS:
            paragraphs.append(loose.value())
            block = _Text()
            _walk_child(child, block, ctx)
            paragraphs.append(block.value())  # the tail is in there: rare, and it stays in its paragraph
            loose = _Text()
        else:
            _walk_child(child, loose, ctx)
    paragraphs.append(loose.value())
    lines = [p.strip() for p in paragraphs if p.strip()]
    doi = None
    if lines:
        m = _CAPTION_DOI.search(lines[-1]) if ":" in lines[-1] else None   # "DOI:" holds a colon
        if m:
            doi = m.group(1)
            lines[-1] = lines[-1][:m.start()].rstrip()
            if not lines[-1]:
                lines.pop()
    return "\n".join(lines), doi


def _fig_id(fig: etree._Element, position: int) -> str:
    return fig.get("id") or f"fig-{position}"


def _group_ids(figs: list[etree._Element]) -> list[str | None]:
    """Per figure, the id of its ``<fig-group>``: @id, else the id of the group's first figure."""
    first: dict[etree._Element, str] = {}
    ids: list[str | None] = []
    for i, fig in enumerate(figs):
        group = next(fig.iterancestors("fig-group"), None)
        if group is None:
            ids.append(None)
            continue
        ids.append(group.get("id") or first.setdefault(group, _fig_id(fig, i)))
    return ids


def _targets(figs: list[etree._Element]) -> dict[str, list[int]]:
    """Every id an xref may name -> indices of the figures it means."""
    targets: dict[str, list[int]] = {}
    for i, fig in enumerate(figs):
        for el in fig.iter():
            if isinstance(el.tag, str) and el.get("id"):
                targets.setdefault(el.get("id"), [i])
        group = next(fig.iterancestors("fig-group"), None)
        if group is not None and group.get("id"):
            targets.setdefault(group.get("id"), []).append(i)
    return targets


def _cited(xref: etree._Element, targets: dict[str, list[int]]) -> list[int]:
    rids = (xref.get("rid") or "").split()
    return list(dict.fromkeys(i for rid in rids for i in targets.get(rid, ())))


def _citing(p: etree._Element, scope: etree._Element, back_matter: dict | None = None) -> bool:
    """A paragraph / table cell whose figure xrefs are in-text references: article text, not a caption,
    front matter or back matter (acknowledgements, author contributions, footnotes, declarations).
    ``back_matter``: a cache of each section's verdict (section -> is back matter), kept by the caller."""
    back_matter = {} if back_matter is None else back_matter
    for anc in p.iterancestors():
        if anc is scope:
            return True
        name = _local(anc)
        if name in _CITING_IN_BACK:
            return True
        if name in _NOT_CITING:
            return False
        if name == "sec":
            back = back_matter.get(anc)
            if back is None:
                title = anc.find("title")
                label = f"{anc.get('sec-type') or ''} {_text(title) if title is not None else ''}".lower()
                back = back_matter[anc] = bool(_BACK_MATTER_SECTIONS.search(label.replace("-", " ").replace("_", " ")))
            if back:
                return False
    return True


_HOSTS = ("p", "td", "th")


def _figure_citations(scope: etree._Element, targets: dict[str, list[int]]
                      ) -> tuple[dict[etree._Element, list[int]], dict[etree._Element, None]]:
    """(each xref of ``scope`` that cites a figure -> the figures' indices; the paragraphs and table cells of
    ``scope`` holding such an xref, in document order). Only those paragraphs are read for references (most xrefs
    cite references, tables, equations): found from the xrefs up, once, instead of each paragraph and cell of the
    article searching its own xrefs. Document order: each xref's holders are taken outermost first, xref after
    xref - an outer paragraph starts before the paragraphs inside it, and a paragraph before the next one's xrefs."""
    cited_by: dict[etree._Element, list[int]] = {}
    hosts: dict[etree._Element, None] = {}
    for x in scope.iter("xref"):
        rids = x.get("rid")
        if not rids or not any(r in targets for r in rids.split()):   # most cite references, tables, equations
            continue
        cited = _cited(x, targets)
        if cited:
            cited_by[x] = cited
            chain = []
            for anc in x.iterancestors():
                if anc.tag in _HOSTS:
                    chain.append(anc)
                if anc is scope:
                    break
            for anc in reversed(chain):
                if anc not in hosts:
                    hosts[anc] = None
    return cited_by, hosts


def _attach_references(scope: etree._Element, figs: list[Figure], cited_by: dict[etree._Element, list[int]],
                       hosts: dict[etree._Element, None], entities: dict[str, str], walked: dict | None = None
                       ) -> None:
    """In-text references of the figures: the sentences of article paragraphs that cite them (``cited_by``,
    ``hosts``: :func:`_figure_citations`). A paragraph the full text already walked (``walked``: element -> text,
    xref offsets) is not walked again."""
    seen: set[tuple[int, str]] = set()
    walked = walked if walked is not None else {}
    if not hosts:
        return
    back_matter: dict[etree._Element, bool] = {}
    for p in hosts:
        if not _citing(p, scope, back_matter):
            continue
        if _local(p) != "p" and any(True for _ in p.iter("p")):
            continue  # a table cell of paragraphs: its paragraphs are read as paragraphs
        got = walked.get(p)
        if got is not None:
            paragraph, xrefs = got
        else:
            ctx = _Walk(skip=_NOT_IN_PARAGRAPH, entities=entities, xrefs=[])
            paragraph, xrefs = _text(p, ctx), ctx.xrefs
        spans = None                                         # split into sentences when first needed
        marks = [(x, s, e, cited_by.get(x, [])) for x, s, e in xrefs]
        for k, (xref, start, end, cited) in enumerate(marks):
            if not cited:
                continue
            start += len(paragraph[start:end]) - len(paragraph[start:end].lstrip())
            xref_text = paragraph[start:end]
            nxt = marks[k + 1] if k + 1 < len(marks) else None
            if (nxt and nxt[3] and xref.getnext() is nxt[0]
                    and (xref.tail or "").strip().lower() in _RANGE_SEPARATORS):
                first, last = min(cited), max(nxt[3])
                if first < last:
                    cited = list(range(first, last + 1))
                    xref_text = paragraph[start:nxt[2]]
            if spans is None:
                spans = sentence_spans(paragraph)
            sentence = next((paragraph[a:b] for a, b in spans if a <= start < b), paragraph)
            for i in cited:
                if (i, sentence) not in seen:
                    seen.add((i, sentence))
                    figs[i].references.append(Reference(sentence, paragraph, xref_text))


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def _parse_one(scope: etree._Element, article: etree._Element | None,
               source_file: str | None, entities: dict[str, str]) -> ParsedArticle:
    """``article`` None: a fragment of sub-articles only (no metadata of its own)."""
    fig_elements = list(scope.iter("fig"))
    cited_by, hosts = _figure_citations(scope, _targets(fig_elements))
    walked: dict = dict.fromkeys(hosts)   # paragraphs citing a figure: walked once, for full text and references
    meta = (_article_meta(article, source_file, entities, walked) if article is not None
            else Article(pmcid="", source_file=source_file))
    figures = [_figure(f, i, g, entities)
               for i, (f, g) in enumerate(zip(fig_elements, _group_ids(fig_elements)))]
    _attach_references(scope, figures, cited_by, hosts, entities, walked)
    return ParsedArticle(article=meta, figures=figures)


def parse_jats(source: bytes | str | os.PathLike[str], *,
               source_file: str | None = None) -> list[ParsedArticle]:
    """Parse one JATS/NLM file (bytes, XML text or a path): one ParsedArticle per article.

    Handles a plain ``<article>``, wrappers holding several (``<articles>``, OAI-PMH
    ``GetRecord``, ``pmc-articleset``), namespaced JATS, and a fragment holding only
    ``<sub-article>``s (one article with pmcid "", its figures flagged ``in_sub_article``).
    """
    data, name = _read_source(source)
    root = _parse_tree(data)
    source_file = source_file or name
    entities = _internal_entities(root)
    articles = [a for a in root.iter("{*}article") if _is_jats_article(a)]
    if articles:
        for art in articles:
            _strip_namespace(art)
        return [_parse_one(a, a, source_file, entities) for a in articles]
    subs = [s for s in root.iter("{*}sub-article")
            if not any(_local(a) == "sub-article" for a in s.iterancestors())]
    if subs:
        for sub in subs:
            _strip_namespace(sub)
        return [_parse_one(root, None, source_file, entities)]
    if _local(root) in _WRAPPERS and not len(root):
        raise ParseError("empty", f"<{_local(root)}> holds no article")
    raise ParseError("not_jats", f"root element <{_local(root)}> holds no JATS <article>")


# --------------------------------------------------------------------------------------------
# inspection (``biomedica inspect FILE``)
# --------------------------------------------------------------------------------------------

_XML_SUFFIXES = (".xml", ".nxml")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _read_package(path: Path) -> tuple[dict[str, bytes], list[str], str | None]:
    """(XML members' bytes, all member names read, error) of a tar archive, as far as readable."""
    xml: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with open(path, "rb") as raw, open_tar_stream(raw) as tar:
            for member in tar:  # moving to the next header reads through the member's data
                if not member.isfile():
                    continue
                if member.name.lower().endswith(_XML_SUFFIXES):
                    xml[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
                names.append(member.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        return xml, names, f"{type(exc).__name__}: {exc}"
    return xml, names, None


def _resolves(href: str, available: set[str]) -> bool:
    base = href.rsplit("/", 1)[-1]
    return base in available or any(n.rsplit(".", 1)[0] == base for n in available)


def _inspect_article(parsed: ParsedArticle, available: set[str] | None) -> dict[str, Any]:
    a = parsed.article
    info = {k: v for k, v in dataclasses.asdict(a).items() if k != "full_text"}
    info["full_text_chars"] = len(a.full_text)
    warnings = []
    if not a.pmcid:
        warnings.append("no PMCID in the XML")
    if a.license_code == "unknown":
        warnings.append("no licence stated")
    figures = []
    for f in parsed.figures:
        flags = [name for name, on in (("empty_caption", not f.caption),
                                       ("no_graphic", not f.graphics),
                                       ("sub_article", f.in_sub_article),
                                       ("fig_group", f.fig_group_id is not None)) if on]
        missing = ([g for g in f.graphics if not _resolves(g, available)]
                   if available is not None else [])
        warnings += [f"figure {f.fig_id}: image {g!r} not found" for g in missing]
        figures.append({
            "id": f.fig_id, "position": f.position, "label": f.label, "caption": f.caption,
            "graphics": f.graphics, "n_references": len(f.references),
            "first_reference": f.references[0].sentence if f.references else None,
            "flags": flags, "missing_graphics": missing,
        })
    info["n_figures"] = len(figures)
    info["n_graphics"] = sum(len(f["graphics"]) for f in figures)
    info["figures"] = figures
    info["warnings"] = warnings
    return info


def inspect_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """JSON-able report on one .xml/.nxml file or PMC .tar.gz package (truncation tolerated)."""
    path = Path(path)
    report: dict[str, Any] = {"file": str(path), "articles": [], "warnings": []}
    if path.name.lower().endswith(_TAR_SUFFIXES):
        xml, names, error = _read_package(path)
        report["kind"] = "package"
        report["members"] = names
        available: set[str] | None = {n.rsplit("/", 1)[-1] for n in names}
        if error:
            report["warnings"].append(f"archive readable only up to member {len(names)}: {error}")
        if not xml:
            report["warnings"].append("no XML member found")
        sources: list[tuple[str, bytes | str | os.PathLike[str]]] = list(xml.items())
    else:
        report["kind"] = "xml"
        images = {p.name for p in path.parent.iterdir()
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff")}
        available = images or None
        sources = [(path.name, path)]
    for name, src in sources:
        try:
            parsed = parse_jats(src, source_file=name.rsplit("/", 1)[-1])
        except ParseError as exc:
            report["warnings"].append(f"{name}: {exc}")
            continue
        report["articles"] += [_inspect_article(p, available) for p in parsed]
    return report


def _clip(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def format_inspection(d: dict[str, Any]) -> str:
    """Readable multi-line text of an :func:`inspect_path` report."""
    out = io.StringIO()
    out.write(f"{d['file']} ({d.get('kind', '?')})\n")
    if d.get("members") is not None:
        out.write(f"  members read: {len(d['members'])}\n")
    for w in d.get("warnings", []):
        out.write(f"  ! {w}\n")
    for a in d.get("articles", []):
        out.write(f"\n{a['pmcid'] or '(no PMCID)'}  {a['title']}\n")
        out.write(f"  journal: {a['journal']}  date: {a['pub_date']}  type: {a['article_type']}"
                  f"  dtd: {a['dtd']}\n")
        out.write(f"  pmid: {a['pmid']}  doi: {a['doi']}  authors: {a['authors_count']}"
                  f"  full text: {a['full_text_chars']} chars\n")
        out.write(f"  licence: {a['license_code']} ({a['subset']})  url: {a['license_url']}\n")
        out.write(f"  figures: {a['n_figures']}  graphics: {a['n_graphics']}\n")
        for f in a["figures"]:
            flags = f"  [{', '.join(f['flags'])}]" if f["flags"] else ""
            out.write(f"  - #{f['position']} {f['id']} {f['label']!r}{flags}\n")
            out.write(f"      caption: {_clip(f['caption']) or '(empty)'}\n")
            out.write(f"      graphics: {', '.join(f['graphics']) or '-'}\n")
            if f["n_references"]:
                out.write(f"      cited {f['n_references']}x: {_clip(f['first_reference'])}\n")
        for w in a["warnings"]:
            out.write(f"  ! {w}\n")
    return out.getvalue()
