"""The `molret` command: thin subcommands that parse arguments and call the library.

Heavy imports (torch, the trainer) happen inside the subcommands, so `molret --help` and the
serving subcommands work on an install without the `train` extra.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="molret",
    help="Cross-modal text <-> molecule retrieval: train, export, index, serve, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="training config YAML (see configs/)")],
    out: Annotated[Path, typer.Option(help="run directory; an existing one is resumed")],
    data: Annotated[
        str | None,
        typer.Option(help="ChEBI-20 folder (train.txt, validation.txt); default $MOLRET_DATA"),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="stop after this many optimizer steps")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="override optim.seed")] = None,
    epochs: Annotated[int | None, typer.Option(help="override optim.epochs")] = None,
    cache: Annotated[
        Path | None, typer.Option(help="cache folder; default $MOLRET_CACHE or ~/.cache/molret")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads (1 is fastest when the other core is busy)"),
    ] = None,
    verbose: bool = False,
) -> None:
    """Train the dual encoder; writes checkpoints, metrics.jsonl and eval.json into OUT."""
    _setup_logging(verbose)
    from molret.data import DataNotFound
    from molret.trainer.config import load_config
    from molret.trainer.loop import train as run_training

    overrides: dict[str, object] = {}
    if seed is not None:
        overrides["optim.seed"] = seed
    if epochs is not None:
        overrides["optim.epochs"] = epochs
    try:
        cfg = load_config(config, overrides)
    except (OSError, ValueError) as exc:
        raise _fail(f"config {config}: {exc}") from exc
    try:
        result = run_training(cfg, data, out, max_steps=max_steps, cache_dir=cache, threads=threads)
    except DataNotFound as exc:
        raise _fail(str(exc)) from exc
    if result:
        typer.echo(json.dumps({"run": str(out), "holdout": result["holdout"]}, indent=2))


@app.command("eval")
def evaluate(
    model: Annotated[Path, typer.Option(help="run directory (or bundle)")],
    pairs: Annotated[Path, typer.Option(help="TSV with CID, SMILES, description: the queries")],
    candidates: Annotated[
        Path | None, typer.Option(help="TSV with CID, SMILES[, description]: the candidate pool")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object on stdout")
    ] = False,
    cache: Annotated[Path | None, typer.Option(help="cache folder for text states")] = None,
) -> None:
    """Rank each query against the candidate pool, both directions (Text2Mol protocol)."""
    _setup_logging(False)
    from molret.trainer.run_eval import evaluate_run

    try:
        result = evaluate_run(model, pairs, candidates, cache_dir=cache)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result))
        return
    for direction in ("text_to_molecule", "molecule_to_text"):
        m = result[direction]
        typer.echo(
            f"{direction:17s} hits@1 {100 * m['hits@1']:5.1f}  hits@10 {100 * m['hits@10']:5.1f}  "
            f"MRR {100 * m['mrr']:5.1f}  mean rank {m['mean_rank']:8.1f}"
        )
    typer.echo(f"queries {result['n_queries']}, candidates {result['n_candidates']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
