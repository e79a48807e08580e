"""The `molret` command: thin subcommands that parse arguments and call the library.

Heavy imports (torch, the trainer) happen inside the subcommands, so `molret --help` and the
serving subcommands work on an install without the `train` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from molret.logs import setup_logging
from molret.quickstart import register_quickstart

app = typer.Typer(
    name="molret",
    help="Cross-modal text <-> molecule retrieval: train, export, index, serve, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
    setup_logging(verbose)
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
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads for a bundle (default: all cores)")
    ] = None,
) -> None:
    """Rank each query against the candidate pool, both directions (Text2Mol protocol).

    A bundle is evaluated with ONNX Runtime only (no torch needed); a run directory with the
    PyTorch model.
    """
    setup_logging(False)
    try:
        if (model / "manifest.json").is_file():
            result = _evaluate_bundle(model, pairs, candidates, threads)
        else:
            from molret.trainer.run_eval import evaluate_run

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


def _evaluate_bundle(
    bundle_dir: Path, pairs: Path, candidates: Path | None, threads: int | None
) -> dict[str, Any]:
    from molret.bundle import load_bundle
    from molret.engine.runtime import BundleEmbedder
    from molret.evaluation import evaluate_pairs

    embedder = BundleEmbedder(load_bundle(bundle_dir), threads=threads)
    return evaluate_pairs(embedder, pairs, candidates)


def _parse_buckets(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    try:
        buckets = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError as exc:
        raise _fail(f"--buckets must look like 32x80,64x160 (got {text!r})") from exc
    if any(len(b) != 2 or min(b) <= 0 for b in buckets):
        raise _fail(f"--buckets must look like 32x80,64x160 (got {text!r})")
    return buckets  # type: ignore[return-value]


@app.command()
def export(
    model: Annotated[Path, typer.Option(help="training run directory")],
    out: Annotated[Path, typer.Option(help="bundle directory to write")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 (GPU) or int8 (CPU)")] = "fp32",
    tensorrt: Annotated[
        bool, typer.Option("--tensorrt", help="also build TensorRT FP16 plans (needs a GPU)")
    ] = False,
    buckets: Annotated[
        str | None,
        typer.Option(help="molecule size buckets as NODESxEDGES list; default 32x80,...,256x640"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="ChEBI-20 folder for the parity check; default $MOLRET_DATA"),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
) -> None:
    """Export both towers to ONNX (parity-checked against PyTorch) as a checksummed bundle."""
    setup_logging(False)
    from molret.export.bundle_export import ExportOptions, export_bundle
    from molret.export.tensorrt import TensorRTUnavailable

    parsed = _parse_buckets(buckets)
    options = ExportOptions(
        precision=precision,
        tensorrt=tensorrt,
        data_dir=Path(data) if data else None,
        overwrite=overwrite,
        **({"buckets": parsed} if parsed else {}),
    )
    try:
        manifest = export_bundle(model, out, options)
    except TensorRTUnavailable as exc:
        raise _fail(str(exc), code=3) from exc
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    for name, report in manifest.get("parity", {}).items():
        typer.echo(
            f"parity {name}: min cosine text {report['min_cosine_text']:.6f}, "
            f"molecules {report['min_cosine_molecule']:.6f} "
            f"({report['n_texts']} texts, {report['n_molecules']} molecules)"
        )
    typer.echo(f"bundle {out} ({manifest['precision']}, id {manifest['bundle_id']})")


def _register_engine_commands() -> None:
    """The engine's commands live beside the engine; their modules import nothing heavy."""
    from molret.engine import cli_index, cli_serve

    app.add_typer(cli_index.app, name="index")
    cli_serve.register(app)


_register_engine_commands()
register_quickstart(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
