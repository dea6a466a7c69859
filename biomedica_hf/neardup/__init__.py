"""Near-duplicate images and captions, evaluation contamination, and their dataset-card section.

Entry points (the build calls the first three; see ``README.md`` here for the calibration and the benchmark):

* :func:`image_phash` / :func:`bytes_phash`: the per-sample 256-bit pHash (hex), ``HASH_BITS``;
* :func:`find_near_duplicates`: groups over Parquet parts (``key``, ``subset``, ``phash``) with bounded memory,
  ``DEFAULT_THRESHOLD`` bits;
* :func:`caption_near_duplicates`: MinHash LSH over caption shingles;
* training samples that near-duplicate an evaluation image: :func:`biomedica_hf.eval.decontaminate.decontaminate`
  (``biomedica decontaminate``, in the evaluation layer because it reads evaluation tasks);
* :func:`card_section` / :func:`card_stats`: what the dataset card reports.
"""
from biomedica_hf.neardup.captions import caption_near_duplicates
from biomedica_hf.neardup.card import card_section, card_stats
from biomedica_hf.neardup.groups import DEFAULT_THRESHOLD, GroupStats, find_near_duplicates
from biomedica_hf.neardup.hashing import HASH_BITS, HASH_NAME, bytes_phash, hex_distance, image_phash

__all__ = [
    "DEFAULT_THRESHOLD",
    "HASH_BITS",
    "HASH_NAME",
    "GroupStats",
    "bytes_phash",
    "caption_near_duplicates",
    "card_section",
    "card_stats",
    "find_near_duplicates",
    "hex_distance",
    "image_phash",
]
