"""Split a compound figure into its panels, on the CPU, with no model weights.

The image is reduced (JPEG draft decoding / ``Image.reduce``) to at most ``raster.MAX_SIDE`` pixels on its long side
(thumbnails are enlarged to ``MIN_SIDE``), the background colour is estimated from the border, and every pixel
that differs from it by more than JPEG noise is ink. A two-level recursive XY-cut along gutters (near-background
bands; thin rules between gutters and 1-2 px frames count as gutter) gives blocks: wide gutters first, narrow ones
only inside a block where they give two panel-sized parts. Blocks that cannot be a panel on their own (text lines,
panel letters, axis titles, tick labels, legends, fragments) join the panel nearest to them; overlapping results
are merged. The split is kept when the panels form a grid or when panel labels are read at their corners;
otherwise the figure's labels are searched for everywhere and, where they run in sequence, lay the panels out;
with neither the figure is one panel (its content box). Boxes are mapped back to the original pixels (x1/y1
exclusive) and returned in reading order.

``xy_cut_baseline`` is the plain recursive XY-cut (white background, fixed gutter, no merging) that
``benchmarks/bench_panels.py`` compares against.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from biomedica_hf.panels.raster import Box, Panel, background, foreground, reduced_copy, to_rgb_array

WIDE_GAP = 0.016          # gutters at least this share of the long side cut blocks before narrower ones do


# ------------------------------------------------------------------------------------------------- XY-cut

def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    if flags.size == 0:
        return []
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _content_segments(empty: np.ndarray, min_gap: int) -> tuple[list[tuple[int, int]], int]:
    """Content segments split at empty runs of at least ``min_gap`` (shorter empty runs are inside content), and
    the widest such gap."""
    segs: list[tuple[int, int]] = []
    widest = 0
    content = _runs(~empty)
    for s, e in content:
        if segs and s - segs[-1][1] < min_gap:
            segs[-1] = (segs[-1][0], e)
        else:
            if segs:
                widest = max(widest, s - segs[-1][1])
            segs.append((s, e))
    return segs, widest


def _empty_lines(counts: np.ndarray, length: int, tol: int, rule_max: int) -> np.ndarray:
    """Lines (rows or columns) that count as gutter: almost no foreground, or a thin rule (almost full line, at
    most ``rule_max`` thick) with gutter or the region edge on both sides."""
    empty = counts <= tol
    if rule_max > 0:
        full = counts >= 0.8 * length
        n = len(counts)
        for s, e in _runs(full):
            if e - s > rule_max:
                continue
            before = s == 0 or empty[max(0, s - 3):s].any()
            after = e == n or empty[e:e + 3].any()
            if before and after:
                empty[s:e] = True
    return empty


def xy_cut(mask: np.ndarray, min_gap: int, *, rule_max: int = 0, tol_frac: float = 0.0,
           min_area: int = 1, frame_skip: bool = False) -> list[Box]:
    """Leaves of a recursive XY-cut of a boolean foreground mask, as tight boxes (x0, y0, x1, y1) in mask pixels,
    in cut order (top to bottom, left to right within each cut)."""
    out: list[Box] = []
    stack: list[Box] = [(0, 0, mask.shape[1], mask.shape[0])]
    while stack:
        x0, y0, x1, y1 = stack.pop()
        sub = mask[y0:y1, x0:x1]
        h, w = sub.shape
        # a 1-2 px frame drawn round the region would block every cut: profiles skip the outermost 2 px
        ex = 2 if w > 40 and frame_skip else 0
        ey = 2 if h > 40 and frame_skip else 0
        rows = sub[:, ex:w - ex].sum(axis=1)
        cols = sub[ey:h - ey, :].sum(axis=0)
        erows = _empty_lines(rows, w, int(tol_frac * w), rule_max)
        ecols = _empty_lines(cols, h, int(tol_frac * h), rule_max)
        ry = np.flatnonzero(~erows)
        rx = np.flatnonzero(~ecols)
        if ry.size == 0 or rx.size == 0:
            continue
        ty0, ty1, tx0, tx1 = ry[0], ry[-1] + 1, rx[0], rx[-1] + 1   # trim to content
        hsegs, hgap = _content_segments(erows[ty0:ty1], min_gap)
        vsegs, vgap = _content_segments(ecols[tx0:tx1], min_gap)
        if len(hsegs) > 1 and (len(vsegs) == 1 or hgap >= vgap):
            parts = [(x0 + tx0, y0 + ty0 + s, x0 + tx1, y0 + ty0 + e) for s, e in hsegs]
        elif len(vsegs) > 1:
            parts = [(x0 + tx0 + s, y0 + ty0, x0 + tx0 + e, y0 + ty1) for s, e in vsegs]
        else:
            box = (x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1)
            if (box[2] - box[0]) * (box[3] - box[1]) >= min_area:
                out.append(box)
            continue
        stack.extend(reversed(parts))
    return out


# ------------------------------------------------------------------------------------------------- helpers

def _area(b: Box) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _inter(a: Box, b: Box) -> int:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def _gap(a: Box, b: Box) -> float:
    dx = max(0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0, max(a[1], b[1]) - min(a[3], b[3]))
    return math.hypot(dx, dy)


def _to_original(b: Box, sx: float, sy: float, W: int, H: int) -> Box:
    x0 = min(W - 1, max(0, int(math.floor(b[0] * sx))))
    y0 = min(H - 1, max(0, int(math.floor(b[1] * sy))))
    x1 = max(x0 + 1, min(W, int(math.ceil(b[2] * sx))))
    y1 = max(y0 + 1, min(H, int(math.ceil(b[3] * sy))))
    return (x0, y0, x1, y1)


def reading_order(boxes: list[Box]) -> list[int]:
    """Indices of ``boxes`` in reading order: rows (a box joins the row whose vertical span holds its centre),
    left to right within a row, top to bottom for ties."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1], boxes[i][0]))
    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for i in order:
        b = boxes[i]
        cy = (b[1] + b[3]) / 2
        for r, (s, e) in enumerate(spans):
            if s <= cy < e:
                rows[r].append(i)
                break
        else:
            rows.append([i])
            spans.append((b[1], b[3]))
    out: list[int] = []
    for r in rows:
        out += sorted(r, key=lambda i: (boxes[i][0], boxes[i][1]))
    return out


