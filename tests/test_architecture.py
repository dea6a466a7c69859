"""docs/architecture.md stays true: every module, package and function it names exists, and every top-level part of
the package is on it. A failure names the missing thing (a module moved or renamed: update the page)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from support.paths import REPO

PAGE = REPO / "docs" / "architecture.md"
ROOT = REPO / "biomedica_hf"
NAMED = re.compile(r"^(?P<path>[A-Za-z_][\w/]*(?:\.py|/))(?::(?P<name>[A-Za-z_]\w*))?$")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def named_in(text: str) -> list[str]:
    """What the page names: `path.py`, `path.py:name` and `package/` in backticks (prose and tables), and the
    ``x.py`` / ``x/`` words of its diagrams (fenced blocks), all relative to ``biomedica_hf/``."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    found = [t for t in re.findall(r"`([^`\n]+)`", prose) if NAMED.match(t)]
    for block in blocks:
        found += re.findall(r"(?<![\w/.])([A-Za-z_]\w*(?:\.py|/))(?![\w/])", "\n".join(block.splitlines()[1:-1]))
    return list(dict.fromkeys(found))


def top_level_names(path: Path) -> set[str]:
    """Functions, classes and assignments at the top of a module, and the names it imports there."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def missing(text: str, root: Path = ROOT) -> list[str]:
    out = []
    for token in named_in(text):
        m = NAMED.match(token)
        first = m["path"].split("/")[0]
        # relative to the package, unless it starts with a folder of the repository (tests/, biomedica_hf/, ...)
        base = root.parent if "/" in m["path"] and (root.parent / first).is_dir() and not (root / first).exists() \
            else root
        path = base / m["path"]
        if m["path"].endswith("/") and not path.is_dir():
            out.append(f"`{token}`: no package {path.relative_to(root.parent)}/")
        elif m["path"].endswith(".py") and not path.is_file():
            out.append(f"`{token}`: no module {path.relative_to(root.parent)}")
        elif m["name"] and m["name"] not in top_level_names(path):
            out.append(f"`{token}`: {path.relative_to(root.parent)} has no top-level {m['name']}")
    return out


def test_every_module_and_function_the_page_names_exists():
    text = PAGE.read_text(encoding="utf-8")
    assert len(named_in(text)) > 40                       # the page does name the modules (the check is not empty)
    gone = missing(text)
    assert not gone, "docs/architecture.md names what is not there (update the page):\n" + "\n".join(gone)


def test_every_part_of_the_package_is_on_the_page():
    """A new top-level module or package (a new job) gets its line on the page."""
    text = PAGE.read_text(encoding="utf-8")
    heads = {t.split("/")[0] if "/" in t else t.split(":")[0] for t in named_in(text)}
    parts = {p.name for p in ROOT.iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.name != "__init__.py")}
    absent = sorted(f"{p}/" if (ROOT / p).is_dir() else p for p in parts
                    if p not in heads and p.removesuffix(".py") not in heads)
    assert not absent, f"parts of biomedica_hf/ that docs/architecture.md does not name: {absent}"


def test_the_check_names_what_is_missing(tmp_path):
    """A module, a package and a function that are not there are each reported by name."""
    pkg = tmp_path / "biomedica_hf"
    (pkg / "io").mkdir(parents=True)
    (pkg / "io" / "tars.py").write_text("from os import path\nEND = b''\n\ndef member_bytes():\n    pass\n")
    page = ("`io/tars.py:member_bytes` `io/tars.py:END` `io/tars.py:path` `io/`\n`io/tars.py:gone` `io/ranges.py` "
            "`clip/` `figures.parquet` `biomedica build`\n```\ncore   io/ · layout.py\n```\n")
    assert missing(page, pkg) == [
        "`io/tars.py:gone`: biomedica_hf/io/tars.py has no top-level gone",
        "`io/ranges.py`: no module biomedica_hf/io/ranges.py",
        "`clip/`: no package biomedica_hf/clip/",
        "`layout.py`: no module biomedica_hf/layout.py",
    ]
