"""A simple, cheap yardstick for ChEBI-20 text <-> molecule retrieval.

Text side: frozen all-MiniLM-L6-v2 sentence embeddings (last-layer token states mean-pooled
over every token, CLS and SEP included, then L2-normalised, as sentence-transformers does),
read from the project's token-state cache so MiniLM does not run again.
Molecule side: RDKit Morgan count fingerprint (radius 2, 2048 bits, log1p of the counts)
concatenated with the 167 MACCS keys: 2,215 floats.

Two small projections into a shared space are trained with symmetric InfoNCE and a learnable
temperature (init 0.07) using AdamW (weight decay 0.01): Linear(384 -> dim) for text and, by
default, Linear(2215 -> dim) for molecules; ``mol_hidden > 0`` gives a 1-hidden-layer MLP
Linear(2215 -> mol_hidden)-ReLU-Linear(mol_hidden -> dim) instead. After every epoch the
text->molecule MRR of the selection queries is computed against the full pool, and the best
epoch's weights are kept.

Defaults (dim 256, linear molecule head, batch 1024, lr 1e-3, 40 epochs) were picked on the
selection half of validation.txt only, among: MLP vs linear head, lr 1e-4..2e-3, batch
256..2048, dim 256/512, weight decay 0.01/0.5, 15..60 epochs. The MLP head memorises the train
pairs within a few epochs (train loss ~0.05) and stays about 3 MRR points below the linear
head; larger batches (more in-batch negatives) help by about 2 points.

Every query is ranked against all train + validation items (29,708 on ChEBI-20): text queries
against every molecule, molecule queries against every text. Ties count pessimistically
(`molret.metrics`), which matters here: stereoisomers share a Morgan/MACCS fingerprint, so
their molecule embeddings are identical and tie exactly.

Two protocols:
  * ``validation``: pick the epoch on all of validation.txt and report on validation.txt
    (the protocol of the quoted yardstick: selection and report on the same queries);
  * ``select``: pick the epoch on the *selection* half of validation and report on the
    *holdout* half (`molret.trainer.dataset.split_validation`), which the trainer also uses.

Usage: python benchmarks/fingerprint_baseline.py [--data DIR] [--json OUT] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import MACCSkeys, rdFingerprintGenerator
from torch import nn
from torch.nn import functional as F

from molret.data import Pair, chebi20_split, read_pairs, resolve_data_dir
from molret.metrics import retrieval_metrics, summarize_ranks
from molret.trainer.dataset import split_validation

MORGAN_RADIUS = 2
MORGAN_BITS = 2048
MACCS_BITS = 167
MOLECULE_DIM = MORGAN_BITS + MACCS_BITS
TEXT_MAX_LENGTH = 256
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0
HOLDOUT_FRACTION = 0.5
MODES = ("validation", "select")

# --- features --------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOLRET_CACHE", Path.home() / ".cache" / "molret"))


def text_features(
    pairs: Sequence[Pair], cache_dir: Path | None, chunk_texts: int = 2048
) -> np.ndarray:
    """[n, 384] float32: mean-pooled, L2-normalised last-layer MiniLM states of each description.

    The cache is keyed by the exact text list, so pass the same pairs in the same order as the
    run that built it (train then validation, file order) to reuse it.
    """
    from molret.trainer.text_cache import load_or_build  # torch + transformers: import late

    cache = load_or_build(
        [p.description for p in pairs],
        None,
        layer=-1,
        max_length=TEXT_MAX_LENGTH,
        cache_dir=cache_dir,
        show_progress=False,
    )
    offsets = np.asarray(cache.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if (lengths < 1).any():
        raise ValueError("a cached text has no token states")
    out = np.empty((len(cache), cache.hidden_size), dtype=np.float32)
    # Chunked so the float32 copy of the fp16 memory map stays small (the full set is ~GBs).
    for start in range(0, len(cache), chunk_texts):
        stop = min(start + chunk_texts, len(cache))
        block = np.asarray(cache.states[offsets[start] : offsets[stop]], dtype=np.float32)
        sums = np.add.reduceat(block, offsets[start:stop] - offsets[start], axis=0)
        out[start:stop] = sums / lengths[start:stop, None]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def molecule_features(smiles_list: Sequence[str]) -> np.ndarray:
    """[n, 2215] float32: log1p(Morgan counts, r=2, 2048 bits) then the 167 MACCS bits.

    A SMILES RDKit cannot parse gives an all-zero row (it then ties with every candidate,
    pessimistically, instead of crashing the benchmark); ChEBI-20 has none.
    """
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    out = np.zeros((len(smiles_list), MOLECULE_DIM), dtype=np.float32)
    maccs = np.zeros(MACCS_BITS, dtype=np.float64)
    RDLogger.DisableLog("rdApp.*")
    try:
        for i, smiles in enumerate(smiles_list):
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                continue
            out[i, :MORGAN_BITS] = np.log1p(generator.GetCountFingerprintAsNumPy(mol))
            DataStructs.ConvertToNumpyArray(MACCSkeys.GenMACCSKeys(mol), maccs)
            out[i, MORGAN_BITS:] = maccs
    finally:
        RDLogger.EnableLog("rdApp.*")
    return out


# --- model -----------------------------------------------------------------------------------


class Projections(nn.Module):
    """The two trainable heads and the learnable InfoNCE temperature (as a log logit scale)."""

    def __init__(self, text_dim: int, mol_dim: int, dim: int, mol_hidden: int) -> None:
        super().__init__()
        self.text = nn.Linear(text_dim, dim)
        if mol_hidden > 0:
            self.mol: nn.Module = nn.Sequential(
                nn.Linear(mol_dim, mol_hidden), nn.ReLU(), nn.Linear(mol_hidden, dim)
            )
        else:
            self.mol = nn.Linear(mol_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / INIT_TEMPERATURE)))

    def loss(self, text: torch.Tensor, mol: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch (each text's positive is its own molecule)."""
        t = F.normalize(self.text(text), dim=-1)
        m = F.normalize(self.mol(mol), dim=-1)
        logits = t @ m.T * self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        labels = torch.arange(t.shape[0])
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    @property
    def temperature(self) -> float:
        return float(1.0 / self.log_scale.detach().clamp(max=math.log(MAX_LOGIT_SCALE)).exp())


