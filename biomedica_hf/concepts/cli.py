"""``biomedica embed | cluster | annotation-sheets | label | concept-subsets``: click commands.

The main command group registers them with ``for c in COMMANDS: main.add_command(c)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from biomedica_hf.concepts.embed import DEFAULT_MODEL, FITS
from biomedica_hf.concepts.layout import concepts_dir
from biomedica_hf.concepts.subsets import DEFAULT_EXCLUDE

DATASET = click.argument("dataset", metavar="DIR", type=click.Path(path_type=Path, exists=True, file_okay=False))
PROGRESS = click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")


def refresh_card(dataset: Path, repo_id: str | None = None) -> Path:
    """Rewrite the dataset card: ``write_card`` picks up the concept configs, plots and section."""
    from biomedica_hf.dataset.card import write_card

    return write_card(dataset, repo_id)


@click.command("embed")
@DATASET
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Hub id or local folder (save_pretrained) of an image model with an AutoImageProcessor, "
                   "or a CLIP model SPEC (as `biomedica eval --model`: its image tower).")
@click.option("--batch", "batch_size", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cuda, cuda:1, mps, cpu.")
@click.option("--image-size", type=int, default=224, show_default=True, help="Model input side in pixels.")
@click.option("--fit", type=click.Choice(FITS), default="pad", show_default=True,
              help="pad: whole figure on a white square; crop: centre crop; squash: ignore aspect ratio.")
@click.option("--workers", type=int, default=None, help="Image decoding threads (default: min(4, CPUs)).")
@click.option("--force", is_flag=True, help="Recompute every shard (default: resume, skip finished shards).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: one task per shard on a Ray cluster (a GPU per task on CUDA).")
@click.option("--address", "ray_address", default="auto", show_default=True,
              help="Ray cluster address: auto, ray://HOST:10001, or local.")
@PROGRESS
def embed_cmd(dataset, model, batch_size, device, image_size, fit, workers, force, executor, ray_address,
              progress):
    """Image embeddings for every sample: DIR/embeddings/<subset>/NNNNNN.npy.

    \b
      biomedica embed DIR [--model facebook/dinov2-with-registers-large] [--batch N] [--device auto]

    CLS token (pooler output), float32, L2-normalised; images are read from the shards by byte
    offset. Resumable: a shard with a completion marker for the same model and settings is skipped.
    """
    from biomedica_hf.concepts.embed import embed_dataset, read_info

    folder = embed_dataset(dataset, model, batch_size=batch_size, device=device, image_size=image_size,
                           progress=progress, fit=fit, workers=workers, force=force, executor=executor,
                           address=ray_address)
    run = read_info(dataset).get("last_run", {})
    click.echo(f"Embeddings: {folder} ({len(run.get('computed', []))} shards computed, "
               f"{len(run.get('skipped', []))} already done; {run.get('samples_per_s') or '-'} images/s "
               f"on {run.get('device')})")


@click.command("cluster")
@DATASET
@click.option("--pca", "pca_dims", type=int, default=25, show_default=True, help="PCA dimensions before k-means.")
@click.option("--k", type=int, default=2000, show_default=True, help="Number of clusters (clamped to the samples).")
@click.option("--batch", "batch_size", type=int, default=16384, show_default=True,
              help="Rows per partial_fit batch (memory bound; raised to at least k).")
@click.option("--epochs", type=int, default=3, show_default=True, help="Passes of mini-batch k-means.")
@click.option("--seed", type=int, default=0, show_default=True)
@PROGRESS
def cluster_cmd(dataset, pca_dims, k, batch_size, epochs, seed, progress):
    """PCA + k-means over the embeddings: DIR/concepts/cluster_model.npz and clusters.parquet.

    \b
      biomedica cluster DIR --pca 25 --k 2000
    """
    from biomedica_hf.concepts.cluster import fit_clusters

    model = fit_clusters(dataset, pca_dims=pca_dims, k=k, batch_size=batch_size, seed=seed, epochs=epochs,
                         progress=progress)
    p = model.params
    click.echo(f"Clusters: k={p['k']} over {p['n_samples']} samples (PCA {p['pca_dims']} dims, "
               f"{100 * p['pca_explained_variance']:.0f}% of variance; {p['empty_clusters']} empty clusters)")


@click.command("annotation-sheets")
@DATASET
@click.option("--per-cluster", type=int, default=16, show_default=True, help="Thumbnails per cluster sheet.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Folder for the sheets (default DIR/concepts/sheets).")
@click.option("--seed", type=int, default=0, show_default=True, help="Which samples a sheet shows.")
@PROGRESS
def sheets_cmd(dataset, per_cluster, out, seed, progress):
    """Contact sheets per cluster + index.html + a blank annotation file for the experts.

    \b
      biomedica annotation-sheets DIR --per-cluster 16
    """
    from biomedica_hf.concepts.sheets import BLANK_FILE, annotation_sheets

    folder = annotation_sheets(dataset, per_cluster=per_cluster, out=out, seed=seed, progress=progress)
    click.echo(f"Sheets: {folder / 'index.html'}\nBlank annotation file: {folder / BLANK_FILE}")


def subset_options(f):
    """The options shared by ``label`` and ``concept-subsets`` (in --help order)."""
    options = [
        click.option("--exclude-concept", "exclude", multiple=True, default=DEFAULT_EXCLUDE, show_default=True,
                     help="Global concept left out of concept-filtered (repeat for several)."),
        click.option("--exclude-local", multiple=True, help="Local concept left out of concept-filtered."),
        click.option("--cap", type=int, default=None,
                     help="concept-balanced: samples per concept (default: the median concept size)."),
        click.option("--seed", type=int, default=0, show_default=True, help="concept-balanced sampling seed."),
        click.option("--shard-samples", type=int, default=10_000, show_default=True,
                     help="Samples per materialised subset shard."),
        click.option("--card/--no-card", default=True, show_default=True,
                     help="Rewrite README.md (configs concept-filtered / concept-balanced) and card/ plots."),
        click.option("--repo-id", default=None, help="Hub repo id named in the card's examples."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _subsets(dataset, exclude, exclude_local, cap, seed, shard_samples, card, repo_id) -> None:
    from biomedica_hf.concepts.subsets import build_concept_subsets

    configs = build_concept_subsets(dataset, exclude=exclude, exclude_local=exclude_local, cap=cap, seed=seed,
                                    shard_samples=shard_samples)
    summary = json.loads((concepts_dir(dataset) / "subsets.json").read_text())
    for name, s in summary.items():
        click.echo(f"{name}: {s['samples']} samples in {s['shards']} shards ({dataset / name})")
    click.echo("configs (one per licence subset): " + ", ".join(c["config_name"] for c in configs))
    if card:
        click.echo(f"Dataset card: {refresh_card(dataset, repo_id)}")


@click.command("label")
@DATASET
@click.argument("more_annotations", nargs=-1, type=click.Path(path_type=Path, exists=True, dir_okay=False),
                metavar="")
@click.option("--annotations", "-a", multiple=True, required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Annotation files (cluster_labels.json format), one per annotator: --annotations a.json b.json.")
@click.option("--taxonomy", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Taxonomy JSON {global: [local, ...]} (default: the shipped BIOMEDICA taxonomy).")
@click.option("--subsets/--no-subsets", default=True, show_default=True,
              help="Also build the concept-filtered and concept-balanced subsets.")
@click.option("--workers", type=int, default=None,
              help="Shards whose json members are labelled at once (default: the CPUs).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: processes on this machine; ray: one task per shard on a Ray cluster.")
@click.option("--address", "ray_address", default=None, help="Ray cluster address (auto, ray://HOST:10001, local).")
@subset_options
def label_cmd(dataset, more_annotations, annotations, taxonomy, subsets, workers, executor, ray_address, exclude,
              exclude_local, cap, seed, shard_samples, card, repo_id):
    """Majority-vote the annotators' cluster labels and propagate them to every sample.

    \b
      biomedica label DIR --annotations a.json b.json c.json

    Adds concepts / local_concepts / panel_type / panel_subtype / cluster to figures.parquet and the
    per-shard Parquet files, writes panel_type / concepts / local_concepts into each sample's json member
    of its licence shard (in place, in the room the build left: no offset moves), writes
    DIR/concepts/labels.parquet and label_report.json (ties and disagreements), then builds the concept
    subsets and refreshes the card.
    """
    from biomedica_hf.concepts.label import apply_labels

    files = list(annotations) + list(more_annotations)
    try:
        report = apply_labels(dataset, files, taxonomy=taxonomy, workers=workers or os.cpu_count() or 1,
                              executor=executor, address=ray_address)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    s = report["samples"]
    click.echo(f"Labels: {report['k'] - len(report['unlabelled_clusters'])} of {report['k']} clusters labelled by "
               f"{len(files)} annotators; {len(report['ties'])} ties, {len(report['disagreements'])} disagreements "
               f"({dataset / 'concepts' / 'label_report.json'}); {s['with_global_concept']} of {s['total']} samples have a "
               "global concept")
    stamped = report["shards_stamped"]
    click.echo(f"Labels in the licence shards' json members: {stamped['samples_written']} rewritten in place "
               f"(shards: {', '.join(f'{n} {k}' for k, n in sorted(stamped['shards'].items())) or 'none'})")
    for entry in stamped["no_room"]:
        click.echo(f"  {entry['shard']}: no room for the labels of {entry['without_room']} of {entry['samples']} "
                   f"samples (built before the json room existed?): left as it was; its labels are in "
                   f"figures.parquet and the concept configs", err=True)
    for entry in stamped["failed"]:
        click.echo(f"  {entry['shard']}: not labelled ({entry['error']}); run `biomedica verify` on the folder",
                   err=True)
    if subsets:
        _subsets(dataset, exclude, exclude_local, cap, seed, shard_samples, card, repo_id)
    elif card:
        click.echo(f"Dataset card: {refresh_card(dataset, repo_id)}")


@click.command("concept-subsets")
@DATASET
@subset_options
def subsets_cmd(dataset, exclude, exclude_local, cap, seed, shard_samples, card, repo_id):
    """(Re)build the concept-filtered and concept-balanced subsets of a labelled folder.

    \b
      biomedica concept-subsets DIR [--exclude-concept "Plots and Charts"] [--cap N]
    """
    _subsets(dataset, exclude, exclude_local, cap, seed, shard_samples, card, repo_id)


COMMANDS: list[click.Command] = [embed_cmd, cluster_cmd, sheets_cmd, label_cmd, subsets_cmd]

__all__ = ["COMMANDS", "refresh_card"]
