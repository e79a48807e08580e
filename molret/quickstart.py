"""`molret quickstart`: the main job end to end, from ChEBI-20 to answers over gRPC.

Stages (each timed and printed; every one reuses what an earlier run left in ``--out``):

1. data: ChEBI-20 at ``--data`` / $MOLRET_DATA, else a message saying where to get it (exit 2);
2. text-state cache: the frozen encoder's token states of every train + validation description,
   built once per machine under $MOLRET_CACHE (the slow part of a first run, 6-9 min on 2 cores);
3. train: ``configs/quickstart.yaml`` (cpu-fast cut to two epochs) into ``OUT/run``; a run that
   was stopped resumes, a finished one is kept;
4. export: ``OUT/bundle`` (fp32 ONNX, parity-checked), kept while it verifies and was exported
   from the current weights;
5. indexes: ``OUT/index-molecules`` (every train + validation SMILES) and ``OUT/index-texts``
   (validation descriptions by default; ``--text-pool all`` adds the train ones, ~9x the time),
   kept when complete and built by the current bundle, resumed when interrupted;
6. serve + query: a server on a free loopback port, example queries through the gRPC client
   (text -> molecules, molecule -> texts, molecule -> molecules), printed as tables; then stop.

Heavy imports (torch, the trainer, the engine) happen inside the stages, so a missing data set
is reported at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from molret.logs import setup_logging

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "quickstart.yaml"
DEFAULT_OUT = Path("runs") / "quickstart"

WHERE_TO_GET_DATA = """\
molret quickstart needs ChEBI-20 (Edwards et al., Text2Mol, EMNLP 2021): a folder holding
train.txt and validation.txt, tab-separated with the header CID<TAB>SMILES<TAB>description.
Get it from GitHub blender-nlp/MolT5, folder ChEBI-20_data (BSD-3-Clause code; ChEBI content
CC BY 4.0), keep it outside this repository, then run
    molret quickstart --data /path/to/chebi20      (or: export MOLRET_DATA=/path/to/chebi20)"""

TEXT_QUERY = (
    "The molecule is a member of the class of benzoic acids in which the hydroxy group of "
    "salicylic acid is acetylated; a non-steroidal anti-inflammatory drug with analgesic and "
    "antipyretic properties."
)
MOLECULE_TO_TEXTS = ("caffeine", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C")
MOLECULE_TO_MOLECULES = ("aspirin", "CC(=O)OC1=CC=CC=C1C(=O)O")
TEXT_POOLS = ("validation", "all")
TABLE_WIDTH = 72

log = logging.getLogger(__name__)


class QuickstartError(RuntimeError):
    """A stage cannot go on; the message says why and what to do."""


@dataclass
class StageReport:
    name: str
    seconds: float
    status: str
    # Resident memory when the stage ended and the process's peak so far (GiB): the job runs
    # every stage in one process, so this is where a peak is attributed to a stage.
    rss_gib: float | None = None
    peak_rss_gib: float | None = None


@dataclass
class Quickstart:
    """The orchestration; ``run`` returns the stage reports (printing as it goes)."""

    data: str | None
    out: Path
    config: Path = DEFAULT_CONFIG
    epochs: int | None = None
    cache: Path | None = None
    threads: int | None = None
    text_pool: str = "validation"
    text_query: str = TEXT_QUERY
    k: int = 5
    echo: Callable[[str], None] = typer.echo
    stages: list[StageReport] = field(default_factory=list)

    # ---- plumbing ------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, str]]:
        """Time one stage; the body sets ``status`` in the yielded dict."""
        self.echo(f"\n== {name}")
        info = {"status": "done"}
        started = time.perf_counter()
        yield info
        seconds = time.perf_counter() - started
        rss, peak = resident_memory_gib()
        self.stages.append(StageReport(name, seconds, info["status"], rss, peak))
        self.echo(f"   -> {info['status']} ({_duration(seconds)}{_memory_note(rss, peak)})")

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def bundle_dir(self) -> Path:
        return self.out / "bundle"

    @property
    def molecule_index(self) -> Path:
        return self.out / "index-molecules"

    @property
    def text_index(self) -> Path:
        return self.out / "index-texts"

    # ---- the stages ----------------------------------------------------------------------

    def run(self) -> list[StageReport]:
        if self.text_pool not in TEXT_POOLS:
            raise QuickstartError(f"--text-pool must be one of {', '.join(TEXT_POOLS)}")
        started = time.perf_counter()
        with self.stage("data") as info:
            files = self.check_data()
            info["status"] = f"ChEBI-20 in {files['train'].parent}"
        config = self.load_config()
        trained = self.training_finished(config)
        with self.stage("text-state cache (frozen encoder, once per machine)") as info:
            if trained:
                info["status"] = "not needed (the run is trained)"
            else:
                info["status"] = self.text_cache(config, files)
        with self.stage(f"train ({config.optim.epochs} epoch(s), {config.name})") as info:
            info["status"] = f"reused {self.run_dir}" if trained else self.train(config, files)
        self.print_eval()
        with self.stage("export bundle") as info:
            info["status"] = self.export(files)
        libraries = self.write_libraries(files)
        with self.stage("molecule index (train + validation SMILES)") as info:
            info["status"] = self.build("molecule", libraries["molecules"], self.molecule_index)
        with self.stage(f"text index ({self.text_pool} descriptions)") as info:
            info["status"] = self.build("text", libraries["texts"], self.text_index)
        with self.stage("serve + example queries") as info:
            info["status"] = self.serve_and_query()
        self.print_summary(time.perf_counter() - started)
        return self.stages

    def check_data(self) -> dict[str, Path]:
        from molret.data import DataNotFound, chebi20_split

        try:
            return chebi20_split(self.data)
        except DataNotFound as exc:
            raise QuickstartError(f"{exc}\n\n{WHERE_TO_GET_DATA}") from exc

    def load_config(self) -> Any:
        from molret.trainer.config import load_config

        if not self.config.is_file():
            raise QuickstartError(f"config {self.config} does not exist (pass --config)")
        overrides = {"optim.epochs": self.epochs} if self.epochs is not None else None
        return load_config(self.config, overrides)

    def training_finished(self, config: Any) -> bool:
        """True when OUT/run holds a finished training of this config (same epochs)."""
        from molret.trainer.config import load_config

        saved_path = self.run_dir / "config.yaml"
        if not saved_path.is_file():
            return False
        saved = load_config(saved_path).to_dict()
        wanted = config.to_dict()
        epochs = saved["optim"].pop("epochs"), wanted["optim"].pop("epochs")
        if saved != wanted:
            raise QuickstartError(
                f"{self.run_dir} was trained with another configuration than {self.config}; "
                "use another --out or delete that folder"
            )
        has_weights = (self.run_dir / "best.safetensors").is_file()
        return epochs[0] == epochs[1] and has_weights and (self.run_dir / "eval.json").is_file()

    def text_cache(self, config: Any, files: dict[str, Path]) -> str:
        """The token-state cache the training reads (same texts, order and settings as
        molret.trainer.dataset.prepare_pool), so its cost is shown apart from training."""
        from molret.data import read_pairs
        from molret.trainer.text_cache import default_cache_dir, load_or_build

        pairs = read_pairs(files["train"]) + read_pairs(files["validation"])
        load_or_build(
            [p.description for p in pairs],
            config.model.text_encoder,
            layer=-1,
            max_length=config.model.text_max_length,
            cache_dir=self.cache,
        )
        where = (self.cache or default_cache_dir()) / "text-states"
        return f"ready: {len(pairs):,} descriptions, cached under {where}"

    def train(self, config: Any, files: dict[str, Path]) -> str:
        from molret.trainer.loop import train

        resumed = (self.run_dir / "last.safetensors").is_file()
        data = files["train"].parent
        train(config, data, self.run_dir, cache_dir=self.cache, threads=self.threads)
        return ("resumed and finished " if resumed else "trained ") + str(self.run_dir)

    def print_eval(self) -> None:
        path = self.run_dir / "eval.json"
        if not path.is_file():
            return
        result = json.loads(path.read_text())
        holdout = result.get("holdout", {})
        for direction in ("text_to_molecule", "molecule_to_text"):
            m = holdout.get(direction)
            if m:
                self.echo(
                    f"   holdout {direction}: hits@1 {100 * m['hits@1']:.1f}, hits@10 "
                    f"{100 * m['hits@10']:.1f}, MRR {100 * m['mrr']:.1f}, mean rank "
                    f"{m['mean_rank']:.1f} ({holdout.get('n_queries', '?')} queries)"
                )

    def export(self, files: dict[str, Path]) -> str:
        if self.bundle_current():
            return f"reused {self.bundle_dir}"
        from molret.export.bundle_export import ExportOptions, export_bundle

        options = ExportOptions(data_dir=files["train"].parent, overwrite=True, parity_items=256)
        manifest = export_bundle(self.run_dir, self.bundle_dir, options)
        parity = manifest.get("parity", {}).get("fp32", {})
        return (
            f"exported {self.bundle_dir} (bundle {manifest['bundle_id']}, parity min cosine "
            f"text {parity.get('min_cosine_text', float('nan')):.6f}, molecules "
            f"{parity.get('min_cosine_molecule', float('nan')):.6f})"
        )

    def bundle_current(self) -> bool:
        """The bundle verifies and was exported from this run's current weights."""
        from molret.bundle import BundleError, load_bundle

        if not (self.bundle_dir / "manifest.json").is_file():
            return False
        try:
            bundle = load_bundle(self.bundle_dir)
        except (BundleError, OSError, ValueError) as exc:
            self.echo(
                f"   the bundle in {self.bundle_dir} does not verify ({exc}): exporting again"
            )
            return False
        source = bundle.manifest.get("source", {})
        eval_path = self.run_dir / "eval.json"
        current_eval = json.loads(eval_path.read_text()) if eval_path.is_file() else None
        return bool(
            source.get("run_dir") == str(self.run_dir.resolve())
            and source.get("eval") == current_eval
        )

    def write_libraries(self, files: dict[str, Path]) -> dict[str, Path]:
        """TSVs (CID, SMILES, description) the index builds read; rewritten only on change,
        so an interrupted build can resume against the same file."""
        from molret.data import read_pairs

        folder = self.out / "library"
        folder.mkdir(parents=True, exist_ok=True)
        train, validation = read_pairs(files["train"]), read_pairs(files["validation"])
        texts = validation if self.text_pool == "validation" else train + validation
        paths = {
            "molecules": folder / "chebi20.tsv",
            "texts": folder / f"texts-{self.text_pool}.tsv",
        }
        for name, pairs in (("molecules", train + validation), ("texts", texts)):
            lines = ["CID\tSMILES\tdescription"]
            lines += [f"{p.cid}\t{p.smiles}\t{p.description}" for p in pairs]
            content = "\n".join(lines) + "\n"
            path = paths[name]
            if not path.is_file() or path.read_text() != content:
                path.write_text(content)
        return paths

    def build(self, kind: str, library: Path, out: Path) -> str:
        from molret.bundle import load_bundle
        from molret.engine.index_build import build_index
        from molret.engine.index_store import INDEX_JSON, IndexStore, IndexStoreError

        bundle_id = load_bundle(self.bundle_dir, verify=False).bundle_id
        if (out / INDEX_JSON).is_file():
            try:
                with IndexStore.open(out) as store:
                    state = store.build_state or {}
                    same = (
                        store.bundle_id == bundle_id
                        and state.get("library") == str(library.resolve())
                        and state.get("library_size_bytes") == library.stat().st_size
                    )
                    if same and state.get("complete"):
                        return f"reused {out} ({store.size:,} {kind} vectors)"
            except (IndexStoreError, OSError, ValueError) as exc:
                same = False
                self.echo(f"   {out} cannot be opened ({exc})")
            if not same:
                self.echo(f"   {out} was built by another bundle or library: building again")
                shutil.rmtree(out)
        workers = 2 if kind == "molecule" and (os.cpu_count() or 1) > 1 else 1
        report = build_index(self.bundle_dir, library, out, workers=workers, kind=kind)
        return f"built {out}: {report.summary()}"

    def serve_and_query(self) -> str:
        from molret.engine.client import RetrievalClient
        from molret.engine.server import start_server_thread

        server = start_server_thread(
            bundle_dir=self.bundle_dir,
            index_dir=self.molecule_index,
            text_index_dir=self.text_index,
            host="127.0.0.1",
            port=0,
        )
        try:
            self.echo(f"   server on {server.target} (bundle {self.bundle_dir})")
            with RetrievalClient(server.target, timeout=60) as client:
                reply = client.search_text_to_molecules([self.text_query], k=self.k)
                self.print_hits(f'text -> molecules: "{self.text_query}"', reply, "smiles")
                name, smiles = MOLECULE_TO_TEXTS
                reply = client.search_molecule_to_texts([smiles], k=self.k)
                self.print_hits(f"molecule -> texts: {name} {smiles}", reply, "text")
                name, smiles = MOLECULE_TO_MOLECULES
                reply = client.search_molecule_to_molecules([smiles], k=self.k)
                self.print_hits(f"molecule -> molecules: {name} {smiles}", reply, "smiles")
        finally:
            server.stop()
        return "3 queries answered over gRPC; server stopped"

    def print_hits(self, title: str, reply: Any, show: str) -> None:
        self.echo("")
        for line in _wrap(title, TABLE_WIDTH + 20):
            self.echo(f"   {line}")
        result = reply.results[0]
        if result.error is not None:
            self.echo(f"   error: {result.error.reason}")
            return
        label = "SMILES" if show == "smiles" else "description"
        self.echo(f"   {'rank':>4}  {'score':>6}  {'CID':<10}  {label}")
        for rank, hit in enumerate(result.hits, start=1):
            value = hit.smiles if show == "smiles" else hit.text
            self.echo(
                f"   {rank:>4}  {hit.score:6.3f}  {hit.name:<10}  {_truncate(value, TABLE_WIDTH)}"
            )
        t = reply.timings
        self.echo(
            f"   ({reply.index_size:,} in the {reply.index_kind} index; server "
            f"{t.total_us / 1000:.1f} ms: prepare {t.prepare_us / 1000:.1f}, queue "
            f"{t.queue_us / 1000:.1f}, inference {t.inference_us / 1000:.1f}, search "
            f"{t.search_us / 1000:.1f})"
        )

    def print_summary(self, total: float) -> None:
        self.echo("\n== time per stage")
        width = max(len(s.name) for s in self.stages)
        for s in self.stages:
            memory = _memory_note(s.rss_gib, s.peak_rss_gib).lstrip(", ")
            self.echo(f"   {s.name:<{width}}  {_duration(s.seconds):>9}  {memory}".rstrip())
        self.echo(f"   {'total':<{width}}  {_duration(total):>9}")
        self.echo(
            f"\nRe-running reuses {self.out}. Serve it yourself:\n"
            f"   molret serve --bundle {self.bundle_dir} --index {self.molecule_index} "
            f"--text-index {self.text_index}\n"
            '   molret search --text "The molecule is ..."'
        )


