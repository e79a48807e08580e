"""`molret serve` and `molret search` (registered by molret.cli); heavy imports inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from molret.logs import setup_logging


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _read_secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise _fail(f"cannot read the {what} file {path}: {exc}") from exc
    if not value:
        raise _fail(f"the {what} file {path} is empty")
    return value


def serve(
    bundle: Annotated[Path, typer.Option(help="bundle directory (molret export)")],
    index: Annotated[Path, typer.Option(help="molecule index directory (molret index build)")],
    text_index: Annotated[
        Path | None,
        typer.Option(help="text (description) index, needed for molecule -> text search"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="gRPC port (0 picks a free one)")] = 50051,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve Prometheus /metrics on this port (same host)")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="file holding a bearer token required by AddMolecules and Reload"),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    batching: Annotated[
        bool, typer.Option(help="merge concurrent requests into model batches")
    ] = True,
    batch_delay_ms: Annotated[
        float, typer.Option(help="longest wait for a batch to fill (0: dispatch at once)")
    ] = 0.0,
    max_items: Annotated[int, typer.Option(help="items per unary request")] = 1024,
    max_in_flight: Annotated[int, typer.Option(help="concurrent requests before refusing")] = 256,
    max_message_mb: Annotated[int, typer.Option(help="largest gRPC message, MiB")] = 16,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads per session (default: all cores)")
    ] = None,
    grace: Annotated[
        float, typer.Option(help="seconds in-flight requests get to finish on SIGTERM")
    ] = 30.0,
    verbose: bool = False,
) -> None:
    """Serve retrieval over gRPC until SIGTERM/SIGINT (then drain in-flight requests)."""
    setup_logging(verbose)
    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together")
    token = _read_secret(token_file, "token")
    from molret.bundle import BundleError
    from molret.engine.index_store import IndexStoreError
    from molret.engine.server import RunningServer
    from molret.engine.server import serve as run_server

    def listening(running: RunningServer) -> None:
        metrics = f", metrics on :{running.metrics_port}" if running.metrics_port else ""
        tls = " (TLS)" if tls_cert else ""
        auth = ", token required for AddMolecules/Reload" if token else ""
        typer.echo(f"molret serve: listening on {running.target}{tls}{metrics}{auth}", err=True)

    try:
        run_server(
            bundle,
            index,
            text_index,
            host=host,
            port=port,
            metrics_port=metrics_port,
            token=token,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_items_per_request=max_items,
            max_in_flight=max_in_flight,
            max_message_bytes=max_message_mb * 1024 * 1024,
            batch_max_delay_ms=batch_delay_ms,
            batching=batching,
            threads=threads,
            grace=grace,
            on_listening=listening,
        )
    except (BundleError, IndexStoreError, FileNotFoundError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc


def _hit_json(rank: int, hit: Any) -> dict[str, Any]:
    return {
        "rank": rank,
        "score": hit.score,
        "key": hit.key,
        "name": hit.name,
        "smiles": hit.smiles,
        "canonical_smiles": hit.canonical_smiles,
        "inchikey": hit.inchikey,
        "text": hit.text,
    }


def search(
    server: Annotated[str, typer.Option(help="HOST:PORT of a molret server")] = "127.0.0.1:50051",
    text: Annotated[str | None, typer.Option(help="query description (text -> molecules)")] = None,
    smiles: Annotated[str | None, typer.Option(help="query molecule as SMILES")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="number of hits")] = 10,
    mode: Annotated[
        str, typer.Option(help="for --smiles: 'molecules' (similar molecules) or 'texts'")
    ] = "molecules",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    timeout: Annotated[float, typer.Option(help="deadline in seconds")] = 30.0,
    tls_ca: Annotated[
        Path | None, typer.Option(help="CA certificate (PEM) of a TLS server")
    ] = None,
    tls: Annotated[bool, typer.Option(help="TLS with the system's root certificates")] = False,
) -> None:
    """Query a running server with one text or one SMILES.

    With --json, stdout is one object: {"query", "mode", "k", "index_kind", "index_size",
    "hits": [{"rank", "score", "key", "name", "smiles", "canonical_smiles", "inchikey",
    "text"}], "timings_us": {...}}. An invalid query exits with code 1 (and an "error" entry).
    """
    if (text is None) == (smiles is None):
        raise _fail("give exactly one of --text and --smiles")
    if mode not in ("molecules", "texts"):
        raise _fail(f"--mode must be 'molecules' or 'texts', got {mode!r}")
    if text is not None and mode != "molecules":
        raise _fail("text queries search molecules; --mode texts needs --smiles")
    from molret.engine.client import RetrievalClient, RetrievalError

    query = text if text is not None else smiles
    assert query is not None
    try:
        with RetrievalClient(server, timeout=timeout, tls_ca=tls_ca, tls=tls) as client:
            if text is not None:
                reply = client.search_text_to_molecules([text], k=k)
            elif mode == "texts":
                reply = client.search_molecule_to_texts([query], k=k)
            else:
                reply = client.search_molecule_to_molecules([query], k=k)
    except RetrievalError as exc:
        raise _fail(f"{exc.code.name}: {exc.details}", code=3) from exc
    except OSError as exc:
        raise _fail(str(exc)) from exc
    result = reply.results[0]
    kind = "text" if text is not None else "smiles"
    payload: dict[str, Any] = {
        "query": {kind: query},
        "mode": "text_to_molecules" if text is not None else f"molecule_to_{mode}",
        "k": k,
        "index_kind": reply.index_kind,
        "index_size": reply.index_size,
        "hits": [_hit_json(rank, hit) for rank, hit in enumerate(result.hits, start=1)],
        "timings_us": {
            "prepare": reply.timings.prepare_us,
            "queue": reply.timings.queue_us,
            "inference": reply.timings.inference_us,
            "search": reply.timings.search_us,
            "total": reply.timings.total_us,
        },
    }
    if result.error is not None:
        payload["error"] = result.error.reason
    if as_json:
        typer.echo(json.dumps(payload))
    elif result.error is None:
        for hit in payload["hits"]:
            label = hit["text"][:60] if reply.index_kind == "text" else hit["smiles"]
            typer.echo(f"{hit['rank']:3d}  {hit['score']:.4f}  {hit['name']:<12}  {label}")
        t = reply.timings
        typer.echo(
            f"({reply.index_size} in the {reply.index_kind} index; server {t.total_us / 1000:.1f}"
            f" ms: prepare {t.prepare_us / 1000:.1f}, queue {t.queue_us / 1000:.1f}, "
            f"inference {t.inference_us / 1000:.1f}, search {t.search_us / 1000:.1f})",
            err=True,
        )
    if result.error is not None:
        if not as_json:
            typer.echo(f"error: invalid query: {result.error.reason}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the serving commands to the top-level app."""
    app.command("serve")(serve)
    app.command("search")(search)
