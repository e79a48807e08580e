"""Tests for molret.trainer.losses against hand-written references (plain Python math or a
separately written torch formula), never against the code under test itself."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from molret.trainer.losses import (
    batch_hard_triplet,
    critic_loss,
    euclidean_distances,
    generator_loss,
    gradient_penalty,
    info_nce,
    relation_logits,
    second_order_losses,
)

torch.set_num_threads(1)

# Three text and three molecule points in the plane, deliberately not dyadic so rounding shows.
TEXT_2D = [[0.3, 0.9], [-0.7, 0.2], [0.55, -0.45]]
MOL_2D = [[0.1, 1.1], [-0.4, -0.3], [0.8, 0.05]]


# --------------------------------------------------------------------------------------------
# Plain-Python references


def py_dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def py_softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def py_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def py_logits(xs: list[list[float]], ys: list[list[float]], mode: str, temp: float):
    sign = -1.0 if mode == "similarity" else 1.0
    return [[sign * py_dist(x, y) / temp for y in ys] for x in xs]


def py_row_kl(target: list[list[float]], inputs: list[list[float]]) -> float:
    """mean over rows of KL(softmax(target_i) || softmax(input_i))."""
    terms = [py_kl(py_softmax(t), py_softmax(q)) for t, q in zip(target, inputs, strict=True)]
    return sum(terms) / len(terms)


def py_second_order(text, mol, mode: str, ti: float, tc: float) -> tuple[float, float]:
    tt_i, mm_i = py_logits(text, text, mode, ti), py_logits(mol, mol, mode, ti)
    intra = py_row_kl(mm_i, tt_i) + py_row_kl(tt_i, mm_i)
    tt_c, mm_c = py_logits(text, text, mode, tc), py_logits(mol, mol, mode, tc)
    tm_c, mt_c = py_logits(text, mol, mode, tc), py_logits(mol, text, mode, tc)
    cross = py_row_kl(mm_c, tm_c) + py_row_kl(tt_c, mt_c)
    return intra, cross


# --------------------------------------------------------------------------------------------
# Torch reference (pairwise differences, not the |x|^2 + |y|^2 - 2xy expansion of the code)


def ref_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    squared = ((x.unsqueeze(1) - y.unsqueeze(0)) ** 2).sum(-1)
    # sqrt has an infinite derivative at 0; the diagonal is exactly 0 here, so clamp it.
    return squared.clamp(min=1e-12).sqrt()


def ref_row_kl(target_logits: torch.Tensor, input_logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(target_logits, dim=1)
    q = torch.softmax(input_logits, dim=1)
    return (p * (torch.log(p) - torch.log(q))).sum(1).mean()


def ref_cross(text, mol, mode: str, tc: float, detach_targets: bool) -> torch.Tensor:
    sign = -1.0 if mode == "similarity" else 1.0
    if detach_targets:
        # The targets as explicit constants: fresh leaf copies carry no graph at all.
        t_const, m_const = text.detach().clone(), mol.detach().clone()
    else:
        t_const, m_const = text, mol
    mm = sign * ref_dist(m_const, m_const) / tc
    tt = sign * ref_dist(t_const, t_const) / tc
    tm = sign * ref_dist(text, mol) / tc
    mt = sign * ref_dist(mol, text) / tc
    return ref_row_kl(mm, tm) + ref_row_kl(tt, mt)


def ref_intra(text, mol, mode: str, ti: float) -> torch.Tensor:
    sign = -1.0 if mode == "similarity" else 1.0
    mm = sign * ref_dist(mol, mol) / ti
    tt = sign * ref_dist(text, text) / ti
    return ref_row_kl(mm, tt) + ref_row_kl(tt, mm)


def unit_rows(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Distances


def test_euclidean_distances_match_plain_python() -> None:
    x = torch.tensor(TEXT_2D, dtype=torch.float64)
    y = torch.tensor(MOL_2D, dtype=torch.float64)
    got = euclidean_distances(x, y)
    for i, a in enumerate(TEXT_2D):
        for j, b in enumerate(MOL_2D):
            assert got[i, j].item() == pytest.approx(py_dist(a, b), abs=1e-9)


def test_euclidean_distances_diagonal_has_finite_zero_gradient() -> None:
    x = unit_rows(4, 3, seed=0).requires_grad_(True)
    euclidean_distances(x, x).diagonal().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max().item() < 1e-6


def test_relation_logits_rejects_unknown_mode() -> None:
    x = unit_rows(2, 2, seed=0)
    with pytest.raises(ValueError, match="cosine"):
        relation_logits(x, x, "cosine")


# --------------------------------------------------------------------------------------------
# Second-order losses: values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["similarity", "distance"])
@pytest.mark.parametrize(("ti", "tc"), [(1.0, 1.0), (0.5, 2.0), (0.3, 0.7)])
def test_second_order_matches_hand_computation(dtype, mode: str, ti: float, tc: float) -> None:
    text = torch.tensor(TEXT_2D, dtype=dtype)
    mol = torch.tensor(MOL_2D, dtype=dtype)
    terms = second_order_losses(text, mol, mode, intra_temperature=ti, cross_temperature=tc)
    want_intra, want_cross = py_second_order(TEXT_2D, MOL_2D, mode, ti, tc)
    assert terms.intra.item() == pytest.approx(want_intra, abs=1e-5)
    assert terms.cross.item() == pytest.approx(want_cross, abs=1e-5)
    assert want_intra > 1e-3 and want_cross > 1e-3  # the case is not trivially zero


def test_second_order_modes_differ_and_vanish_for_identical_modalities() -> None:
    text = torch.tensor(TEXT_2D, dtype=torch.float64)
    sim = second_order_losses(text, text.clone(), "similarity")
    # Identical geometry: intra is exactly 0, cross is KL(P || P) = 0 too.
    assert sim.intra.item() == pytest.approx(0.0, abs=1e-9)
    assert sim.cross.item() == pytest.approx(0.0, abs=1e-9)
    mol = torch.tensor(MOL_2D, dtype=torch.float64)
    a = second_order_losses(text, mol, "similarity")
    b = second_order_losses(text, mol, "distance")
    assert abs(a.intra.item() - b.intra.item()) > 1e-4


# --------------------------------------------------------------------------------------------
# Second-order losses: gradients and the stop-gradient


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("mode", ["similarity", "distance"])
@pytest.mark.parametrize("tc", [1.0, 0.3])
def test_cross_term_stops_gradient_through_target_distributions(mode: str, tc: float) -> None:
    text = unit_rows(5, 4, seed=1).requires_grad_(True)
    mol = unit_rows(5, 4, seed=2).requires_grad_(True)

    got = second_order_losses(text, mol, mode, cross_temperature=tc).cross
    g_text, g_mol = _grads(got, text, mol)

    with_sg = ref_cross(text, mol, mode, tc, detach_targets=True)
    assert got.item() == pytest.approx(with_sg.item(), abs=1e-9)
    r_text, r_mol = _grads(with_sg, text, mol)
    torch.testing.assert_close(g_text, r_text, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(g_mol, r_mol, atol=1e-9, rtol=1e-7)

    # Without the stop-gradient the value is the same but the gradient is not: the check above
    # can tell the two apart.
    no_sg = ref_cross(text, mol, mode, tc, detach_targets=False)
    assert no_sg.item() == pytest.approx(with_sg.item(), abs=1e-12)
    n_text, n_mol = _grads(no_sg, text, mol)
    assert (n_text - r_text).abs().max().item() > 1e-4
    assert (n_mol - r_mol).abs().max().item() > 1e-4


def test_cross_term_gradient_of_target_side_alone_is_zero() -> None:
    """Split the roles: text only in P_TT (a target) cannot receive gradient from KL(sg P_TT||.).

    With mol detached, the cross term's dependence on text is through P_TM, P_MT (gradient)
    and P_TT (stop-gradient). Perturbing only the P_TT route must not change the gradient: the
    gradient equals that of the reference whose P_TT is a constant.
    """
    text = unit_rows(4, 3, seed=3).requires_grad_(True)
    mol = unit_rows(4, 3, seed=4)
    got = second_order_losses(text, mol, "similarity").cross
    (g_text,) = _grads(got, text)
    tt_const = -ref_dist(text.detach(), text.detach())
    mm_const = -ref_dist(mol, mol)
    ref = ref_row_kl(mm_const, -ref_dist(text, mol)) + ref_row_kl(tt_const, -ref_dist(mol, text))
    (r_text,) = _grads(ref, text)
    torch.testing.assert_close(g_text, r_text, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("mode", ["similarity", "distance"])
def test_intra_term_sends_gradient_to_both_modalities(mode: str) -> None:
    text = unit_rows(5, 4, seed=5).requires_grad_(True)
    mol = unit_rows(5, 4, seed=6).requires_grad_(True)
    got = second_order_losses(text, mol, mode, intra_temperature=0.5).intra
    g_text, g_mol = _grads(got, text, mol)
    ref = ref_intra(text, mol, mode, 0.5)
    assert got.item() == pytest.approx(ref.item(), abs=1e-9)
    r_text, r_mol = _grads(ref, text, mol)
    torch.testing.assert_close(g_text, r_text, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(g_mol, r_mol, atol=1e-9, rtol=1e-7)
    assert g_text.abs().max().item() > 1e-4
    assert g_mol.abs().max().item() > 1e-4


# --------------------------------------------------------------------------------------------
# Batch-hard triplet


def py_batch_hard(text: list[list[float]], mol: list[list[float]], margin: float) -> float:
    items = text + mol
    labels = list(range(len(text))) * 2
    total = 0.0
    for i, anchor in enumerate(items):
        pos = [py_dist(anchor, items[j]) for j in range(len(items)) if labels[j] == labels[i]]
        neg = [py_dist(anchor, items[j]) for j in range(len(items)) if labels[j] != labels[i]]
        total += max(0.0, max(pos) - min(neg) + margin)
    return total / len(items)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.0, 0.3, 5.0])
def test_batch_hard_triplet_matches_brute_force(seed: int, margin: float) -> None:
    text = unit_rows(6, 5, seed=10 + seed)
    mol = unit_rows(6, 5, seed=20 + seed)
    got = batch_hard_triplet(text, mol, margin).item()
    want = py_batch_hard(text.tolist(), mol.tolist(), margin)
    assert got == pytest.approx(want, abs=1e-6)


def test_batch_hard_triplet_hand_case() -> None:
    # B = 2 on a line: text (0, 3), mol (1, 10).
    # item t0: positive m0 at 1, nearest other-pair item t1 at 3 -> relu(1 - 3 + m)
    # item t1: positive m1 at 7, nearest other t0/m0 -> m0 at 2   -> relu(7 - 2 + m)
    # item m0: positive t0 at 1, nearest other t1 at 2            -> relu(1 - 2 + m)
    # item m1: positive t1 at 7, nearest other m0 at 9            -> relu(7 - 9 + m)
    text = torch.tensor([[0.0], [3.0]])
    mol = torch.tensor([[1.0], [10.0]])
    m = 0.5
    want = (max(0, 1 - 3 + m) + max(0, 7 - 2 + m) + max(0, 1 - 2 + m) + max(0, 7 - 9 + m)) / 4
    assert batch_hard_triplet(text, mol, m).item() == pytest.approx(want, abs=1e-5)


# --------------------------------------------------------------------------------------------
# InfoNCE


def py_info_nce(text: list[list[float]], mol: list[list[float]], tau: float) -> float:
    n = len(text)
    logits = [[sum(a * b for a, b in zip(t, m, strict=True)) / tau for m in mol] for t in text]

    def ce(rows: list[list[float]]) -> float:
        loss = 0.0
        for i, row in enumerate(rows):
            top = max(row)
            lse = top + math.log(sum(math.exp(v - top) for v in row))
            loss += lse - row[i]
        return loss / n

    columns = [[logits[i][j] for i in range(n)] for j in range(n)]
    return 0.5 * (ce(logits) + ce(columns))


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_info_nce_matches_manual_cross_entropy(tau: float) -> None:
    text = unit_rows(5, 4, seed=30)
    mol = unit_rows(5, 4, seed=31)
    log_t = torch.tensor(math.log(tau), dtype=torch.float64)
    got = info_nce(text, mol, log_t).item()
    assert got == pytest.approx(py_info_nce(text.tolist(), mol.tolist(), tau), abs=1e-9)


def test_info_nce_is_not_symmetric_by_accident() -> None:
    # A non-square-symmetric case where the text->mol and mol->text directions differ: the
    # reference averages both, so a one-direction implementation would fail the test above.
    text = unit_rows(4, 3, seed=32)
    mol = unit_rows(4, 3, seed=33)
    row_only = py_info_nce(text.tolist(), mol.tolist(), 0.5)
    swapped = py_info_nce(mol.tolist(), text.tolist(), 0.5)
    assert row_only == pytest.approx(swapped, abs=1e-12)  # symmetric by construction
    got = info_nce(text, mol, torch.tensor(math.log(0.5), dtype=torch.float64)).item()
    assert got == pytest.approx(row_only, abs=1e-9)


def test_info_nce_temperature_gets_the_right_gradient() -> None:
    text = unit_rows(6, 4, seed=34)
    mol = unit_rows(6, 4, seed=35)
    log_t = nn.Parameter(torch.tensor(math.log(0.2), dtype=torch.float64))
    info_nce(text, mol, log_t).backward()
    assert log_t.grad is not None and log_t.grad.abs().item() > 1e-6
    h = 1e-6
    plus = py_info_nce(text.tolist(), mol.tolist(), math.exp(math.log(0.2) + h))
    minus = py_info_nce(text.tolist(), mol.tolist(), math.exp(math.log(0.2) - h))
    assert log_t.grad.item() == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-8)


# --------------------------------------------------------------------------------------------
# WGAN-GP


class LinearCritic(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.numel(), 1)
        with torch.no_grad():
            self.linear.weight.copy_(weight.view(1, -1))
            self.linear.bias.fill_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.mark.parametrize("norm", [1.0, 2.0, 0.5])
def test_gradient_penalty_of_linear_critic(norm: float) -> None:
    torch.manual_seed(0)
    w = torch.randn(8)
    critic = LinearCritic(norm * w / w.norm())
    real, fake = torch.randn(6, 8), torch.randn(6, 8)
    # The gradient of a linear critic is its weight everywhere: penalty = (norm - 1)^2.
    got = gradient_penalty(critic, real, fake).item()
    assert got == pytest.approx((norm - 1.0) ** 2, abs=1e-6)


def test_gradient_penalty_is_differentiable_wrt_critic() -> None:
    torch.manual_seed(0)
    critic = LinearCritic(2.0 * torch.ones(4) / 2.0)  # norm 2
    gp = gradient_penalty(critic, torch.randn(3, 4), torch.randn(3, 4))
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = w here (||w|| = 2).
    torch.testing.assert_close(critic.linear.weight.grad, critic.linear.weight.detach())


def test_critic_loss_does_not_reach_encoders_and_generator_does() -> None:
    torch.manual_seed(0)
    critic = LinearCritic(torch.tensor([1.0, 0.0, 0.0]))
    text = torch.randn(4, 3, requires_grad=True)
    mol = torch.randn(4, 3, requires_grad=True)
    critic_loss(critic, text, mol).backward()
    assert text.grad is None and mol.grad is None
    assert critic.linear.weight.grad is not None
    generator_loss(critic, mol).backward()
    # -mean(w.x + b): gradient -w / B on every row.
    torch.testing.assert_close(mol.grad, -torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3) / 4)


# --------------------------------------------------------------------------------------------
# The objective's weighting


@pytest.mark.parametrize("infonce_weight", [0.0, 0.5])
def test_objective_adds_weighted_infonce_beside_triplet(infonce_weight: float) -> None:
    from molret.trainer.config import Config, LossConfig
    from molret.trainer.loop import Objective
    from molret.trainer.model import Encoded

    loss = LossConfig(
        first_order="triplet", intra_weight=0.0, cross_weight=0.0, infonce_weight=infonce_weight
    )
    objective = Objective(Config(loss=loss))
    text = unit_rows(6, 4, seed=36, dtype=torch.float32)
    mol = unit_rows(6, 4, seed=37, dtype=torch.float32)
    terms = objective(Encoded(text, text), Encoded(mol, mol), None)
    expected = batch_hard_triplet(text, mol, loss.triplet_margin)
    if infonce_weight:
        nce = info_nce(text, mol, objective.log_temperature)
        torch.testing.assert_close(terms["infonce"], nce)
        expected = expected + infonce_weight * nce
    else:
        assert "infonce" not in terms
    torch.testing.assert_close(terms["total"], expected)
