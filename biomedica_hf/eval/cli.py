"""``biomedica eval`` and ``biomedica compare`` (registered by the top-level CLI via ``COMMANDS``)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click


def _load_summary(run: Path) -> dict:
    path = run / "summary.json" if run.is_dir() else run
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{run}: not a run folder of `biomedica eval` ({exc})") from exc
    if not isinstance(summary, dict) or "tasks" not in summary or "model" not in summary:
        raise click.BadParameter(f"{run}: summary.json lacks 'model' / 'tasks'")
    return summary


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "model"


@click.command("eval")
@click.option("--model", "model_spec", default=None,
              help="open_clip name[:pretrained_tag], hf-hub:org/name, local-dir:PATH, transformers:ID_OR_PATH, "
                   "or a model folder (open_clip layout or transformers CLIP). Required unless --list.")
@click.option("--tasks", "task_spec", default="@biomedica", show_default=True,
              help="Comma-separated task names, globs (medmnist/*), groups (@fixtures, @biomedica, @<suite>, "
                   "@domain:<d>) or retrieval:DATASET_DIR[#subset].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: eval_runs/<model>].")
@click.option("--name", default=None, help="Model name in the reports and model-index [default: the SPEC].")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="BIOMEDICA_EVAL_DIR",
              help="Local copy of the eval set(s): <suite>/*.parquet folders, biomedflickr/ [env BIOMEDICA_EVAL_DIR].")
@click.option("--fixtures-dir", type=click.Path(path_type=Path), envvar="BIOMEDICA_EVAL_FIXTURES",
              help="Raw fixture files for @fixtures [env BIOMEDICA_EVAL_FIXTURES].")
@click.option("--cache-dir", type=click.Path(path_type=Path), envvar="BIOMEDICA_EVAL_CACHE",
              help="Converted Parquet and downloads [env BIOMEDICA_EVAL_CACHE, default ~/.cache/biomedica_hf/eval].")
@click.option("--revision", default=None, help="Hub revision of BIOMEDICA/Biomedica2025EvalSet.")
@click.option("--limit", type=int, default=None, help="At most N images per task (deterministic subset).")
@click.option("--skip-missing", is_flag=True, help="Skip tasks whose data is absent instead of failing.")
@click.option("--list", "list_only", is_flag=True, help="List the resolved tasks and exit (no model is loaded).")
@click.option("-v", "--verbose", count=True, help="More logging.")
def eval_cmd(model_spec, task_spec, out, name, batch, device, data_dir, fixtures_dir, cache_dir, revision, limit,
             skip_missing, list_only, verbose):
    """Zero-shot classification and image-text retrieval of a CLIP-style model.

    \b
    Examples:
      biomedica eval --model ViT-B-16:laion2b_s34b_b88k --tasks @biomedica --data-dir evalset/
      biomedica eval --model ./my_clip --tasks @fixtures,retrieval:ds_heldout
      biomedica eval --model transformers:openai/clip-vit-base-patch32 --tasks @domain:pathology
    """
    from .evalset import DataNotFoundError
    from .runner import EvalConfig, check_data, run_eval
    from .tasks import DataContext, resolve_tasks

    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * verbose),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = DataContext.from_env(data_dir, fixtures_dir, cache_dir, revision)
    try:
        tasks = resolve_tasks(task_spec, ctx, skip_missing=skip_missing or list_only)
    except (KeyError, DataNotFoundError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    if list_only:
        for t in tasks:
            try:
                check_data(t, ctx)
                status = "data present"
            except DataNotFoundError:
                status = "data missing"
            click.echo(f"{t.name}\t{t.domain}\t{t.kind}\t{status}\t{(t.source or t.retrieval_source).describe()}")
        return
    if model_spec is None:
        raise click.UsageError("--model is required (except with --list)")
    if not tasks:
        raise click.ClickException("no task to run")
    out = out or Path("eval_runs") / _slug(model_spec)
    try:
        run_eval(model_spec, tasks, out, ctx, EvalConfig(batch=batch, limit=limit), device,
                 skip_missing=skip_missing, name=name)
    except DataNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:          # bad model SPEC
        raise click.ClickException(str(exc)) from exc
    click.echo((out / "results.md").read_text())
    click.echo(f"Run folder: {out} (tasks/*.json, summary.json, results.md, model_index.yaml, plots/)")


@click.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path, exists=True))
@click.argument("run_b", type=click.Path(path_type=Path, exists=True))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for compare.md and compare.png (default: print only).")
def compare_cmd(run_a, run_b, out):
    """Per-task and per-domain deltas of two `biomedica eval` runs (B - A)."""
    from .report import compare_markdown, plot_comparison

    a, b = _load_summary(run_a), _load_summary(run_b)
    if not set(a["tasks"]) & set(b["tasks"]):
        raise click.BadParameter("the two runs share no task", param_hint="RUN_A RUN_B")
    text = compare_markdown(a, b)
    click.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
        plot_comparison(a, b, out / "compare.png")
        click.echo(f"Wrote {out / 'compare.md'} and {out / 'compare.png'}", err=True)


COMMANDS = [eval_cmd, compare_cmd]

if __name__ == "__main__":  # pragma: no cover - `python -m biomedica_hf.eval.cli eval ...`
    group = click.Group(commands={c.name: c for c in COMMANDS})
    sys.exit(group())
