"""Tests for molret.trainer.checkpoint: full training-state round trip, file format (safetensors,
no pickle) and refusal of damaged files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from molret.featurize import featurize, pad_graphs, smallest_fitting_shape
from molret.trainer.checkpoint import (
    load_training_state,
    load_weights,
    model_tensors,
    save_training_state,
    save_weights,
)
from molret.trainer.config import ModelConfig
from molret.trainer.losses import batch_hard_triplet
from molret.trainer.model import DualEncoder, GraphTensors

torch.set_num_threads(1)

TEXT_HIDDEN = 8
SMILES = ["CCO", "c1ccccc1O", "CC(=O)O", "C[C@H](N)C(=O)O"]
PROGRESS = {"epoch": 1, "global_step": 2, "step_in_epoch": 0, "history": [{"loss": 0.5}]}


def small_config(**changes) -> ModelConfig:
    base = dict(embed_dim=16, graph_hidden=16, graph_layers=2, num_memories=4, num_heads=4)
    base.update(changes)
    # dropout 0 so that a training step is a deterministic function of the state.
    return ModelConfig(dropout=0.0, **base)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, GraphTensors]:
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(len(SMILES), 5, TEXT_HIDDEN, generator=gen)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([[5], [3], [4], [2]])
    graphs = [featurize(s) for s in SMILES]
    batch = pad_graphs(graphs, *smallest_fitting_shape(graphs))
    return states, mask, GraphTensors.from_batch(batch)


def lr_lambda(step: int) -> float:
    return min(1.0, (step + 1) / 3)


def build(
    seed: int,
) -> tuple[DualEncoder, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = DualEncoder(small_config(), text_hidden=TEXT_HIDDEN)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.8, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler, seed: int) -> None:
    model.train()
    states, mask, graphs = inputs(seed)
    text = model.encode_text_states(states, mask).embedding
    mol = model.encode_molecule(graphs).embedding
    loss = batch_hard_triplet(text, mol, 0.5) + (text * mol).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def normalised(value):
    """Tuples become lists (JSON has no tuples); everything else unchanged."""
    if isinstance(value, (list, tuple)):
        return [normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    return value


def assert_same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert normalised(sa["param_groups"]) == normalised(sb["param_groups"])
    assert sa["state"].keys() == sb["state"].keys()
    assert len(sa["state"]) > 0
    for pid in sa["state"]:
        assert sa["state"][pid].keys() == sb["state"][pid].keys()
        for key, value in sa["state"][pid].items():
            other = sb["state"][pid][key]
            if isinstance(value, torch.Tensor):
                assert isinstance(other, torch.Tensor)
                assert other.dtype == value.dtype, (pid, key)
                torch.testing.assert_close(other, value, atol=0, rtol=0)
            else:
                assert other == value


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], atol=0, rtol=0, msg=key)


@pytest.fixture
def trained(tmp_path: Path):
    model, optimizer, scheduler = build(seed=0)
    for step in range(2):
        train_step(model, optimizer, scheduler, seed=step)
    path = tmp_path / "last.safetensors"
    torch.manual_seed(1234)
    torch.rand(3)
    rng = torch.get_rng_state().clone()
    save_training_state(path, model, optimizer, scheduler, PROGRESS)
    return model, optimizer, scheduler, path, rng


# --------------------------------------------------------------------------------------------
# Round trip


def test_training_state_round_trip(trained) -> None:
    model, optimizer, scheduler, path, rng = trained
    torch.rand(100)  # move the RNG on, so restoring it is visible
    assert not torch.equal(torch.get_rng_state(), rng)

    fresh_model, fresh_opt, fresh_sched = build(seed=99)
    with pytest.raises(AssertionError):
        assert_same_weights(model, fresh_model)  # the fresh model really is different
    progress = load_training_state(path, fresh_model, fresh_opt, fresh_sched)

    assert progress == PROGRESS
    assert_same_weights(model, fresh_model)
    assert_same_optimizer_state(optimizer, fresh_opt)
    assert fresh_sched.state_dict() == scheduler.state_dict()
    assert fresh_sched.last_epoch == 2
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert [g["lr"] for g in fresh_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert torch.equal(torch.get_rng_state(), rng)
    # BatchNorm running statistics are weights too.
    # Each modality keeps its own statistics: 2 steps = 2 batches tracked per modality.
    for modality in ("text", "molecule"):
        bn_old = model.projector.head_norm.norms[modality]
        bn_new = fresh_model.projector.head_norm.norms[modality]
        assert int(bn_new.num_batches_tracked) == int(bn_old.num_batches_tracked) == 2
        torch.testing.assert_close(bn_new.running_var, bn_old.running_var, atol=0, rtol=0)


def test_resumed_training_continues_identically(trained) -> None:
    model, optimizer, scheduler, path, _ = trained
    fresh_model, fresh_opt, fresh_sched = build(seed=99)
    load_training_state(path, fresh_model, fresh_opt, fresh_sched)
    for step in (2, 3):
        train_step(model, optimizer, scheduler, seed=step)
        train_step(fresh_model, fresh_opt, fresh_sched, seed=step)
    assert_same_weights(model, fresh_model)
    assert_same_optimizer_state(optimizer, fresh_opt)
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()


# --------------------------------------------------------------------------------------------
# Format


def read_header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert 0 < length <= len(raw) - 8
    header = json.loads(raw[8 : 8 + length].decode("utf-8"))
    return length, header


def test_file_is_plain_safetensors(trained) -> None:
    model, _, _, path, _ = trained
    raw = path.read_bytes()
    assert not raw.startswith(b"\x80")  # pickle protocol 2+ opcode
    assert not raw.startswith(b"PK")  # torch.save zip archive
    length, header = read_header(path)
    metadata = header.pop("__metadata__")
    record = json.loads(metadata["record"])
    assert record["progress"] == PROGRESS
    # Every tensor is described in the header and the data section is exactly covered by them.
    end = max(info["data_offsets"][1] for info in header.values())
    assert 8 + length + end == len(raw)
    assert "rng.torch" in header and header["rng.torch"]["dtype"] == "U8"
    names = {k for k in header if k.startswith("model.")}
    assert names == {"model." + k for k in model.state_dict()}
    assert any(k.startswith("optim.") for k in header)
    for info in header.values():
        assert set(info) == {"dtype", "shape", "data_offsets"}


def test_save_is_atomic_and_leaves_no_temp_file(trained, tmp_path: Path) -> None:
    model, optimizer, scheduler, path, _ = trained
    save_training_state(path, model, optimizer, scheduler, PROGRESS)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]


def test_weights_round_trip_and_mismatch_is_refused(tmp_path: Path) -> None:
    model, _, _ = build(seed=3)
    path = tmp_path / "best.safetensors"
    save_weights(model, path, metadata={"note": "x"})
    other, _, _ = build(seed=4)
    load_weights(other, path)
    assert_same_weights(model, other)
    torch.manual_seed(0)
    bigger = DualEncoder(small_config(graph_layers=3), text_hidden=TEXT_HIDDEN)
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(bigger, path)


def test_frozen_text_encoder_is_not_stored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = nn.Module()
    encoder.frozen = nn.Linear(3, 3)
    encoder.top = nn.Linear(3, 3)
    for p in encoder.frozen.parameters():
        p.requires_grad_(False)
    model = DualEncoder(small_config(), text_hidden=TEXT_HIDDEN, text_encoder=encoder)
    names = set(model_tensors(model))
    assert "text_encoder.top.weight" in names
    assert not any(n.startswith("text_encoder.frozen.") for n in names)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    torch.manual_seed(1)
    enc2 = nn.Module()
    enc2.frozen = nn.Linear(3, 3)
    enc2.top = nn.Linear(3, 3)
    other = DualEncoder(small_config(), text_hidden=TEXT_HIDDEN, text_encoder=enc2)
    load_weights(other, path)  # the missing frozen weights are not an error
    torch.testing.assert_close(other.text_encoder.top.weight, encoder.top.weight)


# --------------------------------------------------------------------------------------------
# Damaged files


def _load_fresh(path: Path) -> None:
    model, optimizer, scheduler = build(seed=5)
    load_training_state(path, model, optimizer, scheduler)


@pytest.mark.parametrize("keep", [0, 4, 8, 20, -1, -100])
def test_truncated_file_is_refused(trained, tmp_path: Path, keep: int) -> None:
    _, _, _, path, _ = trained
    raw = path.read_bytes()
    damaged = tmp_path / "truncated.safetensors"
    damaged.write_bytes(raw[:keep])
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error types
        _load_fresh(damaged)


def test_truncated_header_region_is_refused(trained, tmp_path: Path) -> None:
    _, _, _, path, _ = trained
    raw = path.read_bytes()
    length, _ = read_header(path)
    damaged = tmp_path / "half-header.safetensors"
    damaged.write_bytes(raw[: 8 + length // 2])
    with pytest.raises(Exception):  # noqa: B017
        _load_fresh(damaged)


def test_corrupted_header_is_refused(trained, tmp_path: Path) -> None:
    _, _, _, path, _ = trained
    raw = bytearray(path.read_bytes())
    damaged = tmp_path / "bad-json.safetensors"
    raw[8] = ord("[")  # the JSON header no longer is an object
    damaged.write_bytes(bytes(raw))
    with pytest.raises(Exception):  # noqa: B017
        _load_fresh(damaged)
    # A header length pointing past the end of the file.
    raw = bytearray(path.read_bytes())
    raw[:8] = struct.pack("<Q", len(raw) * 2)
    damaged.write_bytes(bytes(raw))
    with pytest.raises(Exception):  # noqa: B017
        _load_fresh(damaged)


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    """A torch.save (pickle) file under the checkpoint name is not unpickled."""
    path = tmp_path / "last.safetensors"
    torch.save({"model.x": torch.zeros(2)}, path)
    with pytest.raises(Exception):  # noqa: B017
        _load_fresh(path)


def test_corrupted_tensor_data_is_refused(trained, tmp_path: Path) -> None:
    _, _, _, path, _ = trained
    raw = bytearray(path.read_bytes())
    length, header = read_header(path)
    start, end = header["model.projector.memory"]["data_offsets"]
    for i in range(8 + length + start, 8 + length + end, 7):
        raw[i] ^= 0x40  # flip exponent bits of some float32 values
    damaged = tmp_path / "bitflip.safetensors"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(Exception):  # noqa: B017
        _load_fresh(damaged)
