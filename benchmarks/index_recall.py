"""HNSW recall@k against exact search, search QPS and build rate, on real embeddings.

    python benchmarks/index_recall.py --bundle B --library FILE.smi [--limit N]
        [--chebi DIR] [--chebi-limit M] [--queries 1000] [--workers 2] [--k 10]
        [--dtypes f32,f16,i8] [--connectivity 16] [--expansion-add 128]
        [--expansion-search 64] [--workdir DIR] --json OUT.json

What it does, in one process:

1. **Pool.** ChEBI-20 molecules (validation first, then train; ``--chebi-limit`` caps them) and
   the first ``--limit`` rows of ``--library`` are written to one temporary .smi file and built
   into an f32 index with ``molret.engine.index_build.build_index`` (the code behind
   ``molret index build``: featurize in ``--workers`` processes, ONNX Runtime, dedupe by
   InChIKey, HNSW add, save). Its rows/s is the **build rate** (featurize + embed + add + save).
   The stored f32 vectors are the exact embeddings and the input of everything below.
2. **Queries.** Text -> molecule (the real use): held-out ChEBI-20 validation descriptions,
   embedded with the text tower. Molecule -> molecule: the stored embeddings of the same
   validation molecules (each is in the index, so its exact top 1 is itself).
3. **Ground truth.** Exact top-``k`` by brute-force NumPy over the f32 vectors (cosine), in
   blocks so memory stays bounded at any pool size; its time gives the brute-force QPS.
4. **Per dtype** (``IndexStore.create`` + ``add`` with the same vectors and the same HNSW
   settings): HNSW add rate (inserts/s, including the metadata rows), save time, size on disk,
   recall@k = |HNSW top-k ∩ exact top-k| / k averaged over queries, a tie-aware recall (an
   HNSW hit counts when its exact score reaches the k-th exact score within 1e-5, so
   equal-scoring molecules are not counted as misses), search QPS for all queries in one batch
   call and for a single-query loop (``IndexStore.search``, the engine's path), and for
   text queries the fraction whose true ChEBI-20 molecule is in the top k (against the same
   number for exact search: what quantization and HNSW cost in retrieval quality).

Prints a table and writes every number, with the machine and date, to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from molret.bundle import load_bundle
from molret.data import chebi20_split, iter_library, read_pairs
from molret.engine.index_build import build_index, featurize_shard
from molret.engine.index_store import DTYPES, IndexStore, NewRecord
from molret.engine.runtime import BundleEmbedder

ADD_BATCH = 65_536
EXACT_QUERY_BLOCK = 256
EXACT_BASE_BLOCK = 65_536
TIE_TOLERANCE = 1e-5


def machine() -> str:
    return f"{platform.platform()}, {platform.processor() or 'cpu'}, {os.cpu_count()} CPUs"


def default_data_dir() -> Path:
    env = os.environ.get("MOLRET_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chebi20"


def dir_bytes(path: Path) -> dict[str, int]:
    sizes = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
    sizes["total"] = sum(sizes.values())
    return sizes


# ---- exact search ------------------------------------------------------------------------------


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` keys and cosine scores of each query over ``base`` (rows unit length), by
    blocks of queries and base rows with a running top-k merge; ties broken by lower key."""
    k = min(k, len(base))
    keys = np.zeros((len(queries), k), dtype=np.int64)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    for q0 in range(0, len(queries), EXACT_QUERY_BLOCK):
        q = queries[q0 : q0 + EXACT_QUERY_BLOCK]
        best_keys = np.zeros((len(q), 0), dtype=np.int64)
        best_scores = np.zeros((len(q), 0), dtype=np.float32)
        for b0 in range(0, len(base), EXACT_BASE_BLOCK):
            block = q @ base[b0 : b0 + EXACT_BASE_BLOCK].T
            take = min(k, block.shape[1])
            part = np.argpartition(-block, take - 1, axis=1)[:, :take]
            cand_keys = np.concatenate([best_keys, part + b0], axis=1)
            cand_scores = np.concatenate(
                [best_scores, np.take_along_axis(block, part, axis=1)], axis=1
            )
            order = np.lexsort((cand_keys, -cand_scores), axis=1)[:, :k]
            best_keys = np.take_along_axis(cand_keys, order, axis=1)
            best_scores = np.take_along_axis(cand_scores, order, axis=1)
        keys[q0 : q0 + len(q)] = best_keys
        scores[q0 : q0 + len(q)] = best_scores
    return keys, scores


