"""The import rule: a module of ``biomedica_hf`` imports only its own layer or lower ones, and no import circles.

Layers, lowest first: core -> ingest -> dataset -> (concepts, clip, vlm, panels) -> (train, eval, search) -> cli.
Peers of one layer may import each other, except the pairs in ``FORBIDDEN_PEERS``. Every import counts,
wherever it is written: module level, inside functions, under ``if TYPE_CHECKING:``, and dynamic ones
(``importlib.import_module`` / ``__import__`` with a literal, an f-string over ``__name__`` or a module-level
table, a relative name against ``package``; module names written whole in a table for a lazy loader or a hook).
No module imports itself through others (``test_no_import_circles``, function-level imports included); a dynamic
import whose name the source does not show must be explained in ``OPAQUE``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "biomedica_hf"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

CORE = ("__init__", "errors", "executors", "filters", "images", "schema", "licenses", "ledger", "layout", "hooks", "io", "neardup", "templates", "sample_data")
LAYERS: dict[str, int] = {**dict.fromkeys(CORE, 0), "ingest": 1, "dataset": 2,
                          "concepts": 3, "clip": 3, "vlm": 3, "panels": 3, "train": 4, "eval": 4, "search": 4, "cli": 5}
LAYER_NAMES = ["core", "ingest", "dataset", "concepts/clip/vlm/panels", "train/eval/search", "cli"]
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
    import of ``a.b`` when that is a module of the package, else of ``a``. Dynamic imports count too (see
    :func:`dynamic_imports`); what they cannot resolve is listed by :func:`opaque_imports`."""
    modules = known_modules() if modules is None else modules
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, importer, is_package) if node.level else node.module
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if sub in modules else base))
    found += dynamic_imports(tree, importer, is_package, modules)[0]
    return sorted(set(found))


