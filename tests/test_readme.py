"""The README is the front door (issue 27): at most 300 lines, a table of contents, the two commands, a recipe per
task linking to its `docs/` page, and every page it links exists. Its blocks tagged runnable (```` ```python
runnable ````, ```` ```bash runnable ````) are run here, in order, from an empty folder holding the bundled sample's
build as `demo_out` (what `make demo` makes), and must run without an error or a warning; so are the docs pages'
runnable blocks."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
RUNNABLE = re.compile(r"^```(python|bash) runnable\n(.*?)^```$", re.M | re.S)
TOPICS = ("building", "sources", "dataset-format", "loading", "concepts", "training", "evaluation", "search",
          "publishing", "scale-and-performance", "reliability", "architecture", "errors", "dependencies")
RECIPES = ("Build a dataset", "Load it", "Label concepts", "Train", "Evaluate", "Search", "Publish")
# what a warning looks like on stderr: Python's (`...Warning: ...`), and libraries' logged ones
WARNING = re.compile(r"\b\w*Warning\b|\bWARNING\b|\bwarn(ing)?:", re.I)


def runnable_blocks(path: Path) -> list[tuple[str, str]]:
    return RUNNABLE.findall(path.read_text(encoding="utf-8"))


def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert "make demo" in text
    assert "make test" in text
    assert "## Contents" in text
    headings = re.findall(r"^## (.+)$", text, re.M)
    for recipe in RECIPES:
        assert recipe in headings, recipe
        section = text.split(f"## {recipe}\n", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"\]\(docs/[\w-]+\.md\)", section), f"the {recipe!r} recipe links no docs page"
        assert f"(#{recipe.lower().replace(' ', '-')})" in text, f"the table of contents lacks {recipe!r}"


def test_every_linked_page_exists_and_every_topic_has_one():
    links = re.findall(r"\]\((docs/[^)#\s]+)", README.read_text(encoding="utf-8"))
    assert links
    missing = sorted({link for link in links if not (REPO / link).is_file()})
    assert not missing, missing
    for topic in TOPICS:
        assert f"docs/{topic}.md" in links, topic
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    assert pages and all(f"]({name})" in index for name in pages), pages
    for page in DOCS.glob("*.md"):                       # links between pages resolve too
        for link in re.findall(r"\]\(([^)#:\s]+\.md)", page.read_text(encoding="utf-8")):
            assert (page.parent / link).is_file(), f"{page.name} links {link}"


def test_readme_says_the_true_rules():
    """The contradictions the issue found: the layer rule, `card DIR`, the webdataset snippet, `tiny_clip`."""
    docs = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
    every = README.read_text(encoding="utf-8") + "".join(docs.values())
    assert "levels above it" not in every
    assert "lower** ones" in docs["architecture.md"]
    assert "card --out DIR` rewrites" not in every
    assert "biomedica card demo_out" in every
    assert all("shardshuffle=" in block for block in re.findall(r"wds\.WebDataset\([^\n]*", every))
    assert "open_clip_config.json" in docs["evaluation.md"]
    assert "tiny_clip" in docs["evaluation.md"]


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("readme") / "demo_out"
    r = subprocess.run([sys.executable, "-m", "biomedica_hf.cli", "build", "--sample", "--out", str(out), "--workers",
                        "1", "--no-progress"], capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    return out


# every page's blocks run with the whole suite (`make test`); the fast loop leaves this test out (tests/conftest.py)
PAGES = ["README.md", *(pytest.param(f"docs/{p.name}", marks=pytest.mark.slow)
                        for p in sorted(DOCS.glob("*.md")) if runnable_blocks(p))]


@pytest.mark.parametrize("page", PAGES)
def test_runnable_blocks_run_on_the_sample_without_warnings(page, sample_build, tmp_path):
    blocks = runnable_blocks(REPO / page)
    assert blocks, f"{page} has no runnable block"
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(sample_build, work / "demo_out", symlinks=True)
    env = {k: v for k, v in os.environ.items() if k not in ("BIOMEDICA_DEBUG", "HF_ENDPOINT")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(REPO),
                "HF_HOME": str(tmp_path / "hf")})
    env.pop("PYTHONWARNINGS", None)                      # what a user sees: Python's default filters
    for n, (lang, code) in enumerate(blocks, 1):
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=600)
        where = f"{page}, runnable block {n} ({lang}):\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
        assert r.returncode == 0, where
        assert not WARNING.search(r.stderr), where
