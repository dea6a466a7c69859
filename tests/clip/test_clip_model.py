"""The CLIP model library on its own: the one SPEC grammar (both spellings), save / reload through an open_clip
folder, the shared image side (bytes and PIL in, transparency on white), the offline tokenizer, and the
training builder on the same class. Real images: the BCCD crops and a PMC figure of the shared fixtures."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.paths import FIXTURES

from biomedica_hf.clip.export import save_open_clip_folder
from biomedica_hf.clip.model import ClipModel, build_model, load_model, parse_model_spec
from biomedica_hf.clip.tiny import TINY_OPEN_CLIP_CFG, tiny_open_clip

BCCD = FIXTURES / "eval" / "bccd_cells"
TEXTS = ["a blood smear showing platelets.", "a white blood cell", "CT of the chest"]
TINY_NAME = "biomedica-tiny-test"      # registered with open_clip below, as a built-in config
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> list:
    from PIL import Image

    if not BCCD.is_dir():
        pytest.skip(f"eval fixtures not found at {BCCD}")
    return [Image.open(p) for p in sorted(BCCD.glob("*/*.png"))[:6]]


@pytest.fixture(scope="module")
def tiny_builtin(tmp_path_factory) -> tuple[str, Path, ClipModel]:
    """The tiny config registered as an open_clip built-in name, and a trained-looking (seeded) checkpoint file."""
    import open_clip

    root = tmp_path_factory.mktemp("tiny_builtin")
    (root / f"{TINY_NAME}.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(root / f"{TINY_NAME}.json")
    clip, model, _ = tiny_open_clip(seed=7)
    ckpt = root / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return TINY_NAME, ckpt, clip


def test_both_spec_forms_load_the_same_model(tiny_builtin, images):
    name, ckpt, reference = tiny_builtin
    plain, alias = parse_model_spec(f"{name}:{ckpt}"), parse_model_spec(f"clip:{name}@{ckpt}")
    assert plain == alias
    assert plain.kind == "open_clip"
    assert plain.pretrained == str(ckpt)
    a, b = load_model(f"{name}:{ckpt}", "cpu"), load_model(f"clip:{name}@{ckpt}", "cpu")
    assert not a.random_weights
    assert not b.random_weights
    assert a.name == b.name == f"{name}:{ckpt}"
    assert torch.equal(a.encode_images(images), b.encode_images(images))
    assert torch.equal(a.encode_texts(TEXTS), b.encode_texts(TEXTS))
    # the weights really are the checkpoint's: same vectors as the model that wrote it
    assert torch.allclose(a.encode_texts(TEXTS), reference.encode_texts(TEXTS), atol=1e-6)
    assert torch.allclose(a.encode_images(images), reference.encode_images(images), atol=1e-6)
    # no tag: random weights, seeded, so both spellings (and two loads) agree; a different seed differs
    r1, r2 = load_model(name, "cpu"), load_model(f"clip:{name}", "cpu")
    assert r1.random_weights
    assert torch.equal(r1.encode_texts(TEXTS), r2.encode_texts(TEXTS))
    assert not torch.allclose(r1.encode_texts(TEXTS), load_model(name, "cpu", seed=1).encode_texts(TEXTS))
    # search accepts the same grammar: the same model and vectors under both spellings
    from biomedica_hf.search.encoders import load_encoders

    x, y = load_encoders(f"{name}:{ckpt}"), load_encoders(f"clip:{name}@{ckpt}")
    assert x.joint
    assert y.joint
    assert x.text.fingerprint == y.text.fingerprint
    assert np.array_equal(x.text.encode_text(TEXTS), y.text.encode_text(TEXTS))


def test_unknown_specs_are_refused(tmp_path):
    for spec in ("no-such-model", "clip:no-such-model@tag"):
        with pytest.raises(ValueError, match="unknown model SPEC"):
            parse_model_spec(spec)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(ValueError, match="neither open_clip layout"):
        parse_model_spec(str(tmp_path))


def test_open_clip_folder_roundtrip_with_and_without_weights(images, tmp_path):
    clip, model, cfg = tiny_open_clip(seed=3)
    folder = save_open_clip_folder(model, cfg, tmp_path / "tiny_oc")
    assert {p.name for p in folder.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}
    assert parse_model_spec(str(folder)).name == f"local-dir:{folder.resolve()}"
    for spec in (f"local-dir:{folder}", str(folder), f"clip:local-dir:{folder}"):
        reloaded = load_model(spec, "cpu")
        assert not reloaded.random_weights
        assert reloaded.model_cfg == cfg
        assert torch.allclose(reloaded.encode_images(images), clip.encode_images(images), atol=1e-5)
        assert torch.allclose(reloaded.encode_texts(TEXTS), clip.encode_texts(TEXTS), atol=1e-5)
        assert reloaded.logit_scale == pytest.approx(clip.logit_scale)
    # a config without weights: random (seeded), flagged, and the same in every load
    (folder / "open_clip_model.safetensors").unlink()
    r1, r2 = load_model(str(folder), "cpu"), load_model(str(folder), "cpu")
    assert r1.random_weights
    assert torch.equal(r1.encode_texts(TEXTS), r2.encode_texts(TEXTS))
    assert not torch.allclose(r1.encode_texts(TEXTS), clip.encode_texts(TEXTS))


def test_images_as_bytes_or_pil_and_transparency_on_white(images):
    clip, _, _ = tiny_open_clip(seed=0)
    png = [_png(im) for im in images]
    assert torch.equal(clip.encode_images(png), clip.encode_images(images))
    emb = clip.encode_images(images)
    assert emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(images)))
    # transparent pixels are white, as the figures are drawn: same vector as the image pasted on white
    rgb = images[0].convert("RGB")
    rgba = rgb.convert("RGBA")
    w, h = rgba.size
    rgba.paste((0, 0, 0, 0), (0, 0, w // 2, h))          # left half fully transparent (black underneath)
    on_white = rgb.copy()
    on_white.paste((255, 255, 255), (0, 0, w // 2, h))
    assert torch.allclose(clip.encode_images([_png(rgba)]), clip.encode_images([on_white]), atol=1e-6)
    assert clip.dim == 32


def test_training_builder_is_the_same_class(images, tmp_path):
    """build_model (recipes) and load_model (eval, search) give one class: a recipe's model section may be a SPEC."""
    clip, model, cfg = tiny_open_clip(seed=5)
    folder = save_open_clip_folder(model, cfg, tmp_path / "oc")
    built = build_model({"spec": str(folder), "train_augment": False})
    assert isinstance(built, ClipModel)
    assert built.kind == "open_clip"
    assert built.model_cfg == cfg
    pixels = torch.stack([built.preprocess_train(im.convert("RGB")) for im in images])
    built.eval()
    with torch.no_grad():
        img, txt, scale = built(pixels, **built.tokenize(TEXTS))
    assert torch.allclose(torch.nn.functional.normalize(img, dim=-1), clip.encode_images(images), atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(txt, dim=-1), clip.encode_texts(TEXTS), atol=1e-5)
    assert float(scale) == pytest.approx(clip.logit_scale)


