"""``biomedica caption IMAGE|DIR|GLOB... --model DIR``: register ``COMMANDS`` on the main click group."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("caption")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="fine-tuned model folder (merged) or LoRA adapter folder")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write one JSON line per image ({\"image\", \"caption\"}) to this file [default: stdout "
                   "as JSON lines when there are several images]")
@click.option("--prompt", default=None, help="instruction (default: 'Describe this figure.')")
@click.option("--task", type=click.Choice(["caption", "reference", "concepts"]), default="caption", show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--longest-edge", default=None, type=int, help="resize the image's longest edge (image-token budget)")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def caption(images: tuple[str, ...], model_dir: str, out: Path | None, prompt: str | None, task: str,
            max_new_tokens: int, longest_edge: int | None, no_progress: bool) -> None:
    """Caption figures with a SmolVLM fine-tuned by finetune/smolvlm/train.py.

    \b
    IMAGES are image files, folders (searched recursively) or globs ('figs/*.png'):
      biomedica caption figure.jpg --model runs/vlm/merged          # prints the caption
      biomedica caption figs/ --model runs/vlm/merged --out captions.jsonl
    One JSON line per image: {"image": PATH, "caption": TEXT}; an unreadable image gets
    "caption": null and an "error". Exits non-zero when no image could be captioned.
    """
    from biomedica_hf.vlm.data import PROMPTS
    from biomedica_hf.vlm.infer import caption_images, find_images, generate_caption, load_for_inference

    try:
        paths = find_images(images)
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="IMAGES") from exc
    model, processor = load_for_inference(model_dir)
    text_prompt = prompt or PROMPTS[task]
    single = len(images) == 1 and Path(images[0]).is_file() and out is None
    if single:
        click.echo(generate_caption(model, processor, str(paths[0]), text_prompt, max_new_tokens, longest_edge))
        return
    rows = caption_images(model, processor, paths, text_prompt, max_new_tokens, longest_edge,
                          progress=not no_progress and out is not None)
    ok = failed = 0
    if out is None:
        for row in rows:
            ok, failed = ok + (row["caption"] is not None), failed + (row["caption"] is None)
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        from biomedica_hf.io.atomic import atomic_path

        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                ok, failed = ok + (row["caption"] is not None), failed + (row["caption"] is None)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        click.echo(f"{ok} captions, {failed} unreadable images -> {out}", err=True)
    if not ok:
        raise click.ClickException(f"no image could be captioned ({failed} unreadable)")


COMMANDS = [caption]
