"""Issue 24: recipe configs with NaN / infinite numbers, integers of 5,000 digits or out of 64-bit range, and a key
repeated in one mapping - each refused by a ConfigError that names the key (before: accepted, or a traceback)."""
from __future__ import annotations

import pytest

from biomedica_hf.train.config import ConfigError, load_config


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  lr: .nan\n", r"train.lr: expected a finite number, got nan"),
    ("train:\n  lr: -.inf\n", r"train.lr: expected a finite number, got -inf"),
    ("train:\n  lr: 'nan'\n", r"train.lr: expected a finite number, got 'nan'"),
    ("train:\n  grad_clip: .inf\n", r"train.grad_clip: expected a finite number, got inf"),
    ("train:\n  max_steps: " + "7" * 5000 + "\n", r"train.max_steps: an integer of 5000 digits \(at most 19\)"),
    ("train:\n  batch_size: 9223372036854775808\n", r"train.batch_size: integer 9223372036854775808... out of range"),
    ("train:\n  batch_size: '1e400'\n", r"train.batch_size: expected int, got '1e400'"),
    ("train:\n  lr: 1.0e-4\n  lr: 1.0e-3\n", r"key 'lr' repeated \(lines 2 and 3\)"),
    ("train: {}\ntrain: {}\n", r"key 'train' repeated \(lines 1 and 2\)"),
])
def test_hostile_numbers_and_repeated_keys_are_refused_by_key(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as ei:
        load_config("clip", config)
    assert str(ei.value).startswith(f"{config}: ")


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=.nan", r"train.lr: expected a finite number, got nan"),
    ("train.max_steps=" + "1" * 5000, r"train.max_steps: an integer of 5000 digits"),
    ("seed=-9223372036854775809", r"seed: integer -9223372036854775809... out of range"),
])
def test_hostile_overrides_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("clip", "cpu_smoke", [override])


def test_ordinary_numbers_still_load(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 3.0e-4\n  max_steps: 1_000\n  grad_clip: 0.5\nseed: 9223372036854775807\n")
    cfg = load_config("clip", config)
    assert (cfg["train"]["lr"], cfg["train"]["max_steps"], cfg["seed"]) == (3e-4, 1000, 2**63 - 1)