# ------------------------------------------------------------------------------------------ dynamic imports
# What counts as a dynamic import of a package module:
# * ``importlib.import_module(X[, package])`` / ``import_module(...)`` / ``__import__(X)`` where X is a literal,
#   an f-string, a conditional of those, or a name assigned from a module-level table (``_EXPORTS[name]``):
#   ``{__name__}`` is the importing module, a table subscript every value of the table, and a relative name
#   resolves against ``package`` (``__name__``);
# * a module name written whole in a table for a lazy loader (a string in a dict / list / tuple / set literal:
#   ``"biomedica_hf.clip.model"``, entry-point style ``"biomedica_hf.neardup.card:card_section"``).
# A call whose name cannot be resolved this way is "opaque": it must be listed in OPAQUE, saying where its names
# come from (they are then seen by the table rule, or are not modules of the package).
MODULE_STRING = re.compile(r"biomedica_hf(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_]\w*)?")
OPAQUE: dict[tuple[str, str], str] = {
    ("biomedica_hf/hooks.py", "module"): "the 'module:function' strings of hooks.BUILTIN (seen by the table rule)",
    ("biomedica_hf/ingest/pipeline.py", "name"): "_Preload: the caller's third-party modules (datasets, matplotlib)",
}


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("import_module", "__import__")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _tables(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level ``NAME = {...: "str", ...}`` (or a list / tuple / set of strings): NAME -> its strings."""
    out: dict[str, list[str]] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        if not isinstance(target, ast.Name) or node.value is None:
            continue
        values = node.value.values if isinstance(node.value, ast.Dict) else \
            node.value.elts if isinstance(node.value, (ast.List, ast.Tuple, ast.Set)) else []
        strings = [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        if strings:
            out[target.id] = strings
    return out


def _candidates(expr: ast.expr, importer: str, tables: dict[str, list[str]],
                aliases: dict[str, list[str]]) -> list[str] | None:
    """Every string ``expr`` can evaluate to, or None when that cannot be known from the source."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.Name):
        return [importer] if expr.id == "__name__" else aliases.get(expr.id)
    if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
        return tables.get(expr.value.id)
    if isinstance(expr, ast.IfExp):
        body, orelse = (_candidates(e, importer, tables, aliases) for e in (expr.body, expr.orelse))
        return None if body is None or orelse is None else body + orelse
    if isinstance(expr, ast.FormattedValue) and expr.format_spec is None:
        return _candidates(expr.value, importer, tables, aliases)
    if isinstance(expr, ast.JoinedStr):
        out = [""]
        for part in expr.values:
            options = _candidates(part, importer, tables, aliases)
            if options is None:
                return None
            out = [a + b for a in out for b in options]
        return out
    return None


def _known(name: str, modules: set[str]) -> str | None:
    """``name`` (a module, or a module + ``.attr`` / ``:attr``) as the longest module of the package it names."""
    parts = name.split(":")[0].split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def dynamic_imports(tree: ast.Module, importer: str, is_package: bool,
                    modules: set[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(imports, opaque): (line, module) of each dynamic import of a package module; (line, the call's first
    argument as written) of each dynamic import whose name cannot be resolved from the source."""
    tables = _tables(tree)
    aliases = {n.targets[0].id: tables[n.value.value.id] for n in ast.walk(tree)
               if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
               and isinstance(n.value, ast.Subscript) and isinstance(n.value.value, ast.Name)
               and n.value.value.id in tables}
    found: list[tuple[int, str]] = []
    opaque: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and _is_import_call(node.func):
            names = _candidates(node.args[0], importer, tables, aliases)
            if names is None:
                opaque.append((node.lineno, ast.unparse(node.args[0])))
                continue
            package_arg = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "package"), None)
            packages = _candidates(package_arg, importer, tables, aliases) if package_arg is not None else [None]
            for name in names:
                for package in packages or [None]:
                    if name.startswith("."):
                        level = len(name) - len(name.lstrip("."))
                        base = package.split(".") if package else importer.split(".")[: None if is_package else -1]
                        name = ".".join(base[: len(base) - (level - 1)] + ([name.lstrip(".")] if name.lstrip(".")
                                                                            else []))
                    found.append((node.lineno, _known(name, modules) or name))
        elif isinstance(node, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            for value in (node.values if isinstance(node, ast.Dict) else node.elts):
                if isinstance(value, ast.Constant) and isinstance(value.value, str) \
                        and MODULE_STRING.fullmatch(value.value) and _known(value.value, modules):
                    found.append((value.lineno, _known(value.value, modules)))
    return found, opaque


def opaque_imports(source: str, importer: str, is_package: bool = False,
                   modules: set[str] | None = None) -> list[tuple[int, str]]:
    modules = known_modules() if modules is None else modules
    return dynamic_imports(ast.parse(source), importer, is_package, modules)[1]


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


# ------------------------------------------------------------------------------------------ import circles
def import_graph(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """module -> {imported package module: ``file:line`` of the first such import}, every import (module level,
    in functions, under ``TYPE_CHECKING``, dynamic). A parent package that Python runs first is not an edge."""
    modules = known_modules(root)
    graph: dict[str, dict[str, str]] = {}
    for p in sorted(root.rglob("*.py")):
        rel, importer = p.relative_to(root.parent).as_posix(), module_name(p, root)
        edges: dict[str, str] = {}
        for line, target in imports_of(p.read_text(encoding="utf-8"), importer, p.name == "__init__.py", modules):
            known = target if target in modules else _known(target, modules)
            if known is not None and known != importer:
                edges.setdefault(known, f"{rel}:{line}")
        graph[importer] = edges
    return graph


def circles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The import circles of ``graph``: each strongly connected component of more than one module (Tarjan), as
    the modules of one cycle through it, in import order, starting from its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle(graph, set(c), c[0]) for c in sorted(components)]


def _cycle(graph: dict[str, dict[str, str]], component: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside ``component`` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in component and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")   # unreachable for a strongly connected component


def describe(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    return "\n".join(f"  {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_no_import_circles():
    """Issue 29: no two modules import each other, directly or through others, at any depth (a circle hidden in a
    function still ties the two modules' jobs together). Break one by moving what both need into a module of
    its own (e.g. clip/pixels.py, clip/weights.py for clip/model.py and clip/backbones.py)."""
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles:\n" + "\n\n".join(describe(graph, c) for c in found)


def test_every_dynamic_import_is_resolved_or_explained():
    """A dynamic import whose name the source does not show (``import_module(name)``) must be listed in OPAQUE with
    where its names come from; an entry that no longer matches must be deleted."""
    modules = known_modules()
    seen = set()
    unexplained = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).as_posix()
        for line, arg in opaque_imports(p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py",
                                        modules):
            seen.add((rel, arg))
            if (rel, arg) not in OPAQUE:
                unexplained.append(f"{rel}:{line}: import_module({arg})")
    assert not unexplained, ("dynamic imports the layer test cannot resolve (name them with a literal, an f-string or"
                             " a module-level table, or add them to OPAQUE saying where the names come from):\n"
                             + "\n".join(unexplained))
    assert not set(OPAQUE) - seen, f"OPAQUE entries that match no import any more: {sorted(set(OPAQUE) - seen)}"


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
    modules = known_modules() | {"biomedica_hf.ingest.fake"}
    got = violations(SRC, "biomedica_hf/ingest/fake.py", "biomedica_hf.ingest.fake", modules=modules)
    assert [(w, t) for w, t, _ in got] == [
        ("biomedica_hf/ingest/fake.py:8", "biomedica_hf.dataset.loader"),
        ("biomedica_hf/ingest/fake.py:11", "biomedica_hf.concepts.label"),
        ("biomedica_hf/ingest/fake.py:12", "biomedica_hf.search.engine"),
        ("biomedica_hf/ingest/fake.py:15", "biomedica_hf.clip.model"),
        ("biomedica_hf/ingest/fake.py:16", "biomedica_hf.cli"),
    ]
    assert "ingest (ingest) imports a higher layer, dataset (dataset)" in got[0][2]
    # the same source is fine one layer up... except for what is still higher
    up = violations(SRC, "biomedica_hf/search/fake.py", "biomedica_hf.search.fake", modules=modules)
    assert [(w.split(":")[1], t) for w, t, _ in up] == [("11", "biomedica_hf.concepts.label"),
                                                         ("16", "biomedica_hf.cli")]
    assert "search must not import concepts" in up[0][2]
    # relative imports resolve against the package; a module of the core importing the core is fine
    assert imports_of("from . import figures", "biomedica_hf.ingest.pipeline", modules=modules) == \
        [(1, "biomedica_hf.ingest.figures")]
    assert violations("from biomedica_hf.io import atomic", "x.py", "biomedica_hf.layout", modules=modules) == []


@pytest.mark.parametrize("importer", ["biomedica_hf.newthing", "biomedica_hf.newpkg.mod"])
def test_a_module_without_a_layer_is_reported(importer):
    assert violations("import json", "x.py", importer)[0][2].endswith("add it to LAYERS in tests/test_layers.py")


LAZY_SRC = '''
import importlib
_EXPORTS = {"ClipModel": "model", "ClipLoss": "loss"}
_WHERE = {"load_model": "biomedica_hf.search.engine", "Task": "tasks"}
PLUGINS = ("biomedica_hf.cli:main",)
def __getattr__(name):
    mod = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    where = _WHERE[name]
    other = importlib.import_module(where if "." in where else f".{where}", __name__)
    return importlib.import_module(name)
'''


def test_the_rule_sees_dynamic_imports():
    """f-strings over a module-level table, relative names against ``package``, a conditional, and module names
    written whole in a table (entry-point style) count as imports; ``import_module(name)`` is opaque."""
    modules = known_modules() | {"biomedica_hf.ingest.fake", "biomedica_hf.ingest.model", "biomedica_hf.ingest.loss",
                                 "biomedica_hf.ingest.tasks"}
    got = imports_of(LAZY_SRC, "biomedica_hf.ingest", is_package=True, modules=modules)
    assert (7, "biomedica_hf.ingest.model") in got                    # f"{__name__}.{_EXPORTS[name]}"
    assert (7, "biomedica_hf.ingest.loss") in got
    assert (9, "biomedica_hf.ingest.tasks") in got                    # f".{where}" against __name__
    assert (9, "biomedica_hf.search.engine") in got                  # the absolute branch of the conditional
    assert (5, "biomedica_hf.cli") in got                            # "module:function" in a table
    assert (4, "biomedica_hf.search.engine") in got                  # a module name in a table
    assert opaque_imports(LAZY_SRC, "biomedica_hf.ingest", True, modules) == [(10, "name")]
    bad = violations(LAZY_SRC, "biomedica_hf/ingest/__init__.py", "biomedica_hf.ingest", True, modules)
    assert sorted({t for _, t, _ in bad}) == ["biomedica_hf.cli", "biomedica_hf.search.engine"]


def test_circles_are_found_at_any_depth(tmp_path):
    """A circle through a function-level import and a dynamic one is found, with the file:line of each arrow; a
    package importing its own modules lazily (``__init__`` -> module) is no circle."""
    pkg = tmp_path / PACKAGE
    (pkg / "clip").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "clip" / "__init__.py").write_text(
        "import importlib\n_EXPORTS = {'ClipModel': 'model'}\n"
        "def __getattr__(n):\n    return importlib.import_module(f'{__name__}.{_EXPORTS[n]}')\n")
    (pkg / "clip" / "model.py").write_text("from biomedica_hf.clip.pixels import open_rgb\n")
    (pkg / "clip" / "pixels.py").write_text("def open_rgb():\n    from biomedica_hf.clip import vision\n")
    (pkg / "clip" / "vision.py").write_text("import importlib\nM = importlib.import_module('biomedica_hf.clip.model')\n")
    graph = import_graph(pkg)
    assert graph["biomedica_hf.clip"] == {"biomedica_hf.clip.model": "biomedica_hf/clip/__init__.py:4"}
    found = circles(graph)
    assert found == [["biomedica_hf.clip.model", "biomedica_hf.clip.pixels", "biomedica_hf.clip.vision",
                      "biomedica_hf.clip.model"]]
    assert describe(graph, found[0]).splitlines() == [
        "  biomedica_hf.clip.model -> biomedica_hf.clip.pixels  (biomedica_hf/clip/model.py:1)",
        "  biomedica_hf.clip.pixels -> biomedica_hf.clip.vision  (biomedica_hf/clip/pixels.py:2)",
        "  biomedica_hf.clip.vision -> biomedica_hf.clip.model  (biomedica_hf/clip/vision.py:2)",
    ]
    (pkg / "clip" / "vision.py").write_text("X = 1\n")                # the arrow back removed: no circle
    assert circles(import_graph(pkg)) == []
