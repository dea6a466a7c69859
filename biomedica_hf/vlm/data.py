"""Instruction examples for SmolVLM fine-tuning built from BIOMEDICA samples, and their encoding.

Tasks (each sample yields the tasks it supports; one is chosen per sample and epoch, seeded):

* ``caption``   - "Describe this figure." -> the figure caption;
* ``reference`` - "Quote the sentence of the article that cites this figure." -> an in-text citing sentence
  (``metadata.references``);
* ``concepts``  - "Which concepts does this figure show?" -> the sample's concept labels, when the dataset
  has ``concepts`` / ``local_concepts`` columns.

Encoding uses the processor's chat template: the prompt (user turn with the image + ``Assistant:``) is
processed with the image, the answer (`` answer<end_of_utterance>``) is tokenized on its own and appended,
so the prompt/answer boundary is exact. Labels are ``-100`` on the prompt, on every image-related token and
on padding; only answer tokens are learnt.

Token budget: the image alone costs ``tiles * image_seq_len`` tokens (+ separators); a sequence is never
cut inside them. When prompt + answer exceeds ``max_length`` the *answer* is shortened; when the prompt
(image tokens included) leaves fewer than ``min_answer_tokens`` the sample is skipped, with its reason.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from biomedica_hf.filters import Selection

log = logging.getLogger(__name__)

PROMPTS = {
    "caption": "Describe this figure.",
    "reference": "Quote the sentence of the article that cites this figure.",
    "concepts": "Which concepts does this figure show?",
}
DEFAULT_TASKS = {"caption": 1.0, "reference": 0.5, "concepts": 0.5}
IGNORE_INDEX = -100


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v.strip() else []
    return [str(x) for x in v if x is not None and str(x).strip()]


def task_candidates(row: dict) -> dict[str, str]:
    """The answers a sample supports, by task."""
    meta = row.get("metadata") or {}
    out = {}
    caption = (row.get("caption") or "").strip()
    if caption:
        out["caption"] = caption
    refs = _as_list(meta.get("references"))
    if refs:
        out["reference"] = refs[0].strip()
    concepts = _as_list(meta.get("concepts")) + [c for c in _as_list(meta.get("local_concepts"))
                                                if c not in _as_list(meta.get("concepts"))]
    if concepts:
        out["concepts"] = ", ".join(concepts)
    return out


def choose_task(row: dict, tasks: dict[str, float], seed: int = 0, epoch: int = 0) -> tuple[str, str] | None:
    """(task, answer) for ``row``: a weighted choice among the tasks it supports, seeded by key and epoch."""
    cands = {t: a for t, a in task_candidates(row).items() if tasks.get(t, 0) > 0}
    if not cands:
        return None
    h = int.from_bytes(hashlib.sha1(f"{seed}:{epoch}:{row.get('key')}".encode()).digest()[:8], "big")
    names = sorted(cands)
    task = random.Random(h).choices(names, weights=[tasks[n] for n in names])[0]
    return task, cands[task]


def messages(prompt: str, answer: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def image_token_ids(processor) -> set[int]:
    """Ids of every image-related token (``<image>``, ``<fake_token_around_image>``, ``<global-img>``, rows/cols)."""
    tok = processor.tokenizer
    names = ["<image>", "<fake_token_around_image>", "<global-img>"] + [
        f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    ids = {tok.convert_tokens_to_ids(n) for n in names}
    return {i for i in ids if i is not None and i != tok.unk_token_id}


def set_longest_edge(processor, longest_edge: int | None) -> None:
    """Cap the resized image's longest edge (the image-token budget: tiles = ceil(edge / tile)^2 + 1)."""
    if longest_edge:
        processor.image_processor.size = {"longest_edge": int(longest_edge)}


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: Any
    pixel_attention_mask: Any
    prompt_len: int
    image_tokens: int
    task: str = ""
    key: str = ""
    truncated_from: int | None = None


@dataclass
class SkipLog:
    """Why samples were skipped or shortened (counts + a few examples), for the log and the model card."""
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, key: str, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append(f"{key}: {reason} {detail}".strip())
        log.info("sample %s: %s %s", key, reason, detail)


def encode(processor, image, prompt: str, answer: str, max_length: int, min_answer_tokens: int = 8,
           key: str = "", task: str = "", skips: SkipLog | None = None) -> Encoded | None:
    """Encode one example; ``None`` (with a logged reason) when its image tokens leave no room for an answer."""
    tok = processor.tokenizer
    prompt_text = processor.apply_chat_template(messages(prompt), add_generation_prompt=True, tokenize=False)
    p = processor(text=[prompt_text], images=[[image]], return_tensors="pt")
    prompt_ids = p["input_ids"][0].tolist()
    img_ids = image_token_ids(processor)
    n_img = sum(1 for t in prompt_ids if t in img_ids)
    eou = getattr(processor, "end_of_utterance_token", "<end_of_utterance>")
    answer_ids = tok(" " + answer + eou + "\n", add_special_tokens=False)["input_ids"]
    room = max_length - len(prompt_ids)
    if room < min(min_answer_tokens, len(answer_ids)):
        if skips is not None:
            skips.add("image_tokens_over_budget", key, f"prompt {len(prompt_ids)} tokens ({n_img} image tokens) "
                      f"+ {min_answer_tokens} answer tokens > max_length {max_length}; lower longest_edge")
        return None
    truncated_from = None
    if len(answer_ids) > room:
        truncated_from = len(answer_ids)
        answer_ids = answer_ids[:room]
        if skips is not None:
            skips.add("answer_shortened", key, f"{truncated_from} -> {room} tokens")
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + [t if t not in img_ids else IGNORE_INDEX for t in answer_ids]
    return Encoded(ids, labels, p["pixel_values"][0], p.get("pixel_attention_mask", [None])[0], len(prompt_ids), n_img,
                   task, key, truncated_from)