def test_a_model_without_lora_never_imports_peft(monkeypatch):
    """peft costs ~1 s to import, in every rank of every launch: a model that was never given LoRA answers
    ``is_lora`` (and ``base_core``, ``merge_lora``) without it."""
    import sys

    class NoPeft:
        def find_spec(self, name, path=None, target=None):
            if name == "peft" or name.startswith("peft."):
                raise AssertionError(f"{name} imported by a model without LoRA")

    for name in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoPeft(), *sys.meta_path])
    clip, model, _ = tiny_open_clip(seed=1)
    assert clip.is_lora is False
    assert clip.base_core() is model
    clip.merge_lora()
    assert clip.model is model


def test_image_backbones_take_clip_specs_and_dinov2_folders(images, tmp_path):
    """clip.backbones + clip.pixels (the concept embedder's and search's image side): a CLIP SPEC gives the CLIP image tower, a
    DINOv2 folder the AutoModel backbone; both give L2-normalised float32 rows for fitted images."""
    from support.models import save_tiny_dinov2

    from biomedica_hf.clip.backbones import embed_images, load_image_model
    from biomedica_hf.clip.pixels import prepare_image

    clip, model, cfg = tiny_open_clip(seed=2)
    folder = save_open_clip_folder(model, cfg, tmp_path / "oc")
    prepared = [prepare_image(_png(im), 48, "pad") for im in images]
    for spec in (str(folder), f"clip:local-dir:{folder}"):
        net, proc, name = load_image_model(spec)
        assert isinstance(net, ClipModel)
        assert proc is None
        assert name == spec
        vecs = embed_images(net, proc, prepared)
        assert vecs.dtype == np.float32
        assert np.allclose(vecs, clip.encode_images(prepared).numpy(), atol=1e-5)
    dino = save_tiny_dinov2(tmp_path / "dino", 56)
    net, proc, name = load_image_model(str(dino))
    assert not isinstance(net, ClipModel)
    assert proc is not None
    assert name == str(dino)
    vecs = embed_images(net, proc, [prepare_image(_png(im), 56, "pad") for im in images])
    assert vecs.shape == (len(images), net.config.hidden_size)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_transformers_tokenizer_ids_match_open_clip(tmp_path):
    import open_clip

    from biomedica_hf.clip.tokenizer import write_clip_tokenizer

    tok = write_clip_tokenizer(tmp_path / "tok")
    texts = ["A microscopy image of a red blood cell.", "CT: 12µm nodule, ß-cells!", "x-ray  of   pneumonia"]
    ref = open_clip.get_tokenizer("ViT-B-32")(texts)
    ids = tok(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    for r, i in zip(ref, ids):
        n = int((r != 0).sum())
        assert r[:n].tolist() == i[:n].tolist()
    assert len(tok) == 49408
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 49407



def test_ranks_sharing_a_tokenizer_folder_never_read_half_a_file(tmp_path):
    """Processes writing the same tokenizer_dir at once (the ranks of a run): every one gets a whole tokenizer,
    the folder ends complete and no temporary folder is left."""
    import multiprocessing

    out = tmp_path / "tok"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        sizes = pool.map(_tokenizer_size, [str(out)] * 3)
    assert sizes == [49408] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    assert json.loads((out / "vocab.json").read_text())["<|endoftext|>"] == 49407


def _tokenizer_size(out: str) -> int:
    from biomedica_hf.clip.tokenizer import write_clip_tokenizer

    return len(write_clip_tokenizer(out))

def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_folders_follow_the_umask(tmp_path, umask):
    """Exported model folders get the mode a plain mkdir gives (0755/0644 under umask 022): the transformers folder
    was 0700 (built with tempfile.mkdtemp), unreadable by the other users of a shared cluster."""
    import copy
    import os
    import stat

    from biomedica_hf.clip import export_model

    cfg = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    clip = build_model({"kind": "open_clip", "name": "tiny", "model_cfg": cfg, "train_augment": False}, seed=1)
    old = os.umask(umask)
    try:
        written = export_model(clip, tmp_path / "export")
    finally:
        os.umask(old)
    for fmt in ("open_clip", "transformers"):
        folder = Path(written[fmt])
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, (fmt, oct(folder.stat().st_mode))
        for f in folder.rglob("*"):
            want = (0o777 if f.is_dir() else 0o666) & ~umask
            assert stat.S_IMODE(f.stat().st_mode) == want, (f, oct(f.stat().st_mode))
