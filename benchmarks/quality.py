"""Retrieval quality of trained runs next to the fingerprint yardstick, measured in one run.

    python benchmarks/quality.py --run runs/cpu-fast [--run RUN ...] [--data DIR] [--json OUT]

For every run (its best weights) and for the yardstick (benchmarks/fingerprint_baseline.py,
trained here, now), each query is ranked against all 29,708 train + validation molecules
(molecule->text: against all 29,708 texts), ties counted pessimistically. Two query sets:
  * validation: all 3,301 validation pairs (the yardstick's protocol; note that the runs chose
    their epoch on the selection half of these queries, the yardstick on all of them);
  * holdout: the 1,678 validation pairs that no training or selection saw.
Published ChEBI-20 numbers (test split, 33,010 candidates, SciBERT fine-tuned on GPUs) are
printed for reference only: a different query set and pool.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fingerprint_baseline as fb  # noqa: E402

from molret.trainer.config import load_config  # noqa: E402
from molret.trainer.dataset import prepare_pool  # noqa: E402
from molret.trainer.evaluate import PoolEmbeddings  # noqa: E402
from molret.trainer.run_eval import load_run  # noqa: E402

PUBLISHED_TEXT_TO_MOLECULE = [
    ("Text2Mol MLP (test)", 22.4, None, 37.2),
    ("Text2Mol ensemble (test)", 34.4, 81.1, 49.9),
    ("AMAN (test)", 49.4, 92.1, 64.7),
    ("ORMA (test)", 66.5, None, None),
]


def evaluate_run(run: Path, data_dir: Path | None, cache_dir: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    config = load_config(run / "config.yaml")
    model = load_run(run)
    pool = prepare_pool(config, data_dir, cache_dir)
    embeddings = PoolEmbeddings(model, pool, config.data.eval_batch_size)
    return {
        "run": str(run),
        "validation": embeddings.evaluate(pool.validation),
        "holdout": embeddings.evaluate(pool.holdout),
        "seconds": round(time.perf_counter() - started, 1),
    }


def fmt(m: dict[str, float]) -> str:
    return (
        f"{100 * m['hits@1']:6.1f} {100 * m['hits@10']:6.1f} {100 * m['mrr']:6.1f} "
        f"{m['mean_rank']:9.1f}"
    )


def table(baseline: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    head = f"{'model':<38} {'queries':<11} {'dir':<5} {'H@1':>6} {'H@10':>6} {'MRR':>6} {'mean rank':>9}"
    lines = [head, "-" * len(head)]
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("yardstick: MiniLM + Morgan/MACCS", "validation", baseline["validation"]),
        ("yardstick (epoch on selection half)", "holdout", baseline["select"]),
    ]
    for r in runs:
        rows.append((Path(r["run"]).name, "validation", r["validation"]))
        rows.append((Path(r["run"]).name, "holdout", r["holdout"]))
    for name, queries, res in rows:
        for direction, key in (("t->m", "text_to_molecule"), ("m->t", "molecule_to_text")):
            lines.append(f"{name:<38} {queries:<11} {direction:<5} {fmt(res[key])}")
            name = queries = ""
    lines.append("")
    lines.append("published, text->molecule, ChEBI-20 TEST split vs 33,010 (reference only):")
    for name, h1, h10, mrr in PUBLISHED_TEXT_TO_MOLECULE:
        cells = [f"{v:6.1f}" if v is not None else f"{'-':>6}" for v in (h1, h10, mrr)]
        lines.append(f"{name:<38} {'test':<11} {'t->m':<5} {' '.join(cells)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, action="append", default=[], help="training run directory"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="ChEBI-20 folder (default $MOLRET_DATA)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="text-state cache folder")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline-epochs", type=int, default=40)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data or fb.default_data_dir()
    started = time.perf_counter()
    prepared = fb.prepare(data_dir, args.cache)
    baseline = {
        mode: fb.run(data_dir, args.cache, mode, prepared=prepared, epochs=args.baseline_epochs)
        for mode in ("validation", "select")
    }
    runs = [evaluate_run(run, data_dir, args.cache) for run in args.run]
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "baseline": baseline,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"# {report['date']} on {report['machine']}")
    print(table(baseline, runs))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
