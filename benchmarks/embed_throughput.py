"""Embedding throughput: the exported towers against PyTorch eager, in one run.

    python benchmarks/embed_throughput.py --bundle B [--bundle-int8 B8] [--run RUN]
        [--data DIR] [--seconds S] --json OUT.json
    python benchmarks/embed_throughput.py --bundle B --library FILE.smi [--limit N]
        [--workers W] [--run RUN] [--sample 5000] [--torch-sample 2000] [--towers]
        --json OUT.json

Towers section (without ``--library``, or with ``--towers``): embeddings/s at batch 1 and
batch 256, for texts and molecules, for
  * ORT fp32 (the bundle) and ORT int8 (``--bundle-int8``), through ``BundleEmbedder``
    (tokenize / featurize + pad to the bucket + ONNX Runtime), and
  * PyTorch eager (``--run``, needs the train extra): the same weights, texts through
    transformers, molecules through torch-geometric's GINEConv over a ``Batch``, including
    featurization / tokenization too, so every row measures SMILES or text in, vector out.
Inputs are real ChEBI-20 validation texts and SMILES (``--data`` or MOLRET_DATA), cycled.
Each cell runs for about ``--seconds`` (at least one batch) after one warm-up batch.

Library section (``--library``): SMILES -> embeddings -> index for a compound library, the
``molret index build`` job (target: 1,000,000 molecules on 2 cores in <= 10 minutes).
  * End to end: ``build_index`` itself (``--workers`` featurizing processes, ONNX Runtime,
    InChIKey dedupe, USearch HNSW ``--index-dtype``, save) on the first ``--limit`` rows;
    rows/s and accepted/s. Per-stage seconds come from timers wrapped around the components
    ``build_index`` calls (the pipeline itself is unchanged): read (library parsing), featurize
    (inline featurization, or the parent's wait for worker results: the part the pipeline
    did not hide), dedupe (InChIKey look-ups), inference (ONNX Runtime), index add (HNSW insert
    + metadata rows), save, setup (sessions, pool) and other. Featurization CPU seconds in the
    workers and their peak RSS are read from /proc before the pool ends; the parent's peak RSS
    from ``getrusage`` right after the build.
  * Floor: RDKit ``MolFromSmiles`` alone, ``featurize_many`` (parse + featurize) and
    ``featurize_shard`` (+ canonical SMILES + InChIKey, what a build worker does) on the first
    ``--sample`` SMILES, one process.
  * Naive baselines on the first ``--torch-sample`` SMILES, one process, no pipelining:
    the build worker's job (``featurize_shard``: graph, canonical SMILES, InChIKey) -> tower ->
    ``IndexStore.add`` (f16) -> save, with (i) PyTorch eager + torch-geometric
    (``PygMoleculeEncoder`` with the weights of ``--run``; skipped with a note without
    ``--run`` or torch) and (ii) ONNX Runtime, so the backend and the pipeline are told apart;
    ``end_to_end_speedup`` is the build's rows/s over theirs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import itertools
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from molret import bundle as bundle_module
from molret.bundle import load_bundle
from molret.data import iter_library, read_pairs
from molret.engine import index_build, index_store, runtime
from molret.engine.runtime import BundleEmbedder

BATCH_SIZES = (1, 256)


def machine() -> str:
    return f"{platform.platform()}, {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs"


def load_inputs(data: Path | None, n: int = 2048) -> tuple[list[str], list[str]]:
    folder = data or (Path(os.environ["MOLRET_DATA"]) if "MOLRET_DATA" in os.environ else None)
    if folder is None or not (folder / "validation.txt").is_file():
        raise SystemExit("needs ChEBI-20: pass --data DIR or set MOLRET_DATA")
    pairs = read_pairs(folder / "validation.txt")[:n]
    return [p.description for p in pairs], [p.smiles for p in pairs]


def rate(
    embed: Callable[[Sequence[str]], Any], items: list[str], batch: int, seconds: float
) -> float:
    """Items per second of ``embed`` on consecutive batches of ``items`` (cycled)."""
    stream = itertools.cycle(items)
    embed([next(stream) for _ in range(batch)])  # warm-up (session init, allocator)
    done, started = 0, time.perf_counter()
    while True:
        embed([next(stream) for _ in range(batch)])
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def ort_backend(path: Path, threads: int) -> dict[str, Callable[[Sequence[str]], Any]]:
    embedder = BundleEmbedder(load_bundle(path), threads=threads, max_batch=256)
    return {"text": embedder.embed_texts, "molecule": embedder.embed_smiles}


def torch_backend(run: Path, threads: int) -> dict[str, Callable[[Sequence[str]], Any]]:
    import torch

    from molret.featurize import featurize_many
    from molret.text import encode, load_tokenizer
    from molret.trainer.pyg_reference import PygMoleculeEncoder
    from molret.trainer.run_eval import load_run
    from molret.trainer.text_encoder import resolve_text_encoder

    torch.set_num_threads(threads)
    model = load_run(run, with_text_encoder=True)
    pyg = PygMoleculeEncoder(model).eval()
    tokenizer = load_tokenizer(
        resolve_text_encoder(model.config.text_encoder), model.config.text_max_length
    )

    @torch.no_grad()
    def text(texts: Sequence[str]) -> Any:
        tokens = encode(tokenizer, texts)
        ids = torch.from_numpy(tokens.input_ids)
        return model.encode_text(ids, torch.from_numpy(tokens.attention_mask)).embedding

    def molecule(smiles: Sequence[str]) -> Any:
        graphs, _ = featurize_many(smiles, keys=model.config.maccs_keys)
        return pyg(pyg.batch([g for g in graphs if g is not None]))

    return {"text": text, "molecule": molecule}


def towers_section(args: argparse.Namespace) -> dict[str, Any]:
    texts, smiles = load_inputs(args.data)
    inputs = {"text": texts, "molecule": smiles}
    backends: dict[str, dict[str, Callable[[Sequence[str]], Any]]] = {}
    if args.run:
        backends["pytorch-eager"] = torch_backend(args.run, args.threads)
    backends["ort-fp32"] = ort_backend(args.bundle, args.threads)
    if args.bundle_int8:
        backends["ort-int8"] = ort_backend(args.bundle_int8, args.threads)
    rows = []
    for name, fns in backends.items():
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        for modality, batch in itertools.product(("text", "molecule"), sizes):
            per_s = rate(fns[modality], inputs[modality], batch, args.seconds)
            rows.append(
                {"backend": name, "modality": modality, "batch": batch, "per_s": round(per_s, 1)}
            )
            print(f"{name:<14} {modality:<9} batch {batch:>3}: {per_s:9.1f} /s", flush=True)
    baseline = {(r["modality"], r["batch"]): r["per_s"] for r in rows if r["backend"] == "ort-fp32"}
    for r in rows:
        r["vs_ort_fp32"] = round(r["per_s"] / baseline[(r["modality"], r["batch"])], 2)
    return {"rows": rows}


# ---- library section ---------------------------------------------------------------------


class StageClock:
    """Exclusive wall seconds per stage: time in a nested timed call counts for the inner stage
    only (``IndexStore.add`` calls ``find_inchikeys`` itself, for instance)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []
        self.workers: list[dict[str, float]] = []

    def _enter(self) -> float:
        self._stack.append(0.0)
        return time.perf_counter()

    def _leave(self, stage: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        nested = self._stack.pop()
        self.seconds[stage] += elapsed - nested
        self.calls[stage] += 1
        if self._stack:
            self._stack[-1] += elapsed

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self._enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._leave(stage, started)

        return timed

    def wrap_iterator(self, stage: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            started = self._enter()
            try:
                iterator = fn(*args, **kwargs)  # checks the file and header at once
            finally:
                self._leave(stage, started)
            return self._timed_items(stage, iterator)

        return timed

    def _timed_items(self, stage: str, iterator: Iterator[Any]) -> Iterator[Any]:
        while True:
            started = self._enter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self._leave(stage, started)
            yield item

    def record_workers(self, pool_executor: Any) -> None:
        """CPU seconds and peak RSS of the featurizing workers, before the pool ends them."""
        ticks = os.sysconf("SC_CLK_TCK")
        for process in getattr(getattr(pool_executor, "_pool", None), "_pool", []):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                status = Path(f"/proc/{process.pid}/status").read_text()
                hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                self.workers.append(
                    {
                        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
                        "peak_rss_mb": int(hwm.split()[1]) / 1024,
                    }
                )


@contextlib.contextmanager
def timed_build(clock: StageClock) -> Iterator[None]:
    """Wrap the components ``build_index`` uses with stage timers; skip any that moved."""
    targets = [
        (index_build, "iter_library", "read", True),
        (bundle_module, "load_bundle", "setup", False),
        (index_store.IndexStore, "create", "setup", False),
        (getattr(index_build, "_InlineExecutor", None), "submit", "featurize", False),
        (getattr(index_build, "_PoolExecutor", None), "submit", "featurize", False),
        (getattr(index_build, "_PoolExecutor", None), "result", "featurize", False),
        (getattr(index_build, "_PoolExecutor", None), "__init__", "setup", False),
        (runtime.BundleEmbedder, "__init__", "setup", False),
        (runtime.BundleEmbedder, "embed_graphs", "inference", False),
        (index_store.IndexStore, "find_inchikeys", "dedupe", False),
        (index_store.IndexStore, "add", "index_add", False),
        (index_store.IndexStore, "save", "save", False),
    ]
    saved: list[tuple[Any, str, Any]] = []
    for owner, name, stage, iterator in targets:
        original = owner.__dict__.get(name) if owner is not None else None
        if original is None:
            continue
        saved.append((owner, name, original))
        wrap = clock.wrap_iterator if iterator else clock.wrap
        if isinstance(original, classmethod):
            setattr(owner, name, classmethod(wrap(stage, original.__func__)))
        else:
            setattr(owner, name, wrap(stage, original))
    pool_class = getattr(index_build, "_PoolExecutor", None)
    if pool_class is not None and "close" in pool_class.__dict__:
        close = pool_class.__dict__["close"]
        saved.append((pool_class, "close", close))

        def close_and_record(self: Any) -> None:
            clock.record_workers(self)
            close(self)

        pool_class.close = close_and_record
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def per_s(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def floor_rates(
    smiles: list[str], buckets: list[tuple[int, int]], keys: bool = False
) -> dict[str, Any]:
    """One-process rates of RDKit parsing, featurization and a build worker's whole job."""
    from rdkit import Chem, rdBase

    from molret.featurize import featurize_many

    out: dict[str, Any] = {"n": len(smiles)}
    with rdBase.BlockLogs():
        started = time.perf_counter()
        for text in smiles:
            Chem.MolFromSmiles(text)
        out["rdkit_parse_per_s"] = per_s(len(smiles), time.perf_counter() - started)
    started = time.perf_counter()
    featurize_many(smiles, buckets=buckets, keys=keys)
    out["featurize_per_s"] = per_s(len(smiles), time.perf_counter() - started)
    started = time.perf_counter()
    index_build.featurize_shard(smiles, buckets, keys)
    out["build_worker_per_s"] = per_s(len(smiles), time.perf_counter() - started)
    return out


def naive_pipeline(
    smiles: list[str],
    embed: Callable[[list[Any]], np.ndarray],
    buckets: list[tuple[int, int]],
    dim: int,
    workdir: Path,
    keys: bool = False,
) -> dict[str, Any]:
    """One process, no pipelining, batches of 256: the build worker's per-molecule job
    (``featurize_shard``: graph, canonical SMILES, InChIKey) -> ``embed`` -> ``IndexStore.add``
    (dedupe by InChIKey, HNSW f16) -> save. Only the tower's backend differs between callers."""
    store = index_store.IndexStore.create(workdir, "molecule", dim, "naive", dtype="f16")
    try:
        warm = [
            row.graph for row in index_build.featurize_shard(smiles[:8], buckets, keys) if row.graph
        ]
        embed(warm)  # warm-up (sessions, allocator)
        added = 0
        started = time.perf_counter()
        for lo in range(0, len(smiles), 256):
            rows = [
                r
                for r in index_build.featurize_shard(smiles[lo : lo + 256], buckets, keys)
                if r.graph
            ]
            vectors = embed([r.graph for r in rows])
            records = [
                index_store.NewRecord(
                    name=str(lo + i),
                    smiles=smiles[lo + i],
                    canonical_smiles=r.canonical_smiles,
                    inchikey=r.inchikey,
                )  # fmt: skip
                for i, r in enumerate(rows)
            ]
            added += len(records) - len(store.add(vectors, records).duplicates)
        store.save()
        seconds = time.perf_counter() - started
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"n": len(smiles), "added": added, "seconds": round(seconds, 3),
            "per_s": per_s(len(smiles), seconds)}  # fmt: skip


def pytorch_embed(run: Path, threads: int) -> Callable[[list[Any]], np.ndarray]:
    """The run's molecule tower as torch-geometric eager code (graphs -> vectors)."""
    import torch

    from molret.trainer.pyg_reference import PygMoleculeEncoder
    from molret.trainer.run_eval import load_run

    torch.set_num_threads(threads)
    pyg = PygMoleculeEncoder(load_run(run, with_text_encoder=False)).eval()

    def embed(graphs: list[Any]) -> np.ndarray:
        return pyg(pyg.batch(graphs)).numpy().astype(np.float32)

    return embed


def library_section(args: argparse.Namespace) -> dict[str, Any]:
    bundle = load_bundle(args.bundle)
    workdir = Path(tempfile.mkdtemp(prefix="molret-throughput-", dir=args.workdir))
    clock = StageClock()
    out: dict[str, Any] = {
        "library": str(args.library),
        "limit": args.limit,
        "workers": args.workers,
        "index_dtype": args.index_dtype,
        "bundle_id": bundle.bundle_id,
        "dim": bundle.embedding_dim,
    }
    try:
        with timed_build(clock):
            report = index_build.build_index(
                args.bundle, args.library, workdir / "index", workers=args.workers,
                dtype=args.index_dtype, limit=args.limit, progress=args.progress,
            )  # fmt: skip
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stages = {name: round(seconds, 3) for name, seconds in sorted(clock.seconds.items())}
        stages["other"] = round(report.seconds - sum(clock.seconds.values()), 3)
        out.update(
            {
                "rows": report.rows,
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "rejected": report.rejected,
                "seconds": round(report.seconds, 3),
                "rows_per_s": round(report.rate, 1),
                "accepted_per_s": per_s(report.accepted, report.seconds),
                "projected_seconds_for_1m_rows": (
                    round(1e6 / report.rate, 1) if report.rate > 0 else None
                ),
                "stages_s": stages,
                "peak_rss_mb": round(peak_rss_mb, 1),
                "index_bytes": sum(
                    p.stat().st_size for p in (workdir / "index").iterdir() if p.is_file()
                ),
                "workers_featurize": [
                    {k: round(v, 2) for k, v in w.items()} for w in clock.workers
                ],
            }
        )
        print(f"library: {report.summary()}; peak RSS {peak_rss_mb:.0f} MB (parent)", flush=True)
        for name, seconds in stages.items():
            print(f"  {name:<10} {seconds:9.2f} s", flush=True)
        if args.keep_index:  # e.g. to serve it in benchmarks/latency.py afterwards
            shutil.move(str(workdir / "index"), str(args.keep_index))
        else:
            shutil.rmtree(workdir / "index", ignore_errors=True)

        sample: list[str] = []
        for record in iter_library(args.library):
            if len(sample) >= max(args.sample, args.torch_sample):
                break
            sample.append(record.smiles)
        keys = bundle.takes_molecule_keys
        out["floor"] = floor_rates(sample[: args.sample], list(bundle.buckets), keys)
        print(f"floor (1 process): {out['floor']}", flush=True)

        torch_sample = sample[: args.torch_sample]
        embedder = BundleEmbedder(bundle, threads=args.threads, max_batch=256)

        buckets = list(bundle.buckets)
        naive: dict[str, dict[str, Any]] = {}
        naive["ort-inline"] = naive_pipeline(
            torch_sample,
            embedder.embed_graphs,
            buckets,
            bundle.embedding_dim,
            workdir / "n-ort",
            keys,
        )
        if args.run is None:
            naive["pytorch-eager"] = {"skipped": "no --run (the PyTorch weights) given"}
        else:
            try:
                torch_embed = pytorch_embed(args.run, args.threads)
            except ImportError as exc:
                naive["pytorch-eager"] = {"skipped": f"torch / torch-geometric missing ({exc})"}
            else:
                naive["pytorch-eager"] = naive_pipeline(
                    torch_sample,
                    torch_embed,
                    buckets,
                    bundle.embedding_dim,
                    workdir / "n-torch",
                    keys,
                )
        for entry in naive.values():
            if entry.get("per_s"):
                entry["end_to_end_speedup"] = round(report.rate / entry["per_s"], 2)
        out["naive"] = naive
        print(f"naive (1 process): {naive}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="fp32 bundle")
    parser.add_argument("--bundle-int8", type=Path, default=None)
    parser.add_argument("--run", type=Path, default=None, help="training run (PyTorch baseline)")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="towers section"
    )
    parser.add_argument("--json", type=Path, default=None)
    library = parser.add_argument_group("library section")
    library.add_argument("--library", type=Path, default=None, help=".smi/.csv/.tsv/.parquet")
    library.add_argument("--limit", type=int, default=None, help="library rows to embed")
    library.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    library.add_argument("--index-dtype", default="f16", choices=index_store.DTYPES)
    library.add_argument("--sample", type=int, default=5000, help="SMILES for the floor")
    library.add_argument(
        "--torch-sample", type=int, default=2000, help="SMILES for the naive baselines"
    )
    library.add_argument(
        "--keep-index", type=Path, default=None, help="move the built index here (for latency.py)"
    )
    library.add_argument("--workdir", type=Path, default=None, help="where the temp index goes")
    library.add_argument("--progress", action="store_true", help="progress bar for the build")
    library.add_argument(
        "--towers", action="store_true", help="with --library, run the towers section too"
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
    }
    # The library section first, so its peak RSS is not that of the towers section.
    if args.library is not None:
        report["library"] = library_section(args)
    if args.library is None or args.towers:
        report["towers"] = towers_section(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
