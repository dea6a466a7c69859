"""The command line of both recipes (``python -m biomedica_hf.train.clip``, ``... .smolvlm``, and the
``finetune/*/train.py`` scripts that call them): ``--config NAME_OR_PATH``, ``--set KEY=VALUE``, ``--threads``,
``--list-configs``. Nothing here imports torch: ``--help`` and ``--list-configs`` answer at once."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from biomedica_hf.errors import BiomedicaError
from biomedica_hf.train.config import ConfigError, bundled_configs, describe, load_config


def parse_args(recipe: str, description: str | None,
               argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the recipe's command line; ``--list-configs`` prints the bundled configs and exits.

    Sets torch's CPU threads when ``--threads`` is given; returns the parser (for ``parser.error``) and args.
    """
    parser = argparse.ArgumentParser(prog=f"python -m biomedica_hf.train.{recipe}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="NAME_OR_PATH",
                        help=f"a recipe YAML file, or the name of a bundled config ({', '.join(bundled_configs(recipe))})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.max_steps=100 (value parsed as YAML); repeatable")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--overwrite", action="store_true",
                        help="clear output_dir first (else a folder holding another run is refused; "
                             "a run of the same config resumes: train.resume=auto)")
    parser.add_argument("--list-configs", action="store_true", help="list the bundled configs and exit")
    args = parser.parse_args(argv)
    if args.list_configs:
        for name, path in bundled_configs(recipe).items():
            print(f"{name:<24} {describe(path)}")
        parser.exit(0)
    if not args.config:
        parser.error("--config NAME_OR_PATH is required (--list-configs shows the bundled ones)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return parser, args


def run_recipe(recipe: str, description: str | None, argv: list[str] | None,
               train: Callable[[dict], dict], summary: Callable[[dict], dict]) -> int:
    """Parse, load and check the config, train, print ``summary(result)`` as JSON on rank 0.

    A config error is a usage error (exit 2, before any model is loaded); a :class:`BiomedicaError` during
    training is one ``error:`` line and its exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser, args = parse_args(recipe, description, argv)
    try:
        cfg = load_config(recipe, args.config, [*args.set, *(["train.overwrite=true"] if args.overwrite else [])])
    except ConfigError as exc:
        parser.error(exc.line())
    if not cfg["data"]["path"]:
        parser.error("data.path is not set (a `biomedica build` folder or Hub dataset id): --set data.path=DIR")
    try:
        result = train(cfg)
    except BiomedicaError as exc:
        # a usage error (exit 2: config, data path, output folder) is raised alike by every rank: say it once
        if exc.exit_code != 2 or int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary(result)))
    return 0
