"""``biomedica index`` and ``biomedica serve`` (registered by the main CLI from ``COMMANDS``)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from biomedica_hf.io.sizes import human_size, parse_size
from biomedica_hf.search.dense import FLAT_MAX


def _parse_bytes(text: str) -> int:
    """``2GB`` -> 2 * 2**30: this command's sizes count in powers of 1024, with or without the ``i``."""
    try:
        return parse_size(text, binary=True)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("index")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--encoder", required=True, metavar="SPEC",
              help="a CLIP model SPEC (as `biomedica eval --model`: NAME[:TAG], clip:NAME[@TAG], hf-hub:ORG/NAME, "
                   "local-dir:PATH, transformers:ID_OR_PATH, a model folder) | hf:PATH | st:PATH | minilm | "
                   "text=SPEC,image=SPEC (separate spaces, e.g. text=minilm,image=hf:/models/dinov2).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Index folder [default: DATASET/search_index].")
@click.option("--memory-budget", default="2GB", show_default=True,
              help="RAM for the vector indexes together; above it IVF-PQ replaces flat/IVF-Flat.")
@click.option("--flat-max", type=int, default=FLAT_MAX, show_default=True,
              help="Up to this many vectors: exact IndexFlatIP; above: IVF.")
@click.option("--chunk-size", type=int, default=2048, show_default=True, help="Rows per embedding chunk (resume unit).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Encoder batch size.")
@click.option("--no-reuse-embeddings", is_flag=True, help="Ignore DATASET/embeddings/ from the concept stage.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def index_cmd(dataset: Path, encoder: str, out: Path | None, memory_budget: str, flat_max: int, chunk_size: int,
              batch_size: int, no_reuse_embeddings: bool, no_progress: bool) -> None:
    """Build a search index (image + caption vectors, BM25, metadata) for a dataset folder.

    \b
    Resumable: finished embedding chunks are kept; rerun the same command after an interruption.
      biomedica index ds --encoder clip:ViT-B-32@/models/biomedclip.pt
      biomedica index ds --encoder text=minilm,image=hf:/models/dinov2-base --memory-budget 8GB
    """
    from biomedica_hf.search.build import IndexConfig, build_search_index

    cfg = IndexConfig(encoder=encoder, memory_budget=_parse_bytes(memory_budget), chunk_size=chunk_size,
                      batch_size=batch_size, flat_max=flat_max, reuse_embeddings=not no_reuse_embeddings,
                      progress=not no_progress)
    try:
        path = build_search_index(dataset, out, cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    manifest = json.loads((path / "index.json").read_text())
    click.echo(f"Index: {path}  ({manifest['dataset']['num_figures']} figures)")
    for name, p in manifest["dense"].items():
        click.echo(f"  {name:8s} {p['factory']:18s} {p['ntotal']} x {p['dim']}  ~{human_size(p['estimated_bytes'])}")
    click.echo(f"  bm25     captions + references   ({manifest['timings']['total_s']:.1f} s in all)")


@click.command("serve")
@click.argument("index", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--dataset", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Dataset folder with the shards (images) [default: the one recorded in index.json].")
@click.option("--max-upload", default="10MB", show_default=True, help="Largest accepted request body / image.")
@click.option("--mmap", is_flag=True, help="Memory-map IVF indexes instead of loading them.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch/FAISS threads per query (requests run concurrently in a thread pool).")
@click.option("--log-level", default="info", show_default=True)
def serve_cmd(index: Path, host: str, port: int, dataset: Path | None, max_upload: str, mmap: bool, threads: int,
              log_level: str) -> None:
    """Serve the search API and page (http://HOST:PORT/, API docs at /docs)."""
    import uvicorn

    from biomedica_hf.search.app import Limits, create_app
    from biomedica_hf.search.engine import SearchEngine

    engine = SearchEngine(index, dataset=dataset, mmap=mmap, threads=threads)
    app = create_app(engine, Limits(max_upload_bytes=_parse_bytes(max_upload)))
    click.echo(f"Serving {index} ({len(engine.meta)} figures) on http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


COMMANDS = [index_cmd, serve_cmd]
