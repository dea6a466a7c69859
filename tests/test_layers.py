"""The import rule: a module of ``biomedica_hf`` imports only its own layer or lower ones.

Layers, lowest first: core -> build -> dataset -> (concepts, clip, vlm, panels) -> (train, eval, search) -> cli.
Peers of one layer may import each other, except the pairs in ``FORBIDDEN_PEERS``. Every import counts,
wherever it is written: module level, inside functions, under ``if TYPE_CHECKING:``, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "biomedica_hf"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

CORE = ("__init__", "errors", "executors", "filters", "images", "schema", "licenses", "ledger", "layout", "hooks", "io", "neardup", "templates", "sample_data")
LAYERS: dict[str, int] = {**dict.fromkeys(CORE, 0), "build": 1, "dataset": 2,
                          "concepts": 3, "clip": 3, "vlm": 3, "panels": 3, "train": 4, "eval": 4, "search": 4, "cli": 5}
LAYER_NAMES = ["core", "build", "dataset", "concepts/clip/vlm/panels", "train/eval/search", "cli"]
# peers that still must not import each other: (importer, imported) -> why
FORBIDDEN_PEERS = {("search", "concepts"): "shared model code belongs in clip or core"}

# Deliberate, permanent: the package root re-exports the loader on first attribute access (``__getattr__``),
# so ``import biomedica_hf`` loads nothing above the core and ``biomedica_hf.load_biomedica`` is the public API.
FACADE = {("biomedica_hf/__init__.py", "biomedica_hf.dataset.loader")}

# Known violations to be removed (importing file, imported module): none left after the re-zoning.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules(root: Path = ROOT) -> set[str]:
    return {module_name(p, root) for p in root.rglob("*.py")}


def group_of(module: str) -> str | None:
    """The top-level part of ``biomedica_hf`` that ``module`` belongs to (``"__init__"`` for the root itself);
    None for modules outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve_relative(name: str | None, level: int, importer: str, is_package: bool) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(source: str, importer: str, is_package: bool = False,
               modules: set[str] | None = None) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``source``, at any depth. ``from a import b`` counts as an
    import of ``a.b`` when that is a module of the package, else of ``a``."""
    modules = known_modules() if modules is None else modules
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, importer, is_package) if node.level else node.module
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if sub in modules else base))
        elif isinstance(node, ast.Call) and node.args and _is_import_call(node.func):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    name = _resolve_relative(name.lstrip(".") or None, level, importer, is_package)
                found.append((node.lineno, name))
    return sorted(set(found))


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("import_module", "__import__")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def violations(source: str, path: str, importer: str, is_package: bool = False,
               modules: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(``file:line``, imported module, why) of each import of a higher layer (or a forbidden peer)."""
    own = group_of(importer)
    if own not in LAYERS:
        return [(f"{path}:1", importer, f"{own!r} has no layer: add it to LAYERS in tests/test_layers.py")]
    out = []
    for line, target in imports_of(source, importer, is_package, modules):
        other = group_of(target)
        if other is None or other == own:
            continue
        if other not in LAYERS:
            out.append((f"{path}:{line}", target, f"{other!r} has no layer"))
        elif LAYERS[other] > LAYERS[own]:
            why = f"{LAYER_NAMES[LAYERS[own]]} ({own}) imports a higher layer, {LAYER_NAMES[LAYERS[other]]} ({other})"
            out.append((f"{path}:{line}", target, why))
        elif (own, other) in FORBIDDEN_PEERS:
            out.append((f"{path}:{line}", target, f"{own} must not import {other}: {FORBIDDEN_PEERS[own, other]}"))
    return out


def package_violations() -> list[tuple[str, str, str]]:
    modules = known_modules()
    found = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).as_posix()
        found += violations(p.read_text(encoding="utf-8"), rel, module_name(p), p.name == "__init__.py", modules)
    return found


def test_no_module_imports_a_higher_layer():
    found = package_violations()
    bad = [v for v in found if (v[0].split(":")[0], v[1]) not in FACADE | ALLOWED_FOR_NOW]
    assert not bad, "imports against the layer rule:\n" + "\n".join(f"{w}: {t}  ({why})" for w, t, why in bad)


def test_exceptions_are_still_needed():
    """An entry of ALLOWED_FOR_NOW (or FACADE) that no longer matches an import must be deleted."""
    found = {(v[0].split(":")[0], v[1]) for v in package_violations()}
    assert not (FACADE | ALLOWED_FOR_NOW) - found, sorted((FACADE | ALLOWED_FOR_NOW) - found)


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.is_dir() and not p.name.startswith(("_", "."))) or p.suffix == ".py"}
    assert parts <= set(LAYERS), sorted(parts - set(LAYERS))


SRC = '''
from __future__ import annotations
import json
from typing import TYPE_CHECKING
from biomedica_hf.io.atomic import atomic_path
from biomedica_hf import hooks
if TYPE_CHECKING:
    from biomedica_hf.dataset.loader import LoadedDataset
def f():
    import importlib
    from biomedica_hf.concepts.label import with_labels
    return importlib.import_module("biomedica_hf.search.engine")
def g():
    from . import figures, shards
    from ..clip import model
    return __import__("biomedica_hf.cli")
'''


def test_the_rule_catches_every_kind_of_import():
    modules = known_modules() | {"biomedica_hf.build.fake"}
    got = violations(SRC, "biomedica_hf/build/fake.py", "biomedica_hf.build.fake", modules=modules)
    assert [(w, t) for w, t, _ in got] == [
        ("biomedica_hf/build/fake.py:8", "biomedica_hf.dataset.loader"),
        ("biomedica_hf/build/fake.py:11", "biomedica_hf.concepts.label"),
        ("biomedica_hf/build/fake.py:12", "biomedica_hf.search.engine"),
        ("biomedica_hf/build/fake.py:15", "biomedica_hf.clip.model"),
        ("biomedica_hf/build/fake.py:16", "biomedica_hf.cli"),
    ]
    assert "build (build) imports a higher layer, dataset (dataset)" in got[0][2]
    # the same source is fine one layer up... except for what is still higher
    up = violations(SRC, "biomedica_hf/search/fake.py", "biomedica_hf.search.fake", modules=modules)
    assert [(w.split(":")[1], t) for w, t, _ in up] == [("11", "biomedica_hf.concepts.label"),
                                                         ("16", "biomedica_hf.cli")]
    assert "search must not import concepts" in up[0][2]
    # relative imports resolve against the package; a module of the core importing the core is fine
    assert imports_of("from . import figures", "biomedica_hf.build.pipeline", modules=modules) == \
        [(1, "biomedica_hf.build.figures")]
    assert violations("from biomedica_hf.io import atomic", "x.py", "biomedica_hf.layout", modules=modules) == []


@pytest.mark.parametrize("importer", ["biomedica_hf.newthing", "biomedica_hf.newpkg.mod"])
def test_a_module_without_a_layer_is_reported(importer):
    assert violations("import json", "x.py", importer)[0][2].endswith("add it to LAYERS in tests/test_layers.py")
