"""Training configuration as typed data, read from YAML (configs/*.yaml).

Every switch the paper's ablations need is a field here, so an ablation is a YAML file and not
a code change. Unknown keys are errors: a typo must not silently train the default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    text_encoder: str | None = None  # local Hugging Face folder; None = packaged all-MiniLM-L6-v2
    text_max_length: int = 256
    # 0: frozen encoder, token states cached once; N > 0: the top N blocks are fine-tuned.
    text_trainable_layers: int = 0
    embed_dim: int = 300
    graph_hidden: int = 300
    graph_layers: int = 4
    dropout: float = 0.1
    memory_bank: bool = True
    num_memories: int = 28
    num_heads: int = 4
    scale_init: float = 0.07
    # Also feed the projector head a scaled masked *sum* of the states (beside the memory
    # attention's weighted average). Averages cannot count: a C16 and a C18 fatty acid have
    # nearly the same mean atom state, while ChEBI descriptions name exact chain lengths and
    # substituent counts. Off = the paper's projector.
    sum_pool: bool = False
    # Molecule tower: also a learned Morgan count fingerprint (per-atom feature embeddings summed
    # over the molecule, then an MLP) added to the pooled vector. Off = the paper's tower.
    fingerprint_branch: bool = False
    # Text tower: also the encoder's own sentence embedding (normalised mean of its token
    # states, what all-MiniLM-L6-v2 was trained to produce) through an MLP, added to the
    # pooled vector. Off = the paper's text tower.
    sentence_branch: bool = False
    # Molecule tower: also RDKit's 166 MACCS keys through an MLP, added to the pooled vector.
    # A bundle input (`molecule_keys`) the featurizer computes only for such models (MACCS
    # costs 1.6x the rest of featurization). Off = the paper's tower.
    maccs_keys: bool = False


@dataclass
class LossConfig:
    first_order: str = "triplet"  # "triplet" (paper's code) or "infonce"
    first_order_weight: float = 1.0
    triplet_margin: float = 0.3
    infonce_temperature: float = 0.07  # initial value; learned
    # An InfoNCE term beside a triplet first-order loss (0 = off). Batch-hard triplet pushes
    # away only the closest negative; InfoNCE weighs every negative, which is what mean rank
    # and Hits@10 reward (1-epoch ablation: InfoNCE alone has the better mean rank).
    infonce_weight: float = 0.0
    second_order_mode: str = "similarity"  # "similarity" (-distance) or "distance" (official code)
    intra_weight: float = 1.0  # KL(P_MM || P_TT) + KL(P_TT || P_MM); 0 switches it off
    cross_weight: float = 1.0  # KL(sg P_MM || P_TM) + KL(sg P_TT || P_MT); 0 switches it off
    intra_temperature: float = 1.0
    cross_temperature: float = 1.0
    adversarial: bool = False  # WGAN-GP critic on pooled pre-memory features
    adversarial_weight: float = 2e-4


@dataclass
class OptimConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-4  # new layers
    encoder_lr: float = 3e-5  # pretrained text encoder (when fine-tuned)
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    seed: int = 42
    checkpoint_every_steps: int = 200
    # Precision of the training forward pass: "fp32", or "bf16" autocast (matmuls in bfloat16,
    # losses, optimiser and master weights in float32). On an AVX512-BF16 CPU bf16 halves the
    # step time (measured 829 -> 313 ms per cpu-fast step on 2 cores); evaluation, selection
    # and export always run in float32.
    precision: str = "fp32"


@dataclass
class DataConfig:
    # Share of validation.txt held out from model selection (deterministic by CID hash): the
    # reported numbers come from this part, which training and selection never saw.
    holdout_fraction: float = 0.5
    max_train_atoms: int = 256  # larger molecules are left out of training batches (counted)
    train_limit: int | None = None  # first N training pairs only (smoke tests)
    select_limit: int | None = None  # first N selection pairs only (smoke tests)
    eval_batch_size: int = 128
    # Pool for the per-epoch selection score: "validation" (the 3,301 validation pairs: about a
    # ninth of the cost) or "all" (every train + validation pair, as in the final evaluation).
    selection_pool: str = "validation"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    name: str = "molret"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "data": DataConfig}


def config_from_dict(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - set(_SECTIONS) - {"name"}
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)}")
    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        values = raw.get(key) or {}
        names = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - names
        if bad:
            raise ValueError(f"unknown keys in {key}: {sorted(bad)}; known: {sorted(names)}")
        sections[key] = cls(**values)
    config = Config(name=raw.get("name", "molret"), **sections)
    validate(config)
    return config


def _check_types(section: str, values: Any) -> None:
    """YAML reads `1e-4` as a string: refuse wrong types here, not deep inside the optimizer."""
    for f in dataclasses.fields(values):
        value = getattr(values, f.name)
        default = f.default
        if value is None or default is None or default is dataclasses.MISSING:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok:
                setattr(values, f.name, float(value))
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(
                f"{section}.{f.name} must be {type(default).__name__}, got {value!r} "
                "(write floats like 1.0e-4: YAML reads 1e-4 as a string)"
            )


def validate(config: Config) -> None:
    for section in _SECTIONS:
        _check_types(section, getattr(config, section))
    if config.loss.first_order not in ("triplet", "infonce"):
        raise ValueError(
            f"loss.first_order must be triplet or infonce, got {config.loss.first_order!r}"
        )
    if config.loss.second_order_mode not in ("similarity", "distance"):
        raise ValueError("loss.second_order_mode must be similarity or distance")
    if config.model.embed_dim % config.model.num_heads:
        raise ValueError("model.embed_dim must be divisible by model.num_heads")
    if config.optim.precision not in ("fp32", "bf16"):
        raise ValueError(f"optim.precision must be fp32 or bf16, got {config.optim.precision!r}")
    if config.data.selection_pool not in ("validation", "all"):
        raise ValueError("data.selection_pool must be validation or all")
    if not 0.0 <= config.data.holdout_fraction < 1.0:
        raise ValueError("data.holdout_fraction must be in [0, 1)")


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Config:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        if dotted == "name":
            raw["name"] = value
            continue
        if "." not in dotted:
            raise ValueError(f"override {dotted!r} must be SECTION.KEY, e.g. optim.seed")
        section, key = dotted.split(".", 1)
        raw[section] = {**(raw.get(section) or {}), key: value}
    return config_from_dict(raw)


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
