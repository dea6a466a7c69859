"""``biomedica panels split IMAGE...`` and ``biomedica panels DIR``: click commands.

The main command group registers :data:`COMMANDS` (``for c in COMMANDS: main.add_command(c)``). ``panels`` is a
group whose first argument is either the ``split`` subcommand or a dataset folder (then the ``dataset``
subcommand runs: ``biomedica panels DIR`` = ``biomedica panels dataset DIR``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

PROGRESS = click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
DETECTOR = click.option("--detector", default=None, metavar="transformers:PATH",
                        help="Boxes from an AutoModelForObjectDetection checkpoint (DETR / DAB-DETR, a local folder "
                             "or Hub id) instead of the CPU splitter; batched, on the GPU when there is one.")
LABELS = click.option("--labels/--no-labels", default=True, show_default=True,
                      help="Read the printed panel labels (OCR) to pair panels with subcaptions.")


class PanelsGroup(click.Group):
    """``panels DIR ...`` runs the ``dataset`` subcommand when DIR is not a subcommand's name."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["dataset", *args]
        return super().resolve_command(ctx, args)


@click.group("panels", cls=PanelsGroup)
def panels_group():
    """Compound figures -> panels with their own subcaptions.

    \b
      biomedica panels split IMAGE... [--caption TEXT] [--json]     one image at a time
      biomedica panels split --manifest FILE --json                  JSON lines {"image": PATH, "caption": TEXT}
      biomedica panels DIR [--workers N] [--executor ray]           a built dataset folder (resumable)
      biomedica panels dataset DIR ...                               the same (for a folder named "split")

    Every panel: bbox (original pixels, x1/y1 exclusive), printed label (OCR), subcaption, score, and how it
    was paired with its text (method label / position / order / shared / single) with a confidence.
    """


