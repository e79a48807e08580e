"""Shared fixtures: the hand-written tiny ChEBI-style data set and the real data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"


def real_data_dir() -> Path | None:
    """ChEBI-20 at $MOLRET_DATA, else ../shared/data/chebi20 beside the checkout."""
    candidate = Path(os.environ.get("MOLRET_DATA", REPO.parent / "shared" / "data" / "chebi20"))
    return candidate if (candidate / "train.txt").is_file() else None


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A ChEBI-20-shaped folder (train.txt 24 pairs, validation.txt 9) from the hand fixture."""
    lines = (FIXTURES / "tiny_pairs.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    folder = tmp_path / "tiny-chebi"
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join([header, *rows[:24]]) + "\n")
    (folder / "validation.txt").write_text("\n".join([header, *rows[24:]]) + "\n")
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text-state cache for the whole session (MiniLM runs once per text set)."""
    return tmp_path_factory.mktemp("molret-cache")


def _tiny_folder(root: Path) -> Path:
    lines = (FIXTURES / "tiny_pairs.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join([header, *rows[:24]]) + "\n")
    (root / "validation.txt").write_text("\n".join([header, *rows[24:]]) + "\n")
    return root


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A real (tiny) training run: configs/smoke.yaml on the hand-written pairs, a few steps."""
    pytest.importorskip("torch")
    from molret.trainer.config import load_config
    from molret.trainer.loop import train

    root = tmp_path_factory.mktemp("smoke")
    data = _tiny_folder(root / "data")
    run = root / "run"
    train(load_config(REPO / "configs" / "smoke.yaml"), data, run, None, shared_cache, False)
    return run


@pytest.fixture(scope="session")
def smoke_bundle(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run exported as an fp32 bundle (real ONNX, parity-checked), read-only by use."""
    from molret.export.bundle_export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "fp32"
    export_bundle(smoke_run, out, ExportOptions(data_dir=smoke_run.parent / "data"))
    return out
