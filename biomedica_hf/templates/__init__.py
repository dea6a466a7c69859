"""The package's templates (package data, shipped in the wheel) and their one renderer.

    dataset_card.md.j2         README.md of a dataset folder             biomedica_hf.dataset.card
    clip_model_card.md.j2      README.md of an exported CLIP             biomedica_hf.clip.card
    smolvlm_model_card.md.j2   README.md of a SmolVLM run's folders      biomedica_hf.vlm.card
    search_page.html           the search page served at ``/``           biomedica_hf.search.page

These files are the only copies: the repository's top-level ``dataset_card/`` and ``model_cards/`` hold relative
symlinks to them, so that the templates can be read and edited there.

One Jinja environment renders them all (and a user's own template file, with :func:`render_string`): an undefined
variable is an error, nothing is HTML-escaped (the outputs are Markdown, and a page without variables), and a
template's trailing newline is kept, so the output is the template byte for byte with its variables filled in.
"""
from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

DATASET_CARD = "dataset_card.md.j2"
CLIP_MODEL_CARD = "clip_model_card.md.j2"
SMOLVLM_MODEL_CARD = "smolvlm_model_card.md.j2"
SEARCH_PAGE = "search_page.html"
NAMES = (DATASET_CARD, CLIP_MODEL_CARD, SMOLVLM_MODEL_CARD, SEARCH_PAGE)


def source(name: str) -> str:
    """The text of the packaged template ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"unknown template {name!r}; valid: {', '.join(NAMES)}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def environment():
    """The Jinja environment (module doc); packaged templates are loaded by name and compiled once."""
    from jinja2 import Environment, FunctionLoader, StrictUndefined

    return Environment(loader=FunctionLoader(source), undefined=StrictUndefined, keep_trailing_newline=True,
                       autoescape=False)


def render(name: str, /, **context: Any) -> str:
    """Render the packaged template ``name`` with ``context``."""
    return environment().get_template(name).render(**context)


def render_string(text: str, /, **context: Any) -> str:
    """Render a template given as text (a user's own template file) in the same environment."""
    return environment().from_string(text).render(**context)


__all__ = ["NAMES", "environment", "render", "render_string", "source"]