# ------------------------------------------------------------------------------------------------- the splitter

MIN_SIDE = 400           # thumbnails are enlarged to this long side, so gutters and letters have pixels to work with


def _prepare(image: Image.Image) -> tuple[np.ndarray, float, float]:
    small = reduced_copy(image)
    if max(small.size) < MIN_SIDE and min(small.size) >= 8:
        k = MIN_SIDE / max(small.size)
        small = small.convert("RGB") if small.mode not in ("RGB", "L") else small
        small = small.resize((max(1, round(small.width * k)), max(1, round(small.height * k))), Image.BICUBIC)
    rgb = to_rgb_array(small)
    W, H = image.size
    return rgb, W / rgb.shape[1], H / rgb.shape[0]


def _is_panel(box: Box, mask: np.ndarray, content: Box) -> bool:
    """Whether a leaf block can be a panel on its own: big enough relative to the figure's content, not a thin
    strip, and holding a large connected structure (not only text-sized marks)."""
    cw, ch = content[2] - content[0], content[3] - content[1]
    w, h = box[2] - box[0], box[3] - box[1]
    if w * h < 0.02 * cw * ch:
        return False
    if w < 0.08 * cw or h < 0.08 * ch:
        return False
    text_h = max(6, 0.035 * max(mask.shape))   # taller than a line of text
    if h < 1.6 * text_h or w < 1.6 * text_h:
        return False
    sub = mask[box[1]:box[3], box[0]:box[2]]
    fill = sub.mean()
    if fill > 0.35:                            # photos, heatmaps, gels on a background
        return True
    if w * h >= 0.05 * cw * ch and w >= 0.15 * cw and h >= 0.15 * ch and h >= 4 * text_h:
        return True                            # a big block is a panel whatever its drawing (sparse schemes too)
    return _largest_structure(sub) >= 2.2 * text_h


