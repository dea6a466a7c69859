"""The one way the project parses XML it did not write (JATS articles, efetch answers, S3 listings):
lxml with entities unresolved, no network, no DTD loaded, and no huge trees unless the caller asks."""
from __future__ import annotations

from typing import Any

from lxml import etree

SAFE_FLAGS: dict[str, Any] = {"resolve_entities": False, "no_network": True, "load_dtd": False,
                              "dtd_validation": False, "huge_tree": False}


def safe_parser(**overrides: Any) -> etree.XMLParser:
    """An ``etree.XMLParser`` with :data:`SAFE_FLAGS`; ``overrides`` adds options (``recover=True``,
    ``remove_comments=True``) or relaxes ``huge_tree`` (the others stay safe)."""
    unsafe = {k for k in ("resolve_entities", "no_network", "load_dtd", "dtd_validation")
              if k in overrides and overrides[k] != SAFE_FLAGS[k]}
    if unsafe:
        raise ValueError(f"safe_parser does not relax {sorted(unsafe)}")
    return etree.XMLParser(**{**SAFE_FLAGS, **overrides})


__all__ = ["SAFE_FLAGS", "safe_parser"]
