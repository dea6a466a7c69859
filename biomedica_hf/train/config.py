"""Recipe configs (CLIP and SmolVLM training): defaults <- a YAML file <- ``a.b.c=value`` overrides."""
from __future__ import annotations

import argparse
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


def parse_recipe_args(description: str | None, configs: str,
                      argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The command line every ``finetune/*/train.py`` takes: ``--config``, ``--set KEY=VALUE``, ``--threads``.

    Sets torch's CPU threads when ``--threads`` is given; returns the parser (for ``parser.error``) and args.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"recipe YAML ({configs})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.max_steps=100 (value parsed as YAML)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return parser, args
