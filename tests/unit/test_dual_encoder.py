"""The packed text path (training) against the padded one (evaluation and export)."""

from __future__ import annotations

import pytest
import torch

from molret.trainer.config import ModelConfig
from molret.trainer.model import DualEncoder, pad_packed

torch.set_num_threads(1)

HIDDEN = 24


def small_model(sentence_branch: bool = False) -> DualEncoder:
    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=16,
        graph_hidden=16,
        graph_layers=1,
        num_memories=3,
        dropout=0.0,
        sentence_branch=sentence_branch,
    )
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


@pytest.mark.parametrize("sentence_branch", [False, True])
def test_packed_text_equals_padded_text_with_garbage_padding(sentence_branch: bool) -> None:
    model = small_model(sentence_branch)
    assert (model.sentence is not None) == sentence_branch
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


def test_sentence_branch_sees_the_normalised_mean_of_the_encoder_states() -> None:
    """Scaling one description's encoder states, or padding it, leaves the branch unchanged;
    changing the states' mean direction changes it."""
    model = small_model(sentence_branch=True)
    branch = model.sentence
    assert branch is not None
    states = torch.randn(2, 6, HIDDEN)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        base = branch(states, mask)
        garbage = states.clone()
        garbage[1, 4:] = 1e3
        scaled = branch(3.0 * garbage, mask)
        other = branch(states + torch.randn(1, 1, HIDDEN), mask)
    torch.testing.assert_close(scaled, base, rtol=1e-5, atol=1e-5)
    assert (other - base).abs().max() > 1e-3


def test_sentence_branch_adds_to_the_pooled_text_vector() -> None:
    """With its last layer zeroed the branch adds nothing (the text embedding is the paper's);
    with trained weights it moves the embedding."""
    model = small_model(sentence_branch=True)
    assert model.sentence is not None
    lengths = [4, 7]
    packed = torch.randn(sum(lengths), HIDDEN)
    with torch.no_grad():
        branched = model.encode_text_packed(packed, lengths).embedding
        last = model.sentence.mlp[-1]
        last.weight.zero_()
        last.bias.zero_()
        zeroed = model.encode_text_packed(packed, lengths).embedding
        model.sentence = None
        without = model.encode_text_packed(packed, lengths).embedding
    torch.testing.assert_close(zeroed, without)
    assert (branched - without).abs().max() > 1e-3
