"""Model cards say the licence of the data the model was trained on, read from that data (``dataset.licences``):
one Hub licence when every selected sample shares it, else ``license: other`` + ``license_name`` +
``license_link: LICENSES.md`` (the licences with their counts, the subset and filters), for the CLIP cards and the
SmolVLM cards alike. Built from the real fixture articles (CC BY 3.0 / 4.0, CC BY-NC-ND 4.0, PHE, unknown)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from biomedica_hf.dataset.licences import cc_version, data_licences

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "finetune" / "clip" / "configs" / "cpu_smoke.yaml")


def _meta(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def _index(ds: Path) -> list[dict]:
    return pq.read_table(ds / "figures.parquet", columns=["license_code", "subset", "pmcid"]).to_pylist()


def test_counts_are_the_index_counts(built_dataset):
    rows = _index(built_dataset)
    lic = data_licences(built_dataset, "all")
    assert lic.error is None
    assert lic.samples == len(rows)
    by_code = Counter()
    for c in lic.counts:
        by_code[c.code] += c.samples
    assert by_code == Counter(r["license_code"] for r in rows)
    assert {(c.code, c.version) for c in lic.counts} >= {("CC BY", "4.0"), ("CC BY", "3.0"), ("CC BY-NC-ND", "4.0")}
    assert cc_version("http://creativecommons.org/licenses/by-nc-sa/3.0/igo/") == "3.0"
    assert cc_version(None) is None


def test_a_selection_counts_what_it_selects(built_dataset):
    """Issue 29: the licences are counted on the samples one ``Selection`` selects, the loader's own filter; a
    config's ``data`` mapping makes the same selection."""
    from biomedica_hf.filters import Selection

    rows = [r for r in _index(built_dataset) if r["subset"] != "other"]
    code = Counter(r["license_code"] for r in rows).most_common(1)[0][0]
    lic = data_licences(built_dataset, Selection(subset=["commercial", "noncommercial"], licenses=code.lower()))
    assert lic.error is None and lic.subset == "commercial, noncommercial"
    assert lic.filters == {"licenses": code.lower()}            # as asked (LICENSES.md shows the config's words)
    assert {c.code for c in lic.counts} == {code} and lic.samples == sum(r["license_code"] == code for r in rows)
    same = data_licences(built_dataset, ["commercial", "noncommercial"], {"licenses": code.lower(), "path": "x",
                                                                        "shuffle_buffer": 4, "years": None})
    assert same.counts == lic.counts and same.filters == {"licenses": code.lower()}
    bad = data_licences(built_dataset, "all", {"split": "dev"})
    assert bad.counts == [] and "split must be one of" in bad.error


def test_clip_card_license_from_the_training_data(built_dataset, tmp_path):
    from biomedica_hf.clip.card import render_model_card, write_model_card
    from biomedica_hf.train.clip import load_config

    ds = built_dataset
    rows = _index(ds)
    # everything: several licences -> other + a name + a link to LICENSES.md, which lists them with counts
    cfg = load_config(SMOKE, [f"data.path={ds}", "data.subset=all"])
    folder = tmp_path / "export"
    folder.mkdir()
    write_model_card(folder, cfg, "open_clip", {"step": 1, "samples": 4})
    meta = _meta((folder / "README.md").read_text())
    assert meta["license"] == "other"
    assert meta["license_link"] == "LICENSES.md"
    assert meta["license_name"] == "mixed-training-data-licences"
    licences = (folder / "LICENSES.md").read_text()
    for code in Counter(r["license_code"] for r in rows).keys():
        assert f"| {code} |" in licences
    assert f"| **total** | | | {len(rows):,} |" in licences
    assert "subset `all`" in licences
    card = (folder / "README.md").read_text()
    assert "subset **all**" in card
    assert "[LICENSES.md](LICENSES.md)" in card
    assert str(ds) not in card
    # one licence, one version: its Hub id
    cfg = load_config(SMOKE, [f"data.path={ds}", "data.subset=noncommercial"])
    assert {r["license_code"] for r in rows if r["subset"] == "noncommercial"} == {"CC BY-NC-ND"}
    assert _meta(render_model_card(cfg, "transformers", {}))["license"] == "cc-by-nc-nd-4.0"
    # commercial = CC BY 3.0 + CC BY 4.0 articles here: not one Hub licence, so other (the old card said cc-by-4.0)
    cfg = load_config(SMOKE, [f"data.path={ds}", "data.subset=commercial"])
    meta = _meta(render_model_card(cfg, "transformers", {}))
    assert meta["license"] == "other"
    assert meta["license_link"] == "LICENSES.md"
    # the filters are named and applied: only the PHE articles of `other`
    cfg = load_config(SMOKE, [f"data.path={ds}", "data.subset=other", "data.licenses=PHE"])
    card = render_model_card(cfg, "open_clip", {})
    assert _meta(card)["license_name"] == "phe"
    assert "licenses PHE" in card
    n_phe = sum(r["license_code"] == "PHE" for r in rows)
    assert f"PHE ({n_phe:,} samples)" in card


