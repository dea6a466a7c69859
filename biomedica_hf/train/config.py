"""Recipe configs (CLIP and SmolVLM training), typed: defaults <- a YAML file <- ``a.b.c=value`` overrides.

Each recipe's config is a dataclass (:class:`ClipConfig`, :class:`SmolVLMConfig`) of sections. Loading merges
the YAML and the ``--set`` overrides (values parsed as YAML) into the defaults, then checks the result against
the dataclass: a key that is not a field is an error naming the valid keys (and the closest one), a value of
the wrong type is an error naming the type (numbers written as strings, ``1e-6`` in YAML, are converted),
a key of the old vocabulary is an error naming its new key (:data:`RENAMED`).

One vocabulary for both recipes (issue 18):

* ``output_dir``; ``train.resume: auto | PATH | null`` (default ``auto``: the latest checkpoint in
  ``output_dir/checkpoints`` of the same config, if any; :mod:`biomedica_hf.train.rundir`), ``train.overwrite``
  (``--overwrite``: clear ``output_dir`` first); ``train.grad_checkpointing``; ``train.mixed_precision: auto | no |
  bf16 | fp16`` (``auto``: bf16 on a CUDA GPU with bf16, else no); ``train.cpu``;
* ``export.enabled``, ``export.adapter`` (also save the PEFT LoRA adapter); ``card.enabled``, ``card.template``;
* ``data.path``, ``data.subset`` and the ``load_biomedica`` filters: the fields of one
  :class:`biomedica_hf.filters.Selection` (:meth:`DataBase.selection`, checked with the config);
* checkpoints ``output_dir/checkpoints/step_N`` with ``data_state_rank{r}.json`` (see ``checkpoint.py``).

Bundled configs are package data: ``biomedica_hf/train/configs/<recipe>/<name>.yaml``; ``--config NAME``
resolves one of them, ``--config PATH`` a file.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from biomedica_hf.errors import BiomedicaError
from biomedica_hf.filters import FIELDS, Selection

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# old key -> (new key, note): both recipes used other words for the same things before issue 18
RENAMED: dict[str, tuple[str, str]] = {
    "train.resume_from": ("train.resume", "auto | PATH | null"),
    "export.card": ("card.enabled", "true | false"),
    "export.lora": ("export.adapter", "`lora: adapter` is `adapter: true`, `lora: merge` is `adapter: false`"),
    "model.gradient_checkpointing": ("train.grad_checkpointing", "true | false"),
}


class ConfigError(BiomedicaError, ValueError):
    """A recipe config that cannot run: an unknown or renamed key, a value of the wrong type, a missing file."""

    exit_code = 2


# --------------------------------------------------------------------------------------------- sections
Precision = Literal["auto", "no", "bf16", "fp16"]


@dataclass
class DataBase:
    """What both recipes read: a ``biomedica build`` folder or Hub dataset id, and which of its samples (the fields
    of one :class:`biomedica_hf.filters.Selection`: :meth:`selection`)."""

    path: str | None = None
    subset: str | list[str] = "commercial"
    concepts: str | list[str] | None = None
    exclude_concepts: str | list[str] | None = None
    licenses: str | list[str] | None = None
    years: int | list[int] | None = None
    min_caption_chars: int | None = None
    split: Literal["train", "validation", "test"] | None = None
    exclude: str | None = None
    near_duplicates: Literal["keep", "drop"] = "keep"

    def selection(self) -> Selection:
        """The samples this config selects (checked: ``ValueError`` naming the valid values)."""
        return Selection(**{name: getattr(self, name) for name in FIELDS})


@dataclass
class TrainBase:
    """The optimisation words both recipes share."""

    batch_size: int = 4                  # per process
    grad_accum: int = 1
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_steps: int | None = None
    grad_clip: float | None = 1.0
    mixed_precision: Precision = "auto"
    grad_checkpointing: bool = False
    log_every: int = 10
    save_every: int | None = None
    resume: str | None = "auto"          # auto | PATH | null (biomedica_hf.train.rundir)
    overwrite: bool = False              # clear output_dir first (--overwrite)
    cpu: bool = False                    # train on CPU even when a GPU is present


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None


@dataclass
class CardConfig:
    enabled: bool = True
    template: str | None = None          # a template file instead of the bundled one


# --------------------------------------------------------------------------------------------- CLIP
@dataclass
class ClipModelConfig:
    """The ``model:`` section of a CLIP recipe (built by :func:`biomedica_hf.clip.model.build_model`)."""

    kind: Literal["open_clip", "transformers"] = "open_clip"
    name: str | None = "ViT-L-14"        # open_clip model name, hf-hub:ORG/NAME or local-dir:PATH
    pretrained: str | None = "commonpool_xl_clip_s13b_b90k"
    model_cfg: dict[str, Any] | None = None   # open_clip: a model config (random initialisation)
    name_or_path: str | None = None      # transformers: Hub id or folder
    config: dict[str, Any] | None = None      # transformers: a CLIPConfig dict (random initialisation)
    tokenizer_dir: str | None = None
    train_augment: bool = True


@dataclass
class ClipData(DataBase):
    shuffle_buffer: int = 0
    num_workers: int = 0
    reference_prob: float = 0.0
    record_keys: bool = False            # each rank appends the keys it trains on to output_dir/keys_rank{r}.jsonl


@dataclass
class ClipTrain(TrainBase):
    batch_size: int = 1024
    lr: float = 1.0e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-6
    weight_decay: float = 0.2
    warmup_steps: int = 1000
    max_epochs: int | None = 1000
    max_logit_scale: float = 100.0


@dataclass
class WiseFT:
    alpha: float | None = None


@dataclass
class ClipExport:
    enabled: bool = True
    formats: list[Literal["open_clip", "transformers"]] = field(default_factory=lambda: ["open_clip", "transformers"])
    adapter: bool = False                # also save the LoRA adapter (export/lora_adapter, before WiSE-FT)
    model_index: str | None = None       # a `biomedica eval` run's model_index.yaml, for the card
    repo_id: str | None = None
    dataset_id: str | None = None
    license: str | None = None
    title: str | None = None


@dataclass
class ClipConfig:
    seed: int = 0
    output_dir: str = "runs/clip"
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    data: ClipData = field(default_factory=ClipData)
    train: ClipTrain = field(default_factory=ClipTrain)
    lora: LoraConfig = field(default_factory=LoraConfig)
    wise_ft: WiseFT = field(default_factory=WiseFT)
    export: ClipExport = field(default_factory=ClipExport)
    card: CardConfig = field(default_factory=CardConfig)


# --------------------------------------------------------------------------------------------- SmolVLM
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SmolVLMModel:
    name: str = "HuggingFaceTB/SmolVLM-256M-Instruct"
    tiny: bool = False                   # a random tiny Idefics3 written to output_dir/base_model
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] | None = "bfloat16"
    quantization: Literal["nf4"] | None = None
    attn_implementation: str | None = None


Task = Literal["caption", "reference", "concepts"]     # biomedica_hf.vlm.data.PROMPTS


@dataclass
class SmolVLMData(DataBase):
    subset: str | list[str] = "all"
    tasks: dict[Task, float] = field(default_factory=lambda: {"caption": 1.0, "reference": 0.5, "concepts": 0.5})
    longest_edge: int | None = None
    max_length: int = 2048
    min_answer_tokens: int = 8


@dataclass
class SmolVLMTrain(TrainBase):
    grad_accum: int = 4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 1000
    mixed_precision: Precision = "no"
    grad_checkpointing: bool = True
    save_every: int | None = 250
    scheduler: str = "linear"            # a transformers.get_scheduler name


@dataclass
class SmolVLMLora(LoraConfig):
    enabled: bool = True
    r: int = 8
    alpha: int = 8
    dropout: float = 0.1
    target_modules: list[str] | None = field(default_factory=lambda: list(DEFAULT_TARGETS))
    init_lora_weights: bool | Literal["gaussian"] = "gaussian"


@dataclass
class SmolVLMExport:
    enabled: bool = True
    adapter: bool = True                 # output_dir/adapter
    merge: bool = True                   # output_dir/merged (merge-and-unload)


@dataclass
class SmolVLMConfig:
    seed: int = 0
    output_dir: str = "runs/smolvlm"
    model: SmolVLMModel = field(default_factory=SmolVLMModel)
    lora: SmolVLMLora = field(default_factory=SmolVLMLora)
    data: SmolVLMData = field(default_factory=SmolVLMData)
    train: SmolVLMTrain = field(default_factory=SmolVLMTrain)
    export: SmolVLMExport = field(default_factory=SmolVLMExport)
    card: CardConfig = field(default_factory=CardConfig)


RECIPES: dict[str, type] = {"clip": ClipConfig, "smolvlm": SmolVLMConfig}


# --------------------------------------------------------------------------------------------- checking
def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


#: integers in a config are 64-bit (counts, steps, seeds); YAML numbers with more digits are refused by key
MAX_INT_DIGITS = 19
INT_RANGE = 2**63


class _Overlong(str):
    """A YAML integer of more than :data:`MAX_INT_DIGITS` digits, kept as its text (never given to ``int()``,
    which refuses over 4,300 digits with a traceback) so that :func:`_coerce` refuses it naming its key."""


def _config_loader() -> type:
    """A YAML SafeLoader that refuses a key repeated in one mapping (naming it) and keeps overlong integers as
    :class:`_Overlong` text."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise ConfigError(f"key {key!r} repeated (lines {seen[key] + 1} and "
                                      f"{key_node.start_mark.line + 1}): YAML would keep only the last one")
                if isinstance(key, typing.Hashable):
                    seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    def construct_int(loader: Any, node: Any) -> Any:
        text = loader.construct_scalar(node)
        if len(text.replace("_", "").lstrip("+-")) > MAX_INT_DIGITS:
            return _Overlong(text)
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return Loader


