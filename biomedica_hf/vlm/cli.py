"""``biomedica caption IMAGE --model DIR``: register ``COMMANDS`` on the main click group."""
from __future__ import annotations

import click


@click.command("caption")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="fine-tuned model folder (merged) or LoRA adapter folder")
@click.option("--prompt", default=None, help="instruction (default: 'Describe this figure.')")
@click.option("--task", type=click.Choice(["caption", "reference", "concepts"]), default="caption", show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--longest-edge", default=None, type=int, help="resize the image's longest edge (image-token budget)")
def caption(image: str, model_dir: str, prompt: str | None, task: str, max_new_tokens: int,
            longest_edge: int | None) -> None:
    """Generate a caption for IMAGE with a SmolVLM fine-tuned by finetune/smolvlm/train.py."""
    from .data import PROMPTS
    from .infer import generate_caption, load_for_inference

    model, processor = load_for_inference(model_dir)
    click.echo(generate_caption(model, processor, image, prompt or PROMPTS[task], max_new_tokens, longest_edge))


COMMANDS = [caption]
