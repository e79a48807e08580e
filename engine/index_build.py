"""Build an index from a compound library (or a description file) with a bundle's towers.

The library is streamed in shards of ``shard_size`` rows; it is never held in memory whole.
For a molecule index each shard is featurized (``molret.featurize``, plus RDKit canonical
SMILES and InChIKey) in worker processes, or as Ray tasks, while the parent embeds the
previous shard with ONNX Runtime and adds it to the store; at most ``2 * workers`` shards are
in flight, so memory stays bounded for any library size.

Every row ends up in exactly one of three counts: accepted (stored), duplicate (its InChIKey
is already stored, from this library or an earlier build) or rejected (written with its reason
to ``OUT/rejects.tsv``). After a shard the store is saved together with the build state
(rows consumed, counts, length of ``rejects.tsv``), so a build that is killed and started
again with the same arguments skips the rows already consumed, truncates ``rejects.tsv`` to
its committed length and ends with exactly the keys and rows of an uninterrupted build.
"""

from __future__ import annotations

import csv
import itertools
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from molret.data import LibraryRecord, iter_library

from .index_store import DTYPES, INDEX_JSON, KINDS, IndexStore, IndexStoreError, NewRecord

__all__ = ["BuildReport", "FeaturizedRow", "build_index", "featurize_shard"]

log = logging.getLogger(__name__)

REJECTS_FILE = "rejects.tsv"
REJECTS_HEADER = "row\tname\tinput\treason\n"
_BUILD_STATE_VERSION = 1
# Saving rewrites the whole vector file, so for a large index it is done only once the time
# spent since the last save is this many times what that save took (<= ~10% overhead).
_SAVE_INTERVAL_FACTOR = 10.0
_EMBED_BATCH = 256


@dataclass
class BuildReport:
    """What a build did; counts cover the whole library, including rows of earlier runs."""

    accepted: int
    duplicates: int
    rejected: int
    shards: int
    seconds: float
    rate: float  # input rows per second in this run
    rows: int = 0
    resumed_from: int = 0

    def summary(self) -> str:
        resumed = f", resumed after row {self.resumed_from}" if self.resumed_from else ""
        return (
            f"{self.rows} rows: {self.accepted} accepted, {self.duplicates} duplicates, "
            f"{self.rejected} rejected in {self.shards} shards; {self.seconds:.1f} s "
            f"({self.rate:.0f} rows/s){resumed}"
        )


@dataclass(frozen=True)
class FeaturizedRow:
    """A worker's answer for one SMILES: a graph with its identity, or why there is none."""

    graph: Any  # molret.featurize.MolGraph (plain numpy arrays, picklable)
    canonical_smiles: str | None
    inchikey: str | None
    reason: str | None


def featurize_shard(
    smiles: Sequence[str], buckets: Sequence[tuple[int, int]], keys: bool = False
) -> list[FeaturizedRow]:
    """Featurize one shard (runs in a worker process or Ray task; no ONNX here); ``keys``:
    also MACCS keys, for a bundle whose molecule tower takes them."""
    from rdkit import Chem, rdBase

    from molret.featurize import featurize_many_with_mols

    graphs, mols, errors = featurize_many_with_mols(smiles, buckets=buckets, keys=keys)
    reasons = {error.index: error.reason for error in errors}
    rows: list[FeaturizedRow] = []
    with rdBase.BlockLogs():
        for index, (graph, mol) in enumerate(zip(graphs, mols, strict=True)):
            if graph is None or mol is None:
                rows.append(FeaturizedRow(None, None, None, reasons.get(index, "invalid")))
                continue
            try:
                inchikey = Chem.MolToInchiKey(mol) or None
            except Exception:  # InChI cannot describe every molecule (e.g. dummy atoms)
                inchikey = None
            rows.append(FeaturizedRow(graph, Chem.MolToSmiles(mol), inchikey, None))
    return rows


def _canonical_smiles(smiles: str) -> str | None:
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles.strip()) if smiles.strip() else None
    return Chem.MolToSmiles(mol) if mol is not None else None


# ---- shard executors: inline, process pool, Ray ----------------------------------------------


class _InlineExecutor:
    def submit(self, smiles: list[str], buckets: list[tuple[int, int]], keys: bool) -> Any:
        return featurize_shard(smiles, buckets, keys)

    def result(self, handle: Any) -> list[FeaturizedRow]:
        return handle

    def close(self) -> None:
        pass


