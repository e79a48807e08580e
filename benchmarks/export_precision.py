"""Accuracy and speed of the exported bundles (fp32 / int8 / fp16) against the PyTorch checkpoint.

    python benchmarks/export_precision.py --run RUN --bundles DIR [--data DIR] [--json OUT]

Exports the run at each precision into DIR (reusing bundles already there), then, in this one
process: embeds all 29,708 train + validation texts and molecules with each bundle (ONNX
Runtime) and with the PyTorch checkpoint (the full encoder, not cached states), and ranks the held-out validation queries against
that whole pool, both directions. Molecules that fit no bucket of the bundle (over the largest
one) are dropped from the pool for every model alike, so all rows compare the same pool.
Embedding rates are measured on the same inputs in the same run (batch 64 texts, whole buckets
of molecules). fp16 is only meant for GPUs: on a CPU only its accuracy is meaningful, so it is
left out unless ``--precisions`` names it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molret.bundle import load_bundle
from molret.engine.runtime import BundleEmbedder
from molret.evaluation import cross_modal_metrics
from molret.export.bundle_export import ExportOptions, export_bundle
from molret.featurize import choose_bucket
from molret.metrics import cosine_rows
from molret.trainer.config import load_config
from molret.trainer.dataset import prepare_pool
from molret.trainer.embed import embed_molecules, embed_texts_with_encoder
from molret.trainer.run_eval import load_run
from molret.trainer.text_encoder import resolve_text_encoder

PRECISIONS = ("fp32", "int8", "fp16")


def ensure_bundle(run: Path, root: Path, precision: str, data: Path | None) -> Path:
    out = root / precision
    if not (out / "manifest.json").is_file():
        export_bundle(run, out, ExportOptions(precision=precision, data_dir=data, overwrite=True))
    return out


def holdout_metrics(texts: np.ndarray, mols: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    return cross_modal_metrics(texts[queries], mols[queries], mols, texts, queries, queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--bundles", type=Path, required=True, help="folder for the bundles")
    parser.add_argument("--data", type=Path, default=None, help="ChEBI-20 (default $MOLRET_DATA)")
    parser.add_argument("--cache", type=Path, default=None, help="text-state cache folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    # fp16 on a CPU runs through cast-heavy kernels (slow, and not how it is served); its
    # accuracy cost is in every bundle's manifest (parity on 512 real items). Add it explicitly.
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or (Path(os.environ["MOLRET_DATA"]) if "MOLRET_DATA" in os.environ else None)
    precisions = [p for p in args.precisions.split(",") if p]

    config = load_config(args.run / "config.yaml")
    pool = prepare_pool(config, data, args.cache)
    bundles = {p: ensure_bundle(args.run, args.bundles, p, data) for p in precisions}
    buckets = load_bundle(bundles[precisions[0]]).buckets
    keep = np.array(
        [i for i, g in enumerate(pool.graphs) if g is not None and choose_bucket(g, buckets)]
    )
    row = {int(p): r for r, p in enumerate(keep)}
    queries = np.array([row[int(q)] for q in pool.holdout if int(q) in row], dtype=np.int64)
    graphs = [pool.graphs[i] for i in keep]
    texts = [pool.pairs[i].description for i in keep]

    results: dict[str, Any] = {}
    model = load_run(args.run, with_text_encoder=True)
    started = time.perf_counter()
    ref_mols = embed_molecules(model, graphs)  # type: ignore[arg-type]
    mol_s = time.perf_counter() - started
    started = time.perf_counter()
    encoder_dir = str(resolve_text_encoder(config.model.text_encoder))
    ref_texts = embed_texts_with_encoder(model, encoder_dir, texts, config.model.text_max_length)
    text_s = time.perf_counter() - started
    results["pytorch"] = {
        "metrics": holdout_metrics(ref_texts, ref_mols, queries),
        "molecules_per_s": round(len(graphs) / mol_s, 1),
        "texts_per_s": round(len(texts) / text_s, 1),
    }
    print("pytorch", json.dumps(results["pytorch"]), flush=True)
    for precision, path in bundles.items():
        embedder = BundleEmbedder(load_bundle(path), threads=args.threads)
        started = time.perf_counter()
        mols = embedder.embed_graphs(graphs)  # type: ignore[arg-type]
        mol_s = time.perf_counter() - started
        started = time.perf_counter()
        txt = embedder.embed_text_list(texts)
        text_s = time.perf_counter() - started
        results[precision] = {
            "metrics": holdout_metrics(txt, mols, queries),
            "molecules_per_s": round(len(graphs) / mol_s, 1),
            "texts_per_s": round(len(texts) / text_s, 1),
            "min_cosine_vs_pytorch": {
                "text": float(cosine_rows(ref_texts, txt).min()),
                "molecule": float(cosine_rows(ref_mols, mols).min()),
            },
            "mean_cosine_vs_pytorch": {
                "text": float(cosine_rows(ref_texts, txt).mean()),
                "molecule": float(cosine_rows(ref_mols, mols).mean()),
            },
        }
        print(precision, json.dumps(results[precision]), flush=True)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, threads {args.threads}",
        "run": str(args.run),
        "pool": int(len(keep)),
        "queries": int(len(queries)),
        "results": results,
    }
    print(f"# {report['date']} on {report['machine']}; holdout {len(queries)} vs {len(keep)}")
    head = f"{'model':<8} {'dir':<5} {'H@1':>6} {'H@10':>6} {'MRR':>6} {'mean rank':>9} {'mol/s':>8} {'text/s':>7}"
    print(head)
    for name, res in results.items():
        for direction, key in (("t->m", "text_to_molecule"), ("m->t", "molecule_to_text")):
            m = res["metrics"][key]
            print(
                f"{name:<8} {direction:<5} {100 * m['hits@1']:6.1f} {100 * m['hits@10']:6.1f} "
                f"{100 * m['mrr']:6.1f} {m['mean_rank']:9.1f} {res['molecules_per_s']:8.0f} "
                f"{res.get('texts_per_s', float('nan')):7.0f}"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
