"""`molret eval` on a training run: the PyTorch towers behind the core's evaluation protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from molret.evaluation import evaluate_pairs
from molret.featurize import MolGraph

from .checkpoint import load_weights
from .config import load_config
from .embed import embed_cached_texts, embed_molecules, embed_texts_with_encoder
from .loop import build_model
from .model import DualEncoder
from .text_cache import load_or_build
from .text_encoder import resolve_text_encoder


def load_run(run_dir: Path, with_text_encoder: bool | None = None) -> DualEncoder:
    """The model of a run with its best weights (the last ones if no epoch finished)."""
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    model = build_model(config, with_text_encoder)
    for name in ("best.safetensors", "last.safetensors"):
        if (run_dir / name).is_file():
            if name == "last.safetensors":
                from safetensors.torch import load_file

                tensors = {
                    k[6:]: v
                    for k, v in load_file(str(run_dir / name)).items()
                    if k.startswith("model.")
                }
                model.load_state_dict(tensors, strict=False)
            else:
                load_weights(model, run_dir / name)
            return model.eval()
    raise FileNotFoundError(f"{run_dir} has no weights (best.safetensors or last.safetensors)")


class TorchEmbedder:
    """A run's PyTorch model as an evaluation embedder (cached token states when frozen)."""

    buckets: Sequence[tuple[int, int]] | None = None  # PyTorch packs graphs: no size limit

    def __init__(self, model: DualEncoder, cache_dir: Path | None) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.takes_keys = model.config.maccs_keys

    def embed_text_list(self, texts: Sequence[str]) -> np.ndarray:
        cfg = self.model.config
        if self.model.text_encoder is None:
            cache = load_or_build(
                list(texts), cfg.text_encoder, -1, cfg.text_max_length, self.cache_dir,
                show_progress=False,
            )  # fmt: skip
            return embed_cached_texts(self.model, cache, list(range(len(texts))))
        encoder_dir = str(resolve_text_encoder(cfg.text_encoder))
        return embed_texts_with_encoder(self.model, encoder_dir, texts, cfg.text_max_length)

    def embed_graphs(self, graphs: Sequence[MolGraph]) -> np.ndarray:
        return embed_molecules(self.model, graphs)


def evaluate_run(
    run_dir: Path, pairs_path: Path, candidates_path: Path | None, cache_dir: Path | None = None
) -> dict[str, Any]:
    return evaluate_pairs(TorchEmbedder(load_run(run_dir), cache_dir), pairs_path, candidates_path)
