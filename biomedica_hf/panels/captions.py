"""Split a figure caption into its shared part and one subcaption per panel label, by rules (no model).

A compound figure's caption usually reads "Title. (A) text about A. (B) text about B." — or "a The plot...
b Survival...", "A, SDS-PAGE...", "a) feature...", "(A–C) Images of...", "(D and E) Rescue...", "(i) ...",
"Left, ROC curve...", or puts the marker after the text it closes ("...on Jan 1 (1A). ...worse status (1B).").
:func:`split_caption` finds the markers, picks one marker *family* (upper-case letters, lower-case letters,
roman numerals, digits, digit+letter "1A", or positions "left/right/top/bottom"), and returns a
:class:`Subcaptions`: ``shared`` (the text before the first marker, which applies to every panel) and ``parts``
(label -> its text, in caption order).

Rules, in order:

* **Candidates.** Parenthesised markers "(A)", "(A–C)", "(a, b)", "(A and B)", "(A + B)", "(1A)", "(ii)",
  "(Left)", "(panel B)"; bare markers at a clause start "A,", "A.", "a)", "A:", "a The ..." (Nature style: a
  lower-case letter opening a sentence), "Panel A:", "Left," / "Top:" ; phrases "in/from panel(s) X". Several
  markers joined by "and", ",", "+", "/", "–", "to" count as one group ("(A) and (D) Distribution...").
* **Not markers.** Anything inside a parenthesis holding more than labels ("(n = 5)", "(Fig. 2A)", "(2019)",
  "(T2)", "(pT3)"); a parenthesis glued to a following hyphen or letter ("(E)-4-hydroxy", "(S)-ketamine",
  "(+)"); labels after "Fig.", "Figure", "Table", "Movie", "Video", "panel" inside a citation; "A." before a
  lower-case word ("C. elegans", "E. coli"); a capital letter opening a sentence without punctuation ("A total
  of ..."); a bare "a" in mid-sentence (the English article).
* **Family.** With the labels read from the image (``image_labels``), the family that shares most labels with
  them; else the family whose labels form the longest run from its first label (A, a, i, 1, 1A, or any
  position word), preferring markers that open clauses.
* **Sequence.** A family must hold its first label (a caption whose only letters are (X), (P) and (E) has no
  panel markers); a lead marker of a label already described, in mid-sentence, is a cross-reference ("similar to
  (B)") and stays in the text.
* **Lead or trailing.** Markers that open clauses ("(A) Western blot of ...") give each label the text up to the
  next lead marker; markers that close them ("... on Jan 1 (1A).") give each label its clause: the text since
  the previous marker (or its sentence's start). Enumerations in one sentence ("(B) Invasive index, (C) maximum
  migration rate and (D) number of protrusions of ...") give every label of the run the whole sentence.
* **Footer.** Trailing caption paragraphs without markers ("*p < 0.05 compared to control.") apply to every
  panel: ``footer``.

Pure functions only: text in, dataclasses out.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

UPPER, LOWER, ROMAN, DIGIT, DIGIT_LETTER, POSITION = "upper", "lower", "roman", "digit", "digit_letter", "position"
FAMILIES = (UPPER, LOWER, DIGIT_LETTER, ROMAN, DIGIT, POSITION)   # tie-break order
LEAD, TRAILING = "lead", "trailing"

_ROMANS = ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii", "xiii", "xiv", "xv", "xvi",
           "xvii", "xviii", "xix", "xx"]
_POSITIONS = ("top left", "top right", "top middle", "top center", "top centre", "bottom left", "bottom right",
              "bottom middle", "bottom center", "bottom centre", "upper left", "upper right", "lower left",
              "lower right", "middle left", "middle right", "center left", "center right",
              "left", "right", "top", "bottom", "middle", "center", "centre", "upper", "lower", "inset", "insets")
_POSITION_ALIASES = {"centre": "center", "upper": "top", "lower": "bottom", "insets": "inset",
                     "top centre": "top center", "bottom centre": "bottom center",
                     "upper left": "top left", "upper right": "top right", "lower left": "bottom left",
                     "lower right": "bottom right"}
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2212~"
_D = "\\-\u2010\u2011\u2012\u2013\u2014\u2212~"   # the dashes inside a [character class]
# one label token (a roman numeral is a run of ivx letters; single letters are ambiguous and resolved later)
_TOKEN = r"(?:[1-9][0-9]?[A-Za-z]|[1-9][0-9]?|[ivx]{1,5}|[A-Za-z])"
_JOIN = rf"(?:\s*(?:[,/+&{_D}]|\band\b|\bto\b|\bor\b|,\s*and\b)\s*)"
_LIST = rf"{_TOKEN}(?:{_JOIN}{_TOKEN})*"
_POS = "|".join(re.escape(p) for p in _POSITIONS)
_PANEL_WORD = r"(?:panels?|subpanels?|sub-panels?)"
_PAREN = re.compile(rf"\(\s*(?:{_PANEL_WORD}\s+)?({_LIST})\s*\)|\(\s*(?:({_POS})(?:\s+{_PANEL_WORD})?)\s*\)", re.I)
# "(A)–(C)" / "(A) and (D)" / "(A), (B)": consecutive parenthesised markers, one group
_PAREN_RUN = re.compile(rf"(?:\(\s*(?:{_PANEL_WORD}\s+)?{_LIST}\s*\)|\(\s*(?:{_POS})(?:\s+{_PANEL_WORD})?\s*\))"
                        rf"(?:{_JOIN}(?:\(\s*(?:{_PANEL_WORD}\s+)?{_LIST}\s*\)|\(\s*(?:{_POS})\s*\)))*", re.I)
_BARE = re.compile(rf"(?<![\w\-.])(?:{_PANEL_WORD}\s+)?({_LIST})\s*([,.:)](?=\s)|\s(?=\S))", re.I)
_BARE_POS = re.compile(rf"({_POS})(?:\s+{_PANEL_WORD})?\s*([,:.)]|\s(?=\())", re.I)
_PHRASE = re.compile(rf"\b(?:in|from|of|see)\s+(?:the\s+)?{_PANEL_WORD}\s+({_LIST})\b", re.I)
_CITATION_BEFORE = re.compile(r"(?:\b(?:fig|figs|figure|figures|table|tables|movie|movies|video|videos|suppl\w*|"
                              r"eq|eqs|equation|ref|refs|chr|chromosome)(?:\.?\s*S?\d+[A-Za-z]?|\s*)|[A-Za-z0-9]-)$",
                              re.I)
_ABBREVIATIONS = frozenset({"fig", "figs", "al", "e.g", "i.e", "vs", "approx", "cf", "ca", "eq", "eqs", "ref",
                            "refs", "no", "nos", "resp", "suppl", "dr", "sp", "spp", "var", "ref", "st"})
_CONNECTIVE = re.compile(rf"^[\s,;:{_D}]*(?:(?:and|or|while|whereas|respectively)\b[\s,;:]*)*", re.I)


@dataclass(frozen=True)
class Marker:
    """One marker group in the caption: ``caption[start:end]`` names ``labels`` (normalised, in order)."""

    start: int
    end: int
    labels: tuple[str, ...]
    family: str
    lead: bool          # opens a clause (text follows it) rather than closing one
    boundary: bool      # stands at a clause start (caption start, after ". ; :" or a newline)
    style: str          # "paren", "bare", "phrase", "position"


@dataclass(frozen=True)
class Subcaptions:
    """A caption split by panel label. ``parts`` maps each label to its own text, in caption order; ``shared``
    precedes the first marker (every panel's context); ``footer`` follows the last part in paragraphs of its own
    without markers (also every panel's). ``family`` is None and ``parts`` empty when no markers were found."""

    caption: str
    shared: str
    parts: dict[str, str] = field(default_factory=dict)
    family: str | None = None
    mode: str | None = None          # "lead" / "trailing"
    footer: str = ""
    markers: tuple[Marker, ...] = ()

    @property
    def labels(self) -> list[str]:
        return list(self.parts)

    def part(self, label: str | None) -> str | None:
        """The text of ``label`` (matched exactly, then ignoring case; "A" finds "a"), or None."""
        if label is None:
            return None
        key = match_label(label, self.parts)
        return self.parts.get(key) if key is not None else None

    def full_text(self, label: str | None) -> str:
        """What a panel's caption becomes: the shared part, the label's text, the footer (the shared part and
        footer alone for a label without text)."""
        return " ".join(t for t in (self.shared, self.part(label) or "", self.footer) if t).strip()


# ------------------------------------------------------------------------------------ labels
def normalise_label(label: str) -> str:
    """A label as printed ("(a)", "A.", "ii)", "1a", "Left") -> its normal form ("a", "A", "ii", "1A", "left")."""
    s = label.strip().strip("()[].,:;").strip()
    m = re.fullmatch(r"([1-9][0-9]?)\s*([A-Za-z])", s)
    if m:
        return f"{m.group(1)}{m.group(2).upper()}"
    low = s.lower()
    if low in _POSITIONS:
        low = re.sub(r"\s+", " ", low)
        return _POSITION_ALIASES.get(low, low)
    return s


def label_family(label: str) -> set[str]:
    """The families a normalised label can belong to ("i" and "v" are letters or roman numerals)."""
    s = normalise_label(label)
    out = set()
    if s.lower() in _POSITIONS or s in _POSITION_ALIASES.values():
        return {POSITION}
    if re.fullmatch(r"[1-9][0-9]?[A-Za-z]", s):
        return {DIGIT_LETTER}
    if re.fullmatch(r"[1-9][0-9]?", s):
        return {DIGIT}
    if len(s) == 1 and s.isalpha():
        out.add(UPPER if s.isupper() else LOWER)
    if s.lower() in _ROMANS and (s.islower() or len(s) > 1):
        out.add(ROMAN)
    return out


def label_rank(label: str, family: str) -> int:
    """Position of ``label`` in its family's sequence (A=0, B=1, ...; i=0; 1=0; 1A=(1,A) packed; positions 0)."""
    s = normalise_label(label)
    if family in (UPPER, LOWER):
        return ord(s.lower()) - ord("a")
    if family == ROMAN:
        return _ROMANS.index(s.lower()) if s.lower() in _ROMANS else 99
    if family == DIGIT:
        return int(s) - 1
    if family == DIGIT_LETTER:
        return (int(s[:-1]) - 1) * 26 + ord(s[-1].lower()) - ord("a")
    return 0


def match_label(label: str, candidates: Iterable[str]) -> str | None:
    """The candidate equal to ``label`` after normalising, else equal ignoring case, else None."""
    cands = list(candidates)
    n = normalise_label(label)
    for c in cands:
        if normalise_label(c) == n:
            return c
    for c in cands:
        if normalise_label(c).lower() == n.lower():
            return c
    return None


def _from_rank(rank: int, family: str, like: str) -> str:
    if family == UPPER:
        return chr(ord("A") + rank)
    if family == LOWER:
        return chr(ord("a") + rank)
    if family == ROMAN:
        return _ROMANS[rank]
    if family == DIGIT:
        return str(rank + 1)
    if family == DIGIT_LETTER:
        letter = chr(ord("A") + rank % 26)
        return f"{rank // 26 + 1}{letter if like[-1].isupper() else letter.lower()}"
    return like


# ------------------------------------------------------------------------------------ candidates
def _tokens_and_joins(text: str) -> list[tuple[str, str]]:
    """``"A–C and E"`` -> [("A", ""), ("C", "–"), ("E", "and")]: each token with the joiner before it."""
    out, join = [], ""
    for m in re.finditer(rf"([,/+&{_D}]|\band\b|\bto\b|\bor\b)|({_TOKEN})", text, re.I):
        if m.group(2):
            out.append((m.group(2), join))
            join = ""
        else:
            j = m.group(1).lower()
            join = "range" if (j in _DASHES or j == "to") else (join or j)
    return out


def _expand(items: list[tuple[str, str]], family: str) -> tuple[str, ...] | None:
    """Labels of one marker group in ``family`` (ranges expanded), or None when a token is not of it."""
    labels: list[str] = []
    for tok, join in items:
        n = normalise_label(tok)
        if family not in label_family(n) and not (family == ROMAN and n.lower() in _ROMANS):
            return None
        if family == ROMAN:
            n = n.lower()
        if join == "range" and labels:
            lo, hi = label_rank(labels[-1], family), label_rank(n, family)
            if not 0 < hi - lo <= 26:
                return None
            labels += [_from_rank(r, family, n) for r in range(lo + 1, hi + 1)]
        else:
            labels.append(n)
    return tuple(dict.fromkeys(labels))


def _families_of(items: list[tuple[str, str]]) -> list[str]:
    fams = None
    for tok, _ in items:
        f = label_family(tok)
        if re.fullmatch(r"[ivx]{1,5}", tok, re.I) and tok.islower():
            f = f | {ROMAN}
        fams = f if fams is None else fams & f
    return sorted(fams or (), key=FAMILIES.index)


def _is_abbrev_before(text: str, dot: int) -> bool:
    word = re.search(r"[^\s(\[]*$", text[max(0, dot - 40):dot]).group(0)
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS:
        return True
    return bool(re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word))


def _at_boundary(text: str, pos: int, floor: int = 0) -> bool:
    """Does ``pos`` start a clause: the caption's start, after a newline, or after ". ; : ! ?" (not an
    abbreviation's dot)?"""
    before = text[floor:pos].rstrip(" \t")
    if not before or before.endswith("\n"):
        return True
    last = before[-1]
    if last in ";:!?":
        return True
    if last == "." or (last in ")]\"'\u201d" and before[:-1].rstrip().endswith(".")):
        dot = len(before) - 1 if last == "." else before[:-1].rstrip().rfind(".")
        return not _is_abbrev_before(text, floor + dot)
    return False


def _cited(text: str, start: int) -> bool:
    """Is the marker at ``start`` part of a citation ("Fig. 2 (B)", "Figure 3B", "lanes 1–3")?"""
    return bool(_CITATION_BEFORE.search(text[max(0, start - 30):start].rstrip()))


def _next_word(text: str, end: int) -> str:
    m = re.match(r"\s*([^\s]+)", text[end:])
    return m.group(1) if m else ""


def _followed_by_text(text: str, end: int) -> bool:
    """Does a word follow (not closing punctuation, not the caption's end, not a glued hyphen or letter)?"""
    rest = text[end:end + 3]
    return bool(re.match(r"[ \t]+[^\s.,;:)\]]", rest)) or bool(re.match(r"\s*[:]\s*\S", rest))


def _candidates(text: str) -> list[tuple[int, int, list[tuple[str, str]], bool, bool, str]]:
    """(start, end, [(token, joiner)], lead, boundary, style) of every marker candidate, in text order
    (families are decided later)."""
    found: list[tuple[int, int, list[tuple[str, str]], bool, bool, str]] = []
    taken = [False] * (len(text) + 1)

    def add(start, end, items, lead, boundary, style):
        if any(taken[start:end]) or not items:
            return
        for i in range(start, end):
            taken[i] = True
        found.append((start, end, items, lead, boundary, style))

    for run in _PAREN_RUN.finditer(text):
        start, end = run.start(), run.end()
        if end < len(text) and (text[end] in _DASHES + "+" or text[end].isalnum()):
            continue            # "(E)-4-hydroxy", "(S)-ketamine", "(A)b"
        if start and (text[start - 1].isalnum() or text[start - 1] in "-_"):
            continue            # "IL(A)", "x-(B)"
        if _cited(text, start):
            continue
        items: list[tuple[str, str]] = []
        prev_end = start
        for k, m in enumerate(_PAREN.finditer(text, start, end)):
            if m.group(2):
                items.append((normalise_label(m.group(2)), ""))
            else:
                sub = _tokens_and_joins(m.group(1))
                if k and sub:
                    between = text[prev_end:m.start()]
                    sub[0] = (sub[0][0], "range" if any(c in between for c in _DASHES) or
                              re.search(r"\bto\b", between) else "and")
                items += sub
            prev_end = m.end()
        boundary = _at_boundary(text, start)
        after = text[end:end + 2]
        lead = _followed_by_text(text, end) and not re.match(r"\s+(?:and|or|,)\b", text[end:end + 6])
        if after.startswith(":"):
            lead = True
        # position words just before ("Lower left (A):") belong to the marker
        pm = re.search(rf"(?:^|(?<=[\s.;:]))({_POS})\s*$", text[:start], re.I)
        if pm and lead and _at_boundary(text, pm.start(1)):
            start, boundary = pm.start(1), True
        add(start, end, items, lead, boundary, "paren")

    for m in _PHRASE.finditer(text):
        add(m.start(), m.end(), _tokens_and_joins(m.group(1)), False, False, "phrase")

    for m in _BARE_POS.finditer(text):
        start, end = m.start(), m.end()
        if not _at_boundary(text, start) or not m.group(1)[0].isupper():
            continue
        punct = m.group(2).strip()
        if not punct:
            continue
        add(start, end, [(normalise_label(m.group(1)), "")], True, True, "position")

    for m in _BARE.finditer(text):
        start, end = m.start(), m.end()
        tokstr, punct = m.group(1), m.group(2).strip()
        if not _at_boundary(text, start) and punct != ")":
            # mid-sentence bare lower-case letters (Nature: "Comparison of b the current and c voltage"),
            # accepted later only when they continue the sequence
            if punct or not re.fullmatch(r"[b-h]", tokstr) or start == 0 or not text[start - 1].isspace():
                continue
            nxt = _next_word(text, end - 1 if text[end - 1:end].isspace() else end)
            if not nxt or not nxt[0].islower() and not nxt[0].isdigit():
                continue
            add(start, end, [(tokstr, "")], True, False, "bare-mid")
            continue
        if punct == ")":
            if start and (text[start - 1].isalnum() or text[start - 1] in "(-"):
                continue
            if not _at_boundary(text, start):
                if text[start - 1:start].isspace() and re.fullmatch(r"[A-Za-z]|[ivx]{1,4}|[1-9]", tokstr):
                    add(start, end, [(tokstr, "")], True, False, "bare-mid")   # "... b) negative, and c) no"
                continue
        if _cited(text, start):
            continue
        items = _tokens_and_joins(tokstr)
        if not items:
            continue
        nxt = _next_word(text, end)
        if not nxt:
            continue
        if start and not (text[start - 1].isspace() or text[start - 1] in "([:;,"):
            continue        # "BA.1.15", "x.b"
        if not punct:
            # "a The plot ...", "b Survival ...", "a, b Eight-week-old ...": lower-case letters opening a clause;
            # a capital with no punctuation ("A Whole cell ... B. Cell growth") only where the next letter follows
            if re.fullmatch(r"[A-Z]", tokstr) and tokstr not in "IV" and nxt[0].isupper():
                add(start, end, items, True, True, "bare-weak")
                continue
            if not re.fullmatch(rf"[a-z](?:\s*[,{_D}]\s*[a-z])*", tokstr):
                continue
        elif punct == ".":
            # "A. Western blot" but not "C. elegans", "E. coli", "S. aureus"
            if not (nxt[0].isupper() or nxt[0].isdigit() or nxt[0] in "(["):
                continue
            if len(tokstr) > 4:
                continue
        elif punct == ",":
            if len(items) == 1 and tokstr.lower() == "a" and not tokstr.isupper():
                continue
        if len(items) == 1 and items[0][0] in ("I",) and punct in ("", ","):
            continue        # "I, ..." is a pronoun more often than a label
        add(start, end, items, True, True, "bare")

    found.sort()
    return found


def _resolve(cands, family: str) -> list[Marker]:
    out = []
    for start, end, items, lead, boundary, style in cands:
        if style == "position":
            if family != POSITION:
                continue
            out.append(Marker(start, end, (items[0][0],), POSITION, lead, boundary, style))
            continue
        if family == POSITION:
            if style == "paren" and all(normalise_label(t) in _POSITION_ALIASES.values() or t.lower() in _POSITIONS
                                        for t, _ in items):
                out.append(Marker(start, end, tuple(normalise_label(t) for t, _ in items), POSITION, lead,
                                  boundary, style))
            continue
        labels = _expand(items, family)
        if labels:
            out.append(Marker(start, end, labels, family, lead, boundary, style))
    return out


def _sequence(markers: list[Marker], family: str, image_labels: Sequence[str] | None) -> list[Marker]:
    """Markers that plausibly name panels: the family's first label present (or a label of the image), and
    mid-sentence bare letters only where they continue the run."""
    if not markers:
        return []
    if family == POSITION:
        return markers
    # "A Whole cell ...": a bare capital without punctuation counts only if the next letter opens a clause too
    opening = {label_rank(lab, family) for m in markers if m.boundary and m.style in ("bare", "paren")
               for lab in m.labels}
    markers = [m for m in markers if m.style != "bare-weak" or label_rank(m.labels[0], family) + 1 in opening]
    if not markers:
        return []
    ranks = {label_rank(lab, family) for m in markers for lab in m.labels}
    wanted = {normalise_label(x).lower() for x in image_labels or ()}
    has_image = bool(wanted & {lab.lower() for m in markers for lab in m.labels})
    if 0 not in ranks and not has_image:
        return []
    kept, last = [], -1
    for m in markers:
        r = label_rank(m.labels[0], family)
        if m.style == "bare-mid":
            if r != last + 1:
                continue
        if m.style in ("bare", "bare-weak") and not m.boundary:
            continue
        if m.style in ("bare", "bare-weak") and not (last < r <= last + 2):
            continue        # "D: dorsal; V: ventral; A: anterior" are not panels
        kept.append(m)
        if m.lead or m.style == "paren":
            last = max(last, label_rank(m.labels[-1], family))
    # a run must start at its first label: drop lead markers before the first "A"-like one... except for an image
    return kept


def _score(markers: list[Marker], family: str, image_labels: Sequence[str] | None) -> tuple:
    labels = {lab for m in markers for lab in m.labels}
    if image_labels:
        img = {normalise_label(x).lower() for x in image_labels}
        overlap = len({lab.lower() for lab in labels} & img)
        # exact-case agreement breaks ties between upper and lower
        exact = len(labels & {normalise_label(x) for x in image_labels})
    else:
        overlap = exact = 0
    if family == POSITION:
        run = len(labels)
    else:
        ranks = sorted({label_rank(lab, family) for lab in labels})
        run = 0
        while run in ranks:
            run += 1
    leads = sum(1 for m in markers if m.lead and m.boundary)
    return (overlap, run, exact, leads, -FAMILIES.index(family))   # a longer run beats a case match


def find_markers(caption: str, image_labels: Sequence[str] | None = None) -> tuple[str | None, list[Marker]]:
    """(family, markers of that family) of ``caption`` (see the module doc); (None, []) without markers."""
    cands = _candidates(caption)
    best: tuple | None = None
    for family in FAMILIES:
        ms = _sequence(_resolve(cands, family), family, image_labels)
        if family == DIGIT and ms and not image_labels:
            # bare digits are list items, equation numbers and counts as often as panels: want a lead run of 2+
            if len({lab for m in ms if m.lead and m.boundary for lab in m.labels}) < 2:
                continue
        if family == POSITION and ms and not any(m.lead and m.boundary for m in ms):
            continue
        if not ms:
            continue
        score = _score(ms, family, image_labels)
        if image_labels and score[0] == 0 and best is not None:
            continue
        if best is None or score > best[0]:
            best = (score, family, ms)
    if best is None:
        return None, []
    return best[1], best[2]


# ------------------------------------------------------------------------------------ splitting
def _clean(s: str) -> str:
    s = re.sub(r"[ \t]+", " ", s).strip()
    s = _CONNECTIVE.sub("", s).strip() if s else s
    s = re.sub(r"^[)\].,;:]+\s*", "", s)
    s = re.sub(r"\s+([,.;:])", r"\1", s)
    s = re.sub(r"\(\s*\)", "", s)
    s = re.sub(r"\s{2,}", " ", s).strip()
    return s.rstrip(" ,;:") if s.endswith((",", ";", ":")) else s


def _strip_markers(text: str, markers: Sequence[Marker], lo: int, hi: int) -> str:
    out, pos = [], lo
    for m in markers:
        if m.start >= lo and m.end <= hi and m.style in ("bare-mid",):
            out.append(text[pos:m.start])
            pos = m.end
    out.append(text[pos:hi])
    return "".join(out)


def _sentence_start(text: str, pos: int, floor: int) -> int:
    """Start of the clause holding ``pos`` (after ". ", "; ", a newline, not before ``floor``)."""
    i = pos
    while i > floor:
        if _at_boundary(text, i, floor) and (i == floor or not text[i - 1].isalnum()):
            j = i
            while j < pos and text[j] in " \t\n":
                j += 1
            if j < pos or i == pos:
                return j if j <= pos else pos
        i -= 1
    return floor


def _sentence_end(text: str, pos: int) -> int:
    for m in re.finditer(r"[.;](?=\s|$)|\n", text[pos:]):
        at = pos + m.start()
        if text[at] == "." and _is_abbrev_before(text, at):
            continue
        return at + 1
    return len(text)


def _footer_start(text: str, after: int) -> int:
    """Start of the trailing paragraphs after ``after`` that hold no marker (the caption's length when none)."""
    nl = text.find("\n", after)
    return nl + 1 if nl >= 0 else len(text)


def split_caption(caption: str | None, image_labels: Sequence[str] | None = None) -> Subcaptions:
    """Split ``caption`` by its panel markers (module doc). ``image_labels``: labels read from the image (any
    order, None / [] when unknown) choose the marker family. Never raises on text; an empty or marker-free caption
    gives ``Subcaptions(shared=caption)`` without parts."""
    text = (caption or "").replace("\r", "")
    family, markers = find_markers(text, image_labels)
    if not markers:
        return Subcaptions(caption=text, shared=text.strip())
    leads = [m for m in markers if m.lead and (m.boundary or m.style in ("paren", "bare-mid"))]
    if leads:
        sub = _split_lead(text, family, markers, leads)
        opened = {lab for m in sub.markers for lab in m.labels}
        named = {lab for m in markers for lab in m.labels}
        if sub.parts and (any(m.boundary for m in sub.markers) or 2 * len(opened) >= len(named)):
            return sub
    return _split_trailing(text, family, [m for m in markers if not (m.lead and m.boundary)])


def _split_lead(text: str, family: str, markers: list[Marker], leads: list[Marker]) -> Subcaptions:
    """Each segment-opening marker's labels get the text up to the next segment opener."""
    openers: list[Marker] = []
    seen: set[str] = set()
    last = -1
    for m in leads:
        new = [lab for lab in m.labels if lab not in seen]
        if not openers and not (m.boundary or m.style == "paren"):
            continue
        if m.boundary or (new and m.style in ("paren", "bare-mid")):
            # mid-sentence markers open a segment only for the next label of the run ("(B) Invasive index, (C)
            # maximum migration rate"); otherwise they are cross-references ("similar to (B)")
            if not m.boundary and (not new or (family != POSITION and label_rank(m.labels[0], family) != last + 1)):
                continue
            openers.append(m)
            seen.update(m.labels)
            if family != POSITION:
                last = max([last] + [label_rank(lab, family) for lab in m.labels])
    if not openers:
        return Subcaptions(caption=text, shared=text.strip())
    shared = text[:openers[0].start]
    # the last segment runs to a footer: trailing paragraphs without markers
    last = openers[-1]
    foot = _footer_start(text, last.end)
    if any(m.start >= foot for m in markers):
        foot = len(text)
    ends = [o.start for o in openers[1:]] + [foot]
    raw: list[tuple[Marker, int, int]] = [(o, o.end, e) for o, e in zip(openers, ends)]
    parts: dict[str, list[str]] = {}
    trailing_shared = ""
    i = 0
    while i < len(raw):
        o, lo, hi = raw[i]
        # an enumeration: mid-sentence openers for new labels, short items ("(B) Invasive index, (C) maximum
        # migration rate and (D) number of ...") -> every label of the run gets the sentence
        j = i
        while j + 1 < len(raw) and not raw[j + 1][0].boundary and len(text[raw[j][1]:raw[j][2]].split()) <= 8 \
                and re.search(r"(?:,|\band|\bor|\bvs\.?)\s*$", text[raw[j][1]:raw[j][2]].strip()):
            j += 1
        if j > i:
            run_hi = raw[j][2]
            sentence_end = min(_sentence_end(text, raw[j][1]), run_hi)
            tail = text[sentence_end:run_hi]
            if len(text[raw[j][1]:sentence_end].split()) <= 8:
                # short items to the sentence's end ("a left CPGL, b right CPGL, and c right VPGL."): each is its
                # label's own text; what follows the sentence at the caption's end is every panel's (footer)
                for k in range(i, j + 1):
                    item_end = raw[k][2] if k < j else sentence_end
                    for lab in raw[k][0].labels:
                        parts.setdefault(lab, []).append(_clean(text[raw[k][1]:item_end]))
                if _clean(tail) and j == len(raw) - 1:
                    trailing_shared = _clean(tail)
                elif _clean(tail):
                    for lab in raw[j][0].labels:
                        parts.setdefault(lab, []).append(_clean(tail))
            else:
                # items sharing the sentence's tail ("(B) Invasive index, (C) maximum migration rate and (D)
                # number of strand protrusions of mono-culture spheroids ..."): every label gets the sentence
                body = _strip_run(text, [r[0] for r in raw[i:j + 1]], raw[i][1], sentence_end)
                for k in range(i, j + 1):
                    for lab in raw[k][0].labels:
                        parts.setdefault(lab, []).append(_clean(body))
                if _clean(tail):
                    for lab in raw[j][0].labels:
                        parts.setdefault(lab, []).append(_clean(tail))
            i = j + 1
            continue
        seg = _clean(_strip_markers(text, markers, lo, hi))
        for lab in o.labels:
            parts.setdefault(lab, []).append(seg)
        i += 1
    _references(text, markers, parts)
    footer = text[foot:].strip() if foot < len(text) else ""
    # closing sentences of the last part that describe every panel ("Scale bar: 100 µm. Data are mean ± s.e.m.")
    moved = _closing_boilerplate(parts, last.labels)
    footer = " ".join(t for t in (trailing_shared, moved, footer) if t)
    return Subcaptions(caption=text, shared=_clean_shared(shared), parts=_join(parts, family), family=family,
                       mode=LEAD, footer=footer, markers=tuple(openers))


_BOILERPLATE = re.compile(
    r"^(?:the\s+)?(?:scale\s+bars?|data\s+(?:are|were|is|pooled|represent|shown)|error\s+bars?|values\s+(?:are|were)|"
    r"results\s+(?:are|were)|mean\s*±|means?\s+(?:±|and)|\*|n\s*=|p\s*[<>≤=]|statistical|statistics|"
    r"(?:one|two)-way\s+anova|student's|all\s+(?:experiments|data|images|panels|micropattern)|"
    r"representative\s+of|experiments\s+were|ns\b|n\.s\.|not\s+significant|no\s+significant\s+differences?|"
    r"[a-z\s]{0,30}\b(?:indicates?|denotes?|represents?)\b)", re.I)


def _closing_boilerplate(parts: dict[str, list[str]], last_labels: Sequence[str]) -> str:
    """Take the run of closing sentences of the last part that are about every panel (scale bars, statistics,
    symbol legends) out of it; returns them (for the footer). A part is never emptied."""
    if not last_labels or last_labels[0] not in parts or not parts[last_labels[0]]:
        return ""
    seg = parts[last_labels[0]][-1]
    spans = _sentences(seg)
    k = len(spans)
    while k > 1 and _BOILERPLATE.match(seg[spans[k - 1][0]:spans[k - 1][1]].strip()):
        k -= 1
    if k == len(spans):
        return ""
    cut = spans[k][0]
    moved, kept = seg[cut:].strip(), seg[:cut].strip()
    for lab in last_labels:
        if parts.get(lab) and parts[lab][-1] == seg:
            parts[lab][-1] = kept
    return moved


def _strip_run(text: str, run: list[Marker], lo: int, hi: int) -> str:
    out, pos = [], lo
    for m in run[1:]:
        out.append(text[pos:m.start])
        pos = m.end
    out.append(text[pos:hi])
    return "".join(out)


def _sentences(text: str, lo: int = 0) -> list[tuple[int, int]]:
    """(start, end) of the clauses of ``text[lo:]`` ending at ". ", "; ", "! ", "? " or a newline (not after an
    abbreviation)."""
    spans, start = [], lo
    for m in re.finditer(r"[.;!?](?=\s)|\n", text[lo:]):
        at = lo + m.start()
        if text[at] == "." and _is_abbrev_before(text, at):
            continue
        if at + 1 > start:
            spans.append((start, at + 1))
        start = at + 1
    if start < len(text) and text[start:].strip():
        spans.append((start, len(text)))
    return [(a + len(text[a:b]) - len(text[a:b].lstrip()), b) for a, b in spans if text[a:b].strip()]


def _without(text: str, markers: Sequence[Marker], lo: int, hi: int) -> str:
    out, pos = [], lo
    for m in markers:
        if lo <= m.start and m.end <= hi:
            out.append(text[pos:m.start])
            pos = m.end
    out.append(text[pos:hi])
    return _clean("".join(out))


def _split_trailing(text: str, family: str, trailing: list[Marker]) -> Subcaptions:
    """Markers that close clauses ("... on Jan 1 (1A).", "wild-type (A) and mutant (B) animals"): every label
    gets the sentences holding its markers (markers taken out), and the marker-free sentences that follow them,
    up to the next marker; the text before the first such sentence is shared."""
    if not trailing:
        return Subcaptions(caption=text, shared=text.strip())
    spans = _sentences(text)
    foot = _footer_start(text, trailing[-1].end)
    parts: dict[str, list[str]] = {}
    shared_end = None
    current: tuple[str, ...] = ()
    for a, b in spans:
        if a >= foot:
            break
        inside = [m for m in trailing if a <= m.start < b]
        if inside:
            if shared_end is None:
                shared_end = a
            current = tuple(dict.fromkeys(lab for m in inside for lab in m.labels))
            after_last = text[inside[-1].end:b].strip(" .;,")
            if len(inside) > 1 and len(after_last.split()) <= 2:
                # "man with sigmoid primary (A) and carcinoma of left colon (B).": each marker closes a clause
                lo = a
                for m in inside:
                    for lab in m.labels:
                        parts.setdefault(lab, []).append(_clean(text[lo:m.start]))
                    lo = m.end
                continue
            body = _without(text, inside, a, b)
        elif current:
            body = _clean(text[a:b])
        else:
            continue
        for lab in current:
            parts.setdefault(lab, []).append(body)
    shared = text[:shared_end] if shared_end is not None else ""
    footer = text[foot:].strip() if foot < len(text) else ""
    return Subcaptions(caption=text, shared=_clean_shared(shared), parts=_join(parts, family), family=family,
                       mode=TRAILING, footer=footer, markers=tuple(trailing))


def _references(text: str, markers: Sequence[Marker], parts: dict[str, list[str]]) -> None:
    """Labels named only in passing get the sentences naming them: gaps in the run ("... 20 standard cuvettes
    (B)." inside (A)'s text) and labels continuing it ("... increased migration rate (F) and protrusions (G)"
    after the last opener (E)); a sentence that names only such labels is taken out of the opener's text."""
    if not markers:
        return
    family = markers[0].family
    if family == POSITION:
        return
    spans = _sentences(text)
    described = max((label_rank(lab, family) for lab in parts), default=-1)
    top = described
    # a group that also names a described label ("lobes (A, B, C, D)" in (A)'s text) is a cross-reference
    named = {label_rank(lab, family) for m in markers if not any(lab in parts for lab in m.labels)
             for lab in m.labels}
    while top + 1 in named:
        top += 1
    taken: dict[tuple[int, int], list[str]] = {}
    for m in markers:
        fresh = not any(lab in parts for lab in m.labels)
        new = [lab for lab in m.labels if lab not in parts and (label_rank(lab, family) < described or
                                                                 (fresh and label_rank(lab, family) <= top))]
        if not new:
            continue
        for a, b in spans:
            if a <= m.start < b:
                taken.setdefault((a, b), [])
                taken[(a, b)] += [lab for lab in new if lab not in taken[(a, b)]]
                break
    for (a, b), labs in taken.items():
        inside = [m for m in markers if a <= m.start < b]
        body = _without(text, inside, a, b)
        for lab in labs:
            parts.setdefault(lab, []).append(body)
        if all(lab in labs for m in inside for lab in m.labels):
            raw = _clean(text[a:b])
            for lab, segs in parts.items():
                if lab not in labs:
                    parts[lab] = [seg.replace(raw, "").strip() if raw in seg and seg != raw else seg for seg in segs]


def _clean_shared(s: str) -> str:
    return re.sub(r"[ \t]+", " ", s).strip()


def _join(parts: dict[str, list[str]], family: str) -> dict[str, str]:
    out = {}
    for lab, texts in parts.items():
        pieces = [x.strip() for x in texts if x and x.strip()]
        # pieces from different places: each ends a sentence ("... wind-down recovery. The center of mass ...")
        t = " ".join(p if i == len(pieces) - 1 or p[-1] in ".!?;:" else p + "." for i, p in enumerate(pieces))
        t = re.sub(r"\s+([.,;:])", r"\1", t)
        out[lab] = t
    return out


__all__ = ["DIGIT", "DIGIT_LETTER", "FAMILIES", "LOWER", "Marker", "POSITION", "ROMAN", "Subcaptions", "UPPER",
           "find_markers", "label_family", "label_rank", "match_label", "normalise_label", "split_caption"]
