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
from support.models import save_tiny_dinov2
from support.paths import REPO
from support.recipes import free_port

from biomedica_hf.errors import (
    InputError,
    MissingWeightsError,
    NetworkError,
    NoClusterError,
    NothingKeptError,
    WrongModelError,
)

EVAL_IMAGE = next((REPO.parent / "shared" / "fixtures" / "eval").rglob("*.png"), None)


def biomedica(*args: str, env: dict | None = None, timeout: int = 300,
              python: tuple[str, ...] = ("-m", "biomedica_hf.cli")) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("BIOMEDICA_DEBUG", "RAY_ADDRESS", "HF_ENDPOINT")}
    base.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})})
    base = {k: v for k, v in base.items() if v is not None}
    return subprocess.run([sys.executable, *python, *args], capture_output=True, text=True,
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
    assert "facebook/dinov2-with-registers-large" in line
    assert "HF_HUB_OFFLINE" in line
    assert "--model PATH" in line
    assert not (built / "embeddings" / "info.json").exists()
    # the hint works: a local folder embeds offline
    model = save_tiny_dinov2(tmp_path / "dino")
    ok = biomedica("embed", str(built), "--model", str(model), "--device", "cpu", "--batch", "8")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((built / "embeddings" / "info.json").read_text())["samples"] > 0


def test_embed_of_a_missing_model_fails_before_torch_is_imported(built):
    """The newcomer's first `biomedica embed` offline: the one-line error in under a second, not after the seconds
    of importing torch and transformers (9.7 -> 0.85 s measured)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('IMPORTED', sorted(m for m in ('torch', 'transformers')"
            " if m in sys.modules)))\n"
            "sys.argv = ['biomedica', *sys.argv[1:]]\n"
            "from biomedica_hf.cli import run\n"
            "run()\n")
    r = biomedica("embed", str(built), "--device", "cpu", python=("-c", code))
    assert r.returncode == MissingWeightsError.exit_code
    assert "HF_HUB_OFFLINE" in error_line(r)
    assert "IMPORTED []" in r.stdout


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
    assert "cannot be reached" in line
    assert "--model PATH" in line


def test_build_ray_without_cluster_hints_address_local(tmp_path):
    pytest.importorskip("ray")
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():  # `--address auto` joins any Ray found running here (another user's, on a shared host)
        pytest.skip("a Ray cluster is running on this machine: --address auto would join it")
    r = biomedica("build", "--sample", "--executor", "ray", "--out", str(tmp_path / "ds"), "--no-progress")
    line = error_line(r)
    assert r.returncode == NoClusterError.exit_code == 5
    assert "no Ray cluster" in line
    assert "--address local" in line


def test_push_without_network_is_one_line(built):
    r = biomedica("push", str(built), "--repo-id", "someone/biomedica-test",
                  env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
                       "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_TOKEN": "hf_x"})
    line = error_line(r)
    assert r.returncode == NetworkError.exit_code == 4
    assert "Hub could not be reached" in line
    assert "--dry-run" in line


def test_eval_pretrained_tag_offline_is_one_line():
    r = biomedica("eval", "--model", "ViT-B-32:laion2b_s34b_b79k", "--tasks", "@fixtures")
    line = error_line(r)
    assert r.returncode == 3
    assert "ViT-B-32:laion2b_s34b_b79k" in line
    assert "--model PATH" in line


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
    assert "'clip' model (CLIPModel)" in line
    assert "image-text-to-text" in line
    assert "finetune/smolvlm" in line
    assert len(line) < 400   # not the ~100 config classes transformers lists


def test_inspect_non_xml_exits_nonzero_with_one_line(tmp_path):
    assert EVAL_IMAGE is not None
    r = biomedica("inspect", str(EVAL_IMAGE))
    line = error_line(r)
    assert r.returncode == 1
    assert EVAL_IMAGE.name in line
    assert "no article parsed" in line
    assert "xml_syntax" in line
    assert r.stdout == ""
    jats = next((REPO / "biomedica_hf" / "sample_data" / "articles").rglob("*.nxml"))
    ok = biomedica("inspect", str(jats))
    assert ok.returncode == 0
    assert "figures:" in ok.stdout


# ------------------------------------------------------------------------ build input errors (issue 27)
def _nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))   # no _work/, no card, no lock


def test_build_missing_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "x1"
    r = biomedica("build", "--source", "local", "--input", str(tmp_path / "does" / "not" / "exist"), "--out", str(out))
    line = error_line(r)
    assert r.returncode == InputError.exit_code == 7
    assert "does not exist" in line
    assert "--input" in line
    assert "--sample" in line
    _nothing_written(out)


def test_build_unreadable_input_is_one_line(tmp_path):
    """A folder its reader may not open (root reads everything: the command then runs without the capabilities
    that bypass file permissions)."""
    import shutil

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "biomedica_hf.cli", "build", "--input", str(locked), "--out", str(out)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "BIOMEDICA_DEBUG"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO),
                                                                       "HF_HUB_OFFLINE": "1"}, timeout=300, cwd=REPO)
    finally:
        locked.chmod(0o700)
    line = error_line(r)
    assert r.returncode == 7
    assert "cannot be read" in line
    assert "Permission denied" in line
    assert "ls -ld" in line
    _nothing_written(out)


def test_build_folder_without_article_names_what_was_looked_for(tmp_path):
    inp = tmp_path / "papers"
    (inp / "notes").mkdir(parents=True)
    (inp / "notes" / "readme.txt").write_text("not an article")
    (inp / "feed").mkdir()
    (inp / "feed" / "rss.xml").write_text("<rss><channel><title>news</title></channel></rss>")
    out = tmp_path / "ds"
    r = biomedica("build", "--input", str(inp), "--out", str(out), "--no-progress")
    line = error_line(r)
    assert r.returncode == 7
    for looked_for in ("*.nxml", "*.xml", "*.tar.gz", "PMCid.V/"):
        assert looked_for in line
    assert "1 no_xml" in line
    assert "1 no_article_xml" in line
    assert "biomedica inspect" in line
    _nothing_written(out)
    # an existing output folder is left as it was (no _work/ inside it)
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = biomedica("build", "--input", str(tmp_path / "papers"), "--out", str(out), "--no-progress")
    assert r.returncode == 7
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_build_empty_listing_is_one_line(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# no article yet\n\n")
    out = tmp_path / "ds"
    r = biomedica("build", "--source", "cloud", "--pmcids", str(ids), "--out", str(out), "--no-progress",
                  "--base-url", f"http://127.0.0.1:{free_port()}")
    line = error_line(r)
    assert r.returncode == 7
    assert "listing is empty" in line
    assert str(ids) in line
    assert "one PMCID per line" in line
    _nothing_written(out)


def test_build_where_every_article_failed_exits_1_with_the_top_reasons(tmp_path):
    """`--source cloud` with no network (a closed port): every fetch fails -> exit 1 naming the reason, no card."""
    ids = tmp_path / "ids.txt"
    ids.write_text("PMC7112410\nPMC7135076\n")
    out = tmp_path / "ds"
    r = biomedica("build", "--source", "cloud", "--pmcids", str(ids), "--out", str(out), "--no-progress",
                  "--workers", "1", "--retries", "0", "--timeout", "2", "--base-url", f"http://127.0.0.1:{free_port()}")
    line = error_line(r)
    assert r.returncode == NothingKeptError.exit_code == 1
    assert "kept no figure: 2 of 2 article(s) failed" in line
    assert "ledger.parquet" in line
    assert "Articles listed: 2" in r.stdout                  # the summary comes first
    assert (out / "ledger.parquet").exists()
    assert not (out / "README.md").exists()
    reason = line.split("failed: ", 1)[1].split(" ", 1)[0]
    assert reason in ("download_failed", "not_found")        # the ledger's own reason, named


def test_build_partly_failed_exits_0_with_its_summary(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    src = REPO / "biomedica_hf" / "sample_data" / "articles" / "eLife_39122_subarticles"
    import shutil

    shutil.copytree(src, inp / src.name)
    (inp / "PMC999.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    out = tmp_path / "ds"
    r = biomedica("build", "--input", str(inp), "--out", str(out), "--no-progress", "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Error:" not in r.stderr
    assert "failed" in r.stdout
    assert (out / "README.md").exists()
