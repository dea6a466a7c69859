"""The contributor's fast loop (issue 27): `make test-fast` selects by pytest markers and leaves out the browser,
multi-process and slow tests; `make test` stays the whole suite (and is what CI runs)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from support.paths import REPO

FAST = "not slow and not browser and not multiprocess"


def _make_n(target: str) -> str:
    """The pytest command `make TARGET` runs (printed by `make -n`, nothing installed or run)."""
    r = subprocess.run(["make", "-n", target, "STAMP=/bin/sh", "CHROMIUM=/bin/bash"], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "-m pytest" in ln]
    assert len(lines) == 1, r.stdout
    return lines[0]


def _collected(*args: str) -> list[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                       capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode in (0, 5), r.stdout[-2000:] + r.stderr[-2000:]
    return [ln for ln in r.stdout.splitlines() if "::" in ln]


def test_make_test_fast_uses_the_markers_and_make_test_runs_everything():
    fast = _make_n("test-fast")
    assert f'-m "{FAST}"' in fast
    assert "pytest" in fast
    full = _make_n("test")
    assert full.count(" -m ") == 1                       # `python -m pytest` only: no marker selection
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


def test_the_markers_leave_out_browser_multiprocess_and_slow_tests():
    files = ["tests/search/test_search_page.py", "tests/test_smoke.py", "tests/ingest/test_executors.py",
             "tests/train/test_clip_recipe.py"]
    every = _collected(*files)
    fast = _collected(*files, "-m", FAST)
    assert fast
    assert len(fast) < len(every)
    assert not [t for t in fast if re.match(r"tests/(search/test_search_page|test_smoke|build/test_executors)\.py", t)]
    assert "tests/train/test_clip_recipe.py::test_gathered_loss_equals_single_process" not in fast
    assert "tests/train/test_clip_recipe.py::test_wise_ft_interpolates" in fast        # a unit test stays
    for marker in ("slow", "browser", "multiprocess"):
        assert re.search(rf'"{marker}: ', (REPO / "pyproject.toml").read_text()), marker


def test_every_node_id_of_the_kinds_names_a_real_test(request):
    """A moved or renamed test must move in KIND_OF_TESTS too: a stale node id would silently put a slow or
    multi-process test back into the fast loop. Checked against the source (no collection)."""
    import ast

    # the table of the conftest pytest loaded (a plugin), not an import of conftest
    (kinds,) = [p.KIND_OF_TESTS for p in request.config.pluginmanager.get_plugins() if hasattr(p, "KIND_OF_TESTS")]
    stale = []
    for kind, ids in kinds.items():
        for node in ids:
            path, _, name = node.partition("::")
            file = REPO / path
            if not file.is_file():
                stale.append(f"{kind}: {node} (no file {path})")
                continue
            tests = {n.name for n in ast.walk(ast.parse(file.read_text())) if isinstance(n, ast.FunctionDef)}
            if name and name not in tests:
                stale.append(f"{kind}: {node} (no test {name} in {path})")
    assert not stale, "KIND_OF_TESTS in tests/conftest.py names tests that do not exist:\n" + "\n".join(stale)


def test_helpers_live_in_tests_support():
    """Issue 29: tests/ holds test modules, conftest.py and packages; helpers are modules of tests/support/, imported
    as ``support.<module>``; no test module imports conftest."""
    loose = sorted(p.name for p in (REPO / "tests").glob("*.py") if not p.name.startswith("test_")
                   and p.name != "conftest.py")
    assert loose == [], f"helpers loose in tests/ (move them to tests/support/): {loose}"
    importing = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py")
                       if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(), re.M))
    assert importing == [], f"tests importing conftest (use tests/support/): {importing}"
