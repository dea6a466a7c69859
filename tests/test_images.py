"""Issue 23: one image policy (biomedica_hf.images) for every stage: a transparent PNG (and a 16-bit, a palette
with transparency, a CMYK and an EXIF-rotated image) gives the same RGB pixels wherever it is seen."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from biomedica_hf.images import to_rgb


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _i16(a: np.ndarray) -> Image.Image:
    return Image.frombytes("I;16", (a.shape[1], a.shape[0]), a.astype("<u2").tobytes())


def _transparent_png() -> bytes:
    """Black line art on a transparent background, one half-transparent red pixel."""
    a = np.zeros((24, 32, 4), np.uint8)
    a[8:10, :, 3] = 255                  # an opaque black line
    a[0, 0] = (255, 0, 0, 128)           # half-transparent red
    return _png(Image.fromarray(a, "RGBA"))


def _stages(data: bytes) -> dict[str, np.ndarray]:
    """The RGB pixels each stage derives from the same encoded image."""
    import datasets

    from biomedica_hf.clip.data import flatten_to_rgb as clip_train
    from biomedica_hf.clip.pixels import open_rgb
    from biomedica_hf.concepts.sheets import flatten_to_rgb as concept_sheets
    from biomedica_hf.eval.evalset import decode_image as eval_decode
    from biomedica_hf.search.thumbs import _flatten as search_thumbs
    from biomedica_hf.vlm.data import decode_image as vlm_decode

    decoded = datasets.Image().decode_example({"bytes": data, "path": None})   # what load_biomedica(decode=True) gives
    out = {
        "policy": to_rgb(data),
        "clip_train": clip_train(decoded),
        "clip_encode": open_rgb(data),
        "vlm_train": vlm_decode({"bytes": data, "path": "shard.tar/k.png"}),
        "vlm_decoded": vlm_decode(decoded),
        "concepts": concept_sheets(decoded),
        "eval": open_rgb(eval_decode(data)),            # eval decodes, its encoders' encode_images apply open_rgb
        "search_thumbs": search_thumbs(Image.open(io.BytesIO(data))).convert("RGB"),
    }
    for name, img in out.items():
        assert img.mode == "RGB", name
    return {k: np.asarray(v) for k, v in out.items()}


def test_a_transparent_png_is_the_same_rgb_in_every_stage():
    stages = _stages(_transparent_png())
    ref = stages["policy"]
    assert (ref[20, 20] == 255).all()                      # transparent -> white, not black
    assert (ref[8, 5] == 0).all()                          # the opaque line stays black
    assert tuple(ref[0, 0]) == (255, 127, 127)             # half-transparent red over white
    for name, pixels in stages.items():
        assert np.array_equal(pixels, ref), name


@pytest.mark.parametrize("kind", ["palette", "la", "16bit", "cmyk", "rotated"])
def test_other_modes_agree_across_stages(kind):
    if kind == "palette":
        img = Image.new("P", (16, 16), 0)
        img.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
        img.paste(1, (0, 0, 8, 16))
        data = _png(img, transparency=0)                   # palette index 0 transparent
    elif kind == "la":
        data = _png(Image.merge("LA", [Image.new("L", (16, 16), 40), Image.linear_gradient("L").resize((16, 16))]))
    elif kind == "16bit":
        data = _png(_i16(np.arange(256).reshape(16, 16) * 16 + 1000))
    elif kind == "cmyk":
        buf = io.BytesIO()
        Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
        data = buf.getvalue()
    else:
        img = Image.new("RGB", (20, 10), (255, 255, 255))
        img.paste((0, 0, 255), (0, 0, 5, 10))
        exif = Image.Exif()
        exif[0x0112] = 6                                   # rotate 90 degrees clockwise to display
        buf = io.BytesIO()
        img.save(buf, "PNG", exif=exif.tobytes())
        data = buf.getvalue()
    stages = _stages(data)
    ref = stages["policy"]
    for name, pixels in stages.items():
        assert np.array_equal(pixels, ref), name
    if kind == "palette":
        assert (ref[:, 8:] == 255).all()
        assert tuple(ref[0, 3]) == (0, 128, 255)    # index 0 transparent: white
    if kind == "16bit":      # min..max stretch, not clipped to white
        assert ref[..., 0].min() == 0
        assert ref[..., 0].max() == 255
    if kind == "rotated":
        assert ref.shape[:2] == (20, 10)
        assert (ref[:5, :, 2] == 255).all()
        assert (ref[:5, :, 0] == 0).all()


def test_the_policy_agrees_with_what_the_build_writes():
    """The build converts a 16-bit PNG to 8-bit L and keeps alpha: decoding its output by the policy gives what
    the policy gives on the original."""
    from biomedica_hf.ingest.media import process_image

    for data in (_png(_i16(np.arange(1024).reshape(32, 32) * 37 + 500)),
                 _transparent_png()):
        built = process_image(data, "fig.png")
        assert np.array_equal(np.asarray(to_rgb(built.data)), np.asarray(to_rgb(data)))


def test_one_high_bit_depth_rule_for_the_build_the_stages_and_the_hash():
    """A 16-bit figure (a wide range, and a constant one) becomes the same 8-bit gray in the build's conversion,
    in every stage's RGB, in the panel splitter and in the perceptual hash's input: one rule (min..max stretched,
    rounded)."""
    from biomedica_hf.images import hash_gray, stretch_to_l, to_output_mode
    from biomedica_hf.neardup.hashing import bytes_phash, image_phash
    from biomedica_hf.panels.split import to_rgb_array

    ramp = np.arange(64 * 48).reshape(48, 64) * 13 + 700
    for a in (ramp, np.full((40, 30), 1234)):
        img = _i16(a)
        gray = np.asarray(stretch_to_l(img))
        lo, hi = (a.min(), a.max()) if a.max() > a.min() else (0, 65535)
        assert np.array_equal(gray, np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8))
        assert np.array_equal(np.asarray(to_output_mode(img)), gray)
        assert np.array_equal(np.asarray(to_rgb(_png(img)))[:, :, 0], gray)
        assert np.array_equal(np.asarray(hash_gray(img, 256)), gray)
        assert np.array_equal(to_rgb_array(img), np.repeat(gray[:, :, None], 3, axis=2))
        assert image_phash(img) == image_phash(Image.fromarray(gray, "L")) == bytes_phash(_png(img))
