"""``biomedica decontaminate``: a thin command over :func:`biomedica_hf.eval.decontaminate`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("decontaminate")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--against", "tasks", required=True,
              help="Evaluation tasks, a registry SPEC: @fixtures, @biomedica, fixtures/bccd, retrieval:DIR, "
                   "imagefolder:PATH, npz:PATH, ... (comma-separated).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: DATASET/decontamination].")
@click.option("--threshold", type=int, default=None,
              help="Largest Hamming distance (bits of the 256-bit pHash) that counts as a near duplicate "
                   "[default: the calibrated DEFAULT_THRESHOLD].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Local copy of the eval set(s) (BIOMEDICA_EVAL_DIR).")
@click.option("--fixtures-dir", type=click.Path(path_type=Path), help="Raw fixture files (BIOMEDICA_EVAL_FIXTURES).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Converted Parquet cache (BIOMEDICA_EVAL_CACHE).")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def decontaminate_cmd(dataset, tasks, out, threshold, data_dir, fixtures_dir, cache_dir, verbose):
    """Find training samples of DATASET whose image near-duplicates an evaluation image.

    \b
    Writes into --out: exclusions.txt (keys, one per line: pass it to load_biomedica(exclude=...) or the
    recipes), pairs.parquet (task, eval image, key, distance), report.json (counts per task, threshold,
    hash) and contact_sheet.png (example pairs). Evaluation images are hashed with the folder's hash
    definition (build_summary.json "phash"; none = the legacy phash256 of older code), so the training hashes
    come from figures.parquet's phash column; shard images are hashed only where it lacks them (or where the
    folder's definition is unknown to this code: then everything is hashed with today's).

    \b
      biomedica decontaminate ds --against @fixtures
      biomedica decontaminate ds --against @biomedica --data-dir evalset/ --threshold 16
    """
    import logging

    from biomedica_hf.eval.decontaminate import decontaminate
    from biomedica_hf.eval.tasks.base import DataContext
    from biomedica_hf.layout import DECONTAMINATION_DIR
    from biomedica_hf.neardup.groups import DEFAULT_THRESHOLD

    logging.basicConfig(level=max(logging.WARNING - 10 * verbose, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = DataContext.from_env(data_dir, fixtures_dir, cache_dir)
    report = decontaminate(dataset, tasks, out, threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                           ctx=ctx, progress=True)
    where = out or Path(dataset) / DECONTAMINATION_DIR
    click.echo(f"{report['training_samples']:,} training samples ({report['training_hashes_from']}), "
               f"threshold {report['threshold']} bits of {report['hash']}")
    for name, t in report["tasks"].items():
        click.echo(f"  {name}: {t['contaminated_eval_images']:,} of {t['eval_images']:,} eval images matched by "
                   f"{t['matched_training_samples']:,} training samples")
    click.echo(f"{report['excluded_keys']:,} keys excluded: {where / 'exclusions.txt'} (report.json, pairs.parquet, "
               "contact_sheet.png beside it)")


COMMANDS = [decontaminate_cmd]