def _largest_structure(sub: np.ndarray) -> float:
    """The larger side of the biggest connected component's bounding box (8-connectivity)."""
    from scipy import ndimage
    lab, n = ndimage.label(sub, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return 0.0
    best = 0.0
    for sl in ndimage.find_objects(lab):
        if sl is not None:
            best = max(best, sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    return best


def _merge_overlapping(boxes: list[Box], frac: float = 0.15) -> list[Box]:
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                inter = _inter(boxes[i], boxes[j])
                if inter and inter >= frac * min(_area(boxes[i]), _area(boxes[j])):
                    boxes[i] = _union(boxes[i], boxes[j])
                    del boxes[j]
                    changed = True
                    break
            if changed:
                break
    return boxes


def _assign(panels: list[Box], rest: list[Box], w: int, h: int) -> list[Box]:
    """Fragments (letters, axis titles, tick labels, legends) join a panel: a letter just above-left of a panel's
    top-left corner joins that panel however close the panel above it is; anything else joins the nearest
    panel, preferring one it lines up with. Overlapping results are merged."""
    panels = list(panels)
    fw, fh = 0.06 * w, 0.06 * h
    for f in rest:
        if f[2] - f[0] <= fw and f[3] - f[1] <= fh:
            owners = [i for i, p in enumerate(panels)
                      if p[1] - 0.08 * h <= f[1] and f[3] <= p[1] + 0.03 * h and abs(f[0] - p[0]) <= 0.05 * w]
            if owners:
                k = min(owners, key=lambda i: abs(f[0] - panels[i][0]) + abs(f[3] - panels[i][1]))
                panels[k] = _union(panels[k], f)
                continue

        def cost(p: Box, f: Box = f) -> float:
            overlap_x = min(p[2], f[2]) - max(p[0], f[0])
            overlap_y = min(p[3], f[3]) - max(p[1], f[1])
            aligned = overlap_x > 0 or overlap_y > 0
            return _gap(p, f) * (1.0 if aligned else 1.5)
        k = min(range(len(panels)), key=lambda i: cost(panels[i]))
        panels[k] = _union(panels[k], f)
    return _merge_overlapping(panels)


def _panels_small(mask: np.ndarray) -> tuple[list[Box], float]:
    """Panel boxes in working-copy pixels, and a confidence.

    Two levels: wide gutters (>= 2% of the long side) cut the figure into blocks first; inside each block the
    narrow gutters are used only when they give at least two panel-sized parts there. So a sparse drawing
    (a scheme, a tree) that narrow gutters would shred stays one block, and its fragments cannot leak into
    the neighbouring panels."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        return [(0, 0, w, h)], 0.5
    content = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
    long_side = max(h, w)
    min_gap = max(2, round(0.006 * long_side))
    wide_gap = max(min_gap + 1, round(WIDE_GAP * long_side))
    rule_max = max(1, round(0.004 * long_side))
    blocks = xy_cut(mask, wide_gap, rule_max=rule_max, tol_frac=0.002, frame_skip=True)
    panels: list[Box] = []
    rest: list[Box] = []
    for b in blocks:
        inner = [(b[0] + x0, b[1] + y0, b[0] + x1, b[1] + y1) for x0, y0, x1, y1 in
                 xy_cut(mask[b[1]:b[3], b[0]:b[2]], min_gap, rule_max=rule_max, tol_frac=0.002, frame_skip=True)]
        inner_panels = [q for q in inner if _is_panel(q, mask, content)]
        if len(inner_panels) >= 2:
            panels += _assign(inner_panels, [q for q in inner if q not in inner_panels], w, h)
        elif _is_panel(b, mask, content):
            panels.append(b)
        else:
            rest.append(b)
    if len(panels) <= 1:
        return [content], 0.9
    panels = _assign(panels, rest, w, h)
    if len(panels) <= 1:
        return [content], 0.85
    return panels, 0.85


def _backgrounds(rgb: np.ndarray) -> list[np.ndarray]:
    """Background colours to try, the border's first: a grid of photos that fill the figure to its edges has a
    border of photo pixels, and its gutters are white (or black)."""
    first = background(rgb)
    out = [first]
    if first.min() < 200:
        out.append(np.array([255, 255, 255], dtype=np.int32))
    if first.max() > 60:
        out.append(np.array([0, 0, 0], dtype=np.int32))
    return out


def is_regular(boxes: list[Box], tol: float = 0.03) -> bool:
    """Whether the panels form a grid-like layout: nearly every panel lines up with another one -- same top or
    bottom edge while overlapping it vertically, or same left or right edge while overlapping it horizontally,
    within ``tol`` of the layout's size. Charts and photos in rows and columns are regular; the blocks of a
    scheme or a pathway that happen to be separated by white space are not."""
    if len(boxes) < 2:
        return False
    W = max(b[2] for b in boxes) - min(b[0] for b in boxes)
    H = max(b[3] for b in boxes) - min(b[1] for b in boxes)
    tx, ty = max(3, tol * W), max(3, tol * H)

    def lined_up(a: Box, b: Box) -> bool:
        vov = min(a[3], b[3]) - max(a[1], b[1])
        hov = min(a[2], b[2]) - max(a[0], b[0])
        row = vov >= 0.5 * min(a[3] - a[1], b[3] - b[1]) and (
            abs(a[1] - b[1]) <= ty or abs(a[3] - b[3]) <= ty or abs(a[1] + a[3] - b[1] - b[3]) <= 2 * ty)
        col = hov >= 0.5 * min(a[2] - a[0], b[2] - b[0]) and (
            abs(a[0] - b[0]) <= tx or abs(a[2] - b[2]) <= tx or abs(a[0] + a[2] - b[0] - b[2]) <= 2 * tx)
        return row or col

    areas = [_area(b) for b in boxes]
    if max(areas) > 2.5 * max(1, min(areas)):           # a grid's panels are of a size
        return False
    aligned = sum(_area(a) for i, a in enumerate(boxes) if any(lined_up(a, b) for j, b in enumerate(boxes) if i != j))
    return aligned >= 0.8 * sum(areas)


def labels_evidence(labels: list[str | None]) -> bool:
    """Whether the labels read at the panels' corners look like a figure's panel labels: at least two, distinct,
    of one family, starting near its beginning (a, b, c / A, B, C / 1, 2, 3 / i, ii, iii / 1A, 1B)."""
    read = [lab for lab in labels if lab]
    if len(read) < 2 or len(set(read)) < len(read):
        return False
    roman = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii")
    if all(lab in roman for lab in read) and any(lab in ("i", "ii") for lab in read):
        return True
    if all(lab.isdigit() for lab in read):
        nums = sorted(int(lab) for lab in read)
        return nums[0] >= 1 and nums[0] <= 2 and nums[-1] - nums[0] <= len(labels) + 1
    if all(len(lab) > 1 and lab[:-1].isdigit() and lab[-1].isalpha() for lab in read):
        return True
    if all(len(lab) == 1 and lab.isalpha() for lab in read):
        if not (all(lab.isupper() for lab in read) or all(lab.islower() for lab in read)):
            return False
        first = min(ord(lab.lower()) - ord("a") for lab in read)
        span = max(ord(lab.lower()) - ord("a") for lab in read) - first
        return first <= 2 and span <= len(labels) + 2
    return False


def _complete(labels: list[str | None]) -> bool:
    """Whether every panel's label was read and they run in sequence (A, B, C... in reading order)."""
    if not labels or any(lab is None for lab in labels):
        return False
    if not labels_evidence(labels):
        return False
    return len(set(labels)) == len(labels)


def first_label(label: str | None) -> bool:
    return label in ("A", "a", "1", "i", "1A", "1a")


def label_layout(anchors: list[Box], mask: np.ndarray) -> list[Box]:
    """Panel boxes from the positions of their printed labels (mask pixels): each label opens its panel at its
    top-left; the panel reaches right to the next label of its row (or the content's edge) and down to the
    first label below whose panel shares its columns (or the content's edge); each box is then tightened to
    the foreground inside it."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return []
    right, bottom, top = int(xs[-1]) + 1, int(ys[-1]) + 1, int(ys[0])
    x1s = []
    for a in anchors:
        h = a[3] - a[1]
        # labels to the right that start about level with this one (a panel to the right may start a little
        # higher, as a panel below a tall neighbour does) close this panel on the right
        row_next = [b[0] for b in anchors
                    if b is not a and b[0] > a[0] + h and abs(b[1] - a[1]) <= max(2.5 * h, 0.1 * (bottom - top))]
        x1s.append(min(row_next, default=right))
    boxes = []
    for i, a in enumerate(anchors):
        h = a[3] - a[1]
        x0, x1 = a[0], x1s[i]
        below = [b[1] for j, b in enumerate(anchors)
                 if j != i and b[1] > a[1] + 2.5 * h and b[0] < x1 - h and x1s[j] > x0 + h]
        y1 = min(below, default=bottom)
        y0 = a[1]
        sub = mask[y0:y1, x0:x1]
        r, c = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        if r.size and c.size:
            boxes.append((x0 + int(c[0]), y0 + int(r[0]), x0 + int(c[-1]) + 1, y0 + int(r[-1]) + 1))
    return boxes


def caption_labels(caption: str | None) -> list[str]:
    """The panel labels a caption's markers name, in caption order ([] without markers or with one only;
    position words do not count)."""
    if not caption:
        return []
    from biomedica_hf.panels.captions import split_caption
    sub = split_caption(caption)
    if sub.family in (None, "position") or len(sub.parts) < 2:
        return []
    return list(sub.parts)


def _by_labels(image: Image.Image, rgb: np.ndarray, sx: float, sy: float,
               expect: list[str] | None = None) -> list[Panel] | None:
    """The figure split at its printed labels (at least two of one sequence), or None. ``expect``: the labels
    the caption names (reads are matched to them, see ``labels.find_labels``)."""
    from biomedica_hf.panels.labels import find_labels, label_sequence
    bg = background(rgb)
    seq = label_sequence(find_labels(rgb, bg, expect=expect))
    if len(seq) < 2:
        return None
    W, H = image.size
    mask = foreground(rgb, bg)
    boxes = label_layout([b for b, _, _ in seq], mask)
    if len(boxes) != len(seq):
        return None
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    cw, ch = int(xs[-1]) + 1 - int(xs[0]), int(ys[-1]) + 1 - int(ys[0])
    # a label opens a panel: tick labels, list numbers or stray letters give slivers, not panels
    if any(_area(b) < 0.015 * cw * ch or b[2] - b[0] < 0.1 * cw or b[3] - b[1] < 0.1 * ch for b in boxes):
        return None
    panels = [Panel(_to_original(b, sx, sy, W, H), 0.7, t, c) for b, (_, t, c) in zip(boxes, seq)]
    order = reading_order([p.bbox for p in panels])
    return [panels[i] for i in order]


def caption_panel_count(caption: str | None) -> int:
    """How many panels the caption names with its markers ((A), a), 1A, i ...; position words do not count):
    0 when it has none or only one (``captions.split_caption``)."""
    return len(caption_labels(caption))


def _rows_or_columns(boxes: list[Box]) -> tuple[list[list[int]], list[list[int]]]:
    """The panels grouped into rows (overlapping vertical spans) and into columns (overlapping horizontal spans)."""
    def groups(lo: int, hi: int) -> list[list[int]]:
        order = sorted(range(len(boxes)), key=lambda i: boxes[i][lo])
        out: list[list[int]] = []
        end = -1
        for i in order:
            b = boxes[i]
            if out and b[lo] < end - 0.3 * (b[hi] - b[lo]):
                out[-1].append(i)
                end = max(end, b[hi])
            else:
                out.append([i])
                end = b[hi]
        return out
    return groups(1, 3), groups(0, 2)


def caption_layout(boxes: list[Box], n: int) -> list[Box] | None:
    """Boxes of a clean gutter split that agree with a caption naming ``n`` panels: the boxes themselves when
    there are ``n``; their rows (or columns) merged when the grid has ``n`` rows (or columns) -- a labelled panel
    may hold a row of plots; otherwise None."""
    if n < 2 or len(boxes) < 2:
        return None
    if len(boxes) == n:
        return boxes
    rows, cols = _rows_or_columns(boxes)
    for groups in (rows, cols):
        if len(groups) == n and all(len(g) >= 1 for g in groups) and len(boxes) % n == 0 and \
                len({len(g) for g in groups}) == 1:
            merged = []
            for g in groups:
                b = boxes[g[0]]
                for i in g[1:]:
                    b = _union(b, boxes[i])
                merged.append(b)
            if not _merge_overlapping(merged, 0.05) == merged:
                continue
            return merged
    return None


def _panel_sized(boxes: list[Box], W: int, H: int) -> list[Box]:
    """The boxes that can be panels of a W x H figure (at least 4% of its area and 12% of each side); [] when any
    box left over is more than a fragment (so the panels would not cover the figure)."""
    keep = [b for b in boxes if _area(b) >= 0.04 * W * H and b[2] - b[0] >= 0.12 * W and b[3] - b[1] >= 0.12 * H]
    rest = [b for b in boxes if b not in keep]
    if sum(_area(b) for b in rest) > 0.05 * W * H:
        return []
    return [keep[i] for i in reading_order(keep)]


def split_image(image: Image.Image, *, labels: bool = True, caption: str | None = None) -> list[Panel]:
    """The panels of ``image`` in reading order; a single-panel figure gives exactly one panel (its content box).
    Boxes are in the original pixels. With ``labels``, each panel's printed label is read (``labels.label_panels``).

    A split is kept when its panels form a regular layout (most of the area in panels of one size) or when panel
    labels are read at their corners; otherwise the figure is one panel (schemes, pathways and diagrams whose
    parts are separated by white space are not cut up). Any image PIL opens gives a result (tiny, blank, CMYK,
    16-bit, palette, alpha).

    ``caption`` (optional) is evidence too: when it names at least two panels with its markers ("(A)", "a,",
    "(1A)" ...), a clean gutter split that nothing else confirms is kept when its panel count agrees with the
    caption's (as many boxes, or a grid with as many rows or columns, merged into them). A caption without
    markers changes nothing."""
    from biomedica_hf.panels.labels import label_panels
    W, H = image.size
    if W < 8 or H < 8:
        return [Panel((0, 0, W, H), 0.5)]
    rgb, sx, sy = _prepare(image)
    small, score, content = [], 0.95, None
    for bg in _backgrounds(rgb):
        mask = foreground(rgb, bg)
        small, score = _panels_small(mask)
        if content is None:
            content = small[0] if len(small) == 1 else None
        if len(small) > 1:
            break
    if len(small) > 1:
        boxes = [_to_original(b, sx, sy, W, H) for b in small]
        boxes = [boxes[i] for i in reading_order(boxes)]
        regular = is_regular(boxes)
        if regular and len(small) == 2:
            # two unlabelled parts side by side are a figure and its key as often as two panels: only two
            # photos, plots or drawings that fill their boxes count as a grid
            regular = all(mask[b[1]:b[3], b[0]:b[2]].mean() > 0.2 for b in small)
        panels = label_panels(image, boxes, [score] * len(boxes)) if (labels or not regular) else None
        read = [p.label for p in panels] if panels else []
        two_with_a = len(read) == 2 and first_label(read[0]) and read[1] is None
        if regular or labels_evidence(read) or two_with_a:
            if panels is not None and not _complete(read):
                # letters missing or out of sequence at the corners: panels may share a box; the labels found
                # anywhere can tell (a longer sequence than the boxes wins)
                by_labels = _by_labels(image, rgb, sx, sy)
                expect = caption_labels(caption)
                if len(expect) > len(boxes) and (by_labels is None or len(by_labels) <= len(boxes)):
                    # the caption names more panels than the gutters give: look for its labels
                    by_labels = _by_labels(image, rgb, sx, sy, expect)
                if by_labels is not None and len(by_labels) > len(boxes):
                    return by_labels if labels else [Panel(p.bbox, p.score) for p in by_labels]
            return panels if labels else [Panel(b, score) for b in boxes]
    # no gutters between the panels, or a split nothing confirms: the printed labels, where there are some
    by_labels = _by_labels(image, rgb, sx, sy)
    expect = caption_labels(caption)
    if by_labels is None and expect:
        # the caption names the labels: look for them (more tokens, reads matched to the caption's labels)
        by_labels = _by_labels(image, rgb, sx, sy, expect)
    if by_labels is not None:
        return by_labels if labels else [Panel(p.bbox, p.score) for p in by_labels]
    # the caption names as many panels as the gutters give (or as many rows / columns of them): the splitter's
    # gutter split first, then the plain XY-cut's leaves that are panel-sized
    n = len(expect)
    if n:
        layout = caption_layout(boxes, n) if len(small) > 1 else None
        if layout is None:
            leaves = _panel_sized(xy_cut_baseline(image), W, H)
            layout = caption_layout(leaves, n) if is_regular(leaves, 0.05) else None
        if layout is not None:
            if layout is boxes and panels is not None:
                return panels if labels else [Panel(p.bbox, p.score) for p in panels]
            layout = [layout[i] for i in reading_order(layout)]
            if labels:
                return label_panels(image, layout, [0.6] * len(layout))
            return [Panel(b, 0.6) for b in layout]
    if content is None or len(small) > 1:
        mask = foreground(rgb, background(rgb))
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        content = ((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1) if ys.size
                   else (0, 0, rgb.shape[1], rgb.shape[0]))
        score = 0.6
    return [Panel(_to_original(content, sx, sy, W, H), score)]


def xy_cut_baseline(image: Image.Image) -> list[Box]:
    """The plain recursive XY-cut: white background, gutters of at least 1% of the long side, leaves smaller than
    1% of the image dropped, no merging. Original pixels, cut order."""
    W, H = image.size
    if W < 8 or H < 8:
        return [(0, 0, W, H)]
    rgb, sx, sy = _prepare(image)
    mask = foreground(rgb, np.array([255, 255, 255], dtype=np.int32))
    h, w = mask.shape
    leaves = xy_cut(mask, max(2, round(0.01 * max(h, w))), min_area=int(0.01 * h * w))
    if not leaves:
        return [(0, 0, W, H)]
    return [_to_original(b, sx, sy, W, H) for b in leaves]
