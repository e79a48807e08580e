"""Tests for molret.trainer.projector (memory-bank projector) and, since the projector's head
holds the only BatchNorm, for the single-process behaviour of molret.trainer.distributed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from molret.trainer import distributed as D
from molret.trainer.projector import MemoryBankProjector, masked_mean

torch.set_num_threads(1)

DIM, K, HEADS = 16, 5, 4


def make_projector(
    use_memory: bool = True, seed: int = 0, sum_pool: bool = False
) -> MemoryBankProjector:
    """A projector with non-trivial BatchNorm running stats, then put in eval mode."""
    torch.manual_seed(seed)
    proj = MemoryBankProjector(
        DIM, num_memories=K, num_heads=HEADS, use_memory=use_memory, sum_pool=sum_pool
    )
    proj.train()
    with torch.no_grad():
        for _ in range(3):
            states = torch.randn(8, 6, DIM) * 2 + 0.5
            proj(states, torch.ones(8, 6, dtype=torch.bool), "text")
            proj(states * 0.5 - 1.0, torch.ones(8, 6, dtype=torch.bool), "molecule")
    bn = proj.head_norm.norms["text"]
    assert not torch.allclose(bn.running_mean, torch.zeros(DIM))
    assert not torch.allclose(bn.running_mean, proj.head_norm.norms["molecule"].running_mean)
    return proj.eval()


def random_batch(lengths: list[int], max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(len(lengths), max_len, DIM, generator=gen)
    mask = torch.arange(max_len).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return states, mask


def with_garbage_padding(
    states: torch.Tensor, mask: torch.Tensor, extra: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Overwrite padded positions with large garbage and append `extra` more of them."""
    gen = torch.Generator().manual_seed(seed)
    b, length, d = states.shape
    garbage = torch.randn(b, length + extra, d, generator=gen) * 100.0
    new_states = garbage.clone()
    new_states[:, :length][mask] = states[mask]
    new_mask = torch.cat([mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
    return new_states, new_mask


# --------------------------------------------------------------------------------------------
# An independent reference of the eval-mode forward


def reference_forward(
    proj: MemoryBankProjector, states: torch.Tensor, mask: torch.Tensor, modality: str = "text"
):
    """Eval-mode forward written out: multi-head attention by hand, then the head."""
    outs = []
    for b in range(states.shape[0]):
        valid = states[b][mask[b]]  # [n, d] (padding dropped, not masked)
        if proj.use_memory:
            att = proj.attention
            w_q, w_k, w_v = att.in_proj_weight.chunk(3)
            bias = att.in_proj_bias
            b_q, b_k, b_v = bias.chunk(3) if bias is not None else (0.0, 0.0, 0.0)
            q = proj.memory @ w_q.T + b_q
            k = valid @ w_k.T + b_k
            v = valid @ w_v.T + b_v
            dh = DIM // HEADS
            heads = []
            for h in range(HEADS):
                sl = slice(h * dh, (h + 1) * dh)
                scores = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
                heads.append(torch.softmax(scores, dim=1) @ v[:, sl])
            attended = torch.cat(heads, dim=1) @ att.out_proj.weight.T
            if att.out_proj.bias is not None:
                attended = attended + att.out_proj.bias
            pooled = attended.mean(0)
        else:
            pooled = valid.mean(0)
        pooled = pooled * torch.exp(proj.log_scale)
        lin, bn = proj.head_linear, proj.head_norm.norms[modality]
        weight, shift = proj.head_norm.weight, proj.head_norm.bias
        z = pooled @ lin.weight.T + (lin.bias if lin.bias is not None else 0.0)
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * weight + shift
        z = torch.tanh(z)
        outs.append(z / z.norm())
    return torch.stack(outs)


@pytest.mark.parametrize("modality", ["text", "molecule"])
@pytest.mark.parametrize("use_memory", [True, False])
def test_eval_forward_matches_reference(use_memory: bool, modality: str) -> None:
    """Each modality is normalised with its own running statistics."""
    proj = make_projector(use_memory)
    states, mask = random_batch([3, 7, 1, 5], max_len=7, seed=1)
    with torch.no_grad():
        got = proj(states, mask, modality)
        want = reference_forward(proj, states, mask, modality)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attend_equals_torch_multihead_attention() -> None:
    """The written-out attention (exportable for any batch size) is nn.MultiheadAttention."""
    proj = make_projector(True).eval()
    states, mask = random_batch([3, 7, 1, 5], max_len=7, seed=3)
    with torch.no_grad():
        queries = proj.memory.unsqueeze(0).expand(states.shape[0], -1, -1)
        want, _ = proj.attention(
            queries, states, states, key_padding_mask=~mask, need_weights=False
        )
        got = proj.attend(states, mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Padding invariance, normalisation, batch independence


@pytest.mark.parametrize("sum_pool", [False, True])
@pytest.mark.parametrize("use_memory", [True, False])
@pytest.mark.parametrize("extra", [0, 1, 9])
def test_padding_does_not_change_the_embedding(
    use_memory: bool, extra: int, sum_pool: bool
) -> None:
    proj = make_projector(use_memory, sum_pool=sum_pool)
    states, mask = random_batch([2, 6, 4], max_len=6, seed=2)
    padded_states, padded_mask = with_garbage_padding(states, mask, extra, seed=3)
    with torch.no_grad():
        clean = proj(states, mask, "text")
        noisy = proj(padded_states, padded_mask, "text")
    torch.testing.assert_close(noisy, clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_memory", [True, False])
def test_item_embedding_is_independent_of_the_rest_of_the_batch(use_memory: bool) -> None:
    proj = make_projector(use_memory)
    states, mask = random_batch([4, 2, 5], max_len=5, seed=4)
    with torch.no_grad():
        together = proj(states, mask, "text")
        alone = torch.cat([proj(states[i : i + 1], mask[i : i + 1], "text") for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_memory", [True, False])
def test_outputs_are_unit_norm(use_memory: bool) -> None:
    proj = make_projector(use_memory)
    states, mask = random_batch([1, 3, 8, 8], max_len=8, seed=5)
    with torch.no_grad():
        out = proj(states * 10, mask, "text")
    assert out.shape == (4, DIM)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    proj.train()
    out = proj(states, mask, "text")
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_memory", [True, False])
def test_only_sum_pool_tells_repeated_units_apart(use_memory: bool) -> None:
    """Averages cannot count: n copies of one state pool to the same vector for every n."""
    unit = torch.randn(1, 1, DIM, generator=torch.Generator().manual_seed(6))
    short, long = unit.expand(1, 3, DIM), unit.expand(1, 5, DIM)
    for sum_pool, should_differ in ((False, False), (True, True)):
        proj = make_projector(use_memory, sum_pool=sum_pool)
        with torch.no_grad():
            a = proj(short, torch.ones(1, 3, dtype=torch.bool), "molecule")
            b = proj(long, torch.ones(1, 5, dtype=torch.bool), "molecule")
        assert (not torch.allclose(a, b, atol=1e-4)) == should_differ


def test_masked_mean_hand_case() -> None:
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(states, mask), torch.tensor([[2.0, 3.0]]))
    # A fully masked row gives zeros, not NaN.
    empty = masked_mean(states, torch.zeros(1, 3, dtype=torch.bool))
    torch.testing.assert_close(empty, torch.zeros(1, 2))


# --------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("train", [True, False])
def test_every_memory_slot_receives_gradient(train: bool) -> None:
    proj = make_projector(True)
    proj.train(train)
    states, mask = random_batch([3, 5, 2, 4], max_len=5, seed=6)
    target = torch.randn(4, DIM, generator=torch.Generator().manual_seed(7))
    (proj(states, mask, "text") * target).sum().backward()
    assert proj.memory.requires_grad
    assert proj.memory.grad is not None
    per_slot = proj.memory.grad.norm(dim=1)
    assert per_slot.shape == (K,)
    assert (per_slot > 1e-8).all(), per_slot
    assert proj.log_scale.grad is not None and proj.log_scale.grad.abs().item() > 0


def test_memory_bank_off_has_no_memory_parameters() -> None:
    proj = MemoryBankProjector(DIM, num_memories=K, num_heads=HEADS, use_memory=False)
    names = {n for n, _ in proj.named_parameters()}
    assert not any(n.startswith(("memory", "attention")) for n in names)


# --------------------------------------------------------------------------------------------
# molret.trainer.distributed without a process group


def test_not_distributed_in_a_plain_process() -> None:
    assert not D.is_distributed()
    info = D.DistInfo()
    assert info.is_main and not info.enabled


def test_gather_with_grad_is_identity() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = D.gather_with_grad(x)
    torch.testing.assert_close(y, x)
    (y * torch.arange(12.0).view(3, 4)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(12.0).view(3, 4))


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_global_batchnorm_equals_batchnorm_in_one_process(momentum: float | None) -> None:
    torch.manual_seed(0)
    ref = nn.BatchNorm1d(6, momentum=momentum)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    glob = D.GlobalBatchNorm1d(6, momentum=momentum)
    glob.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(5, 6) * (step + 1) + step
        xr = x.clone().requires_grad_(True)
        xg = x.clone().requires_grad_(True)
        out_r, out_g = ref(xr), glob(xg)
        torch.testing.assert_close(out_g, out_r, atol=0, rtol=0)
        out_r.pow(2).sum().backward()
        out_g.pow(2).sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad, atol=0, rtol=0)
    torch.testing.assert_close(glob.weight.grad, ref.weight.grad, atol=0, rtol=0)
    torch.testing.assert_close(glob.running_mean, ref.running_mean, atol=0, rtol=0)
    torch.testing.assert_close(glob.running_var, ref.running_var, atol=0, rtol=0)
    assert int(glob.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ref.eval(), glob.eval()
    x = torch.randn(4, 6)
    torch.testing.assert_close(glob(x), ref(x), atol=0, rtol=0)


def test_convert_batchnorm_keeps_weights_and_running_stats() -> None:
    reference = nn.BatchNorm1d(DIM)
    reference.train()
    with torch.no_grad():
        for _ in range(3):
            reference(torch.randn(8, DIM) * 2 + 0.5)
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    old_state = {k: v.clone() for k, v in reference.state_dict().items()}
    assert int(old_state["num_batches_tracked"]) == 3
    x = torch.randn(5, DIM)
    reference.eval()
    with torch.no_grad():
        before = reference(x)

    wrapper = nn.Sequential(nn.Sequential(reference))  # conversion must recurse into children
    assert D.convert_batchnorm(wrapper) is wrapper
    new_bn = wrapper[0][0]
    assert isinstance(new_bn, D.GlobalBatchNorm1d)
    for key, value in old_state.items():
        torch.testing.assert_close(new_bn.state_dict()[key], value, atol=0, rtol=0)
    assert new_bn.eps == reference.eps and new_bn.momentum == reference.momentum
    assert new_bn.affine == reference.affine
    assert new_bn.track_running_stats == reference.track_running_stats
    # The converted parameters are the ones in the module's parameter list (what the optimizer
    # will be built from), and the output is unchanged.
    assert any(p is new_bn.weight for p in wrapper.parameters())
    new_bn.eval()
    with torch.no_grad():
        torch.testing.assert_close(new_bn(x), before, atol=0, rtol=0)
    # Converting again leaves the GlobalBatchNorm1d in place.
    D.convert_batchnorm(wrapper)
    assert wrapper[0][0] is new_bn


def test_convert_batchnorm_reaches_the_projector_head() -> None:
    proj = make_projector(True, seed=3)
    D.convert_batchnorm(proj)
    for norm in proj.head_norm.norms.values():
        assert isinstance(norm, D.GlobalBatchNorm1d) and norm.weight is None


def test_single_process_helpers_are_no_ops() -> None:
    lin = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    lin(torch.randn(4, 3)).sum().backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    D.average_gradients(lin)
    D.broadcast_parameters(lin)
    D.barrier()
    for p, g in zip(lin.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, atol=0, rtol=0)
    for k, v in lin.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
