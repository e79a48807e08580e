"""Single-core featurization throughput on ChEBI-20, against RDKit parsing as the floor.

Featurization runs over millions of molecules (training caches, index builds), so what matters
is molecules per second per core and how far above the unavoidable ``Chem.MolFromSmiles`` cost
our Python encoding sits. Both are measured in the same process on the same pinned core, so the
ratio is meaningful even on a busy machine; CPU time is reported next to wall time because the
wall-clock rate drops when other work shares the core.

The size distribution (atoms, directed edges) tells whether ``DEFAULT_BUCKETS`` fit the data.

Usage: python benchmarks/featurize_throughput.py --data DIR [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rdkit
from rdkit import Chem, rdBase

from molret.featurize import (
    DEFAULT_BUCKETS,
    FEATURE_VOCAB_VERSION,
    FeaturizeError,
    MolGraph,
    featurize_many,
)

SPLITS = ("train.txt", "validation.txt")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def default_data_dir() -> Path:
    env = os.environ.get("MOLRET_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chebi20"


def read_smiles(data_dir: Path) -> list[str]:
    """SMILES column of every split, in file order (ChEBI-20 TSV, no quoting)."""
    smiles: list[str] = []
    for name in SPLITS:
        path = data_dir / name
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            column = header.index("SMILES")
            smiles.extend(row[column] for row in reader if row)
    return smiles


def pin_to_one_core() -> int | None:
    """Pin this process to one CPU so 'per core' means one core; None where unsupported."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def cpu_model() -> str:
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm", "i386"):
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Best (wall, cpu) seconds over ``repeat`` runs, and the last result."""
    best_wall = best_cpu = float("inf")
    result: object = None
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall0)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
    return best_wall, best_cpu, result


def parse_only(smiles: Sequence[str]) -> int:
    parsed = 0
    with rdBase.BlockLogs():
        for item in smiles:
            if Chem.MolFromSmiles(item) is not None:
                parsed += 1
    return parsed


def rates(n: int, wall: float, cpu: float) -> dict[str, float]:
    return {
        "seconds_wall": round(wall, 4),
        "seconds_cpu": round(cpu, 4),
        "mol_per_s_wall": round(n / wall, 1),
        "mol_per_s_cpu": round(n / cpu, 1),
        "us_per_mol_cpu": round(1e6 * cpu / n, 2),
    }


def distribution(values: np.ndarray) -> dict[str, float]:
    out = {f"p{p:g}": float(np.percentile(values, p)) for p in PERCENTILES}
    out["max"] = float(values.max())
    out["mean"] = round(float(values.mean()), 2)
    return out


def bucket_fit(atoms: np.ndarray, edges: np.ndarray) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for max_nodes, max_edges in DEFAULT_BUCKETS:
        fits = (atoms <= max_nodes) & (edges <= max_edges)
        rows.append(
            {"bucket": [max_nodes, max_edges], "fraction_fitting": round(float(fits.mean()), 6)}
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="ChEBI-20 dir")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N SMILES")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--repeat", type=int, default=1, help="passes per measurement (best)")
    args = parser.parse_args(argv)

    smiles = read_smiles(args.data)
    if args.limit is not None:
        smiles = smiles[: args.limit]
    if not smiles:
        print(f"no SMILES found under {args.data}", file=sys.stderr)
        return 1
    core = pin_to_one_core()

    featurize_many(smiles[:200])  # warm caches and lazy RDKit initialisation
    parse_wall, parse_cpu, parsed = timed(lambda: parse_only(smiles), args.repeat)
    feat_wall, feat_cpu, result = timed(lambda: featurize_many(smiles), args.repeat)
    # What a bundle with MACCS keys (model.maccs_keys, cpu-fast) has the engine compute.
    keys_wall, keys_cpu, _ = timed(lambda: featurize_many(smiles, keys=True), args.repeat)
    graphs_or_none, errors = result  # type: ignore[misc]
    graphs: list[MolGraph] = [g for g in graphs_or_none if g is not None]
    error_list: list[FeaturizeError] = errors

    atoms = np.array([g.n_atoms for g in graphs], dtype=np.int64)
    edges = np.array([g.n_edges for g in graphs], dtype=np.int64)
    n = len(smiles)
    parse = rates(n, parse_wall, parse_cpu)
    full = rates(n, feat_wall, feat_cpu)
    with_keys = rates(n, keys_wall, keys_cpu)
    report: dict[str, object] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "processor": cpu_model(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "pinned_core": core,
            "python": platform.python_version(),
            "rdkit": rdkit.__version__,
            "numpy": np.__version__,
        },
        "feature_vocab_version": FEATURE_VOCAB_VERSION,
        "data": str(args.data),
        "molecules": n,
        "parsed_by_rdkit": parsed,
        "featurized": len(graphs),
        "errors": len(error_list),
        "error_examples": [
            {"index": e.index, "smiles": e.smiles[:80], "reason": e.reason} for e in error_list[:5]
        ],
        "repeat": args.repeat,
        "rdkit_parse_only": parse,
        "full_featurize": full,
        "full_featurize_with_maccs_keys": with_keys,
        "featurize_cpu_over_parse": round(feat_cpu / parse_cpu, 3),
        "atoms": distribution(atoms),
        "directed_edges": distribution(edges),
        "bucket_fit": bucket_fit(atoms, edges),
        "fraction_fitting_no_bucket": round(
            float(
                (
                    ~np.any([(atoms <= b[0]) & (edges <= b[1]) for b in DEFAULT_BUCKETS], axis=0)
                ).mean()
            ),
            6,
        ),
    }

    machine = report["machine"]
    print(f"date        {report['date']}")
    print(f"machine     {machine['processor']}, {machine['cpu_count']} CPUs, pinned core {core}")
    print(
        f"software    python {machine['python']}, rdkit {machine['rdkit']}, numpy {machine['numpy']}"
    )
    print(f"molecules   {n} ({len(graphs)} featurized, {len(error_list)} errors)")
    for label, r in (
        ("RDKit parse only", parse),
        ("full featurize", full),
        ("+ MACCS keys", with_keys),
    ):
        print(
            f"{label:<17} {r['mol_per_s_cpu']:>9.0f} mol/s/core (CPU time), "
            f"{r['mol_per_s_wall']:>9.0f} mol/s wall, {r['us_per_mol_cpu']:.1f} us/mol"
        )
    print(f"featurize / parse CPU time: {report['featurize_cpu_over_parse']:.2f}x")
    for label, values in (("atoms", atoms), ("edges", edges)):
        d = distribution(values)
        cells = "  ".join(f"{k}={v:g}" for k, v in d.items())
        print(f"{label:<6} {cells}")
    for row in report["bucket_fit"]:  # type: ignore[attr-defined]
        print(f"fits bucket {tuple(row['bucket'])}: {100 * row['fraction_fitting']:.3f}%")
    print(f"fits no bucket: {100 * report['fraction_fitting_no_bucket']:.3f}%")  # type: ignore[operator]
    for e in error_list[:5]:
        print(f"error #{e.index}: {e.reason}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
