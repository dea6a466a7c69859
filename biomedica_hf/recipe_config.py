"""Recipe configs (CLIP and SmolVLM training): defaults <- a YAML file <- ``a.b.c=value`` overrides."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Iterable


def merge_config(base: dict, over: dict | None) -> dict:
    """Deep merge: nested dicts are merged, anything else in ``over`` replaces the value in ``base``."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe_config(defaults: dict, path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> dict:
    """``defaults`` <- YAML at ``path`` <- ``key.sub=value`` overrides (values parsed as YAML)."""
    import yaml

    cfg = merge_config(defaults, yaml.safe_load(Path(path).read_text()) if path else {})
    for item in overrides or ():
        key, _, raw = item.partition("=")
        node = cfg
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return cfg
