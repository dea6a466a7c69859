"""Panels from a Hub repo: ``load_biomedica("org/name", level="panel")`` and ``datasets.load_dataset("org/name",
"<licence>-panels", streaming=True)`` against the real loopback Hub (``tests/support/hub_server.py``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.hub_server import HubServer, loopback_only, point_libraries_at

from biomedica_hf.dataset.card import write_card
from biomedica_hf.dataset.loader import load_biomedica
from biomedica_hf.panels.dataset import PANELS_INDEX, panel_dataset

REPO = "bmd-lab/biomedica-panels"


@pytest.fixture(scope="module")
def paneled(built_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub_panels") / "ds"
    shutil.copytree(built_dataset, out, ignore=shutil.ignore_patterns("_work"))
    panel_dataset(out, labels=False)
    write_card(out, repo_id=REPO)
    return out


def test_panels_stream_from_the_hub(paneled, monkeypatch, tmp_path):
    import datasets

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    panels = pq.read_table(paneled / PANELS_INDEX).to_pylist()
    local = {r["key"]: r for r in load_biomedica(paneled, "all", level="panel", decode=False)}
    with HubServer({REPO: paneled}) as server:
        loopback_only(monkeypatch)
        point_libraries_at(server.url, monkeypatch, tmp_path / "hub_cache")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        remote = {r["key"]: r for r in load_biomedica(REPO, "all", level="panel", decode=False)}
        assert set(remote) == set(local) == {p["key"] for p in panels}
        for key, r in remote.items():
            assert r["image"]["bytes"] == local[key]["image"]["bytes"]
            assert r["caption"] == local[key]["caption"]
            assert r["metadata"] == local[key]["metadata"]
        subset = panels[0]["subset"]
        rows = list(datasets.load_dataset(REPO, f"{subset}-panels", streaming=True, split="train"))
        assert len(rows) == sum(1 for p in panels if p["subset"] == subset)
        assert all(r["json"]["subset"] == subset for r in rows)
