"""ONNX Runtime against PyTorch on the same real inputs: the export's correctness check.

The PyTorch reference is the path training and evaluation use (packed graphs with index_add,
the encoder run by transformers), so parity also confirms that the dense, scatter-free form in
the ONNX graph computes the same function as the one the model was selected with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from molret.bundle import Bundle
from molret.data import read_pairs
from molret.engine.runtime import BundleEmbedder
from molret.featurize import featurize_many
from molret.metrics import cosine_rows

# Hand-written fallbacks for exporting without the ChEBI-20 files at hand.
FALLBACK_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "CC(=O)Oc1ccccc1C(=O)O",
        "A benzoic acid carrying an acetyloxy group ortho to the carboxy group.",
    ),
    ("CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "A trimethylxanthine found in coffee and tea; a stimulant."),
    ("OCC(O)CO", "A triol with a three-carbon backbone, the core of fats and oils."),
    ("[Na+].[Cl-]", "An inorganic salt made of sodium cations and chloride anions."),
    ("C[C@@H](N)C(=O)O", "The L-enantiomer of a small chiral amino acid with a methyl side chain."),
    ("c1ccc2ccccc2c1", "A bicyclic aromatic hydrocarbon of two fused benzene rings."),
    ("CC(C)Cc1ccc(cc1)C(C)C(=O)O", "A propionic acid with an isobutylphenyl group; an NSAID."),
    ("O=C(O)CCC(=O)O", "A four-carbon dicarboxylic acid of the citric acid cycle."),
)


@dataclass(frozen=True)
class ParityReport:
    n_texts: int
    n_molecules: int
    min_cosine_text: float
    mean_cosine_text: float
    min_cosine_molecule: float
    mean_cosine_molecule: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityReport:
        return cls(**data)


def parity_inputs(data_dir: Path | None, n: int) -> tuple[list[str], list[str]]:
    """Up to ``n`` real texts and SMILES (ChEBI-20 validation rows) or the built-in examples."""
    folder = data_dir or (
        Path(os.environ["MOLRET_DATA"]) if os.environ.get("MOLRET_DATA") else None
    )
    if folder is not None and (folder / "validation.txt").is_file():
        pairs = read_pairs(folder / "validation.txt")[:n]
        return [p.description for p in pairs], [p.smiles for p in pairs]
    return [t for _, t in FALLBACK_PAIRS], [s for s, _ in FALLBACK_PAIRS]


def reference_embeddings(
    model: Any, texts: Sequence[str], graphs: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    from molret.trainer.embed import embed_molecules, embed_texts_with_encoder
    from molret.trainer.text_encoder import resolve_text_encoder

    encoder_dir = str(resolve_text_encoder(model.config.text_encoder))
    text = embed_texts_with_encoder(model, encoder_dir, texts, model.config.text_max_length)
    return text, embed_molecules(model, graphs)


def check_parity(
    model: Any, bundle: Bundle, texts: Sequence[str], smiles: Sequence[str]
) -> ParityReport:
    """Per-item cosine between ORT (the bundle) and PyTorch (the run) embeddings."""
    graphs, _ = featurize_many(smiles, buckets=bundle.buckets, keys=bundle.takes_molecule_keys)
    kept = [g for g in graphs if g is not None]
    ref_text, ref_mol = reference_embeddings(model, texts, kept)
    embedder = BundleEmbedder(bundle)
    ort_text = embedder.embed_text_list(texts)
    ort_mol = embedder.embed_graphs(kept)
    cos_text = cosine_rows(ref_text, ort_text)
    cos_mol = cosine_rows(ref_mol, ort_mol)
    return ParityReport(
        n_texts=len(texts),
        n_molecules=len(kept),
        min_cosine_text=float(cos_text.min()),
        mean_cosine_text=float(cos_text.mean()),
        min_cosine_molecule=float(cos_mol.min()),
        mean_cosine_molecule=float(cos_mol.mean()),
    )
