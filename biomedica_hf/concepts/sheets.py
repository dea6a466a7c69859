"""Contact sheets for labelling clusters: one PNG per cluster, an ``index.html`` and a blank annotation file.

``concepts/sheets/`` (or ``out``)::

    cluster_0000.png ...        a grid of up to ``per_cluster`` thumbnails with the key and the first
                                words of each caption beneath; header: cluster id and size
    index.html                  every sheet (relative links), cluster sizes, the allowed vocabulary
    annotations_blank.json      {"0": {"panel_type": "", "panel_subtype": "", "global_class": [],
                                "local_class": []}, ...}: one copy per annotator, filled in, goes to
                                ``biomedica label --annotations``

The samples shown are a seeded random sample of the cluster (see ``layout.key_priority``), not the
ones nearest the centroid: annotators should see what the label will be propagated to.
"""
from __future__ import annotations

import html
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.images import to_rgb as flatten_to_rgb
from biomedica_hf.concepts.cluster import load_cluster_model, read_clusters
from biomedica_hf.concepts.layout import (
    CLUSTERS,
    SHEETS_DIR,
    concepts_dir,
    figures_index_path,
    image_from_bytes,
    key_priority,
)
from biomedica_hf.concepts.vocab import Vocabulary, blank_annotation, load_vocabulary
from biomedica_hf.io.atomic import atomic_write_bytes, atomic_write_json
from biomedica_hf.io.ranges import read_many

THUMB = 200            # thumbnail box, pixels
COLUMNS = 4
CAPTION_LINES = 3
CAPTION_WORDS = 14
FONT_SIZE = 12
PAD = 10
BLANK_FILE = "annotations_blank.json"
FONTS = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def sheet_name(cluster: int) -> str:
    return f"cluster_{cluster:04d}.png"


def pick_samples(chunks: Iterable[tuple[Sequence[str], np.ndarray]], k: int, per_cluster: int,
                 seed: int = 0) -> tuple[dict[int, list[str]], np.ndarray]:
    """Up to ``per_cluster`` keys of every cluster (the first by seeded priority: a stable random
    sample) and the cluster sizes, streaming over (keys, clusters) chunks: memory O(k x per_cluster + chunk)."""
    best_keys = np.array([], dtype=object)
    best_prio = np.array([], dtype=np.uint64)
    best_cluster = np.array([], dtype=np.int64)
    sizes = np.zeros(k, np.int64)
    for keys, clusters in chunks:
        clusters = np.asarray(clusters, dtype=np.int64)
        sizes += np.bincount(clusters, minlength=k)
        all_keys = np.concatenate([best_keys, np.asarray(list(keys), dtype=object)])
        all_prio = np.concatenate([best_prio, key_priority(keys, seed)])
        all_cluster = np.concatenate([best_cluster, clusters])
        order = np.lexsort((all_keys.astype(str), all_prio, all_cluster))   # cluster, priority, key
        sorted_cluster = all_cluster[order]
        rank = np.arange(len(order)) - np.searchsorted(sorted_cluster, sorted_cluster, side="left")
        keep = order[rank < per_cluster]
        best_keys, best_prio, best_cluster = all_keys[keep], all_prio[keep], all_cluster[keep]
    chosen: dict[int, list[str]] = {c: [] for c in range(k)}
    for key, c in zip(best_keys.tolist(), best_cluster.tolist()):
        chosen[c].append(key)
    return chosen, sizes


