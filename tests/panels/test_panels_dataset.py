"""``biomedica panels DIR`` on the real fixture build: panels.parquet, the <licence>-panels configs, the index
column, the card, load_biomedica(level="panel"), resumption, updates and bad figures."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from biomedica_hf.layout import folder_files, shard_dirs, shard_group, shard_tables, table_shard
from biomedica_hf.panels.dataset import PANELS_INDEX, panel_dataset, panel_files

BIN = Path(sys.executable).with_name("biomedica")


@pytest.fixture(scope="module")
def paneled(built_dataset, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("panels") / "ds"
    shutil.copytree(built_dataset, out)
    report = panel_dataset(out, labels=False)
    return out, report


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key, ext = m.name.rsplit(".", 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def test_every_figure_split_and_accounted_for(paneled):
    out, report = paneled
    figures = pq.read_table(out / "figures.parquet")
    assert report["figures"] == figures.num_rows
    assert not report["figures_failed"]
    assert not report["failed"]
    panels = pq.read_table(out / PANELS_INDEX)
    assert panels.num_rows == report["panels"] > figures.num_rows          # some figures are compound
    assert set(panels["parent_key"].to_pylist()) == set(figures["key"].to_pylist())
    # figures.parquet gains image_panel_count through the index hook; the build's panel_count is untouched
    counts = dict(zip(figures["key"].to_pylist(), figures["image_panel_count"].to_pylist()))
    for key, n in zip(panels["parent_key"].to_pylist(), panels["panel_count"].to_pylist()):
        assert counts[key] == n
    assert "panel_count" in figures.column_names
    assert sum(report["methods"].values()) == panels.num_rows
    assert set(report["methods"]) <= {"label", "order", "position", "shared", "single"}


def test_panel_shards_never_mix_licences_and_keep_the_format(paneled):
    out, _ = paneled
    panels = pq.read_table(out / PANELS_INDEX).to_pylist()
    parents = {r["key"]: r for r in pq.read_table(out / "figures.parquet").to_pylist()}
    assert panels
    # each panel shard sits in the sNNN/gNNN group of its source shard (layout.shard_group), none flat
    assert {r["shard"] for r in panels} == {p.relative_to(out).as_posix() for f in out.glob("*-panels")
                                            for p in folder_files(f, "*.tar")}
    assert all(shard_group(r["shard"]) == shard_group(r["source_shard"]) != "" for r in panels)
    assert not list(out.glob("*-panels/*.tar"))
    for folder in out.glob("*-panels"):      # every directory with tars has the config's whole sizes.json
        want = {}
        for r in panels:
            if r["shard"].startswith(f"{folder.name}/"):
                want[r["shard"].rsplit("/", 1)[-1]] = want.get(r["shard"].rsplit("/", 1)[-1], 0) + 1
        dirs = [d for d in shard_dirs(folder) if any(d.glob("*.tar"))]
        assert dirs
        assert all(json.loads((d / "sizes.json").read_text()) == want for d in dirs)
    for folder in out.glob("*-panels"):
        subset = folder.name.removesuffix("-panels")
        for tar in folder_files(folder, "*.tar"):
            for key, members in _tar_samples(tar).items():
                meta = json.loads(members["json"])
                assert meta["subset"] == subset
                assert meta["license_code"] == parents[meta["parent_key"]]["license_code"]
                parent = parents[meta["parent_key"]]
                ext = "png" if parent["image_ext"] == "png" else "jpg"
                assert set(members) == {ext, "txt", "json"}
                im = Image.open(io.BytesIO(members[ext]))
                x0, y0, x1, y1 = meta["bbox"]
                assert im.size == (x1 - x0, y1 - y0)
                assert im.format == ("PNG" if ext == "png" else "JPEG")
                assert members["txt"].decode()
                assert key.startswith(meta["parent_key"] + "_p")
    # the byte ranges in panels.parquet are the samples
    row = panels[0]
    data = (out / row["shard"]).read_bytes()[row["tar_offset"]:row["tar_offset"] + row["tar_size"]]
    assert data[:100].split(b"\0", 1)[0].decode() == f"{row['key']}.{row['image_ext']}"


def test_crops_keep_the_icc_profile_and_format(articles_dir):
    from PIL import ImageCms

    from biomedica_hf.panels.dataset import encode_crop

    img = Image.open(sorted(articles_dir.glob("*/*.jpg"))[0]).convert("RGB")
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.info["icc_profile"] = profile
    crop = Image.open(io.BytesIO(encode_crop(img, (0, 0, 50, 40), "jpg")))
    assert crop.format == "JPEG"
    assert crop.size == (50, 40)
    assert crop.info.get("icc_profile") == profile
    png = Image.open(io.BytesIO(encode_crop(img, (10, 10, 30, 30), "png")))
    assert png.format == "PNG"
    assert png.size == (20, 20)
    assert png.info.get("icc_profile") == profile


def test_configs_load_with_datasets_and_the_loader(paneled):
    import datasets

    from biomedica_hf import load_biomedica
    from biomedica_hf.dataset.card import write_card

    out, _ = paneled
    card = write_card(out).read_text()
    assert "config_name: commercial-panels" in card
    assert "## Panels" in card
    assert "card/panels_sheet.png" in card
    assert (out / "card" / "panels_sheet.png").exists()
    panels = pq.read_table(out / PANELS_INDEX)
    for subset in ("commercial", "noncommercial", "other"):
        want = sum(1 for s in panels["subset"].to_pylist() if s == subset)
        if not want:
            continue
        ds = datasets.load_dataset(str(out), f"{subset}-panels", streaming=True, split="train")
        rows = list(ds)
        assert len(rows) == want
        assert all((r["jpg"] or r["png"]) is not None and r["json"]["subset"] == subset for r in rows)
        loaded = list(load_biomedica(out, subset, level="panel"))
        assert len(loaded) == want
        r = loaded[0]
        assert r["image"].size[0] > 0
        assert r["caption"]
        assert r["metadata"]["parent_key"]
    assert len(list(load_biomedica(out, "all", level="panel", decode=False))) == panels.num_rows
    with pytest.raises(ValueError, match="unknown level"):
        load_biomedica(out, level="subfigure")


def test_rerun_resumes_writing_nothing(paneled):
    out, first = paneled
    files = [f for p in shard_tables(out) for f in panel_files(out, table_shard(out, p))]
    files += [out / PANELS_INDEX, out / "figures.parquet"]
    before = {f: f.stat().st_mtime_ns for f in files}
    report = panel_dataset(out, labels=False)
    assert report["split"] == 0
    assert report["kept"] == first["split"] + first["kept"]
    assert report["panels"] == first["panels"]
    assert {f: f.stat().st_mtime_ns for f in files} == before


def test_update_rebuilt_and_removed_shards(paneled):
    out, first = paneled
    tables = shard_tables(out)
    gone, rebuilt = tables[0], tables[-1]
    gone_keys = set(pq.read_table(gone, columns=["key"])["key"].to_pylist())
    # an update removed a shard (its parents were withdrawn) and rewrote another (a new digest)
    for f in gone.parent.glob(f"{gone.stem}*"):
        f.unlink()
    stats = rebuilt.with_name(f"{rebuilt.stem}_stats.json")
    info = json.loads(stats.read_text())
    info["digest"] = "0" * 64
    stats.write_text(json.dumps(info))
    report = panel_dataset(out, labels=False)
    assert report["removed"] == 1
    assert report["split"] == 1
    panels = pq.read_table(out / PANELS_INDEX)
    assert not gone_keys & set(panels["parent_key"].to_pylist())
    assert not panel_files(out, table_shard(out, gone))[1].exists()
    n_rows = sum(pq.read_metadata(p).num_rows for p in shard_tables(out))
    assert pq.read_table(out / "figures.parquet").num_rows == n_rows


def test_a_bad_figure_is_reported_and_its_shard_goes_on(built_dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(built_dataset, out)
    table = max(shard_tables(out), key=lambda p: pq.read_metadata(p).num_rows)
    rows = pq.read_table(table).sort_by("tar_offset").to_pylist()
    assert len(rows) > 1
    bad = rows[0]
    with open(out / bad["shard"], "r+b") as f:            # the image bytes become garbage, sizes unchanged
        f.seek(bad["image_offset"])
        f.write(b"\x00" * min(64, bad["image_size"]))
    report = panel_dataset(out, labels=False)
    assert [f["key"] for f in report["figures_failed"]] == [bad["key"]]
    panels = pq.read_table(out / PANELS_INDEX)
    parents = set(panels["parent_key"].to_pylist())
    assert bad["key"] not in parents
    assert rows[1]["key"] in parents
    counts = dict(zip(*[pq.read_table(out / "figures.parquet", columns=[c])[c].to_pylist()
                        for c in ("key", "image_panel_count")]))
    assert counts[bad["key"]] is None
    assert counts[rows[1]["key"]] >= 1


@pytest.mark.slow
def test_cli_dataset_command(built_dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(built_dataset, out)
    r = subprocess.run([str(BIN), "panels", str(out), "--no-labels", "--no-progress"], capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "panels from" in r.stdout
    assert "commercial-panels:" in r.stdout
    assert "Dataset card:" in r.stdout
    r = subprocess.run([str(BIN), "panels", str(out), "--no-labels", "--no-progress", "--no-card"],
                       capture_output=True, text=True)
    assert "0 shards split" in r.stdout, r.stdout


@pytest.mark.slow
def test_ray_executor_gives_the_local_output(built_dataset, tmp_path):
    """``--executor ray`` (a local Ray instance, 2 workers): the same panel files, byte for byte."""
    pytest.importorskip("ray")
    local = tmp_path / "local"
    shutil.copytree(built_dataset, local)
    panel_dataset(local, labels=False)
    out = tmp_path / "ds"
    shutil.copytree(built_dataset, out)
    r = subprocess.run([str(BIN), "panels", str(out), "--no-labels", "--no-progress", "--no-card", "--workers", "2",
                        "--executor", "ray", "--address", "local"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def files(root: Path) -> dict[str, bytes]:
        keep = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".tar", ".parquet")
                and (p.parts[len(root.parts)] == "panels" or p.parts[len(root.parts)].endswith("-panels"))]
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in keep}
    got, want = files(out), files(local)
    assert got
    assert got == want
    assert pq.read_table(out / PANELS_INDEX).equals(pq.read_table(local / PANELS_INDEX))


def test_rerun_over_flat_panel_shards_of_before_moves_them_into_groups(built_dataset, tmp_path):
    """Panel shards written flat (``commercial-panels/<name>.tar`` with a flat ``sizes.json``, as before the
    sub-folders): a re-run splits those shards again into their source's group and leaves nothing flat; the
    panels load and the push plan carries every panel tar with its directory's ``sizes.json``."""
    from biomedica_hf.dataset.card import write_card
    from biomedica_hf.dataset.hub import plan_upload
    from biomedica_hf.dataset.loader import load_biomedica
    from biomedica_hf.panels.hooks import register_hooks

    out = Path(shutil.copytree(built_dataset, tmp_path / "ds"))      # (``paneled`` is changed by other tests)
    panel_dataset(out, labels=False)
    before = pq.read_table(out / PANELS_INDEX, columns=["key"])["key"].to_pylist()
    moved = 0
    for folder in out.glob("*-panels"):
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                f.rename(folder / f.name)
                moved += f.suffix == ".tar"
    assert moved
    assert len(list(out.glob("*-panels/*.tar"))) == moved                    # flat now
    report = panel_dataset(out, labels=False)
    assert report["split"] == moved
    assert not report["failed"]
    assert not [p for f in out.glob("*-panels") for p in f.iterdir() if p.is_file()]     # nothing flat left
    assert sorted(pq.read_table(out / PANELS_INDEX, columns=["key"])["key"].to_pylist()) == sorted(before)
    register_hooks()
    write_card(out)
    plan = plan_upload(out)
    assert plan.ok, plan.problems
    tars = [p.relative_to(out).as_posix() for f in out.glob("*-panels") for p in folder_files(f, "*.tar")]
    assert tars
    assert all(t in plan.paths and f"{t.rsplit('/', 1)[0]}/sizes.json" in plan.paths for t in tars)
    panels = list(load_biomedica(out, "all", level="panel", decode=False))
    assert sorted(r["key"] for r in panels) == sorted(before)


def test_panel_selection_follows_the_loaders_rule(paneled):
    """``select_panels`` checks subset and split with the one ``Selection`` rule: the same messages as the loader's,
    and a list of subsets and a split select exactly their rows."""
    from biomedica_hf.dataset.panel_loader import select_panels
    from biomedica_hf.filters import Selection

    out, _ = paneled
    panels = pq.read_table(out / PANELS_INDEX)
    for bad in ({"subset": "comercial"}, {"split": "tran"}):
        with pytest.raises(ValueError) as ours:
            select_panels(panels, **bad)
        with pytest.raises(ValueError) as loaders:
            Selection(**bad)
        assert str(ours.value) == str(loaders.value)
    rows = panels.to_pylist()
    got = select_panels(panels, ["commercial", "other"], split="train")
    assert got.num_rows == sum(r["subset"] in ("commercial", "other") and r["split"] == "train" for r in rows)
    assert select_panels(panels, "all").num_rows == panels.num_rows
