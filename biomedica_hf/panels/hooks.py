"""What panels add to lower layers through :mod:`biomedica_hf.hooks` (those layers never import this package).

* ``figures.parquet``: ``image_panel_count`` (panels found in the sample's image; null where its shard has not been
  split). The build's own ``panel_count`` is another thing: the number of image files of the ``<fig>``.
* the dataset card: the ``<licence>-panels`` configs (with their features), a "Panels" section (counts per
  licence, method and panel count, and a contact sheet of real crops with their subcaptions), and the sheet
  ``card/panels_sheet.png``.
Every function does nothing (None / []) for a folder without panels. Found as entry points (``pyproject.toml``)
and registered at run time by :func:`register_hooks` (called when ``biomedica_hf.panels`` is imported, so by
``panel_dataset`` too; uninstalled checkouts too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf import hooks

SHEET = "panels_sheet.png"
SHEET_PANELS = 12


def _has_panels(out: Path) -> bool:
    from biomedica_hf.layout import PANELS_INDEX

    return (Path(out) / PANELS_INDEX).exists()


def index_columns(dataset_dir: str | Path) -> dict[str, pa.Array] | None:
    """``INDEX_COLUMNS``: ``image_panel_count`` aligned with the shard tables; None without panels."""
    from collections import Counter

    from biomedica_hf.io.markers import is_done
    from biomedica_hf.layout import shard_tables, table_shard
    from biomedica_hf.panels.dataset import INDEX_COLUMN, panel_files

    out = Path(dataset_dir)
    if not (out / "panels").is_dir():
        return None
    values: list[int | None] = []
    for p in shard_tables(out):
        keys = pq.read_table(p, columns=["key"])["key"].to_pylist()
        parquet, _, marker = panel_files(out, table_shard(out, p))
        if parquet.exists() and is_done(marker, files=[parquet]):
            counts = Counter(pq.read_table(parquet, columns=["parent_key"])["parent_key"].to_pylist())
            values += [counts.get(k) for k in keys]     # a figure that failed to split: null
        else:
            values += [None] * len(keys)
    return {INDEX_COLUMN: pa.array(values, pa.int32())}


def panel_features():
    """``datasets.Features`` of a ``<licence>-panels`` config's samples."""
    from datasets import Features, Image, Sequence, Value

    json_feats = {"parent_key": Value("string"), "pmcid": Value("string"), "figure_id": Value("string"),
                  "subset": Value("string"), "license_code": Value("string"), "split": Value("string"),
                  "year": Value("int32"), "panel_index": Value("int32"), "panel_count": Value("int32"),
                  "bbox": Sequence(Value("int32")), "label": Value("string"), "label_score": Value("float32"),
                  "caption_label": Value("string"), "subcaption": Value("string"), "shared": Value("string"),
                  "method": Value("string"), "confidence": Value("float32"), "score": Value("float32")}
    return Features({"__key__": Value("string"), "__url__": Value("string"), "jpg": Image(), "png": Image(),
                     "txt": Value("string"), "json": json_feats})


