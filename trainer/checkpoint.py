"""Checkpoints as safetensors plus JSON: never pickle, so loading a run cannot execute code.

Files are written atomically (temp file, fsync, rename). `best.safetensors` holds the model
weights chosen on validation; `last.safetensors` holds the full training state for resuming.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable state only: a frozen pretrained text encoder is not copied into every run."""
    state = model.state_dict()
    frozen = {
        name
        for name, p in model.named_parameters()
        if name.startswith("text_encoder.") and not p.requires_grad
    }
    return {
        name: t.detach().contiguous().clone()
        for name, t in state.items()
        if name not in frozen and not name.startswith("text_encoder.embeddings.position_ids")
    }


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = model_tensors(model)
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(model: nn.Module, path: Path) -> None:
    _load_model_tensors(model, load_file(str(path)), path)


def _load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.startswith("text_encoder.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not fit the model (missing {missing}, unexpected {unexpected})"
        )


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        scalars["state"][str(pid)] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.contiguous()
            else:
                scalars["state"][str(pid)][key] = value
    return tensors, scalars


def _unflatten_optimizer(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in scalars["state"].items()}
    for name, tensor in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = tensor
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: dict[str, Any],
) -> None:
    """Everything needed to resume: weights, optimizer, scheduler, RNG and progress, in ONE
    safetensors file (scalars in its metadata) so a kill can never leave a mixed checkpoint."""
    opt_tensors, opt_scalars = _flatten_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    record = {"progress": progress, "optimizer": opt_scalars, "scheduler": scheduler.state_dict()}
    metadata = {"record": json.dumps(record)}
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as fh:
        record = json.loads(fh.metadata()["record"])
    tensors = load_file(str(path))
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_model_tensors(model, weights, path)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, record["optimizer"]))
    scheduler.load_state_dict(record["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return dict(record["progress"])
