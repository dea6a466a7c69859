"""The CLI's error layer, run as a user runs it: the real `biomedica` in a subprocess, offline. Each failure a
user can fix is one `Error: ...` line naming the fix, with its own exit code; `--debug` / `BIOMEDICA_DEBUG=1`
show the traceback instead. Also: `inspect` on a file that is not XML exits non-zero with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, save_tiny_dinov2

from biomedica_hf.errors import MissingWeightsError, NetworkError, NoClusterError, WrongModelError

EVAL_IMAGE = next((REPO.parent / "shared" / "fixtures" / "eval").rglob("*.png"), None)


def biomedica(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("BIOMEDICA_DEBUG", "RAY_ADDRESS", "HF_ENDPOINT")}
    base.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})})
    base = {k: v for k, v in base.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "biomedica_hf.cli", *args], capture_output=True, text=True,
                          env=base, timeout=timeout, cwd=REPO)


def error_line(r: subprocess.CompletedProcess) -> str:
    """The one `Error:` line; no traceback anywhere."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, out[-3000:]
    assert r.stderr.rstrip().splitlines()[-1] == lines[0]   # the last thing the user sees
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "ds"
    r = biomedica("build", "--sample", "--out", str(out), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_embed_default_model_offline_is_one_line_naming_model_flag(built, tmp_path):
    r = biomedica("embed", str(built), "--device", "cpu")
    line = error_line(r)
    assert r.returncode == MissingWeightsError.exit_code == 3
    assert "facebook/dinov2-with-registers-large" in line and "HF_HUB_OFFLINE" in line
    assert "--model PATH" in line
    assert not (built / "embeddings" / "info.json").exists()
    # the hint works: a local folder embeds offline
    model = save_tiny_dinov2(tmp_path / "dino")
    ok = biomedica("embed", str(built), "--model", str(model), "--device", "cpu", "--batch", "8")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((built / "embeddings" / "info.json").read_text())["samples"] > 0


def test_debug_flag_and_env_show_the_traceback(built):
    for args, env in ((["--debug"], {}), ([], {"BIOMEDICA_DEBUG": "1"})):
        r = biomedica(*args, "embed", str(built), "--device", "cpu", env=env)
        assert r.returncode == 1
        assert "Traceback (most recent call last)" in r.stderr
        assert "MissingWeightsError" in r.stderr.splitlines()[-1]


def test_embed_without_network_names_the_hub_and_the_flag(built):
    """No HF_HUB_OFFLINE, but the Hub endpoint refuses connections (a closed loopback port)."""
    r = biomedica("embed", str(built), "--device", "cpu",
                  env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
                       "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_ETAG_TIMEOUT": "1",
                       "HF_HUB_DOWNLOAD_TIMEOUT": "1"}, timeout=600)
    line = error_line(r)
    assert r.returncode == 3
    assert "cannot be reached" in line and "--model PATH" in line


def test_build_ray_without_cluster_hints_address_local(tmp_path):
    pytest.importorskip("ray")
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():  # `--address auto` joins any Ray found running here (another user's, on a shared host)
        pytest.skip("a Ray cluster is running on this machine: --address auto would join it")
    r = biomedica("build", "--sample", "--executor", "ray", "--out", str(tmp_path / "ds"), "--no-progress")
    line = error_line(r)
    assert r.returncode == NoClusterError.exit_code == 5
    assert "no Ray cluster" in line and "--address local" in line


def test_push_without_network_is_one_line(built):
    r = biomedica("push", str(built), "--repo-id", "someone/biomedica-test",
                  env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
                       "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_TOKEN": "hf_x"})
    line = error_line(r)
    assert r.returncode == NetworkError.exit_code == 4
    assert "Hub could not be reached" in line and "--dry-run" in line


def test_eval_pretrained_tag_offline_is_one_line():
    r = biomedica("eval", "--model", "ViT-B-32:laion2b_s34b_b79k", "--tasks", "@fixtures")
    line = error_line(r)
    assert r.returncode == 3
    assert "ViT-B-32:laion2b_s34b_b79k" in line and "--model PATH" in line


def test_caption_with_a_clip_folder_is_wrong_model(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 100},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                     projection_dim=8)
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    assert EVAL_IMAGE is not None
    r = biomedica("caption", str(EVAL_IMAGE), "--model", str(tmp_path / "clip"))
    line = error_line(r)
    assert r.returncode == WrongModelError.exit_code == 6
    assert "'clip' model (CLIPModel)" in line and "image-text-to-text" in line and "finetune/smolvlm" in line
    assert len(line) < 400   # not the ~100 config classes transformers lists


def test_inspect_non_xml_exits_nonzero_with_one_line(tmp_path):
    assert EVAL_IMAGE is not None
    r = biomedica("inspect", str(EVAL_IMAGE))
    line = error_line(r)
    assert r.returncode == 1
    assert EVAL_IMAGE.name in line and "no article parsed" in line and "xml_syntax" in line
    assert r.stdout == ""
    jats = next((REPO / "biomedica_hf" / "sample_data" / "articles").rglob("*.nxml"))
    ok = biomedica("inspect", str(jats))
    assert ok.returncode == 0 and "figures:" in ok.stdout