def collate(batch: Sequence[Encoded], pad_id: int):
    """Right-pad ids (pad id), labels (-100), attention (0); pad images with all-zero tiles (dropped by the model)."""
    import torch

    n = max(len(e.input_ids) for e in batch)
    t = max(e.pixel_values.shape[0] for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(batch), n), dtype=torch.long)
    c, h, w = batch[0].pixel_values.shape[1:]
    pv = torch.zeros((len(batch), t, c, h, w), dtype=batch[0].pixel_values.dtype)
    pam = torch.zeros((len(batch), t, h, w), dtype=torch.bool)
    for i, e in enumerate(batch):
        L = len(e.input_ids)
        ids[i, :L] = torch.tensor(e.input_ids)
        labels[i, :L] = torch.tensor(e.labels)
        attn[i, :L] = 1
        k = e.pixel_values.shape[0]
        pv[i, :k] = e.pixel_values
        if e.pixel_attention_mask is not None:
            pam[i, :k] = e.pixel_attention_mask.bool()
        else:
            pam[i, :k] = True
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "pixel_values": pv,
            "pixel_attention_mask": pam}


def decode_image(image: Any):
    """PIL RGB image from a ``datasets`` image dict ({bytes, path}), bytes or a PIL image, by the one image policy
    (:func:`biomedica_hf.images.to_rgb`: transparency onto white, as CLIP, concepts and eval see it)."""
    from biomedica_hf.images import to_rgb

    return to_rgb(image)


READ_LOG_LIMIT = 10_000   # keys of the rows read that ``position["read_keys"]`` keeps (the first ones)


def example_stream(path: str, processor, *, selection: Selection | None = None, tasks: dict[str, float] | None = None,
                   max_length: int = 2048, min_answer_tokens: int = 8, rank: int = 0, world_size: int = 1,
                   seed: int = 0, skip_samples: int = 0, skips: SkipLog | None = None, cycle: bool = True,
                   position: dict | None = None) -> Iterator[Encoded]:
    """Endless (``cycle``) stream of encoded examples for one rank, of the samples ``selection`` selects (default:
    every subset, no filter).

    The data is split ONCE, like the CLIP recipe: ``load_biomedica(world_size=, rank=)`` gives each rank a
    contiguous run of the selected samples (runs differ by at most one sample), so a rank reads only its share
    of the bytes. No DDP hang on uneven shares: each rank cycles over its own share, so every rank always has a
    next batch; ``ceil(max share / batch_size)`` steps see every sample. ``skip_samples`` fast-forwards
    (resume) without decoding images; ``position["rank_samples"]`` is the rank's share (set before the first
    example), ``position["seen"]`` is kept up to date with this rank's samples pulled so far,
    ``position["read_keys"]`` with the keys of the first :data:`READ_LOG_LIMIT` rows read."""
    from biomedica_hf.dataset.loader import load_biomedica

    tasks = tasks or DEFAULT_TASKS
    ds = load_biomedica(path, streaming=True, decode=False, world_size=world_size, rank=rank, num_workers=0,
                        selection=selection if selection is not None else Selection(subset="all"))
    if position is not None:
        position["rank_samples"] = ds.info.splits["train"].num_examples
    return _examples(ds, processor, tasks, max_length, min_answer_tokens, seed, skip_samples, skips, cycle,
                     position)


def _examples(ds, processor, tasks: dict[str, float], max_length: int, min_answer_tokens: int, seed: int,
              skip_samples: int, skips: SkipLog | None, cycle: bool, position: dict | None) -> Iterator[Encoded]:
    epoch = 0
    seen = 0
    read_keys = position.setdefault("read_keys", []) if position is not None else None
    while True:
        produced = False
        for row in ds:
            produced = True
            seen += 1
            if read_keys is not None and len(read_keys) < READ_LOG_LIMIT:
                read_keys.append(row["key"])
            if position is not None:
                position["seen"] = seen
            if seen <= skip_samples:
                continue
            choice = choose_task(row, tasks, seed, epoch)
            if choice is None:
                if skips is not None:
                    skips.add("no_task_text", row["key"])
                continue
            task, answer = choice
            try:
                image = decode_image(row["image"])
            except Exception as exc:  # noqa: BLE001 - a bad image is skipped, not fatal
                if skips is not None:
                    skips.add("image_decode_error", row["key"], repr(exc)[:200])
                continue
            enc = encode(processor, image, PROMPTS[task], answer, max_length, min_answer_tokens, row["key"], task, skips)
            if enc is not None:
                yield enc
        epoch += 1
        if not cycle or not produced:
            return