def recalls(
    found: np.ndarray, truth: np.ndarray, truth_scores: np.ndarray, base: np.ndarray, q: np.ndarray
) -> tuple[float, float]:
    """(strict recall, tie-aware recall) of ``found`` [n, k] against exact ``truth`` [n, k]."""
    k = truth.shape[1]
    strict = [
        len(set(f[f >= 0].tolist()) & set(t.tolist())) / k
        for f, t in zip(found, truth, strict=True)
    ]
    tie_aware = []
    for row, f in enumerate(found):
        hits = f[f >= 0]
        exact_scores = base[hits] @ q[row] if len(hits) else np.zeros(0)
        good = int(np.sum(exact_scores >= truth_scores[row, -1] - TIE_TOLERANCE))
        tie_aware.append(min(good, k) / k)
    return float(np.mean(strict)), float(np.mean(tie_aware))


def true_hits(found: np.ndarray, true_keys: np.ndarray) -> float:
    """Fraction of queries whose own molecule (key, -1 when unknown) is among ``found``."""
    known = true_keys >= 0
    if not known.any():
        return float("nan")
    return float(np.mean([t in row for row, t in zip(found[known], true_keys[known], strict=True)]))


# ---- the benchmark -----------------------------------------------------------------------------


def write_pool(
    path: Path, chebi: Path, chebi_limit: int | None, library: Path, limit: int | None
) -> dict[str, int]:
    splits = chebi20_split(chebi)
    pairs = read_pairs(splits["validation"]) + read_pairs(splits["train"])
    pairs = pairs[:chebi_limit] if chebi_limit is not None else pairs
    rows = 0
    with open(path, "w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(f"{pair.smiles}\tCHEBI20:{pair.cid}\n")
        for record in iter_library(library):
            if limit is not None and rows >= limit:
                break
            out.write(f"{record.smiles}\t{record.name}\n")
            rows += 1
    return {"chebi_rows": len(pairs), "library_rows": rows}


def timed_search(store: IndexStore, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """(keys of one batch call, batch QPS, single-query-loop QPS)."""
    store.search(queries[:1], k)  # warm-up
    started = time.perf_counter()
    keys, _ = store.search(queries, k)
    batch = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for row in queries:
        store.search(row, k)
    single = len(queries) / (time.perf_counter() - started)
    return keys, batch, single


def run(args: argparse.Namespace) -> dict[str, Any]:
    bundle = load_bundle(args.bundle)
    chebi = args.chebi or default_data_dir()
    workdir = Path(tempfile.mkdtemp(prefix="molret-recall-", dir=args.workdir))
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "bundle": {
            "path": str(args.bundle),
            "bundle_id": bundle.bundle_id,
            "dim": bundle.embedding_dim,
            "precision": bundle.precision,
        },
        "library": str(args.library),
        "settings": {
            "k": args.k,
            "limit": args.limit,
            "chebi_limit": args.chebi_limit,
            "workers": args.workers,
            "connectivity": args.connectivity,
            "expansion_add": args.expansion_add,
            "expansion_search": args.expansion_search,
            "search_threads": "all cores (usearch threads=0)",
        },
    }
    try:
        # 1. pool and build rate
        pool = workdir / "pool.smi"
        report["pool"] = write_pool(pool, chebi, args.chebi_limit, args.library, args.limit)
        print(f"pool: {report['pool']}; building the f32 index ...", flush=True)
        build = build_index(
            args.bundle, pool, workdir / "build-f32", workers=args.workers, dtype="f32",
            connectivity=args.connectivity, expansion_add=args.expansion_add,
            expansion_search=args.expansion_search, progress=args.progress,
        )  # fmt: skip
        report["build"] = {
            "rows": build.rows,
            "accepted": build.accepted,
            "duplicates": build.duplicates,
            "rejected": build.rejected,
            "seconds": round(build.seconds, 2),
            "rows_per_s": round(build.rate, 1),
            "accepted_per_s": round(build.accepted / build.seconds, 1),
            "what": "build_index f32: read + featurize + embed + dedupe + HNSW add + save",
        }
        print(f"build: {build.summary()}", flush=True)
        with IndexStore.open(workdir / "build-f32") as built:
            n = built.size
            base = built.get_vectors(range(n))
            stored = built.records(range(n))
        shutil.rmtree(workdir / "build-f32")
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        by_inchikey = {r.inchikey: r.key for r in stored if r is not None and r.inchikey}
        records = [NewRecord(name=r.name, inchikey=r.inchikey) for r in stored if r is not None]
        del stored

        # 2. queries
        validation = read_pairs(chebi20_split(chebi)["validation"])[: args.queries]
        embedder = BundleEmbedder(bundle, max_batch=256)
        text = embedder.embed_texts([p.description for p in validation])
        text_vectors = text.vectors / np.linalg.norm(text.vectors, axis=1, keepdims=True)
        identities = featurize_shard([p.smiles for p in validation], list(bundle.buckets))
        true_keys = np.asarray(
            [by_inchikey.get(identities[i].inchikey or "", -1) for i in text.indices],
            dtype=np.int64,
        )
        molecule_keys = sorted({int(key) for key in true_keys if key >= 0})
        query_sets = {"text": text_vectors, "molecule": base[molecule_keys]}
        report["queries"] = {
            "text": len(text_vectors),
            "molecule": len(molecule_keys),
            "text_with_true_molecule_in_pool": int(np.sum(true_keys >= 0)),
            "index_size": n,
        }

        # 3. ground truth
        truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        report["exact"] = {}
        for name, queries in query_sets.items():
            started = time.perf_counter()
            truth[name] = exact_topk(base, queries, args.k)
            seconds = time.perf_counter() - started
            report["exact"][name] = {
                "seconds": round(seconds, 3),
                "qps": round(len(queries) / seconds, 1) if seconds > 0 else None,
            }
        report["exact"]["text"][f"true_hits@{args.k}"] = round(
            true_hits(truth["text"][0], true_keys), 4
        )

        # 4. per dtype
        report["dtypes"] = {}
        for dtype in args.dtypes:
            path = workdir / dtype
            store = IndexStore.create(
                path, "molecule", bundle.embedding_dim, bundle.bundle_id, dtype=dtype,
                connectivity=args.connectivity, expansion_add=args.expansion_add,
                expansion_search=args.expansion_search,
            )  # fmt: skip
            try:
                started = time.perf_counter()
                for lo in range(0, n, ADD_BATCH):
                    store.add(base[lo : lo + ADD_BATCH], records[lo : lo + ADD_BATCH])
                add_seconds = time.perf_counter() - started
                started = time.perf_counter()
                store.save()
                save_seconds = time.perf_counter() - started
                entry: dict[str, Any] = {
                    "add_seconds": round(add_seconds, 3),
                    "add_per_s": round(n / add_seconds, 1) if add_seconds > 0 else None,
                    "save_seconds": round(save_seconds, 3),
                    "disk_bytes": dir_bytes(path),
                }
                for name, queries in query_sets.items():
                    found, batch_qps, single_qps = timed_search(store, queries, args.k)
                    strict, tie_aware = recalls(found, *truth[name], base, queries)
                    entry[name] = {
                        f"recall@{args.k}": round(strict, 4),
                        f"recall@{args.k}_tie_aware": round(tie_aware, 4),
                        "batch_qps": round(batch_qps, 1),
                        "single_qps": round(single_qps, 1),
                    }
                    if name == "text":
                        entry[name][f"true_hits@{args.k}"] = round(true_hits(found, true_keys), 4)
            finally:
                store.close()
            shutil.rmtree(path, ignore_errors=True)
            report["dtypes"][dtype] = entry
            print(f"{dtype}: done", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_table(report: dict[str, Any], k: int) -> None:
    build = report["build"]
    print(
        f"\nindex of {report['queries']['index_size']} molecules (dim {report['bundle']['dim']}); "
        f"build {build['rows_per_s']} rows/s ({build['accepted']} accepted, "
        f"{build['duplicates']} duplicates, {build['rejected']} rejected)"
    )
    exact = report["exact"]
    print(
        f"exact NumPy: text {exact['text']['qps']} q/s, molecule {exact['molecule']['qps']} q/s, "
        f"text true hits@{k} {exact['text'][f'true_hits@{k}']}"
    )
    header = (
        f"{'dtype':<5} {'add/s':>9} {'MB':>8} {'query':<8} {f'rec@{k}':>7} {'ties':>6} "
        f"{'batch q/s':>10} {'single q/s':>10} {f'true@{k}':>7}"
    )
    print(header)
    print("-" * len(header))
    for dtype, entry in report["dtypes"].items():
        for name in ("text", "molecule"):
            cells = entry[name]
            true = cells.get(f"true_hits@{k}", "")
            print(
                f"{dtype:<5} {entry['add_per_s']:>9} "
                f"{entry['disk_bytes']['total'] / 2**20:>8.1f} {name:<8} "
                f"{cells[f'recall@{k}']:>7.4f} {cells[f'recall@{k}_tie_aware']:>6.4f} "
                f"{cells['batch_qps']:>10} {cells['single_qps']:>10} {true!s:>7}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--library", type=Path, required=True, help=".smi/.csv/.tsv/.parquet")
    parser.add_argument("--limit", type=int, default=None, help="library rows to use")
    parser.add_argument("--chebi", type=Path, default=None, help="ChEBI-20 folder")
    parser.add_argument("--chebi-limit", type=int, default=None, help="ChEBI-20 rows to add")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dtypes", default="f32,f16,i8")
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--expansion-search", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="where the temp indexes go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--progress", action="store_true", help="progress bar for the build")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown or not args.dtypes:
        parser.error(f"--dtypes must be a comma list of {DTYPES}, got {unknown or 'nothing'}")
    if args.queries < 1 or args.k < 1:
        parser.error("need --queries >= 1 and --k >= 1")
    report = run(args)
    print_table(report, args.k)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