def card_configs(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """``CARD_CONFIGS``: one ``<licence>-panels`` config per licence subset with panel shards (splits from the
    shard names), each carrying its ``features`` for the card's ``dataset_info``."""
    from biomedica_hf.layout import data_files_glob, folder_files, panel_config
    from biomedica_hf.schema import SUBSETS

    out = Path(dataset_dir)
    configs = []
    for subset in SUBSETS:
        name = panel_config(subset)
        tars = sorted(p.name for p in folder_files(out / name, "*.tar"))   # flat or in sNNN/gNNN sub-folders
        if not tars:
            continue
        splits = [sp for sp in ("train", "validation", "test") if any(t.startswith(f"{name}-{sp}-") for t in tars)]
        if not splits or any(not any(t.startswith(f"{name}-{sp}-") for sp in splits) for t in tars):
            files = [{"split": "train", "path": data_files_glob(name)}]
        else:
            files = [{"split": sp, "path": data_files_glob(name, f"{name}-{sp}-*.tar")} for sp in splits]
        configs.append({"config_name": name, "data_files": files, "features": panel_features()})
    return configs


def _summary(out: Path) -> dict[str, Any]:
    from biomedica_hf.layout import PANELS_INDEX

    t = pq.read_table(out / PANELS_INDEX, columns=["parent_key", "subset", "method", "panel_count", "subcaption"])
    rows = t.to_pylist()
    parents: dict[str, int] = {}
    for r in rows:
        parents[r["parent_key"]] = r["panel_count"]
    by_subset: dict[str, int] = {}
    by_method: dict[str, int] = {}
    for r in rows:
        by_subset[r["subset"]] = by_subset.get(r["subset"], 0) + 1
        by_method[r["method"]] = by_method.get(r["method"], 0) + 1
    compound = sum(1 for n in parents.values() if n > 1)
    return {"panels": len(rows), "figures": len(parents), "compound": compound, "by_subset": by_subset,
            "by_method": by_method, "with_subcaption": sum(1 for r in rows if r["subcaption"])}


def card_section(dataset_dir: str | Path) -> str | None:
    """``CARD_SECTIONS``: the card's "Panels" section (Markdown), None without panels."""
    from biomedica_hf.layout import panel_config

    out = Path(dataset_dir)
    if not _has_panels(out):
        return None
    s = _summary(out)
    if not s["panels"]:
        return None
    lines = ["## Panels", "",
             f"`biomedica panels` split the {s['figures']:,} figures into {s['panels']:,} panels "
             f"({s['compound']:,} figures are compound: more than one panel). Each panel is a crop of its figure "
             "(JPEG parents re-encoded at quality 95 with their ICC profile, PNG parents as PNG) whose caption is "
             "the shared part of the figure's caption plus the panel's own subcaption, found by its printed "
             "label, its position, or reading order (`method`; `confidence` says how sure). "
             f"{s['with_subcaption']:,} panels have a subcaption of their own.", "",
             "| config | panels |", "|---|---:|"]
    lines += [f"| `{panel_config(k)}` | {v:,} |" for k, v in sorted(s["by_subset"].items())]
    lines += ["", "| method | panels |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in sorted(s["by_method"].items(), key=lambda kv: -kv[1])]
    lines += ["", "```python", "from datasets import load_dataset",
              f'panels = load_dataset(REPO, "{panel_config(next(iter(sorted(s["by_subset"]))))}", streaming=True)',
              "# or: biomedica_hf.load_biomedica(REPO, level=\"panel\")", "```", "",
              "`panels.parquet` lists every panel (parent key, bbox, label, subcaption, shared part, method, scores); "
              "`figures.parquet` has `image_panel_count`.", ""]
    if (out / "card" / SHEET).exists():
        lines += [f"![Panels with their subcaptions](card/{SHEET})", ""]
    return "\n".join(lines)


def card_files(dataset_dir: str | Path) -> None:
    """``CARD_FILES``: ``card/panels_sheet.png``, a contact sheet of real crops with their subcaptions (panels
    aligned by label or order first)."""
    out = Path(dataset_dir)
    if _has_panels(out):
        contact_sheet(out, out / "card" / SHEET)


def contact_sheet(out: Path, dest: Path, n: int = SHEET_PANELS) -> Path | None:
    """Draw up to ``n`` panel crops with their labels and subcaptions into ``dest`` (PNG, atomic)."""
    import io
    import textwrap

    from PIL import Image, ImageDraw

    from biomedica_hf.io.atomic import atomic_write_bytes
    from biomedica_hf.io.ranges import ShardFiles
    from biomedica_hf.io.tars import range_members
    from biomedica_hf.layout import PANELS_INDEX

    t = pq.read_table(out / PANELS_INDEX, columns=["key", "shard", "tar_offset", "tar_size", "method", "subcaption",
                                                   "caption_label", "panel_count"])
    rows = t.to_pylist()
    rank = {"label": 0, "order": 1, "position": 1, "single": 3, "shared": 4}
    rows.sort(key=lambda r: (rank.get(r["method"], 5), r["subcaption"] is None, r["key"]))
    rows = rows[:n]
    if not rows:
        return None
    cell, text_h, cols = 220, 90, 4
    sheet = Image.new("RGB", (cols * cell, -(-len(rows) // cols) * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    with ShardFiles(out) as files:
        for i, r in enumerate(rows):
            data = files.read(r["shard"], int(r["tar_offset"]), int(r["tar_size"]))
            image = next(bytes(v) for n, v in range_members(data) if n.endswith((".jpg", ".png")))   # io.tars
            im = Image.open(io.BytesIO(image)).convert("RGB")
            im.thumbnail((cell - 10, cell - 10))
            x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
            head = f"{r['caption_label'] or '-'} ({r['method']})"
            body = textwrap.wrap(r["subcaption"] or "(shared caption only)", 36)[:5]
            draw.text((x + 5, y + cell), "\n".join([head, *body]), fill="black")
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, buf.getvalue())
    return dest


HOOKS = {hooks.INDEX_COLUMNS: index_columns, hooks.CARD_SECTIONS: card_section, hooks.CARD_CONFIGS: card_configs,
         hooks.CARD_FILES: card_files}


def register_hooks() -> None:
    """Register every function at run time (idempotent; an installed package also finds them as entry points)."""
    for group, fn in HOOKS.items():
        hooks.register(group, fn)


__all__ = ["HOOKS", "card_configs", "card_files", "card_section", "contact_sheet", "index_columns",
           "panel_features", "register_hooks"]
