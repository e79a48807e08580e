"""`molret index ...` subcommands (registered by molret.cli); heavy imports inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Build vector indexes from molecule libraries or description files.")


@app.command()
def build(
    bundle: Annotated[Path, typer.Option(help="bundle directory (from `molret export`)")],
    library: Annotated[
        Path,
        typer.Option(
            help="compound library (.smi, .csv, .tsv, optionally .gz, or .parquet); for "
            "--kind text a TSV with CID, SMILES, description"
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="index directory; an interrupted build there is resumed")
    ],
    workers: Annotated[int, typer.Option(help="featurizer processes (1 = in-process)")] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Ray cluster address: featurize shards as Ray tasks (needs the cluster extra)",
        ),
    ] = None,
    kind: Annotated[
        str, typer.Option(help="molecule (embed SMILES) or text (embed descriptions)")
    ] = "molecule",
    dtype: Annotated[str, typer.Option(help="vector storage: f16, i8 or f32")] = "f16",
    connectivity: Annotated[int, typer.Option(help="HNSW edges per node (M)")] = 16,
    expansion_add: Annotated[int, typer.Option(help="HNSW ef at construction")] = 128,
    expansion_search: Annotated[int, typer.Option(help="HNSW ef at search (default)")] = 64,
    limit: Annotated[int | None, typer.Option(help="read at most this many library rows")] = None,
    shard_size: Annotated[
        int, typer.Option(help="rows per shard (unit of work and of resume)", hidden=True)
    ] = 4096,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Embed a library with a bundle into a USearch index (resumable)."""
    from molret.bundle import BundleError
    from molret.engine.index_build import build_index
    from molret.engine.index_store import IndexStoreError

    if kind not in ("molecule", "text"):
        typer.echo(f"error: --kind must be molecule or text, got {kind!r}", err=True)
        raise typer.Exit(2)
    try:
        report = build_index(
            bundle,
            library,
            out,
            workers=workers,
            kind=kind,
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
            shard_size=shard_size,
            ray_address=ray,
            progress=not quiet,
            limit=limit,
        )
    except (BundleError, IndexStoreError, FileNotFoundError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"index {out}: {report.summary()}")