def _cluster_chunks(root: Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, clusters) of ``clusters.parquet``, one row group (= one shard) at a time."""
    pf = pq.ParquetFile(concepts_dir(root) / CLUSTERS)
    for i in range(pf.num_row_groups):
        rg = pf.read_row_group(i, columns=["key", "cluster"])
        yield rg["key"].to_pylist(), rg["cluster"].to_numpy()


def first_words(text: str, n: int = CAPTION_WORDS) -> str:
    words = (text or "").split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


def ellipsize(text: str, font, width: int) -> str:
    """``text`` shortened (by characters) to fit ``width`` pixels with a trailing ellipsis."""
    text = text.rstrip(" …")
    while text and font.getlength(text + " …") > width:
        text = text[:-1]
    return (text.rstrip() + " …").lstrip()


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels in at most ``max_lines`` lines; an ellipsis marks cut text."""
    words = text.split()
    lines: list[str] = []
    i = 0
    while i < len(words) and len(lines) < max_lines:
        line = words[i]
        i += 1
        while i < len(words) and font.getlength(f"{line} {words[i]}") <= width:
            line = f"{line} {words[i]}"
            i += 1
        lines.append(line)
    cut = i < len(words)
    return [ellipsize(line, font, width) if font.getlength(line) > width or (cut and j == len(lines) - 1) else line
            for j, line in enumerate(lines)]