def _detector(spec: str | None):
    if not spec:
        return None
    from biomedica_hf.panels.detector import load_detector

    try:
        return load_detector(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--detector") from exc


def _manifest(path: Path) -> list[tuple[str, str | None]]:
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise ValueError('want an object with "image": PATH')
            caption = row.get("caption")
            if caption is not None and not isinstance(caption, str):
                raise ValueError('"caption" must be a string or null')
        except ValueError as exc:
            raise click.BadParameter(f"line {n}: {exc}", param_hint="--manifest") from exc
        items.append((row["image"], caption))
    return items


def _text(result: dict) -> str:
    lines = [f"{result['image']}: {result['width']}x{result['height']}, {len(result['panels'])} panel(s)"]
    for i, p in enumerate(result["panels"]):
        sub = (p["subcaption"] or "")[:90]
        lines.append(f"  {i}: bbox={p['bbox']} label={p['label']} -> {p['caption_label']} ({p['method']}, "
                     f"{p['confidence']:.2f}) {sub}")
    return "\n".join(lines)


@panels_group.command("split")
@click.argument("images", nargs=-1, metavar="IMAGE...")
@click.option("--caption", default=None, help="The figure's caption (the same for every IMAGE given).")
@click.option("--manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help='JSON lines {"image": PATH, "caption": TEXT or null}, one figure each.')
@click.option("--json", "as_json", is_flag=True, help="One JSON line per image (default: a readable summary).")
@LABELS
@DETECTOR
@click.option("--batch", "batch_size", type=int, default=8, show_default=True, help="Images per detector batch.")
def split_cmd(images, caption, manifest, as_json, labels, detector, batch_size):
    """Split figures into panels and give each panel its subcaption.

    \b
      biomedica panels split fig1.jpg --caption "Title. (A) ... (B) ..." --json
      biomedica panels split --manifest figures.jsonl --json > panels.jsonl

    One line per image: {"image": PATH as given, "width": W, "height": H, "panels": [{"bbox": [x0, y0, x1, y1],
    "label": "A" or null, "subcaption": TEXT or null, "score": float, "method": ..., "confidence": float,
    ...}]}. An image that cannot be read gives {"image": PATH, "error": REASON} and the exit code is 1 once
    every other image is done.
    """
    from biomedica_hf.panels.figure import figure_result, open_image, panels_from_boxes, split_figure

    items = [(i, caption) for i in images] + (_manifest(manifest) if manifest else [])
    if not items:
        raise click.UsageError("give IMAGE paths or --manifest FILE")
    det = _detector(detector)
    failed = 0
    for start in range(0, len(items), max(1, batch_size) if det else 1):
        chunk = items[start:start + (max(1, batch_size) if det else 1)]
        opened = []
        for path, cap in chunk:
            try:
                img = open_image(path)
                img.load() if det else None
                opened.append((path, cap, img, None))
            except (OSError, ValueError) as exc:    # missing, not an image, truncated, decompression bomb
                opened.append((path, cap, None, f"{type(exc).__name__}: {exc}"))
        boxes = det.detect([o[2] for o in opened if o[2] is not None]) if det else None
        k = 0
        for path, cap, img, err in opened:
            if err is None:
                try:
                    if det:
                        result = figure_result(img.size, panels_from_boxes(img, boxes[k], labels=labels), cap)
                        k += 1
                    else:
                        result = split_figure(img, cap, labels=labels)
                except OSError as exc:               # a file that opens but fails to decode
                    err = f"{type(exc).__name__}: {exc}"
            if err is not None:
                failed += 1
                result = {"error": err}
            result = {"image": path, **result}
            click.echo(json.dumps(result, ensure_ascii=False) if as_json else
                       (f"{path}: error: {err}" if err else _text(result)))
    if failed:
        click.echo(f"{failed} of {len(items)} image(s) could not be read", err=True)
        sys.exit(1)


@panels_group.command("dataset")
@click.argument("dataset", metavar="DIR", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--workers", type=int, default=1, show_default=True, help="Shards split at once.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: processes on this machine; ray: one task per shard on a Ray cluster.")
@click.option("--address", "ray_address", default=None, help="Ray cluster address (auto, ray://HOST:10001, local).")
@click.option("--force", is_flag=True, help="Split every shard again (default: resume, skip finished shards).")
@click.option("--card/--no-card", default=True, show_default=True,
              help="Rewrite README.md (configs <licence>-panels, the panels section, card/panels_sheet.png).")
@click.option("--repo-id", default=None, help="Hub repo id named in the card's examples.")
@LABELS
@DETECTOR
@PROGRESS
def dataset_cmd(dataset, workers, executor, ray_address, force, card, repo_id, labels, detector,
                progress):
    """Split every figure of a built dataset folder into panels (resumable per shard).

    \b
      biomedica panels DIR [--workers N] [--executor ray]

    Writes DIR/panels/<subset>/NNNNNN.parquet per source shard (with a completion marker), DIR/panels.parquet
    (parent key, panel index, bbox, label, subcaption, shared caption part, method, scores), the WebDataset
    configs <licence>-panels (crops: JPEG parents re-encoded at quality 95 with their ICC profile, PNG as PNG;
    txt = shared part + subcaption; json = parent key, bbox, licence), image_panel_count in figures.parquet,
    and the card's panels section. A rerun splits only shards that are new or changed, and drops the panels
    of shards that are gone.
    """
    from biomedica_hf.panels.dataset import panel_dataset

    report = panel_dataset(dataset, workers=workers, executor=executor, address=ray_address, force=force,
                           labels=labels, detector=detector, progress=progress)
    click.echo(f"Panels: {report['panels']} panels from {report['figures']} figures "
               f"({report['split']} shards split, {report['kept']} already done, {report['removed']} removed); "
               f"methods {report['methods']}")
    for entry in report["failed"]:
        click.echo(f"  {entry['shard']}: not split ({entry['error']})", err=True)
    for name, n in report["configs"].items():
        click.echo(f"{name}: {n} panels ({dataset / name})")
    if card:
        from biomedica_hf.dataset.card import write_card

        click.echo(f"Dataset card: {write_card(dataset, repo_id)}")
    if report["failed"]:
        sys.exit(1)


COMMANDS: list[click.Command] = [panels_group]

__all__ = ["COMMANDS"]
