"""The packed text path (training) against the padded one (evaluation and export)."""

from __future__ import annotations

import torch

from molret.trainer.config import ModelConfig
from molret.trainer.model import DualEncoder, pad_packed

torch.set_num_threads(1)

HIDDEN = 24


def small_model() -> DualEncoder:
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=16, graph_hidden=16, graph_layers=1, num_memories=3, dropout=0.0)
    model = DualEncoder(config, text_hidden=HIDDEN)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model.encode_text_packed(torch.randn(30, HIDDEN) * 2 + 1, [10, 8, 12])
    return model.eval()


def test_pad_packed_layout() -> None:
    states = torch.arange(6.0).unsqueeze(1)
    padded, mask = pad_packed(states, [1, 3, 2])
    assert padded.shape == (3, 3, 1)
    assert mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    assert padded[1, :, 0].tolist() == [1.0, 2.0, 3.0]
    assert padded[2, :2, 0].tolist() == [4.0, 5.0]


def test_packed_text_equals_padded_text_with_garbage_padding() -> None:
    model = small_model()
    lengths = [5, 1, 9, 3]
    packed = torch.randn(sum(lengths), HIDDEN)
    padded, mask = pad_packed(packed, lengths)
    padded[~mask] = 1e3 * torch.randn(int((~mask).sum()), HIDDEN)  # the head must never see it
    with torch.no_grad():
        a = model.encode_text_packed(packed, lengths)
        b = model.encode_text_states(padded, mask)
    torch.testing.assert_close(a.embedding, b.embedding, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-5, atol=1e-5)


def test_encoded_float_casts_both_parts() -> None:
    model = small_model()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = model.encode_text_packed(torch.randn(7, HIDDEN), [3, 4])
    assert out.float().embedding.dtype == torch.float32
    assert out.float().pooled.dtype == torch.float32
