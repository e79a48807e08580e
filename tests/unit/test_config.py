"""Tests for molret.trainer.config: every shipped YAML loads, typos and bad values are refused,
dotted overrides work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from molret.trainer.config import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    config_from_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted(
    [*(REPO / "configs").rglob("*.yaml"), *(REPO / "configs").rglob("*.yml")], key=str
)
SECTIONS = {"model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "data": DataConfig}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_there_are_configs_to_check() -> None:
    names = {p.name for p in CONFIG_FILES}
    assert {"smoke.yaml", "paper.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads_with_sane_types(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)
    raw = yaml.safe_load(path.read_text()) or {}
    # What the file says is what the config holds (nothing silently dropped or defaulted).
    for section, values in raw.items():
        if section == "name":
            assert config.name == values
            continue
        for key, value in (values or {}).items():
            assert getattr(getattr(config, section), key) == value, f"{section}.{key}"
    # Each value has the type of its default, e.g. no "1e-4" read as a string by YAML 1.1.
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = getattr(getattr(config, section), f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if value is None or default is None:
                continue
            if isinstance(default, bool):
                assert isinstance(value, bool), f"{section}.{f.name} = {value!r}"
            elif isinstance(default, float):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (
                    f"{section}.{f.name} = {value!r}"
                )
            else:
                assert isinstance(value, type(default)), f"{section}.{f.name} = {value!r}"


def test_paper_config_values() -> None:
    config = load_config(REPO / "configs" / "paper.yaml")
    assert config.name == "paper"
    assert config.model.graph_hidden == 600
    assert config.loss.second_order_mode == "distance"
    assert config.loss.adversarial is True
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.optim.encoder_lr == pytest.approx(3e-5)
    # Unset fields keep their defaults.
    assert config.data == DataConfig()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_unknown_key_is_refused_and_named(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  embed_dimm: 64\n")
    with pytest.raises(ValueError, match="embed_dimm"):
        load_config(path)
    path = write(tmp_path, "optimiser:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match="optimiser"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("loss:\n  first_order: contrastive\n", "first_order"),
        ("loss:\n  first_order: Triplet\n", "first_order"),
        ("loss:\n  second_order_mode: cosine\n", "second_order_mode"),
        ("model:\n  embed_dim: 30\n  num_heads: 4\n", "num_heads"),
        ("data:\n  holdout_fraction: 1.0\n", "holdout_fraction"),
        ("data:\n  holdout_fraction: -0.1\n", "holdout_fraction"),
        ("optim:\n  precision: fp16\n", "precision"),
    ],
)
def test_invalid_values_are_refused(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(write(tmp_path, text))


def test_valid_first_order_choices(tmp_path: Path) -> None:
    for choice in ("triplet", "infonce"):
        config = load_config(write(tmp_path, f"loss:\n  first_order: {choice}\n"))
        assert config.loss.first_order == choice


def test_dotted_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "name: base\nmodel:\n  embed_dim: 32\noptim:\n  lr: 0.5\n")
    config = load_config(
        path,
        {
            "model.embed_dim": 64,  # replaces a value from the file
            "optim.seed": 7,  # adds a key to a section from the file
            "loss.first_order": "infonce",  # a section the file does not have
            "data.train_limit": 10,
        },
    )
    assert config.model.embed_dim == 64
    assert config.optim.lr == 0.5 and config.optim.seed == 7
    assert config.loss.first_order == "infonce"
    assert config.data.train_limit == 10
    assert config.name == "base"
    # The file itself is untouched.
    assert load_config(path).model.embed_dim == 32


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ValueError, match="nope"):
        load_config(path, {"model.nope": 1})
    with pytest.raises(ValueError, match="first_order"):
        load_config(path, {"loss.first_order": "hinge"})
    with pytest.raises(ValueError, match="num_heads"):
        load_config(path, {"model.num_heads": 7})


def test_override_into_empty_section(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  embed_dim: 32\nloss:\n")
    assert load_config(path).loss == LossConfig()  # an empty section itself is fine
    config = load_config(path, {"loss.first_order": "infonce"})
    assert config.loss.first_order == "infonce"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "smoke.yaml", {"optim.lr": 0.003})
    out = tmp_path / "saved.yaml"
    save_config(config, out)
    assert load_config(out) == config
    assert config_from_dict(config.to_dict()) == config


def test_scientific_notation_is_a_number_or_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 1e-4\n")
    try:
        config = load_config(path)
    except ValueError:
        return  # refused up front: fine
    assert isinstance(config.optim.lr, float), repr(config.optim.lr)