class _PoolExecutor:
    def __init__(self, workers: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._pool = context.Pool(workers)

    def submit(self, smiles: list[str], buckets: list[tuple[int, int]], keys: bool) -> Any:
        return self._pool.apply_async(featurize_shard, (smiles, buckets, keys))

    def result(self, handle: Any) -> list[FeaturizedRow]:
        return handle.get()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


class _RayExecutor:
    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(
                "--ray needs Ray, which is not installed: pip install 'molret[cluster]'"
            ) from exc
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address)
        self._task = ray.remote(featurize_shard)

    def submit(self, smiles: list[str], buckets: list[tuple[int, int]], keys: bool) -> Any:
        return self._task.remote(smiles, buckets, keys)

    def result(self, handle: Any) -> list[FeaturizedRow]:
        return self._ray.get(handle)

    def close(self) -> None:
        pass


# ---- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TextRow:
    row: int
    name: str
    smiles: str
    text: str


def _iter_texts(path: Path) -> Iterator[_TextRow]:
    """Stream a ChEBI-20 style TSV (CID, SMILES, description) one row at a time; the header
    is checked at once, before the first row is requested (as ``iter_library`` does)."""
    from molret.data import _open_text, _read_header, _require_column, _tsv_reader

    if not path.is_file():
        raise FileNotFoundError(f"description file {path} does not exist")
    with _open_text(path) as handle:
        header = _read_header(_tsv_reader(handle), path)
    columns = [_require_column(header, name, path) for name in ("CID", "SMILES", "description")]
    return _text_rows(path, columns, len(header))


def _text_rows(path: Path, columns: list[int], width: int) -> Iterator[_TextRow]:
    from molret.data import _data_rows, _open_text, _read_header, _tsv_reader

    cid, smiles, description = columns
    with _open_text(path) as handle:
        reader = _tsv_reader(handle)
        _read_header(reader, path)
        for row, fields in enumerate(_data_rows(reader, path, width)):
            yield _TextRow(row, fields[cid], fields[smiles], fields[description])


