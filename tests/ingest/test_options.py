"""The build's doors: one frozen ``BuildOptions`` made once from the command line, a ``SourceSpec`` from the
CLI to ``make_source``, the per-partition work as a picklable task object, and ``pipeline.py`` keeping the
orchestration only (issue 29). Real parts: the bundled sample articles, the real click command."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from biomedica_hf.ingest.article import MediaOptions
from biomedica_hf.ingest.media import DEFAULT_MAX_IMAGE_BYTES
from biomedica_hf.ingest.options import BuildConfig, BuildOptions, default
from biomedica_hf.ingest.sources import make_source
from biomedica_hf.ingest.sources.base import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_PACKAGE_BYTES
from biomedica_hf.ingest.sources.spec import DEFAULT_RATE, DEFAULT_RETRIES, SourceSpec
from biomedica_hf.ingest.task import PartitionJob, PartitionTask
from biomedica_hf.cli import build as build_command, build_options, source_spec

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "biomedica_hf" / "sample_data" / "articles"


def _cli_options(*args: str) -> BuildOptions:
    """The options ``biomedica build ARGS`` builds (the real click parser; nothing is run)."""
    ctx = build_command.make_context("build", list(args))
    p = ctx.params
    spec = source_spec(p["source"], p["input_path"], p["base_url"], p["filelist"], p["pmcids"], p["list_all"],
                       p["rate"], p["retries"], p["timeout"], p["deadline"], DEFAULT_MAX_PACKAGE_BYTES,
                       DEFAULT_MAX_MEMBER_BYTES)
    return build_options(p, spec)


def _job(cfg: BuildOptions) -> PartitionJob:
    return PartitionJob(out=str(cfg.out), source=cfg.source, media=cfg.media, keep_downloads=cfg.keep_downloads,
                        n_hash=4, discard=False, seed=cfg.seed, shard_max_samples=cfg.shard_max_samples,
                        shard_max_bytes=cfg.shard_max_bytes, caption_keys=cfg.caption_dups)


def test_cli_defaults_are_the_options_defaults(tmp_path):
    cfg = _cli_options("--input", str(SAMPLE), "--out", str(tmp_path / "out"))
    plain = BuildOptions(out=tmp_path / "out")
    for name in ("shard_max_samples", "shard_max_bytes", "seed", "split_fractions", "progress_every"):
        assert getattr(cfg, name) == getattr(plain, name), name
    assert cfg.media.max_image_bytes == DEFAULT_MAX_IMAGE_BYTES
    assert cfg.media.min_side == MediaOptions().min_side
    assert default("media.max_image_bytes") == DEFAULT_MAX_IMAGE_BYTES


def test_max_image_bytes_walks_from_the_cli_through_the_options_to_the_task(tmp_path):
    cfg = _cli_options("--input", str(SAMPLE), "--out", str(tmp_path / "out"), "--max-image-bytes", "3MiB")
    assert cfg.media.max_image_bytes == 3 << 20
    job = _job(cfg)
    task = pickle.loads(pickle.dumps(PartitionTask("s000-train-p00000", "digest", job)))
    assert task.job.media.max_image_bytes == 3 << 20


def test_cli_source_spec_for_each_kind(tmp_path):
    local = _cli_options("--input", str(SAMPLE), "--out", str(tmp_path)).source
    assert (local.kind, local.location) == ("local", str(SAMPLE))
    assert local.max_package_bytes == DEFAULT_MAX_PACKAGE_BYTES
    ids = tmp_path / "ids.txt"
    ids.write_text("PMC7135076\n")
    cloud = _cli_options("--source", "cloud", "--pmcids", str(ids), "--out", str(tmp_path)).source
    assert (cloud.kind, cloud.pmcid_file, cloud.rate, cloud.retries) == ("cloud", str(ids), DEFAULT_RATE,
                                                                         DEFAULT_RETRIES)
    assert cloud.max_package_bytes is None          # no archives in the cloud layout
    # the recorded options are those the build summary always had (paths by their role there)
    assert cloud.options() == {"pmcid_file": str(ids), "filelist": None, "list_all": False, "rate": DEFAULT_RATE,
                               "retries": DEFAULT_RETRIES}


def test_source_spec_is_frozen_hashable_and_picklable():
    spec = SourceSpec.from_options("legacy", base_url_or_root="http://127.0.0.1:9/pub/pmc",
                                   filelist="oa_file_list.csv", rate=8.0, retries=1)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(pickle.loads(pickle.dumps(spec))) == hash(spec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.rate = 1.0  # type: ignore[misc]
    assert spec.shared(4).rate == 2.0
    assert spec.shared(1) is spec
    assert SourceSpec("local", "x").shared(4).rate is None
    with pytest.raises(ValueError, match="unknown source kind"):
        SourceSpec("ftp")


def test_make_source_from_a_spec_lists_what_the_keyword_form_lists():
    by_spec = make_source(SourceSpec("local", str(SAMPLE)))
    by_kw = make_source("local", path=str(SAMPLE))
    try:
        assert [r.pmcid for r in by_spec.list_articles()] == [r.pmcid for r in by_kw.list_articles()]
    finally:
        by_spec.close()
        by_kw.close()
    with pytest.raises(TypeError):
        make_source(SourceSpec("local", str(SAMPLE)), path="elsewhere")


def test_build_options_turn_a_kind_and_its_options_into_a_spec(tmp_path):
    cfg = BuildConfig(out=str(tmp_path), source="local", source_opts={"path": str(SAMPLE)}, shard_max_samples=4)
    assert cfg.source == SourceSpec("local", str(SAMPLE))
    assert cfg.out == tmp_path
    assert cfg.work == tmp_path / "_work"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        BuildOptions(out=tmp_path, source=SourceSpec("local", "x"), source_opts={"path": "y"})
    assert dataclasses.replace(cfg, workers=3).source == cfg.source


def test_partition_task_shares_the_rate_between_slots(tmp_path):
    job = _job(BuildOptions(out=tmp_path, source=SourceSpec("cloud", pmcids=("PMC1",), rate=20.0)))
    task = PartitionTask("s000-train-p00000", None, job)
    assert task.key == "s000-train-p00000"
    assert task.shared(4).job.source.rate == 5.0
    assert task.job.source.rate == 20.0             # frozen: the original is untouched


def test_a_process_opens_each_source_once_and_closes_them():
    from biomedica_hf.ingest.task import _SOURCES, close_sources, source_for

    spec = SourceSpec("local", str(SAMPLE))
    first = source_for(spec)
    assert source_for(SourceSpec("local", str(SAMPLE))) is first      # keyed by the spec's value
    assert source_for(spec.shared(2)) is first                         # no rate to share: the same spec
    assert [r.pmcid for r in first.list_articles()]
    close_sources()
    assert not _SOURCES


def test_pipeline_keeps_the_orchestration_only():
    pipeline = REPO / "biomedica_hf" / "ingest" / "pipeline.py"
    assert len(pipeline.read_text().splitlines()) < 400
    for path in sorted((REPO / "biomedica_hf" / "ingest").rglob("*.py")):
        assert "_WORKER" not in path.read_text(), path
