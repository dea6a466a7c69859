"""`biomedica inspect` takes what `build --source local` takes (issue 27): a JATS file, a .tar.gz package, an article
folder, or a folder of them, and shows every article in it. Run as a user runs it (the real CLI, a subprocess)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from support.paths import REPO

SAMPLE = REPO / "biomedica_hf" / "sample_data" / "articles"
ENV = {**{k: v for k, v in os.environ.items() if k != "BIOMEDICA_DEBUG"}, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biomedica_hf.cli", "inspect", *args], capture_output=True, text=True,
                          env=ENV, timeout=300, cwd=REPO)


def test_an_article_folder_is_inspected_like_its_xml():
    folder = SAMPLE / "eLife_39122_subarticles"
    r = inspect(str(folder))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "folder: 1 article(s)" in r.stdout
    assert "figures:" in r.stdout
    xml = next(folder.glob("*.xml"))
    single = json.loads(inspect(str(xml), "--json").stdout)
    whole = json.loads(inspect(str(folder), "--json").stdout)
    assert whole["kind"] == "folder"
    assert whole["articles"] == single["articles"]


def test_a_folder_of_articles_and_packages_shows_every_article(tmp_path):
    r = inspect(str(SAMPLE), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    files = sorted(os.path.relpath(it["file"], SAMPLE) for it in report["items"])
    assert files == ["PMC10802347/nihpp-2023.12.31.573776v1.nxml", "PMC7135076.tar.gz",
                     "eLife_00353/elife-00353-v1.xml", "eLife_19405/elife-19405.xml",
                     "eLife_32671_texture/manuscript.xml", "eLife_39122_subarticles/elife-39122.xml"]
    assert len(report["articles"]) == 6
    assert {"PMC10802347", "PMC7135076"} <= {a["pmcid"] for a in report["articles"]}
    assert [a["n_figures"] for a in report["articles"]] == [4, 1, 1, 1, 5, 2]
    text = inspect(str(SAMPLE)).stdout
    assert "folder: 6 article(s) in 6 file(s) or package(s)" in text
    assert "(package)" in text
    # what the build leaves out is said, with its reason
    (tmp_path / "lib").mkdir()
    shutil.copy(SAMPLE / "PMC7135076.tar.gz", tmp_path / "lib")
    (tmp_path / "lib" / "notes").mkdir()
    (tmp_path / "lib" / "notes" / "todo.txt").write_text("x")
    r = inspect(str(tmp_path / "lib"))
    assert r.returncode == 0
    assert "PMC7135076" in r.stdout
    assert "left out" in r.stdout
    assert "no_xml" in r.stdout


def test_a_folder_without_article_is_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "a.txt").write_text("x")
    r = inspect(str(tmp_path / "empty"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1
    assert "no article parsed" in lines[0]
    assert "*.nxml" in lines[0]
    assert r.stdout == ""
