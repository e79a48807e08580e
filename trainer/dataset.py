"""ChEBI-20 prepared for training: graphs featurized once, text states cached, splits fixed.

Validation is cut in two by a hash of the CID, so the cut is stable across runs and machines:
the *selection* part picks the best epoch, the *holdout* part is never seen by training or
selection and gives the reported numbers. The candidate pool is every molecule of train +
validation, as in the Text2Mol protocol.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from molret.data import Pair, chebi20_split, read_pairs
from molret.featurize import MolGraph, featurize_many, pad_graphs, smallest_fitting_shape

from .config import Config
from .model import GraphTensors
from .text_cache import TokenStateCache, load_or_build

log = logging.getLogger(__name__)


def holdout_score(cid: str) -> float:
    """A stable pseudo-random number in [0, 1) per CID."""
    digest = hashlib.sha1(f"molret-holdout:{cid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_validation(pairs: Sequence[Pair], holdout_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of (selection, holdout) within the validation pairs."""
    select, holdout = [], []
    for i, pair in enumerate(pairs):
        (holdout if holdout_score(pair.cid) < holdout_fraction else select).append(i)
    return select, holdout


@dataclass
class PairPool:
    """All pairs (train then validation) with graphs and cached text states by position."""

    pairs: list[Pair]
    graphs: list[MolGraph | None]
    texts: TokenStateCache
    train: np.ndarray  # positions usable as training pairs
    select: np.ndarray  # positions of the selection part of validation
    holdout: np.ndarray  # positions of the held-out part of validation
    validation: np.ndarray  # all validation positions

    @property
    def molecule_ok(self) -> np.ndarray:
        return np.array([g is not None for g in self.graphs], dtype=bool)


def prepare_pool(
    config: Config, data_dir: str | os.PathLike[str] | None, cache_dir: Path | None
) -> PairPool:
    files = chebi20_split(data_dir)
    train_pairs = read_pairs(files["train"])
    val_pairs = read_pairs(files["validation"])
    pairs = train_pairs + val_pairs
    graphs, errors = featurize_many([p.smiles for p in pairs], keys=config.model.maccs_keys)
    for err in errors:
        log.warning("pair %d (CID %s) left out: %s", err.index, pairs[err.index].cid, err.reason)
    n_train = len(train_pairs)
    train = [
        i for i in range(n_train)
        if graphs[i] is not None and graphs[i].n_atoms <= config.data.max_train_atoms  # type: ignore[union-attr]
    ]  # fmt: skip
    if len(train) < n_train:
        log.info(
            "training on %d of %d train pairs (%d too large or invalid)",
            len(train),
            n_train,
            n_train - len(train),
        )
    if config.data.train_limit is not None:
        train = train[: config.data.train_limit]
    select_rel, holdout_rel = split_validation(val_pairs, config.data.holdout_fraction)
    select = [n_train + i for i in select_rel]
    if config.data.select_limit is not None:
        select = select[: config.data.select_limit]
    texts = load_or_build(
        [p.description for p in pairs],
        config.model.text_encoder,
        layer=-1,
        max_length=config.model.text_max_length,
        cache_dir=cache_dir,
    )
    return PairPool(
        pairs=pairs,
        graphs=graphs,
        texts=texts,
        train=np.array(train, dtype=np.int64),
        select=np.array(select, dtype=np.int64),
        holdout=np.array([n_train + i for i in holdout_rel], dtype=np.int64),
        validation=np.arange(n_train, len(pairs), dtype=np.int64),
    )


def graph_tensors(graphs: Sequence[MolGraph]) -> GraphTensors:
    """Pad a list of graphs to their own largest size (the dense form that export uses)."""
    max_nodes, max_edges = smallest_fitting_shape(graphs)
    return GraphTensors.from_batch(pad_graphs(graphs, max_nodes, max_edges))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch (indices into the training pairs, last partial batch dropped):
    a function of (seed, epoch) only, so a resumed run and every torchrun process see the same
    batches. Batches are uniformly random: the head's BatchNorm must see batch statistics that
    match the population statistics it uses at evaluation (size-sorted batches broke that)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).numpy()
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
