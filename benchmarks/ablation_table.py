"""Print the results of finished training runs as one Markdown table.

Usage: python benchmarks/ablation_table.py RUN_DIR [RUN_DIR ...] [--split holdout]

Each row comes from a run's eval.json (written by `molret train`): the best epoch's weights,
each query ranked against every molecule / text of train + validation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(run: Path, split: str) -> str:
    result = json.loads((run / "eval.json").read_text())
    part = result[split]
    t2m, m2t = part["text_to_molecule"], part["molecule_to_text"]
    cells = [run.name]
    for m in (t2m, m2t):
        cells += [
            f"{100 * m['hits@1']:.1f}",
            f"{100 * m['hits@10']:.1f}",
            f"{100 * m['mrr']:.1f}",
            f"{m['mean_rank']:.1f}",
        ]
    cells += [
        str(result["best_epoch"]),
        f"{result['train_seconds'] / 60:.1f}",
        f"{result['peak_rss_mb'] / 1024:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="holdout", choices=["holdout", "select", "validation"])
    args = parser.parse_args()
    runs = [r for r in args.runs if (r / "eval.json").is_file()]
    first = json.loads((runs[0] / "eval.json").read_text())[args.split] if runs else {}
    print(
        f"split: {args.split} ({first.get('n_queries', '?')} queries, "
        f"{first.get('n_candidates', '?')} candidates)"
    )
    print(
        "| run | t->m H@1 | t->m H@10 | t->m MRR | t->m mean rank | m->t H@1 | m->t H@10 | "
        "m->t MRR | m->t mean rank | best epoch | train min | peak RSS GiB |"
    )
    print("|" + "---|" * 12)
    for run in runs:
        print(row(run, args.split))


if __name__ == "__main__":
    main()
