"""Extension points: an upper layer adds to a lower one without the lower one importing it.

The build writes ``figures.parquet`` and the dataset layer writes the card; concept labels (``biomedica_hf.concepts``,
a higher layer) must appear in both. Instead of being imported by the build or the card, ``concepts`` provides
functions for these groups:

* ``INDEX_COLUMNS`` — ``fn(dataset_dir) -> dict[str, pyarrow.Array] | None``: extra columns of ``figures.parquet``,
  aligned with the concatenation of the shard tables (``layout.shard_tables`` order);
* ``CARD_SECTIONS`` — ``fn(dataset_dir) -> str | None``: a Markdown section of the dataset card (after the
  statistics);
* ``CARD_QUALITY_SECTIONS`` — ``fn(dataset_dir) -> str | None``: a Markdown section on the data's quality
  (duplicates, evaluation contamination: ``biomedica_hf.neardup.card``), after the index description;
* ``CARD_CONFIGS`` — ``fn(dataset_dir) -> list[dict]``: extra ``configs:`` entries of the card's YAML;
* ``CARD_FILES`` — ``fn(dataset_dir) -> None``: files the card links to (plots), written before the card;
* ``CONCEPT_NAMES`` — ``fn() -> Iterable[str]``: every concept name of the label vocabulary, so that a filter can
  tell a valid concept this build lacks (an empty selection) from a misspelt one (an error).

A provider is found three ways: declared as an entry point of the group in a package's metadata (this package
declares its own in ``pyproject.toml``, so an installed ``biomedica_hf`` needs no import order), named in
:data:`BUILTIN` (providers of the core itself, found without metadata), or registered at run time with
:func:`register` (for code that is not installed, and tests). Providers run in a stable order (entry points by
name, then the built-in ones, then registrations in order); a provider is never run twice. A provider's error is
not caught here: the caller reports it (the card names the section that failed).
"""
from __future__ import annotations

import logging
import importlib
import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

INDEX_COLUMNS = "biomedica_hf.index_columns"
CARD_SECTIONS = "biomedica_hf.card_sections"
CARD_QUALITY_SECTIONS = "biomedica_hf.card_quality_sections"
CARD_CONFIGS = "biomedica_hf.card_configs"
CARD_FILES = "biomedica_hf.card_files"
CONCEPT_NAMES = "biomedica_hf.concept_names"
GROUPS = (INDEX_COLUMNS, CARD_SECTIONS, CARD_QUALITY_SECTIONS, CARD_CONFIGS, CARD_FILES, CONCEPT_NAMES)
#: providers of the core's own packages (``module:function``, imported when the group runs): no metadata needed
BUILTIN: dict[str, tuple[str, ...]] = {CARD_QUALITY_SECTIONS: ("biomedica_hf.neardup.card:card_section",)}

log = logging.getLogger(__name__)
_registered: dict[str, list[Callable[..., Any]]] = {g: [] for g in GROUPS}


def register(group: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``fn`` to ``group`` (idempotent); returns ``fn`` so that it can be used as a decorator argument."""
    if group not in _registered:
        raise ValueError(f"unknown hook group {group!r}; valid: {', '.join(GROUPS)}")
    if fn not in _registered[group]:
        _registered[group].append(fn)
    return fn


def unregister(group: str, fn: Callable[..., Any]) -> None:
    if fn in _registered.get(group, []):
        _registered[group].remove(fn)


def providers(group: str) -> list[Callable[..., Any]]:
    """The functions of ``group``: entry points (sorted by name), then run-time registrations, without repeats."""
    if group not in _registered:
        raise ValueError(f"unknown hook group {group!r}; valid: {', '.join(GROUPS)}")
    found: list[Callable[..., Any]] = []
    for ep in sorted(_entry_points().select(group=group), key=lambda e: e.name):
        try:
            fn = ep.load()
        except Exception as e:  # a broken third-party plugin must not stop a build: say so and go on
            log.warning("hook %s=%s of %s could not be loaded: %s", ep.name, ep.value, group, e)
            continue
        if fn not in found:
            found.append(fn)
    for ref in BUILTIN.get(group, ()):
        module, _, name = ref.partition(":")
        fn = getattr(importlib.import_module(module), name)
        if fn not in found:
            found.append(fn)
    return found + [fn for fn in _registered[group] if fn not in found]


_scanned: tuple[tuple, metadata.EntryPoints] | None = None


def _entry_points() -> metadata.EntryPoints:
    """Every installed package's entry points, read once while ``sys.path`` and its folders are unchanged: reading
    them scans the metadata of every distribution (~10 ms with this package's dependencies), and a build asks for
    its groups five times (the index, the card). A package installed or removed since (its folder's modification
    time moves) or a changed ``sys.path`` is read again."""
    global _scanned
    key = tuple((p, _mtime(p)) for p in sys.path)
    if _scanned is None or _scanned[0] != key:
        _scanned = (key, metadata.entry_points())
    return _scanned[1]


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return None


def concept_names() -> set[str]:
    """Every concept of the label vocabulary (the ``CONCEPT_NAMES`` providers'; empty without one)."""
    return {str(name) for names in run(CONCEPT_NAMES) for name in names}


def run(group: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Call every provider of ``group``; returns their results (``None`` results are left out)."""
    return [r for fn in providers(group) if (r := fn(*args, **kwargs)) is not None]