def thumbnail(data: bytes, box: int = THUMB):
    """The image scaled to fit a ``box`` x ``box`` square (never enlarged), RGB on white."""
    from PIL import Image

    img = image_from_bytes(data)
    img.draft("RGB", (box, box))
    img = flatten_to_rgb(img)
    img.thumbnail((box, box), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def load_font(size: int):
    """DejaVu Sans when the system has it (wide Unicode coverage: Greek, arrows, math in captions),
    else Pillow's bundled font."""
    from PIL import ImageFont

    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render_sheet(cluster: int, size: int, items: Sequence[tuple[str, str, bytes]], columns: int = COLUMNS,
                 thumb: int = THUMB):
    """One contact sheet: ``items`` are (key, caption, image bytes)."""
    from PIL import Image, ImageDraw

    font, small, title_font = load_font(FONT_SIZE), load_font(FONT_SIZE - 2), load_font(FONT_SIZE + 6)
    line_h = FONT_SIZE + 3
    cell_w, cell_h = thumb + PAD, thumb + 6 + (line_h - 2) + CAPTION_LINES * line_h + PAD
    rows = max(1, -(-len(items) // columns))
    header = 2 * PAD + FONT_SIZE + 6
    width = PAD + columns * cell_w
    sheet = Image.new("RGB", (width, header + rows * cell_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    shown = f"showing {len(items)}" if len(items) < size else "all shown"
    draw.text((PAD, PAD), f"cluster {cluster}  ·  {size} samples  ·  {shown}", fill="black", font=title_font)
    for i, (key, caption, data) in enumerate(items):
        x = PAD + (i % columns) * cell_w
        y = header + (i // columns) * cell_h
        draw.rectangle((x - 1, y - 1, x + thumb, y + thumb), outline="#c8c8c8")
        img = thumbnail(data, thumb)
        sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        ty = y + thumb + 4
        draw.text((x, ty), wrap(key, small, thumb, 1)[0], fill="#7a7a7a", font=small)
        ty += line_h - 2
        for line in wrap(first_words(caption), font, thumb, CAPTION_LINES):
            draw.text((x, ty), line, fill="#202020", font=font)
            ty += line_h
    return sheet


def _index_html(k: int, sizes: np.ndarray, shown: dict[int, list[str]], vocab: Vocabulary, title: str) -> str:
    order = sorted(range(k), key=lambda c: (-int(sizes[c]), c))
    toc = " ".join(f'<a href="#c{c}">{c}</a>&nbsp;({int(sizes[c])})' for c in order)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        ("<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px}img{max-width:100%;border:1px solid #ddd}"
         "section{margin:2em 0}code{font-size:85%}.toc{line-height:1.8}</style></head><body>"),
        f"<h1>{html.escape(title)}</h1>",
        (f"<p>{k} clusters, {int(sizes.sum())} samples. Fill one copy of <a href=\"{BLANK_FILE}\">{BLANK_FILE}</a> "
         "per annotator (fields <code>panel_type</code>, <code>panel_subtype</code>, <code>global_class</code>, "
         "<code>local_class</code>; vocabulary at the end), then run "
         "<code>biomedica label DIR --annotations a.json b.json c.json</code>.</p>"),
        f'<p class="toc">Clusters by size: {toc}</p>',
    ]
    for c in range(k):
        keys = ", ".join(html.escape(x) for x in shown.get(c, []))
        body = (f'<img src="{sheet_name(c)}" alt="cluster {c}" loading="lazy">' if int(sizes[c])
                else "<p><em>empty cluster</em></p>")
        parts.append(f'<section id="c{c}"><h2>Cluster {c} <small>({int(sizes[c])} samples)</small></h2>{body}'
                     f"<details><summary>keys shown</summary><p><code>{keys}</code></p></details></section>")
    parts.append("<h2>Vocabulary</h2>")
    parts.append(f"<p>panel_type: {', '.join(map(html.escape, vocab.panel_types))}<br>"
                 f"panel_subtype: {', '.join(map(html.escape, vocab.panel_subtypes))}</p><dl>")
    for g, locals_ in vocab.taxonomy.items():
        parts.append(f"<dt><b>{html.escape(g)}</b></dt><dd>{', '.join(map(html.escape, locals_))}</dd>")
    parts.append("</dl></body></html>")
    return "\n".join(parts) + "\n"


def annotation_sheets(dataset_dir: str | Path, per_cluster: int = 16, out: str | Path | None = None, seed: int = 0,
                      columns: int = COLUMNS, thumb: int = THUMB, progress: bool = True) -> Path:
    """Render a contact sheet per cluster, ``index.html`` and ``annotations_blank.json``; returns the folder."""
    import pyarrow.dataset as pads   # here, not at import: it imports pandas (every command's start-up)
    from tqdm.auto import tqdm

    root = Path(dataset_dir)
    folder = Path(out) if out is not None else concepts_dir(root) / SHEETS_DIR
    model = load_cluster_model(root)
    k = model.k
    read_clusters(root, ["cluster"]).slice(0, 0)   # a clear error when clustering has not run
    shown, sizes = pick_samples(_cluster_chunks(root), k, per_cluster, seed)
    wanted = [x for c in range(k) for x in shown[c]]
    rows = pads.dataset(figures_index_path(root)).to_table(
        columns=["key", "shard", "image_offset", "image_size", "caption"],
        filter=pc.field("key").isin(pa.array(wanted, pa.string()))).to_pylist()
    by_key = {r["key"]: r for r in rows}
    missing = [x for x in wanted if x not in by_key]
    if missing:
        raise ValueError(f"{len(missing)} clustered keys are not in figures.parquet (e.g. {missing[0]}): "
                         "re-run `biomedica embed` and `biomedica cluster` after a rebuild")
    folder.mkdir(parents=True, exist_ok=True)
    for c in tqdm(range(k), desc="sheets", disable=not progress):
        if not sizes[c]:
            continue
        images = _read_images(root, [by_key[x] for x in shown[c]])    # one cluster's images in memory
        items = [(x, by_key[x]["caption"], images[x]) for x in shown[c]]
        buf = io.BytesIO()
        render_sheet(c, int(sizes[c]), items, columns, thumb).save(buf, format="PNG", optimize=False)
        atomic_write_bytes(folder / sheet_name(c), buf.getvalue())
    title = f"Cluster annotation sheets: {root.name}"
    atomic_write_bytes(folder / "index.html", _index_html(k, sizes, shown, load_vocabulary(), title).encode())
    atomic_write_json(folder / BLANK_FILE, blank_annotation(k))
    atomic_write_json(folder / "sheets.json", {"k": k, "per_cluster": per_cluster, "seed": seed,
                                               "sizes": sizes.tolist(), "shown": {str(c): shown[c] for c in range(k)}})
    return folder


def _read_images(root: Path, rows: list[dict]) -> dict[str, bytes]:
    """Image bytes of the given index rows, each shard opened once and read in offset order."""
    datas = read_many(root, [r["shard"] for r in rows], [r["image_offset"] for r in rows],
                      [r["image_size"] for r in rows])
    return {r["key"]: data for r, data in zip(rows, datas)}


__all__ = ["annotation_sheets", "first_words", "pick_samples", "render_sheet", "sheet_name", "wrap"]
