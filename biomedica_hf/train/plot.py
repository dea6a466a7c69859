"""``biomedica train-plot RUN``: a training run's ``log.jsonl`` drawn as a PNG (loss and learning rate per step).

The log is one JSON object per line (see docs/training.md): step records (``step``, ``loss``, ``lr``, ...) and
``event`` records (``start``, ``epoch_end``), the latter drawn as vertical lines at the epoch boundaries.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


def read_log(run: str | Path) -> tuple[list[dict], list[dict]]:
    """(step records, event records) of ``RUN/log.jsonl`` (or of the ``log.jsonl`` given); lines cut by a crash
    are skipped."""
    path = Path(run)
    log = path / "log.jsonl" if path.is_dir() else path
    if not log.is_file():
        raise FileNotFoundError(f"{log}: no training log (a recipe run writes OUTPUT_DIR/log.jsonl)")
    steps, events = [], []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        (events if "event" in rec else steps).append(rec)
    return steps, events


def plot_log(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw loss and learning rate against the step; returns the PNG's path (default ``RUN/training.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, events = read_log(run)
    if not steps:
        raise ValueError(f"{run}: the log has no step record yet")
    out = Path(out) if out else (Path(run) if Path(run).is_dir() else Path(run).parent) / "training.png"
    x = [r["step"] for r in steps]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    ax_loss.plot(x, [r.get("loss") for r in steps], lw=1)
    ax_loss.set_ylabel("loss")
    ax_lr.plot(x, [r.get("lr") for r in steps], lw=1, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    for e in events:
        if e.get("event") == "epoch_end":
            for ax in (ax_loss, ax_lr):
                ax.axvline(e["step"], color="grey", lw=0.5, ls="--")
    start = next((e for e in events if e.get("event") == "start"), None)
    title = Path(run).resolve().name
    if start:
        title += f" - {start.get('world_size')} process(es), {sum(start.get('rank_samples') or [])} samples/epoch"
    ax_loss.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@click.command("train-plot")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write [default: RUN/training.png]")
def train_plot(run: Path, out: Path | None) -> None:
    """Draw a training run's loss and learning rate per step as a PNG.

    \b
    RUN is a recipe's output_dir (or its log.jsonl):
      biomedica train-plot runs/cpu_smoke            # writes runs/cpu_smoke/training.png
    """
    try:
        click.echo(plot_log(run, out))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


COMMANDS = [train_plot]