def test_smolvlm_cards_license_from_the_training_data(built_dataset, tmp_path):
    from biomedica_hf.train.smolvlm import load_config
    from biomedica_hf.vlm.card import write_model_card

    out = tmp_path / "run"
    for d in ("merged", "adapter"):
        (out / d).mkdir(parents=True)
    cfg = load_config(None, [f"output_dir={out}", f"data.path={built_dataset}", "data.subset=all"])
    write_model_card(out, cfg, {"losses": [2.0, 1.5], "steps": 2, "world_size": 1})
    for folder in (out, out / "merged", out / "adapter"):
        text = (folder / "README.md").read_text()
        meta = _meta(text)
        assert meta["license"] == "other", meta
        assert meta["license_link"] == "LICENSES.md", meta   # was apache-2.0
        assert "CC BY-NC-ND" in (folder / "LICENSES.md").read_text()
        assert str(built_dataset) not in text
        assert str(out) not in text        # the card names no local path
    cfg = load_config(None, [f"output_dir={out}", f"data.path={built_dataset}", "data.subset=noncommercial"])
    write_model_card(out, cfg, {"losses": [2.0], "steps": 1, "world_size": 1})
    assert _meta((out / "merged" / "README.md").read_text())["license"] == "cc-by-nc-nd-4.0"


def test_model_cards_name_every_filter_of_the_selection_and_no_local_path(built_dataset, tmp_path):
    """Split, exclusions and the near-duplicate policy shape the training data as much as licences do: both cards name
    every filter the config sets (the Selection's fields), an exclusion file by its name only."""
    from biomedica_hf.clip.card import render_model_card
    from biomedica_hf.train.clip import load_config
    from biomedica_hf.train.smolvlm import load_config as load_vlm_config
    from biomedica_hf.vlm.card import write_model_card

    excl = tmp_path / "private-dir-7f3a" / "exclusions.txt"
    excl.parent.mkdir()
    excl.write_text(pq.read_table(built_dataset / "figures.parquet", columns=["key"])["key"][0].as_py() + "\n")
    sets = ["data.subset=all", "data.split=train", f"data.exclude={excl}", "data.near_duplicates=drop"]
    card = render_model_card(load_config(SMOKE, [f"data.path={built_dataset}", *sets]), "open_clip", {})
    assert "split train" in card
    assert "exclude exclusions.txt" in card
    assert "near_duplicates drop" in card
    assert "private-dir-7f3a" not in card
    out = tmp_path / "run"
    for d in ("merged", "adapter"):
        (out / d).mkdir(parents=True)
    cfg = load_vlm_config(None, [f"output_dir={out}", f"data.path={built_dataset}", *sets])
    write_model_card(out, cfg, {"losses": [2.0], "steps": 1, "world_size": 1})
    text = (out / "merged" / "README.md").read_text()
    assert "split train" in text
    assert "exclude exclusions.txt" in text
    assert "near_duplicates drop" in text
    assert "private-dir-7f3a" not in text