def _estimate_rows(path: Path) -> int | None:
    """Rows in the library for the progress bar's ETA: exact for parquet, estimated from the
    file size and the first MiB for plain text, unknown for gzip."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as parquet

            return int(parquet.ParquetFile(path).metadata.num_rows)
        if suffix == ".gz":
            return None
        size = path.stat().st_size
        with open(path, "rb") as handle:
            sample = handle.read(1 << 20)
    except (OSError, ImportError):
        return None
    lines = sample.count(b"\n")
    if lines == 0 or len(sample) >= size:
        return max(lines - 1, 0) + (0 if sample.endswith(b"\n") else 1)
    return int(size / (len(sample) / lines))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _clean(value: str) -> str:
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


# ---- the build -----------------------------------------------------------------------------


def _fresh_state(library: Path, size: int) -> dict[str, Any]:
    return {
        "version": _BUILD_STATE_VERSION,
        "library": str(library),
        "library_size_bytes": size,
        "rows_done": 0,
        "shards": 0,
        "accepted": 0,
        "duplicates": 0,
        "rejected": 0,
        "rejects_bytes": len(REJECTS_HEADER.encode()),
        "complete": False,
    }


def _open_for_resume(
    out: Path, library: Path, size: int, settings: dict[str, Any], bundle_id: str
) -> tuple[IndexStore, dict[str, Any]]:
    """Open ``out`` to continue its build; refuse anything that would not continue it."""
    store = IndexStore.open(out, expected_bundle_id=bundle_id)
    try:
        config = store.config
        differ = [
            f"{name} {config.get(name)!r} (asked {value!r})"
            for name, value in settings.items()
            if config.get(name) != value
        ]
        if differ:
            raise IndexStoreError(
                f"index {out} was built with other settings: {', '.join(differ)}; use a new "
                "--out or the same settings to resume"
            )
        state = store.build_state
        if state is None and store.size == 0:
            # The previous run died between creating the index and its first save.
            return store, _fresh_state(library, size)
        if state is None or state.get("library") != str(library):
            built_from = state.get("library") if state else "no library (not made by a build)"
            raise IndexStoreError(
                f"index {out} was built from {built_from}, not {library}; use a new --out"
            )
        if state.get("library_size_bytes") != size:
            raise IndexStoreError(
                f"library {library} changed since the build in {out} started "
                f"({state.get('library_size_bytes')} bytes then, {size} now); use a new --out"
            )
        rejects = out / REJECTS_FILE
        if not rejects.is_file() or rejects.stat().st_size < int(state["rejects_bytes"]):
            raise IndexStoreError(
                f"index {out}: {REJECTS_FILE} is missing or shorter than its committed "
                f"{state['rejects_bytes']} bytes; cannot resume (use a new --out)"
            )
    except BaseException:
        store.close()
        raise
    return store, state


def build_index(
    bundle_dir: Path,
    library: Path,
    out: Path,
    workers: int = 1,
    kind: str = "molecule",
    dtype: str = "f16",
    connectivity: int = 16,
    expansion_add: int = 128,
    expansion_search: int = 64,
    shard_size: int = 4096,
    ray_address: str | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> BuildReport:
    """Embed ``library`` with the bundle at ``bundle_dir`` into an index at ``out``.

    An ``out`` that already holds a build of the same library with the same settings is
    resumed. ``limit`` caps the number of input rows consumed (over all runs).
    """
    from molret.bundle import load_bundle

    from .runtime import BundleEmbedder

    started = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if workers < 1 or shard_size < 1:
        raise ValueError(f"need workers >= 1 and shard_size >= 1, got {workers}, {shard_size}")
    library = Path(library).resolve()
    out = Path(out)
    if not library.is_file():
        raise FileNotFoundError(f"library {library} does not exist")
    size = library.stat().st_size
    bundle = load_bundle(bundle_dir)
    # Check the library's format and columns before any expensive setup.
    records: Iterator[Any] = _iter_texts(library) if kind == "text" else iter_library(library)

    settings = {
        "kind": kind,
        "dtype": dtype,
        "connectivity": connectivity,
        "expansion_add": expansion_add,
        "expansion_search": expansion_search,
    }
    if (out / INDEX_JSON).is_file():
        store, state = _open_for_resume(out, library, size, settings, bundle.bundle_id)
        log.info("resuming the build in %s after row %d", out, state["rows_done"])
    else:
        store = IndexStore.create(
            out,
            kind,
            bundle.embedding_dim,
            bundle.bundle_id,
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )
        state = _fresh_state(library, size)
    resumed_from = int(state["rows_done"])

    executor: Any = None
    rejects: Any = None
    try:
        if resumed_from == 0 and state["shards"] == 0:
            (out / REJECTS_FILE).write_text(REJECTS_HEADER)
            store.save(state)
        rejects = open(out / REJECTS_FILE, "r+b")  # noqa: SIM115 (closed in finally)
        rejects.truncate(int(state["rejects_bytes"]))
        rejects.seek(0, os.SEEK_END)
        embedder = BundleEmbedder(bundle, max_batch=_EMBED_BATCH)
        if kind == "molecule":
            if ray_address:
                executor = _RayExecutor(ray_address)
            elif workers > 1:
                executor = _PoolExecutor(workers)
            else:
                executor = _InlineExecutor()
        remaining = None if limit is None else max(limit - resumed_from, 0)
        if state.get("complete") and limit is None:
            todo: Iterator[Any] = iter(())  # a finished build: nothing left to read
        else:
            todo = itertools.islice(records, resumed_from, None if limit is None else limit)
        total = _estimate_rows(library) if progress else None
        if total is not None and limit is not None:
            total = min(total, limit)
        bar = _progress_bar(progress, total, resumed_from, kind)
        builder = _ShardWriter(store, embedder, rejects, state, bar)
        shards = _chunks(todo, shard_size)
        if kind == "text":
            for shard in shards:
                builder.commit_texts(shard)
        else:
            _pipeline(
                shards,
                executor,
                list(bundle.buckets),
                bundle.takes_molecule_keys,
                max(2, 2 * workers),
                builder,
            )
        state["complete"] = bool(
            state.get("complete") or remaining is None or builder.rows_this_run < remaining
        )
        builder.finish()
        bar.close()
    finally:
        if executor is not None:
            executor.close()
        if rejects is not None:
            rejects.close()
        store.close()
    seconds = time.perf_counter() - started
    rows_this_run = int(state["rows_done"]) - resumed_from
    return BuildReport(
        accepted=int(state["accepted"]),
        duplicates=int(state["duplicates"]),
        rejected=int(state["rejected"]),
        shards=int(state["shards"]),
        seconds=seconds,
        rate=rows_this_run / seconds if seconds > 0 else 0.0,
        rows=int(state["rows_done"]),
        resumed_from=resumed_from,
    )


def _progress_bar(enabled: bool, total: int | None, initial: int, kind: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit=" rows",
        desc=f"embedding {kind}s" + (" (total estimated)" if total else ""),
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _pipeline(
    shards: Iterator[list[LibraryRecord]],
    executor: Any,
    buckets: list[tuple[int, int]],
    keys: bool,
    depth: int,
    builder: _ShardWriter,
) -> None:
    """Featurize up to ``depth`` shards ahead while the parent embeds and stores in order."""
    pending: deque[tuple[list[LibraryRecord], Any]] = deque()
    for shard in shards:
        pending.append((shard, executor.submit([r.smiles for r in shard], buckets, keys)))
        if len(pending) >= depth:
            done, handle = pending.popleft()
            builder.commit_molecules(done, executor.result(handle))
    while pending:
        done, handle = pending.popleft()
        builder.commit_molecules(done, executor.result(handle))


class _ShardWriter:
    """Embeds, stores and commits shards in input order; owns the build state."""

    def __init__(
        self, store: IndexStore, embedder: Any, rejects: Any, state: dict[str, Any], bar: Any
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.rejects = rejects
        self.state = state
        self.bar = bar
        self.rows_this_run = 0
        self._last_save_end = time.perf_counter()
        self._last_save_seconds = 0.0
        self._unsaved = False

    def _reject(self, row: int, name: str, value: str, reason: str) -> None:
        line = f"{row}\t{_clean(name)}\t{_clean(value)}\t{_clean(reason)}\n"
        self.rejects.write(line.encode())
        self.state["rejected"] += 1

    def commit_molecules(self, shard: list[LibraryRecord], rows: list[FeaturizedRow]) -> None:
        known = self.store.find_inchikeys([r.inchikey for r in rows if r.reason is None])
        new_graphs: list[Any] = []
        new_records: list[NewRecord] = []
        for record, row in zip(shard, rows, strict=True):
            if row.reason is not None:
                self._reject(record.row, record.name, record.smiles, row.reason)
                continue
            if row.inchikey and row.inchikey in known:
                self.state["duplicates"] += 1
                continue
            if row.inchikey:
                known[row.inchikey] = -1  # stored by the add below
            new_graphs.append(row.graph)
            new_records.append(
                NewRecord(
                    name=record.name,
                    smiles=record.smiles,
                    canonical_smiles=row.canonical_smiles,
                    inchikey=row.inchikey,
                )
            )
        if new_records:
            vectors = self.embedder.embed_graphs(new_graphs)
            result = self.store.add(vectors, new_records)
            assert not result.duplicates, "duplicates are removed before embedding"
            self.state["accepted"] += len(new_records)
        self._advance(len(shard))

    def commit_texts(self, shard: list[_TextRow]) -> None:
        embedded = self.embedder.embed_texts([row.text for row in shard])
        for error in embedded.errors:
            row = shard[error.index]
            self._reject(row.row, row.name, row.text, error.reason)
        records = [
            NewRecord(
                name=shard[i].name,
                smiles=shard[i].smiles or None,
                canonical_smiles=_canonical_smiles(shard[i].smiles),
                text=shard[i].text,
            )
            for i in embedded.indices
        ]
        if records:
            self.store.add(embedded.vectors, records)
            self.state["accepted"] += len(records)
        self._advance(len(shard))

    def _advance(self, rows: int) -> None:
        self.rows_this_run += rows
        self.state["rows_done"] += rows
        self.state["shards"] += 1
        self._unsaved = True
        self.bar.update(rows)
        since = time.perf_counter() - self._last_save_end
        if since >= _SAVE_INTERVAL_FACTOR * self._last_save_seconds:
            self._save()

    def _save(self) -> None:
        begin = time.perf_counter()
        self.rejects.flush()
        os.fsync(self.rejects.fileno())
        self.state["rejects_bytes"] = self.rejects.tell()
        self.store.save(self.state)
        self._last_save_end = time.perf_counter()
        self._last_save_seconds = self._last_save_end - begin
        self._unsaved = False

    def finish(self) -> None:
        self._save()
        log.info(
            "index %s: %d accepted, %d duplicates, %d rejected",
            self.store.path,
            self.state["accepted"],
            self.state["duplicates"],
            self.state["rejected"],
        )


def read_rejects(path: Path) -> list[dict[str, str]]:
    """The rows of a ``rejects.tsv`` (for tests and reports)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
