"""Hook providers found through installed packages' entry points (``biomedica_hf.hooks``): the metadata of every
distribution is scanned once while ``sys.path`` and its folders stay as they are, and again once a package is
installed or removed."""
from __future__ import annotations

import os
import sys
import textwrap
from importlib import metadata

from biomedica_hf import hooks


def _install(site, dist: str, module: str, text: str) -> None:
    """A package as pip leaves it: its module and a ``.dist-info`` declaring a ``card_sections`` provider."""
    (site / f"{module}.py").write_text(f"def section(out):\n    return {text!r}\n")
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{hooks.CARD_SECTIONS}]
        {dist} = {module}:section
        """))


def test_entry_points_are_scanned_once_and_again_after_an_install(tmp_path, monkeypatch):
    scans = []
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points", lambda *a, **kw: scans.append(1) or real(*a, **kw))
    site = tmp_path / "site"
    site.mkdir()
    _install(site, "plugin_a", "plugin_a_mod", "A section")
    # sys.path: the folder, then the interpreter's and the installed packages' (never written during the suite;
    # the test folders pytest puts on sys.path get __pycache__ files from the other workers, which is a rescan)
    stable = [p for p in sys.path if p.startswith((sys.base_prefix, sys.prefix)) and os.path.isdir(p)]
    monkeypatch.setattr(sys, "path", [str(site), *stable])
    # importing a plugin's module would write site/__pycache__, itself a change of the folder (and a rescan)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    found = lambda: [fn(tmp_path) for fn in hooks.providers(hooks.CARD_SECTIONS)]   # noqa: E731

    assert "A section" in found()
    n = len(scans)
    assert n >= 1
    for group in hooks.GROUPS:                   # every group, any number of times: no new scan
        hooks.providers(group)
    assert "A section" in found() and len(scans) == n

    _install(site, "plugin_b", "plugin_b_mod", "B section")     # installed into a folder already on sys.path
    assert {"A section", "B section"} <= set(found())
    assert len(scans) == n + 1

    monkeypatch.undo()                           # sys.path without the folder: its providers are gone
    assert not {"A section", "B section"} & set(hooks.run(hooks.CARD_SECTIONS, tmp_path))
