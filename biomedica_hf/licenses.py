"""Normalise an article licence to a version-free code and a PMC-style subset.

Evidence is read in a fixed order: licence URL, ``@license-type``, licence prose, then the
listing's hint (file-list ``License`` column or PMC Cloud ``license_code``). The first piece of
evidence that names a known licence decides. When none does but something was stated (a non-CC
URL, an unknown licence type, licence prose, a hint such as ``NO-CC CODE`` or ``TDM``) the code is
``"other"``; when nothing at all was stated it is ``"unknown"``. A bare copyright line
(``"Copyright © 2010 Cancer Research UK"``) is not a licence statement and counts as nothing.
"""
from __future__ import annotations

import re

CC0 = "CC0"
PDM = "PDM"
PHE = "PHE"
OTHER = "other"
UNKNOWN = "unknown"

# (non-commercial, share-alike, no-derivatives) -> code
_CC_BY: dict[tuple[bool, bool, bool], str] = {
    (False, False, False): "CC BY",
    (False, True, False): "CC BY-SA",
    (False, False, True): "CC BY-ND",
    (True, False, False): "CC BY-NC",
    (True, True, False): "CC BY-NC-SA",
    (True, False, True): "CC BY-NC-ND",
}

# BIOMEDICA's (and the fixture MANIFEST's) split: commercial = CC0 / public domain / CC BY(-SA/-ND).
# PHE (COVID-19 timebound statements) goes to "other": PMC lists phe_timebound under commercial
# use, but those terms are not a CC licence and expire with the emergency (PMC has withdrawn
# articles whose terms lapsed), so they are not safe to redistribute as commercial.
COMMERCIAL = frozenset({CC0, PDM, "CC BY", "CC BY-SA", "CC BY-ND"})
NONCOMMERCIAL = frozenset({"CC BY-NC", "CC BY-NC-SA", "CC BY-NC-ND"})

# @license-type values that say "open" without saying which licence.
_UNINFORMATIVE_TYPES = frozenset({
    "", "open-access", "openaccess", "open_access", "oa", "open", "creative-commons",
    "creativecommons", "cc", "license", "licence", "simple",
})

_CC_URL = re.compile(
    r"creativecommons\.org/+(?:licen[cs]es/+(?P<by>by(?:-(?:nc|sa|nd))*)\b"
    r"|licen[cs]es/+publicdomain\b"  # the retired CC public-domain certification
    r"|publicdomain/+(?P<pd>zero|mark)\b)",
    re.IGNORECASE,
)
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)

_SEP = r"[\s\-\u2010-\u2015]*"
_MODIFIER = rf"(?:non{_SEP}commercial|share{_SEP}alike|no{_SEP}deriv\w*(?:\s+works)?)"
# "Creative Commons Attribution[-modifiers]", or a bare "Attribution-NonCommercial..." name
_CC_NAME = re.compile(
    rf"creative\s+commons\s+(?:\(cc\)\s+)?attribution(?P<mods>(?:{_SEP}{_MODIFIER})*)"
    rf"|\battribution(?P<bare>(?:{_SEP}{_MODIFIER})+)",
    re.IGNORECASE,
)
_CC_ABBR = re.compile(r"\bcc[\s\-]?by(?P<mods>(?:[\s\-](?:nc|sa|nd)\b)*)", re.IGNORECASE)
_CC_ZERO = re.compile(r"\bcc[\s\-]?0\b|\bcc[\s\-]?zero\b|creative\s+commons\s+zero", re.IGNORECASE)
_PUBLIC_DOMAIN = re.compile(
    r"\b(?:(?:is|are|lies|placed|been|be)\s+in\s+the\s+public\s+domain"
    r"|public\s+domain\s+mark|free\s+of\s+known\s+copyright\s+restrictions)",
    re.IGNORECASE,
)
_PHE = re.compile(
    r"covid-19\s+resource\s+cent(?:re|er)"
    r"|for\s+the\s+duration\s+of\s+the\b.{0,120}?(?:public\s+health\s+emergency|pandemic|covid)"
    r"|public\s+health\s+emergency",
    re.IGNORECASE | re.DOTALL,
)
# words that make a text a licence statement rather than a bare copyright line
_LICENCE_WORDS = re.compile(
    r"licen[cs]|permi[st]|terms|distribut|re-?use|public\s+domain|creative\s+commons|reserved",
    re.IGNORECASE,
)


