"""The parser's faster paths (issue 28, fourth round) give what the plain versions they replaced gave: the text
accumulator that collapses whitespace late (offsets included), the word read backwards before a dot, the sentence
ends, and the paragraphs found as citing a figure from the xrefs up. The plain versions are kept here as the
reference; the inputs are random piece sequences (fixed seeds) and every paragraph of the real fixture articles."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from biomedica_hf.ingest import parse as P

ARTICLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "pmc" / "articles"
FIXTURE_XML = sorted(ARTICLES.resolve().glob("*/*.nxml")) + sorted(ARTICLES.resolve().glob("*/*.xml"))
PIECES = ["", " ", "\n", "\n  ", "a", "Fig", ". ", "word ", " word", "\u00a0", "x\ty", "(", "1.5", "  b  ", "\u2003c"]


class EagerText:
    """The accumulator as it was: whitespace collapsed at every piece."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.space = False

    def add(self, s: str | None) -> None:
        if not s:
            return
        words = s.split()
        if not words:
            self.space = True
            return
        if (self.space or s[0].isspace()) and self.length:
            self.parts.append(" ")
            self.length += 1
        chunk = " ".join(words)
        self.parts.append(chunk)
        self.length += len(chunk)
        self.space = s[-1].isspace()

    def next_offset(self) -> int:
        return self.length + (1 if self.space and self.length else 0)

    def value(self) -> str:
        return "".join(self.parts)


def test_late_collapse_gives_the_eager_text_and_offsets():
    rng = random.Random(28)
    for _ in range(3000):
        eager, late = EagerText(), P._Text()
        for _ in range(rng.randint(0, 12)):
            op = rng.random()
            if op < 0.15:
                eager.space = True
                late.space()
            elif op < 0.3:
                assert late.next_offset() == eager.next_offset()
                assert late.length == eager.length
            else:
                piece = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3)))
                eager.add(piece)
                late.add(piece)
        assert late.value() == eager.value()
        assert late.length == eager.length
        assert late.next_offset() == eager.next_offset()


def test_word_before_a_dot_is_the_regex_word():
    rng = random.Random(5)
    alphabet = "ab.Z(\n [\t\u00a0\u2003e\x1c"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        dot = rng.randint(0, len(text))
        assert P._word_before(text, dot) == re.search(r"[^\s(\[]*$", text[max(0, dot - 64):dot]).group(0)


_OLD_END = re.compile(r"[.!?][\"'\u2019\u201d)\]]*(?=\s+\S)")
_OLD_SPACES = re.compile(r"\s*")


def _old_sentence_spans(text: str) -> list[tuple[int, int]]:
    """sentence_spans as it was (a second match for the spaces, the regex search for the word before a dot)."""
    spans, start = [], 0
    for m in _OLD_END.finditer(text):
        at = _OLD_SPACES.match(text, m.end()).end()
        c = text[at:at + 1]
        if not c or not (c.isupper() or c.isdigit() or c in P._SENTENCE_OPENERS):
            continue
        if m.group(0)[0] == ".":
            word = re.search(r"[^\s(\[]*$", text[max(0, m.start() - 64):m.start()]).group(0)
            abbreviation = bool(word) and (word.lower() in P._ABBREVIATIONS
                                          or (len(word) == 1 and word.isalpha() and word.isupper())
                                          or bool(re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word)))
            if abbreviation or P._is_panel_after_number(text, m.start(), at):
                continue
        spans.append((start, m.end()))
        start = at
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _trees():
    for path in FIXTURE_XML:
        try:
            root = P._parse_tree(path.read_bytes())
        except P.ParseError:
            continue
        articles = [a for a in root.iter("{*}article") if P._is_jats_article(a)]
        for a in articles:
            P._strip_namespace(a)
        yield path, articles


def test_fixture_paragraphs_split_into_the_same_sentences():
    n = 0
    for _, articles in _trees():
        for a in articles:
            for p in a.iter("p", "title", "td"):
                text = P._text(p, P._Walk(skip=P._NOT_IN_PARAGRAPH))
                assert P.sentence_spans(text) == _old_sentence_spans(text)
                n += 1
    assert n > 3000
    tricky = ("See Fig.\n5. Then e.g.\n. A (Fig. 9. B) and J. Smith et al. 2 x.\u00a0Y [12]. Z \u2160. W U.\u212a. V "
              "(Fig. 2). T \u00e9. S")
    for cut in range(len(tricky) + 1):
        assert P.sentence_spans(tricky[:cut]) == _old_sentence_spans(tricky[:cut])


def test_citing_paragraphs_found_from_the_xrefs_are_those_holding_one():
    citing = 0
    for path, articles in _trees():
        for a in articles:
            figs = list(a.iter("fig"))
            targets = P._targets(figs)
            cited_by, hosts = P._figure_citations(a, targets)
            expected = {p for p in a.iter("p", "td", "th") if any(P._cited(x, targets) for x in p.iter("xref"))}
            assert list(hosts) == [p for p in a.iter("p", "td", "th") if p in expected], path.name   # document order
            assert cited_by == {x: P._cited(x, targets) for x in a.iter("xref") if P._cited(x, targets)}
            citing += len(expected)
    assert citing > 500


@pytest.mark.parametrize("path", FIXTURE_XML[:12], ids=lambda p: p.parent.name)
def test_tracked_and_untracked_walks_give_the_same_text(path):
    """A paragraph walked with its xref offsets tracked (collapsed at each xref) reads as walked without."""
    articles = next(arts for p, arts in _trees() if p == path)
    plain = 0
    for a in articles:
        for p in a.iter("p"):
            tracked = P._Walk(skip=P._NOT_IN_PARAGRAPH, xrefs=[])
            text = P._text(p, tracked)
            assert text == P._text(p, P._Walk(skip=P._NOT_IN_PARAGRAPH))
            for x, start, end in tracked.xrefs:
                assert 0 <= start <= end <= len(text)
                if len(x) == 0 and (x.text or "").strip():    # a plain xref: its offsets frame its own text
                    assert text[start:end].strip() == " ".join(x.text.split())
                    plain += 1
    assert plain or not any(len(x) == 0 and (x.text or "").strip() for a in articles for x in a.iter("xref"))
