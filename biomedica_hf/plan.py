"""Build plan (pure): exact-duplicate detection across the whole build and the assignment of samples
to shuffled, size-bounded shards per subset.

Deterministic: the same staged samples and seed give the same plan, whatever order articles were
processed in, so a resumed build writes exactly the shards of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

from .schema import SUBSETS

SUBSET_RANK = {s: i for i, s in enumerate(SUBSETS)}


@dataclass(frozen=True)
class PlannedSample:
    key: str
    pmcid: str
    subset: str
    sha256: str
    size: int          # bytes of image + caption + json, for the shard byte budget
    ref_id: str        # staging unit that holds the sample


@dataclass
class Shard:
    subset: str
    index: int
    keys: list[str]
    also_in: dict[str, list[str]]
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.subset}/{self.index:06d}"


@dataclass
class Plan:
    shards: list[Shard] = field(default_factory=list)
    # duplicate key -> canonical key it duplicates
    duplicates: dict[str, str] = field(default_factory=dict)
    # canonical key -> every pmcid that used the image bytes (canonical's own first)
    duplicate_groups: dict[str, list[str]] = field(default_factory=dict)
    location: dict[str, str] = field(default_factory=dict)   # key -> ref_id


def dedup(samples: list[PlannedSample]) -> tuple[list[PlannedSample], dict[str, str], dict[str, list[str]]]:
    """Keep one sample per image sha256: the most permissive subset wins, then the smallest key.

    Returns (kept samples, duplicate key -> canonical key, canonical key -> pmcids using the image).
    """
    by_hash: dict[str, list[PlannedSample]] = defaultdict(list)
    for s in samples:
        by_hash[s.sha256].append(s)
    kept, dup_of, groups = [], {}, {}
    for group in by_hash.values():
        group.sort(key=lambda s: (SUBSET_RANK.get(s.subset, len(SUBSETS)), s.key))
        canon = group[0]
        kept.append(canon)
        if len(group) > 1:
            groups[canon.key] = list(dict.fromkeys(s.pmcid for s in group))
            for s in group[1:]:
                dup_of[s.key] = canon.key
    kept.sort(key=lambda s: s.key)
    return kept, dup_of, groups


def assign_shards(samples: list[PlannedSample], *, max_samples: int, max_bytes: int, seed: int
                  ) -> dict[str, list[list[PlannedSample]]]:
    """Shuffle each subset with ``seed`` and cut it into shards of <= max_samples and ~<= max_bytes.

    Shuffling at write time spreads articles, journals and years across shards (BIOMEDICA's
    cluster-ordered shards hurt training). A single sample larger than max_bytes gets a shard alone.
    """
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("shard limits must be positive")
    out: dict[str, list[list[PlannedSample]]] = {}
    for subset in SUBSETS:
        members = sorted((s for s in samples if s.subset == subset), key=lambda s: s.key)
        random.Random(f"{seed}:{subset}").shuffle(members)
        shards: list[list[PlannedSample]] = []
        cur: list[PlannedSample] = []
        cur_bytes = 0
        for s in members:
            if cur and (len(cur) >= max_samples or cur_bytes + s.size > max_bytes):
                shards.append(cur)
                cur, cur_bytes = [], 0
            cur.append(s)
            cur_bytes += s.size
        if cur:
            shards.append(cur)
        out[subset] = shards
    return out


def make_plan(samples: list[PlannedSample], *, max_samples: int = 10_000, max_bytes: int = 1_000_000_000,
              seed: int = 0, dedup_images: bool = True) -> Plan:
    unknown = {s.subset for s in samples} - set(SUBSETS)
    if unknown:
        raise ValueError(f"samples with unknown subset(s): {sorted(unknown)}")
    keys = [s.key for s in samples]
    if len(keys) != len(set(keys)):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"sample keys are not unique, e.g. {dupes}")
    kept, dup_of, groups = dedup(samples) if dedup_images else (sorted(samples, key=lambda s: s.key), {}, {})
    plan = Plan(duplicates=dup_of, duplicate_groups=groups, location={s.key: s.ref_id for s in kept})
    for subset, shards in assign_shards(kept, max_samples=max_samples, max_bytes=max_bytes, seed=seed).items():
        for index, members in enumerate(shards):
            also_in = {s.key: [p for p in groups[s.key] if p != s.pmcid] for s in members if s.key in groups}
            shard = Shard(subset, index, [s.key for s in members], also_in)
            payload = json.dumps([[s.key, s.sha256, also_in.get(s.key, [])] for s in members]).encode()
            shard.digest = hashlib.sha256(payload).hexdigest()
            plan.shards.append(shard)
    return plan
