"""The training stream: ``load_biomedica`` -> shuffle -> split by node -> DataLoader -> model inputs.

Sharding is done ONCE, by the loader: ``load_biomedica(world_size=, rank=, num_workers=)`` gives every rank a
contiguous run of the selected samples (runs differ by at most one sample, cut inside shards where needed),
cut into groups that the DataLoader workers share. The DataLoader is therefore NOT passed to
``accelerator.prepare`` (that would shard a second time: every rank would keep 1/world_size of an
already split stream); batches are moved to the device by the trainer, which pads the uneven last ones
(:class:`biomedica_hf.train.clip._Batches`).
"""
from __future__ import annotations

import random
import zlib
from typing import Any

import torch

from biomedica_hf.dataset.loader import load_biomedica
from biomedica_hf.filters import Selection
from biomedica_hf.images import to_rgb as flatten_to_rgb


def build_stream(path: str, selection: Selection, rank: int = 0, world_size: int = 1, seed: int = 0, *,
                 num_workers: int = 0, shuffle_buffer: int = 0):
    """The rank's ``datasets.IterableDataset`` of ``{key, image, caption, metadata}`` for the samples of ``path``
    that ``selection`` selects (``ds.info.splits["train"].num_examples``: the rank's number of samples)."""
    ds = load_biomedica(path, streaming=True, world_size=world_size, rank=rank, num_workers=num_workers,
                        selection=selection)
    if shuffle_buffer > 0:   # shuffles the rank's group order (seeded, per epoch) and samples within a buffer
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return ds


def pick_caption(example: dict, prob: float, seed: int, epoch: int) -> str:
    """The caption, or (with probability ``prob``) one of the in-text reference sentences.

    Deterministic in (key, seed, epoch), so a resumed run and every rank make the same choices.
    """
    refs = [r for r in ((example.get("metadata") or {}).get("references") or []) if r and r.strip()]
    if prob <= 0 or not refs:
        return example["caption"]
    rng = random.Random(zlib.crc32(f"{seed}:{epoch}:{example['key']}".encode()))
    return rng.choice(refs) if rng.random() < prob else example["caption"]


class Collate:
    """PIL images + captions -> ``{pixel_values, input_ids[, attention_mask], n}`` for a ``ClipModel``."""

    def __init__(self, clip: Any, reference_prob: float = 0.0, seed: int = 0, train: bool = True) -> None:
        self.clip, self.reference_prob, self.seed, self.epoch = clip, reference_prob, seed, 0
        self.transform = clip.preprocess_train if train else clip.preprocess_val

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = torch.stack([self.transform(flatten_to_rgb(ex["image"])) for ex in examples])
        texts = [pick_caption(ex, self.reference_prob, self.seed, self.epoch) for ex in examples]
        return {"pixel_values": images, **self.clip.tokenize(texts), "keys": [ex["key"] for ex in examples]}
