"""A transformers ``CLIPTokenizer`` folder built offline from open_clip's bundled BPE vocabulary.

``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently builds a 2-token tokenizer in
transformers 5.x; writing the files into a folder and calling ``from_pretrained(folder)`` works, and
gives the same ids as ``open_clip.get_tokenizer`` (49,408 tokens, <|startoftext|> 49406, <|endoftext|> 49407).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path


def _bytes_to_unicode() -> dict[int, str]:
    from open_clip.tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def write_clip_tokenizer(out_dir: str | os.PathLike, model_max_length: int = 77):
    """Write vocab.json, merges.txt and the tokenizer configs into ``out_dir``; returns the loaded tokenizer.

    The folder is built beside ``out_dir`` and renamed into place, so processes that share ``out_dir`` (the ranks
    of a run) never read a half-written file: the first rename wins and the others load what it placed.
    """
    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizer

    from biomedica_hf.io.atomic import current_umask

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())   # mkdtemp makes 0700: the placed folder gets a plain mkdir's mode
    try:
        with gzip.open(default_bpe()) as fh:
            merges = fh.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        base = list(_bytes_to_unicode().values())
        vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}
        (tmp / "special_tokens_map.json").write_text(json.dumps(special))
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
             **special}))
        tok = CLIPTokenizer.from_pretrained(str(tmp))
        if len(tok) != len(vocab):
            raise RuntimeError(f"CLIPTokenizer built {len(tok)} tokens, expected {len(vocab)}")
        tok.save_pretrained(str(tmp))
        _place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(str(out))


def _place(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``: one rename when ``out`` is absent or empty; when ``out`` already
    holds a tokenizer (another process placed it) that one is kept; into a folder with other files, file by file
    (each ``os.replace`` is atomic), ``vocab.json`` last since readers test for it."""
    try:
        os.rename(tmp, out)
        return
    except OSError:
        if (out / "vocab.json").is_file():
            return
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "vocab.json"):
        os.replace(f, out / f.name)