@torch.no_grad()
def embed(module: nn.Module, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Apply one projection to all rows (unnormalised; the metrics normalise)."""
    module.eval()
    parts = [
        module(torch.from_numpy(features[i : i + batch])).numpy()
        for i in range(0, len(features), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def evaluate(
    text_emb_queries: np.ndarray, mol_emb_pool: np.ndarray, targets: np.ndarray
) -> dict[str, float]:
    """Hits@1, Hits@10 (fractions), MRR and mean rank of each query's target in the pool."""
    return retrieval_metrics(text_emb_queries, mol_emb_pool, np.asarray(targets, dtype=np.int64))


def optimistic_tie_metrics(
    queries: np.ndarray, candidates: np.ndarray, targets: np.ndarray, chunk: int = 256
) -> dict[str, float]:
    """The same metrics with ties broken in the query's favour (rank = 1 + strictly better).

    Diagnostic only: the project's numbers are pessimistic (`molret.metrics`). It shows how
    much of the gap to a published figure is the tie convention: identical fingerprints
    (stereoisomers) give identical molecule embeddings. Identical candidate rows are scored
    once, so twins tie exactly.
    """
    q = np.asarray(queries, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    distinct, inverse, counts = np.unique(
        np.asarray(candidates, dtype=np.float32), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    c = distinct / np.maximum(np.linalg.norm(distinct, axis=1, keepdims=True), 1e-12)
    ct = np.ascontiguousarray(c.T)
    target_rows = inverse[np.asarray(targets, dtype=np.int64)]
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk):
        scores = q[start : start + chunk] @ ct
        idx = np.arange(scores.shape[0])
        true = scores[idx, target_rows[start : start + chunk]]
        ranks[start : start + chunk] = 1 + (scores > true[:, None]).astype(np.int64) @ counts
    return summarize_ranks(ranks)


def train_baseline(
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    text_feats: np.ndarray,
    mol_feats: np.ndarray,
    *,
    epochs: int = 40,
    dim: int = 256,
    mol_hidden: int = 0,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    selection_positions: Sequence[int] | None = None,
    log: bool = False,
) -> tuple[nn.Module, nn.Module, list[dict[str, float]]]:
    """Train the projections; return (text_proj, mol_proj, history) at the best epoch.

    `text_feats` / `mol_feats` hold one row per pair of train_pairs + val_pairs, in that order
    (the ranking pool). `selection_positions` are indices *within val_pairs* whose text->molecule
    MRR picks the epoch (all of validation when None). History has one entry per epoch:
    mean training loss, selection MRR, temperature, and whether it is the best so far.
    """
    n_train, n_all = len(train_pairs), len(train_pairs) + len(val_pairs)
    if text_feats.shape[0] != n_all or mol_feats.shape[0] != n_all:
        raise ValueError(
            f"features must have {n_all} rows (train + validation), got "
            f"{text_feats.shape[0]} and {mol_feats.shape[0]}"
        )
    if n_train == 0 or epochs < 1:
        raise ValueError("need at least one training pair and one epoch")
    selection = np.asarray(
        range(len(val_pairs)) if selection_positions is None else selection_positions,
        dtype=np.int64,
    )
    if selection.size == 0:
        raise ValueError("the selection set is empty")
    select_rows = n_train + selection

    torch.manual_seed(seed)
    model = Projections(text_feats.shape[1], mol_feats.shape[1], dim, mol_hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_text = torch.from_numpy(np.ascontiguousarray(text_feats[:n_train]))
    train_mol = torch.from_numpy(np.ascontiguousarray(mol_feats[:n_train]))
    generator = torch.Generator().manual_seed(seed)

    history: list[dict[str, float]] = []
    best_mrr, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=generator)
        total, count = 0.0, 0
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2:  # InfoNCE needs negatives
                continue
            loss = model.loss(train_text[idx], train_mol[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        mol_pool = embed(model.mol, mol_feats)
        queries = embed(model.text, text_feats[select_rows])
        mrr = evaluate(queries, mol_pool, select_rows)["mrr"]
        improved = mrr > best_mrr
        if improved:
            best_mrr = mrr
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(
            {
                "epoch": epoch,
                "loss": total / max(count, 1),
                "selection_mrr": mrr,
                "temperature": model.temperature,
                "best": improved,
            }
        )
        if log:
            print(
                f"  epoch {epoch:3d}  loss {history[-1]['loss']:.4f}  select MRR {mrr:.4f}  "
                f"T {model.temperature:.4f}{'  *' if improved else ''}",
                file=sys.stderr,
                flush=True,
            )
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model.text, model.mol, history


# --- protocol --------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Pairs and features of train + validation, computed once and shared by both modes."""

    train_pairs: list[Pair]
    val_pairs: list[Pair]
    text_feats: np.ndarray
    mol_feats: np.ndarray
    seconds: float

    @property
    def n_pool(self) -> int:
        return len(self.train_pairs) + len(self.val_pairs)


@dataclass
class BaselineResult:
    mode: str
    n_pool: int
    n_train: int
    n_selection: int
    n_report: int
    chosen_epoch: int
    selection_mrr: float
    text_to_molecule: dict[str, float]
    molecule_to_text: dict[str, float]
    text_to_molecule_optimistic_ties: dict[str, float]
    settings: dict[str, Any]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


FEATURE_SETS = ("morgan+maccs", "morgan", "maccs")


def only_feature_set(data: Prepared, feature_set: str) -> Prepared:
    """The same pairs with the other fingerprint's columns zeroed (for the ablation)."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature set must be one of {FEATURE_SETS}, got {feature_set!r}")
    mol_feats = data.mol_feats.copy()
    if feature_set == "morgan":
        mol_feats[:, MORGAN_BITS:] = 0.0
    elif feature_set == "maccs":
        mol_feats[:, :MORGAN_BITS] = 0.0
    return replace(data, mol_feats=mol_feats)


def prepare(data_dir: str | os.PathLike[str] | None, cache_dir: Path | None) -> Prepared:
    started = time.perf_counter()
    files = chebi20_split(data_dir)
    train_pairs = read_pairs(files["train"])
    val_pairs = read_pairs(files["validation"])
    pairs = train_pairs + val_pairs
    text_feats = text_features(pairs, cache_dir)
    mol_feats = molecule_features([p.smiles for p in pairs])
    return Prepared(train_pairs, val_pairs, text_feats, mol_feats, time.perf_counter() - started)


def run(
    data_dir: str | os.PathLike[str] | None,
    cache_dir: Path | None,
    selection: str = "validation",
    *,
    prepared: Prepared | None = None,
    epochs: int = 40,
    dim: int = 256,
    mol_hidden: int = 0,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    log: bool = False,
) -> dict[str, Any]:
    """Train and evaluate under one protocol (see the module docstring); a JSON-ready dict."""
    if selection not in MODES:
        raise ValueError(f"selection must be one of {MODES}, got {selection!r}")
    started = time.perf_counter()
    data = prepared if prepared is not None else prepare(data_dir, cache_dir)
    n_train = len(data.train_pairs)
    if selection == "validation":
        select_pos = report_pos = list(range(len(data.val_pairs)))
    else:
        select_pos, report_pos = split_validation(data.val_pairs, HOLDOUT_FRACTION)
        if not select_pos or not report_pos:
            raise ValueError("validation is too small to split into selection and holdout")
    settings = {
        "epochs": epochs,
        "dim": dim,
        "mol_hidden": mol_hidden,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "init_temperature": INIT_TEMPERATURE,
    }
    text_proj, mol_proj, history = train_baseline(
        data.train_pairs,
        data.val_pairs,
        data.text_feats,
        data.mol_feats,
        epochs=epochs,
        dim=dim,
        mol_hidden=mol_hidden,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        selection_positions=select_pos,
        log=log,
    )
    best = max(history, key=lambda h: h["selection_mrr"])
    text_pool = embed(text_proj, data.text_feats)
    mol_pool = embed(mol_proj, data.mol_feats)
    rows = n_train + np.asarray(report_pos, dtype=np.int64)
    result = BaselineResult(
        mode=selection,
        n_pool=data.n_pool,
        n_train=n_train,
        n_selection=len(select_pos),
        n_report=len(report_pos),
        chosen_epoch=int(best["epoch"]),
        selection_mrr=float(best["selection_mrr"]),
        text_to_molecule=evaluate(text_pool[rows], mol_pool, rows),
        molecule_to_text=evaluate(mol_pool[rows], text_pool, rows),
        text_to_molecule_optimistic_ties=optimistic_tie_metrics(text_pool[rows], mol_pool, rows),
        settings=settings,
        seconds=time.perf_counter() - started,
        history=history,
    )
    return asdict(result)


# --- CLI -------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    env = os.environ.get("MOLRET_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chebi20"


def feature_ties(mol_feats: np.ndarray) -> dict[str, int]:
    """How many pool molecules share their feature vector with another (they tie exactly)."""
    _, inverse, counts = np.unique(mol_feats, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    return {"molecules_sharing_features": int(shared.sum()), "distinct_features": len(counts)}


def format_table(results: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'protocol':<34} {'direction':<6} {'H@1':>6} {'H@10':>6} {'MRR':>6} "
        f"{'mean rank':>9}  {'epoch':>5}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        label = (
            f"validation (select+report, n={r['n_report']})"
            if r["mode"] == "validation"
            else f"select {r['n_selection']} / holdout {r['n_report']}"
        )
        for direction, key in (
            ("t->m", "text_to_molecule"),
            ("m->t", "molecule_to_text"),
            ("t->m*", "text_to_molecule_optimistic_ties"),
        ):
            m = r[key]
            lines.append(
                f"{label:<34} {direction:<6} {100 * m['hits@1']:6.1f} {100 * m['hits@10']:6.1f} "
                f"{100 * m['mrr']:6.1f} {m['mean_rank']:9.1f}  {r['chosen_epoch']:>5}"
            )
            label = ""
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="ChEBI-20 folder")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--mol-hidden", type=int, default=0, help="0 = linear molecule head")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch log")
    parser.add_argument(
        "--molecule-features",
        choices=FEATURE_SETS,
        default="morgan+maccs",
        help="ablation: zero the Morgan or the MACCS columns (the yardstick uses both)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data_dir = resolve_data_dir(args.data if args.data is not None else default_data_dir())
    cache_dir = default_cache_dir()
    started = time.perf_counter()
    data = only_feature_set(prepare(data_dir, cache_dir), args.molecule_features)
    print(
        f"features: {data.n_pool} pairs ({len(data.train_pairs)} train, "
        f"{len(data.val_pairs)} validation) in {data.seconds:.1f} s",
        file=sys.stderr,
    )
    results = []
    for mode in MODES:
        print(f"protocol {mode}:", file=sys.stderr)
        results.append(
            run(
                data_dir,
                cache_dir,
                mode,
                prepared=data,
                epochs=args.epochs,
                dim=args.dim,
                mol_hidden=args.mol_hidden,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                log=not args.quiet,
            )
        )
    wall = time.perf_counter() - started
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    ties = feature_ties(data.mol_feats)

    print()
    print(f"Fingerprint baseline on {data_dir} (pool {data.n_pool}: every query ranked against")
    print("all train + validation items; percentages except mean rank; pessimistic ties)")
    print(format_table(results))
    print("* diagnostic only: ties broken in the query's favour (not the project's metric)")
    print("chosen epochs: " + ", ".join(f"{r['mode']} {r['chosen_epoch']}" for r in results))
    print(
        f"settings: molecule features {args.molecule_features}, dim {args.dim}, molecule head "
        + (f"MLP 2215-{args.mol_hidden}-{args.dim}" if args.mol_hidden else "linear")
        + f", lr {args.lr}, batch {args.batch_size}, epochs {args.epochs}, seed {args.seed}"
    )
    print(
        f"pool molecules sharing their fingerprint with another: "
        f"{ties['molecules_sharing_features']} ({ties['distinct_features']} distinct vectors)"
    )
    print(f"wall time: {wall:.1f} s (features {data.seconds:.1f} s)")
    print(f"machine: {machine}")
    print(f"date: {date}")

    if args.json is not None:
        payload = {
            "benchmark": "fingerprint_baseline",
            "data_dir": str(data_dir),
            "results": {r["mode"]: r for r in results},
            "feature_ties": ties,
            "feature_seconds": data.seconds,
            "wall_seconds": wall,
            "machine": machine,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "date": date,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
