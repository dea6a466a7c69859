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
                   "clip:NAME[@tag] (= NAME:tag), or a model folder (open_clip layout or transformers CLIP). "
                   "Required unless --list.")
@click.option("--tasks", "task_spec", default="@biomedica", show_default=True,
              help="Comma-separated task names, globs (medmnist/*), groups (@fixtures, @biomedica, @<suite>, "
                   "@domain:<d>), retrieval:DATASET_DIR[#config], or your own labelled set: imagefolder:PATH, "
                   "npz:PATH, csv:PATH, parquet:PATH, hf:ORG/NAME[:config] (or just the path).")
@click.option("--protocol", "protocols", default="zero-shot", show_default=True,
              help="Comma-separated: zero-shot, linear-probe (logistic regression on frozen image embeddings of "
                   "the train split, C chosen on val), few-shot (k images per class, mean ± s.d. over seeds).")
@click.option("--shots", default="1,2,4,8,16", show_default=True, help="Few-shot k values (images per class).")
@click.option("--seeds", type=int, default=5, show_default=True, help="Few-shot draws per k (seeds 0..N-1).")
@click.option("--task-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="YAML/JSON for your own sets: name, domain, classes (order), ordered (adds quadratic weighted "
                   "kappa), phrases, templates, primary_metric, license, image_column, label_column. "
                   "Default: task.yaml / task.json inside the set's folder.")
@click.option("--classes", default=None,
              help="Comma-separated class names in label-index order (npz / integer labels), or the class order.")
@click.option("--retrieval-split", default="auto", show_default=True,
              help="Retrieval folders: auto (the held-out 'test' split when figures.parquet has a split column "
                   "with test rows, else everything), all, or a split name.")
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
def eval_cmd(model_spec, task_spec, protocols, shots, seeds, task_file, classes, retrieval_split, out, name, batch,
             device, data_dir, fixtures_dir, cache_dir, revision, limit, skip_missing, list_only, verbose):
    """Zero-shot classification, linear probe, few-shot and image-text retrieval of a CLIP-style model.

    \b
    Examples:
      biomedica eval --model ViT-B-16:laion2b_s34b_b88k --tasks @biomedica --data-dir evalset/
      biomedica eval --model ./my_clip --tasks @fixtures,retrieval:ds_heldout
      biomedica eval --model ./my_clip --tasks imagefolder:./my_set --protocol zero-shot,linear-probe,few-shot
      biomedica eval --model ./my_clip --tasks npz:breastmnist.npz --classes malignant,benign
      biomedica eval --model transformers:openai/clip-vit-base-patch32 --tasks @domain:pathology
    """
    from biomedica_hf.eval.evalset import DataNotFoundError
    from biomedica_hf.eval.runner import EvalConfig, check_data, run_eval, task_provenance
    from biomedica_hf.eval.tasks import DataContext, UserDataError, resolve_tasks

    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * verbose),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = DataContext.from_env(data_dir, fixtures_dir, cache_dir, revision)
    try:
        cfg = EvalConfig(batch=batch, limit=limit, protocols=tuple(p.strip() for p in protocols.split(",") if p.strip()),
                         shots=tuple(int(k) for k in shots.split(",") if k.strip()), seeds=tuple(range(seeds)))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    class_list = [c.strip() for c in classes.split(",")] if classes else None
    try:
        tasks = resolve_tasks(task_spec, ctx, skip_missing=skip_missing or list_only, task_file=task_file,
                              classes=class_list, retrieval_split=retrieval_split)
    except (KeyError, DataNotFoundError, UserDataError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    if list_only:
        for t in tasks:
            try:
                check_data(t, ctx)
                status = "data present"
                where = task_provenance(t, ctx)["source"]
            except (DataNotFoundError, UserDataError) as exc:
                status = "data missing" if isinstance(exc, DataNotFoundError) else f"unreadable: {exc}"
                where = (t.source or t.retrieval_source).describe()
            click.echo(f"{t.name}\t{t.domain}\t{t.kind}\t{status}\t{where}")
        return
    if model_spec is None:
        raise click.UsageError("--model is required (except with --list)")
    if not tasks:
        raise click.ClickException("no task to run")
    out = out or Path("eval_runs") / _slug(model_spec)
    try:
        run_eval(model_spec, tasks, out, ctx, cfg, device, skip_missing=skip_missing, name=name)
    except (DataNotFoundError, UserDataError) as exc:
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
    from biomedica_hf.eval.report import compare_markdown, plot_comparison

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
