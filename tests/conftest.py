"""Shared pytest fixtures (the real PMC data in ../shared/fixtures, built datasets, one torch thread) and the test
kinds of ``make test-fast``. Helpers that tests import live in ``tests/support/`` (``from support.paths import
REPO``), never here: a test never writes ``from conftest import``."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from support.paths import ARTICLES, FILELISTS, FIXTURES, PMC, PUBMED  # noqa: E402 - after the offline switches
from support.recipes import BIN, RECIPE_ENV  # noqa: E402


@pytest.fixture(scope="session")
def pmc_dir() -> Path:
    if not PMC.is_dir():
        pytest.skip(f"fixtures not found at {PMC}")
    return PMC


@pytest.fixture(scope="session")
def articles_dir(pmc_dir) -> Path:
    return ARTICLES


@pytest.fixture(scope="session")
def filelists_dir(pmc_dir) -> Path:
    return FILELISTS


@pytest.fixture(scope="session")
def pubmed_dir() -> Path:
    return PUBMED


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine a second torch
    process makes OpenMP workers spin: one thread is ~3x faster there under contention. Use per module:
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def recipe_dataset(tmp_path_factory, articles_dir) -> Path:
    """The fixture articles built with 4-sample shards (several per subset for 2 ranks), shared read-only by
    the CLIP and SmolVLM recipe tests."""
    import subprocess

    out = tmp_path_factory.mktemp("recipes") / "ds"
    r = subprocess.run([str(BIN / "biomedica"), "build", "--input", str(ARTICLES), "--out", str(out), "--no-progress",
                        "--shard-samples", "4"], capture_output=True, text=True, env=RECIPE_ENV, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def built_dataset(tmp_path_factory) -> Path:
    """The real PMC fixture articles built by `biomedica build` (the command a user runs), once per test module."""
    import subprocess

    if not (FIXTURES / "pmc" / "articles").is_dir():
        pytest.skip("PMC fixtures absent")
    out = tmp_path_factory.mktemp("ds") / "ds"
    exe = Path(sys.executable).with_name("biomedica")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "biomedica_hf.cli"]
    subprocess.run([*cmd, "build", "--input", str(FIXTURES / "pmc" / "articles"), "--out", str(out), "--no-progress"],
                   check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


# ------------------------------------------------------------------ test kinds (`make test-fast` leaves three out)
# New tests mark themselves (`@pytest.mark.slow`, `@pytest.mark.browser`, `@pytest.mark.multiprocess`); the tests
# below, written before the markers, are marked here by node id (a file, or file::test). See docs/contributing.md.
KIND_OF_TESTS = {
    "browser": ["tests/search/test_search_page.py"],                     # a real Chromium (playwright)
    "multiprocess": [                                                    # several processes: DDP, Ray, pools, kills
        "tests/ingest/test_executors.py",
        "tests/ingest/test_partitioned_build.py::test_killed_worker_partition_is_retried",
        "tests/ingest/test_partitioned_build.py::test_killing_the_driver_leaves_no_orphan_workers",
        "tests/dataset/test_loader.py::test_units_divisible_by_ranks_times_workers",
        "tests/dataset/test_loader.py::test_dataloader_two_workers_yields_every_sample_once",
        "tests/dataset/test_loader_hub.py::test_hub_dataloader_workers_and_resume",
        "tests/search/test_search.py::test_concurrent_requests_on_a_real_uvicorn_server",
        "tests/search/test_search_thumbs.py::test_eight_concurrent_thumbnails_of_a_12000px_figure_stay_under_1gb",
        "tests/test_cli_errors.py::test_build_ray_without_cluster_hints_address_local",
        "tests/train/test_clip_recipe.py::test_gathered_loss_equals_single_process",
        "tests/train/test_clip_recipe.py::test_open_clip_two_processes_resume_and_export",
        "tests/train/test_clip_recipe.py::test_transformers_lora_two_processes",
        "tests/train/test_smolvlm_recipe.py::test_train_two_processes_exports_and_card",
        "tests/train/test_smolvlm_recipe.py::test_each_rank_reads_only_its_share",
        "tests/train/test_smolvlm_recipe.py::test_resume_from_checkpoint_repeats_the_same_steps",
        "tests/train/test_smolvlm_recipe.py::test_caption_command_merged_and_adapter",
    ],
    "slow": [                                                            # minutes, or the end-to-end runs
        "tests/test_smoke.py",
        "tests/train/test_openclip_train.py",
        # two builds of panels, flat then grouped (7 s on 2 idle cores; its concept twin stays in the fast loop)
        "tests/panels/test_panels_dataset.py::test_rerun_over_flat_panel_shards_of_before_moves_them_into_groups",
        # integration tests of 10 s or more on the busy 2-core build machine (pytest --durations, 2026-12-05):
        # `make test` runs them, the fast loop does not
        "tests/ingest/test_build.py::test_cli_build_sample_and_inspect",
        "tests/ingest/test_build.py::test_sigkill_and_rerun_gives_identical_shards",
        "tests/ingest/test_build_remote.py::test_cloud_build_with_faults_then_retry",
        "tests/ingest/test_build_remote.py::test_enrich_command_against_loopback_eutils",
        "tests/ingest/test_build_remote.py::test_legacy_mirror_build_with_truncated_and_missing_packages",
        "tests/ingest/test_hostile_build.py::test_archive_budget_cli_flags",
        "tests/ingest/test_hostile_build.py::test_disk_full_stops_the_build_and_a_rerun_repairs",
        "tests/ingest/test_hostile_build.py::test_disk_full_while_downloading_stops_the_build",
        "tests/ingest/test_hostile_build.py::test_max_pixels_reduces_within_budget",
        "tests/ingest/test_hostile_build.py::test_zero_member_over_budget_is_ledgered_not_written",
        "tests/ingest/test_hostile_fetch.py::test_trickling_server_fails_at_the_deadline",
        "tests/ingest/test_inspect_cli.py::test_a_folder_of_articles_and_packages_shows_every_article",
        "tests/ingest/test_inspect_cli.py::test_an_article_folder_is_inspected_like_its_xml",
        "tests/ingest/test_media.py::test_all_fixture_images_process",
        "tests/ingest/test_partitioned_build.py::test_a_second_build_into_the_same_folder_is_refused",
        "tests/ingest/test_partitioned_build.py::test_hostile_names_and_malformed_metadata_leave_the_others_written",
        "tests/ingest/test_partitioned_build.py::test_partitions_splits_and_configs",
        "tests/ingest/test_partitioned_build.py::test_update_adds_reversions_retracts_and_withdraws",
        "tests/ingest/test_progress.py::test_a_terminal_gets_one_bar_over_articles_with_rate_and_eta",
        "tests/ingest/test_progress.py::test_no_progress_is_quiet",
        "tests/ingest/test_progress.py::test_without_a_terminal_a_line_every_n_seconds",
        "tests/clip/test_clip_model.py::test_ranks_sharing_a_tokenizer_folder_never_read_half_a_file",
        "tests/concepts/test_concepts.py::test_concept_subsets_materialise_and_load",
        "tests/concepts/test_concepts.py::test_label_cli_builds_subsets_and_card",
        "tests/concepts/test_concepts.py::test_labels_are_written_into_the_licence_shards_in_place",
        "tests/concepts/test_concepts.py::test_labels_survive_an_update_build",
        "tests/concepts/test_concepts.py::test_streaming_fit_matches_one_shot_with_bounded_memory",
        "tests/dataset/test_card.py::test_card_is_reproducible",
        "tests/dataset/test_card.py::test_card_takes_the_dataset_as_a_positional_argument_like_its_siblings",
        "tests/dataset/test_enrich.py::test_cli_enrich_refresh_and_exit_codes",
        "tests/dataset/test_hub.py::test_verify_cli_fast_and_deep",
        "tests/eval/test_decontaminate.py::test_cli_against_a_registry_spec_and_the_index_hashes",
        "tests/eval/test_eval_metrics.py::test_linear_probe_and_few_shot_on_separable_embeddings",
        "tests/eval/test_eval_models.py::test_cli_eval_writes_run_and_compare",
        "tests/eval/test_eval_models.py::test_transformers_folder_train_save_reload",
        "tests/eval/test_eval_user.py::test_imagefolder_one_command_all_protocols",
        "tests/eval/test_eval_user.py::test_npz_needs_class_names_then_runs_with_qwk",
        "tests/neardup/test_neardup.py::test_threshold_separates_copies_from_distinct_figures",
        "tests/search/test_search.py::test_every_image_query_finds_its_own_figure_first",
        "tests/search/test_search.py::test_index_folder_manifest_and_metadata",
        "tests/search/test_search_rag.py::test_example_script_end_to_end",
        "tests/search/test_search_rag.py::test_retriever_passages_and_prompt",
        "tests/test_cli_errors.py::test_build_folder_without_article_names_what_was_looked_for",
        "tests/test_cli_errors.py::test_build_partly_failed_exits_0_with_its_summary",
        "tests/test_cli_errors.py::test_caption_with_a_clip_folder_is_wrong_model",
        "tests/test_cli_errors.py::test_debug_flag_and_env_show_the_traceback",
        "tests/test_cli_errors.py::test_embed_default_model_offline_is_one_line_naming_model_flag",
        "tests/test_cli_errors.py::test_embed_without_network_names_the_hub_and_the_flag",
        "tests/test_cli_errors.py::test_eval_pretrained_tag_offline_is_one_line",
        "tests/test_cli_errors.py::test_inspect_non_xml_exits_nonzero_with_one_line",
        "tests/test_test_kinds.py::test_the_markers_leave_out_browser_multiprocess_and_slow_tests",
        "tests/train/test_clip_recipe.py::test_open_clip_export_round_trip_and_hf_conversion",
        "tests/train/test_clip_recipe.py::test_transformers_export_every_entry_point_matches_open_clip",
        "tests/train/test_clip_recipe.py::test_transformers_lora_export_round_trip",
        # this round's integration tests of ~3 s or more on idle cores (pytest --durations, 2026-12-05): without them
        # `make test-fast` fits its 2 minutes; the stage-boundary and damaged-file matrices keep their single cases
        # (lost manifest, SIGKILL hook, truncated summary, ...) in the fast loop
        "tests/ingest/test_plan.py::test_dry_run_cli_fetches_and_writes_nothing_and_measures_rates_on_a_build",
        "tests/ingest/test_resume_state.py::test_build_killed_at_every_stage_boundary",
        "tests/ingest/test_resume_state.py::test_each_work_file_damaged_is_redone",
        "tests/ingest/test_resume_state.py::test_update_killed_at_every_stage_boundary",
        "tests/dataset/test_hub.py::test_flat_and_sub_folder_layouts_push_and_read_back",
        "tests/dataset/test_hub.py::test_push_commits_fewer_than_100_files_at_a_time",
        "tests/dataset/test_loader_hub.py::test_stream_pins_the_commit_its_index_came_from",
        "tests/dataset/test_publishing.py::test_decontaminate_with_any_out_updates_the_card_and_push_uploads_the_report",
        "tests/dataset/test_publishing.py::test_webdataset_features_keep_the_labels_of_a_labelled_folder",
        "tests/eval/test_eval_models.py",
        "tests/io/test_io.py::test_a_connection_dropped_mid_body_is_retried",
        "tests/panels/test_detector.py::test_cli_split_with_detector",
        "tests/panels/test_panels_hub.py",
        "tests/search/test_search.py::test_index_resumes_finished_chunks",
        "tests/test_readme.py::test_runnable_blocks_run_on_the_sample_without_warnings",
    ],
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid.split("[", 1)[0]
        for kind, prefixes in KIND_OF_TESTS.items():
            if any(node == p or node.startswith(p + "::") or (p.endswith(".py") and node.startswith(p))
                   for p in prefixes):
                item.add_marker(getattr(pytest.mark, kind))
    items[:] = heavy_files_first(items)


def heavy_files_first(items: list) -> list:
    """The test files that hold a slow, multiprocess or browser test first, the others after them, each file's tests
    in their own order. `make test` runs a file per xdist worker at a time in this order (``--dist loadfile
    --no-loadscope-reorder``): the long files start early and the many short ones fill the end, so the two workers
    finish together. xdist's own order (most tests first) sent the 100 s smoke file out last, to run alone: 811 s
    against 713 s on the two workers in the 2026-12-06 run; this order gives 762 s and 762 s (the same durations
    replayed). Within a file nothing moves (module fixtures are shared in file order)."""
    heavy = {item.nodeid.split("::", 1)[0] for item in items
             if any(item.get_closest_marker(kind) for kind in KIND_OF_TESTS)}
    return sorted(items, key=lambda item: item.nodeid.split("::", 1)[0] not in heavy)    # stable


def pytest_assertrepr_compare(config, op, left, right):
    """``{path: bytes}`` == ``{path: bytes}`` (two built folders' files) explained by path: which are missing on each
    side, which differ (size, sha256, first differing byte). pytest's own explanation runs difflib over the bytes'
    reprs, which takes minutes for a folder of shards (a failing resume test ran into its 600 s timeout there)."""
    if op != "==" or not (isinstance(left, dict) and isinstance(right, dict)):
        return None
    if not all(isinstance(v, (bytes, bytearray)) for v in (*left.values(), *right.values())) or not (left or right):
        return None
    import difflib
    import hashlib

    def desc(b: bytes) -> str:
        return f"{len(b)} B sha256 {hashlib.sha256(b).hexdigest()[:12]}"

    lines = [f"two folders' files differ ({len(left)} files left, {len(right)} right):"]
    lines += [f"only left:  {k}" for k in sorted(left.keys() - right.keys())][:20]
    lines += [f"only right: {k}" for k in sorted(right.keys() - left.keys())][:20]
    differ = [k for k in sorted(left.keys() & right.keys()) if left[k] != right[k]]
    for k in differ[:20]:
        a, b = left[k], right[k]
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        lines.append(f"differ:     {k}: {desc(a)} != {desc(b)}, first at byte {at}")
        if k.endswith((".json", ".jsonl", ".txt")) and len(a) < 20000 and len(b) < 20000:
            diff = difflib.unified_diff(a.decode(errors="replace").splitlines(),
                                        b.decode(errors="replace").splitlines(), lineterm="", n=1)
            lines += [f"    {line}" for line in diff][:40]
    if len(differ) > 20:
        lines.append(f"... and {len(differ) - 20} more differing files")
    return lines