def subset_for(code: str) -> str:
    """PMC-style subset of a normalised code: commercial, noncommercial or other."""
    if code in COMMERCIAL:
        return "commercial"
    if code in NONCOMMERCIAL:
        return "noncommercial"
    return "other"


def _by_code(mods: str) -> str:
    """CC BY variant named by licence-element words: ``-NonCommercial-NoDerivs``, `` nc nd``."""
    m = re.sub(rf"non{_SEP}commercial", "noncommercial", mods.lower())
    m = re.sub(rf"share{_SEP}alike", "sharealike", m)
    m = re.sub(rf"no{_SEP}deriv\w*", "noderivs", m)
    words = set(re.findall(r"[a-z]+", m))
    return _CC_BY[(bool(words & {"nc", "noncommercial"}), bool(words & {"sa", "sharealike"}),
                   bool(words & {"nd", "noderivs"}))]


def _from_url(url: str) -> str | None:
    m = _CC_URL.search(url)
    if m is None:
        return None
    if m.group("by"):
        # the old 1.0 "by-nd-nc" spelling is the same licence as by-nc-nd
        return _by_code(m.group("by").replace("-", " "))
    if m.group("pd") and m.group("pd").lower() == "zero":
        return CC0
    return PDM


def _from_token(value: str) -> str | None:
    """Code from a short label: ``cc-by-nc-nd``, ``CC BY 4.0``, ``CC0``, ``public-domain``."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", value.lower()) if t and not t.isdigit()]
    if "cc0" in tokens or tokens[:2] == ["cc", "zero"]:
        return CC0
    if "pdm" in tokens or "publicdomain" in tokens or tokens == ["pd"] or (
            "public" in tokens and "domain" in tokens):
        return PDM
    if "ccby" in tokens or ("by" in tokens and (tokens[0] in ("cc", "by"))):
        return _by_code(" ".join(tokens))
    return None


def _from_text(text: str) -> str | None:
    for url in _URL.findall(text):
        code = _from_url(url)
        if code:
            return code
    m = _CC_NAME.search(text)
    if m:
        return _by_code(m.group("mods") or m.group("bare") or "")
    m = _CC_ABBR.search(text)
    if m:
        return _by_code(m.group("mods"))
    if _CC_ZERO.search(text):
        return CC0
    if _PUBLIC_DOMAIN.search(text):
        return PDM
    if _PHE.search(text):
        return PHE
    return None


def _is_licence_text(text: str) -> bool:
    return bool(_LICENCE_WORDS.search(text))


def normalize_license(url: str | None = None, license_type: str | None = None,
                      text: str | None = None, hint: str | None = None) -> tuple[str, str]:
    """Return ``(code, subset)`` for the licence evidence of one article (see module doc)."""
    url = (url or "").strip()
    license_type = (license_type or "").strip()
    text = " ".join((text or "").split())
    hint = (hint or "").strip()
    informative_type = license_type.lower() not in _UNINFORMATIVE_TYPES
    candidates = (
        _from_url(url) if url else None,
        _from_token(license_type) if informative_type else None,
        _from_text(text) if text else None,
        _from_token(hint) if hint else None,
    )
    code = next((c for c in candidates if c), None)
    if code is None:
        stated = url or informative_type or hint or (text and _is_licence_text(text))
        code = OTHER if stated else UNKNOWN
    return code, subset_for(code)