def resident_memory_gib() -> tuple[float | None, float | None]:
    """(current RSS, peak RSS) of this process in GiB; None where the OS does not say."""
    current = peak = None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    except (ImportError, OSError):
        pass
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        current = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        pass
    return current, peak


def _memory_note(rss: float | None, peak: float | None) -> str:
    parts = []
    if rss is not None:
        parts.append(f"RSS {rss:.1f} GiB")
    if peak is not None:
        parts.append(f"peak {peak:.1f} GiB")
    return ", " + ", ".join(parts) if parts else ""


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _truncate(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def quickstart(
    data: Annotated[
        str | None,
        typer.Option(help="ChEBI-20 folder (train.txt, validation.txt); default $MOLRET_DATA"),
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder; a rerun reuses it")] = DEFAULT_OUT,
    epochs: Annotated[int | None, typer.Option(help="override the config's epochs")] = None,
    config: Annotated[
        Path, typer.Option(help="training config (default configs/quickstart.yaml)")
    ] = DEFAULT_CONFIG,
    cache: Annotated[
        Path | None, typer.Option(help="cache folder; default $MOLRET_CACHE or ~/.cache/molret")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for training")] = None,
    text_pool: Annotated[
        str,
        typer.Option(help="descriptions in the text index: validation (3,301) or all (29,708)"),
    ] = "validation",
    query: Annotated[
        str | None, typer.Option(help="your own description for the text -> molecules query")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="hits per example query")] = 5,
    verbose: bool = False,
) -> None:
    """The main job end to end: train, export, index ChEBI-20, serve, query (reuses OUT)."""
    setup_logging(verbose)
    job = Quickstart(
        data=data,
        out=out,
        config=config,
        epochs=epochs,
        cache=cache,
        threads=threads,
        text_pool=text_pool,
        text_query=query or TEXT_QUERY,
        k=k,
    )
    try:
        job.run()
    except QuickstartError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def register_quickstart(app: typer.Typer) -> None:
    """Add `molret quickstart` to the top-level app."""
    app.command("quickstart")(quickstart)


__all__ = ["Quickstart", "QuickstartError", "register_quickstart"]