def load_yaml(text: str) -> Any:
    """YAML as a config reads it: safe, a repeated key refused, overlong integers kept for :func:`_coerce`."""
    import yaml

    return yaml.load(text, Loader=_config_loader())  # noqa: S506 - a SafeLoader subclass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (ints and floats written as strings are converted), or a :class:`ConfigError`.
    NaN and infinite numbers are refused, as are integers out of 64-bit range (or over :data:`MAX_INT_DIGITS`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(value, _Overlong):
        raise ConfigError(f"{key}: an integer of {len(value)} digits (at most {MAX_INT_DIGITS}): {value[:20]}...")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_RANGE <= value < INT_RANGE:
        raise ConfigError(f"{key}: integer {str(value)[:20]}... out of range (64-bit)")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                if dataclasses.is_dataclass(a) or typing.get_origin(a) is dict:
                    raise              # a mapping's own error (an unknown key inside it) says more
        raise bad
    if origin is Literal:
        if value is False and "no" in args:     # YAML 1.1 reads an unquoted `no` as false
            return "no"
        if value in args and not (isinstance(value, bool) and all(not isinstance(a, bool) for a in args)):
            return value
        raise bad
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer() and -INT_RANGE <= f < INT_RANGE:
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if not math.isfinite(f):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return f
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        if len(args) == 2:
            return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return copy.deepcopy(value)
    raise TypeError(f"{key}: unsupported config type {tp!r}")


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        full = f"{prefix}.{key}" if prefix else str(key)
        if key in names:
            continue
        if full in RENAMED:
            new, note = RENAMED[full]
            raise ConfigError(f"{full} was renamed: use {new} ({note})")
        close = difflib.get_close_matches(str(key), names, n=1)
        where = f"of {prefix}" if prefix else "at the top level"
        raise ConfigError(f"unknown config key {full!r}" + (f"; did you mean {_join(prefix, close[0])!r}?" if close else "")
                          + f" Valid keys {where}: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], _join(prefix, k)) for k, v in raw.items()})


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def merge_config(base: dict, over: dict | None) -> dict:
    """Deep merge: nested dicts are merged, anything else in ``over`` replaces the value in ``base``."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge_config(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """``key.sub=value`` items (values parsed as YAML) set into ``cfg`` (in place)."""
    for item in overrides or ():
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
        node = cfg
        *parents, leaf = key.strip().split(".")
        for p in parents:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"--set {item!r}: {p} is not a mapping")
            node = node.setdefault(p, {})
        node[leaf] = load_yaml(raw)
    return cfg


def check_config(recipe: str, cfg: dict | Any) -> Any:
    """``cfg`` (a dict or already the recipe's dataclass) as the recipe's dataclass, checked."""
    cls = RECIPES[recipe]
    if isinstance(cfg, cls):
        return cfg
    if not isinstance(cfg, dict):
        raise ConfigError(f"a {recipe} config must be a mapping, got {type(cfg).__name__}")
    out = _build(cls, cfg)
    try:
        out.data.selection()            # the data selection checked once, here, by the rule load_biomedica uses
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data: {exc}") from None
    return out


def section(cls: type, value: Any, key: str) -> Any:
    """A config section as its dataclass ``cls``: itself, or a mapping checked into it (``key`` names it in
    errors), for the recipe helpers that users also call with plain mappings."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return _build(cls, value, key)


def resolve_precision(value: str, bf16_ok: bool) -> str:
    """``train.mixed_precision`` for ``Accelerator``: ``auto`` is bf16 where the device has it, else no."""
    return ("bf16" if bf16_ok else "no") if value == "auto" else value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------- files
def bundled_configs(recipe: str) -> dict[str, Path]:
    """The recipe's bundled configs, name -> file."""
    return {p.stem: p for p in sorted((CONFIG_DIR / recipe).glob("*.yaml"))}


def describe(path: Path) -> str:
    """A config file's first comment line (its one-line description)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def resolve_config(recipe: str, name_or_path: str | os.PathLike) -> Path:
    """A config file: ``name_or_path`` when it is a file, else the bundled config of that name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    named = bundled_configs(recipe)
    stem = p.name.removesuffix(".yaml").removesuffix(".yml")
    if p.parent == Path(".") and stem in named:
        return named[stem]
    close = difflib.get_close_matches(stem, list(named), n=1)
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a bundled {recipe} config"
                      + (f"; did you mean {close[0]!r}?" if close else "")
                      + f" Bundled: {', '.join(named)} (--list-configs)")


def load_config(recipe: str, path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> dict:
    """The recipe's defaults <- the YAML at ``path`` (a file or a bundled name) <- ``key.sub=value`` overrides,
    checked against the recipe's dataclass; returned as a plain dict (every key present)."""
    try:
        raw = load_yaml(resolve_config(recipe, path).read_text()) if path else {}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{path}: a recipe config is a YAML mapping, got {type(raw).__name__}")
    try:
        check_config(recipe, raw or {})        # the file's own keys first: its errors name the file
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg = apply_overrides(merge_config(to_dict(RECIPES[recipe]()), raw), overrides)
    return to_dict(check_config(recipe, cfg))
