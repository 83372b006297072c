"""Black-box tests of dive_nb.losses.ot: randomised properties and independent oracles.

Oracles: POT's `sinkhorn_log` in float64 (for `sinkhorn`); the Hungarian algorithm, brute force over permutations
and scipy's HiGHS LP solver (for `emd`, which itself wraps POT, so POT is not an oracle for it); autograd on a
fixed-plan expression and finite differences of the entropic OT value (for `prompt_ot_loss`)."""

import itertools
import math

import numpy as np
import ot as pot
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog

from dive_nb.losses.ot import emd, prompt_ot_loss, sinkhorn

SEEDS = [0, 1, 2]
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _simplex(n, seed, dtype=F64):
    p = torch.rand(n, generator=_gen(seed), dtype=F64) + 0.05
    return (p / p.sum()).to(dtype)


def _unit(n, d, seed, dtype=F64):
    x = torch.randn(n, d, generator=_gen(seed), dtype=F64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def _sq(z, z0):
    "Naive 0.5 * ||z_i - z0_j||^2 (broadcast), the reference cost."
    return 0.5 * ((z[:, None, :] - z0[None, :, :]) ** 2).sum(-1)


def _entropy(p):
    return -(p * p.log()).sum().item()


# ----------------------------------------------------------------------------------------------- sinkhorn
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(3, 3), (4, 7), (8, 5)])
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_sinkhorn_matches_pot_sinkhorn_log(seed, shape, eps):
    n, m = shape
    C = torch.rand(n, m, generator=_gen(seed), dtype=F64) * 2
    a, b = _simplex(n, seed + 10), _simplex(m, seed + 20)
    P = sinkhorn(C, a, b, eps, n_iters=20000, tol=1e-13)
    ref = pot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), reg=eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)
    torch.testing.assert_close(P, torch.from_numpy(ref), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_sinkhorn_marginals_within_tol_and_gibbs_form(seed):
    C = torch.rand(6, 4, generator=_gen(seed), dtype=F64)
    a, b = _simplex(6, seed + 1), _simplex(4, seed + 2)
    for eps, tol in [(0.3, 1e-12), (0.03, 1e-10)]:
        P, info = sinkhorn(C, a, b, eps, n_iters=20000, tol=tol, return_info=True)
        assert info["err"] < tol and info["n_iters"] < 20000
        assert (P.sum(1) - a).abs().sum().item() < tol
        assert (P.sum(0) - b).abs().sum().item() < 1e-12
        torch.testing.assert_close(P, torch.exp((info["f"][:, None] + info["g"][None, :] - C) / eps))


@pytest.mark.parametrize("seed", SEEDS)
def test_sinkhorn_invariant_to_row_and_column_shifts_of_cost(seed):
    # C_ij + alpha_i + beta_j has the same plan (the shifts are absorbed into the potentials).
    C = torch.rand(5, 6, generator=_gen(seed), dtype=F64)
    alpha = torch.randn(5, 1, generator=_gen(seed + 1), dtype=F64)
    beta = torch.randn(1, 6, generator=_gen(seed + 2), dtype=F64)
    P1 = sinkhorn(C, None, None, 0.1, n_iters=20000, tol=1e-13)
    P2 = sinkhorn(C + alpha + beta, None, None, 0.1, n_iters=20000, tol=1e-13)
    torch.testing.assert_close(P1, P2, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_sinkhorn_float32_small_eps_is_finite_with_right_marginals(seed, scale):
    x, y = _unit(7, 16, seed, torch.float32), _unit(7, 16, seed + 50, torch.float32)
    C = _sq(x, y) * scale
    assert (torch.exp(-C / 1e-3) == 0).all()  # the Gibbs kernel underflows: log domain needed
    P = sinkhorn(C, None, None, 1e-3, n_iters=2000)
    assert P.dtype == torch.float32 and torch.isfinite(P).all() and (P >= 0).all()
    tol = 2e-3 if scale == 1.0 else 1e-2  # float32 rounding floor ~ 1e-7 * max|C| / eps (relative, per entry)
    torch.testing.assert_close(P.sum(0), torch.full((7,), 1 / 7), rtol=0, atol=tol)
    torch.testing.assert_close(P.sum(1), torch.full((7,), 1 / 7), rtol=0, atol=tol)


@pytest.mark.parametrize("seed", SEEDS)
def test_sinkhorn_cost_decreases_to_exact_cost_within_entropic_bound(seed):
    C = torch.rand(5, 6, generator=_gen(seed), dtype=F64)
    a, b = _simplex(5, seed + 3), _simplex(6, seed + 4)
    exact = (emd(C, a, b) * C).sum().item()
    prev = math.inf
    for eps in (1.0, 0.1, 0.01, 0.002):
        gap = (sinkhorn(C, a, b, eps, n_iters=50000, tol=1e-12) * C).sum().item() - exact
        assert -1e-9 <= gap <= eps * min(_entropy(a), _entropy(b)) + 1e-9
        assert gap < prev
        prev = gap


def test_sinkhorn_returns_detached_plan_and_keeps_dtype():
    C = torch.rand(3, 4, dtype=F64, requires_grad=True)
    P = sinkhorn(C, None, None, 0.1)
    assert not P.requires_grad and P.dtype == F64 and P.shape == (3, 4)


# ----------------------------------------------------------------------------------------------------- emd
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 9, 30])
def test_emd_uniform_square_matches_hungarian_and_is_a_permutation(seed, n):
    C = torch.rand(n, n, generator=_gen(seed), dtype=F64)
    P = emd(C)
    r, c = linear_sum_assignment(C.numpy())
    assert math.isclose((P * C).sum().item(), C.numpy()[r, c].mean(), rel_tol=1e-12, abs_tol=1e-15)
    Q = (n * P).round()  # a vertex of the Birkhoff polytope: 0/1 up to rounding, one 1 per row and column
    assert (n * P - Q).abs().max() < 1e-12 and (Q.sum(0) == 1).all() and (Q.sum(1) == 1).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_emd_matches_brute_force_over_permutations(seed, n):
    C = torch.randn(n, n, generator=_gen(seed), dtype=F64) ** 2
    perms = np.array(list(itertools.permutations(range(n))))
    best = C.numpy()[np.arange(n), perms].sum(1).min() / n
    assert math.isclose((emd(C) * C).sum().item(), best, rel_tol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(4, 6), (7, 3)])
def test_emd_nonuniform_is_feasible_optimal_and_beats_competitors(seed, shape):
    n, m = shape
    C = torch.rand(n, m, generator=_gen(seed), dtype=F64)
    a, b = _simplex(n, seed + 5), _simplex(m, seed + 6)
    P = emd(C, a, b)
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(P.sum(0), b, rtol=0, atol=1e-12)
    cost = (P * C).sum().item()
    A_eq = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
    lp = linprog(C.numpy().ravel(), A_eq=A_eq, b_eq=np.concatenate([a.numpy(), b.numpy()]), bounds=(0, None))
    assert lp.status == 0 and math.isclose(cost, lp.fun, rel_tol=1e-9)
    assert cost <= (torch.outer(a, b) * C).sum().item() + 1e-15
    for k in range(10):  # random feasible couplings: Sinkhorn plans of random costs
        R = sinkhorn(torch.rand(n, m, generator=_gen(100 * seed + k), dtype=F64), a, b, 0.5, tol=1e-13)
        assert cost <= (R * C).sum().item() + 1e-12


def test_emd_follows_cost_dtype_and_accepts_zero_mass():
    C = torch.rand(4, 5)
    P = emd(C, torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert P.dtype == torch.float32 and P.device == C.device
    assert (P[[1, 3]] == 0).all()
    torch.testing.assert_close(P.sum(0), torch.full((5,), 0.2))


# ----------------------------------------------------------------------------------------------- prompt_ot_loss
@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_ot_zero_for_same_rows_in_any_order(seed):
    z0 = torch.randn(6, 5, generator=_gen(seed), dtype=F64)
    perm = torch.randperm(6, generator=_gen(seed + 1))
    assert prompt_ot_loss(z0[perm], z0).abs().item() < 1e-12
    assert prompt_ot_loss(torch.cat([z0, z0[perm]]), z0).abs().item() < 1e-12  # n = 12, m = 6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_prompt_ot_invariant_to_row_permutations_of_either_stack(seed, eps):
    z = torch.randn(6, 4, generator=_gen(seed), dtype=F64)
    z0 = torch.randn(5, 4, generator=_gen(seed + 1), dtype=F64)
    p, q = torch.randperm(6, generator=_gen(seed + 2)), torch.randperm(5, generator=_gen(seed + 3))
    kw = dict(eps=eps, tol=1e-13, n_iters=20000)
    torch.testing.assert_close(prompt_ot_loss(z[p], z0[q], **kw), prompt_ot_loss(z, z0, **kw))


@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_ot_equals_half_mse_when_identity_is_optimal(seed):
    z0 = _unit(8, 12, seed)
    delta = torch.pdist(z0).min()
    xi = torch.randn(8, 12, generator=_gen(seed + 1), dtype=F64)
    xi = xi / xi.norm(dim=1, keepdim=True) * 0.24 * delta  # ||xi_i|| < delta / 4
    z = z0 + xi
    loss, P = prompt_ot_loss(z, z0, return_plan=True)
    torch.testing.assert_close(P, torch.eye(8, dtype=F64) / 8)
    torch.testing.assert_close(loss, 0.5 * ((z - z0) ** 2).sum(1).mean())


@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_ot_never_exceeds_l2_distillation(seed):
    z, z0 = torch.randn(7, 3, generator=_gen(seed), dtype=F64), torch.randn(7, 3, generator=_gen(seed + 1), dtype=F64)
    assert prompt_ot_loss(z, z0).item() <= 0.5 * ((z - z0) ** 2).sum(1).mean().item() + 1e-12


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_prompt_ot_gradient_is_that_of_fixed_plan_expression(seed, eps):
    z = torch.randn(5, 4, generator=_gen(seed), dtype=F64).requires_grad_()
    z0 = torch.randn(7, 4, generator=_gen(seed + 1), dtype=F64).requires_grad_()
    loss, P = prompt_ot_loss(z, z0, eps=eps, return_plan=True)
    assert not P.requires_grad
    got = torch.autograd.grad(loss, (z, z0))
    want = torch.autograd.grad((P * _sq(z, z0)).sum(), (z, z0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(got[0], P.sum(1, keepdim=True) * z - P @ z0)


@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_ot_gradcheck(seed):
    z = torch.randn(4, 3, generator=_gen(seed), dtype=F64).requires_grad_()
    z0 = torch.randn(5, 3, generator=_gen(seed + 1), dtype=F64)
    # exact plan: the loss is OT(C(z)) and the plan is locally constant, so plain gradcheck holds
    assert torch.autograd.gradcheck(lambda z: prompt_ot_loss(z, z0), (z,))
    # eps > 0: through C with the plan held fixed
    P = sinkhorn(_sq(z, z0).detach(), None, None, 0.2, tol=1e-13, n_iters=10000)
    assert torch.autograd.gradcheck(lambda z: (P * _sq(z, z0)).sum(), (z,))


@pytest.mark.parametrize("seed", SEEDS)
def test_prompt_ot_entropic_gradient_is_envelope_gradient(seed):
    # d/dz OT_eps(C(z)) by central differences == autograd of <sg(P_eps), C(z)>.
    eps = 0.3
    z = torch.randn(4, 3, generator=_gen(seed), dtype=F64).requires_grad_()
    z0 = torch.randn(3, 3, generator=_gen(seed + 1), dtype=F64)

    def value(zz):
        C = _sq(zz, z0)
        P = sinkhorn(C, None, None, eps, tol=1e-14, n_iters=20000)
        return ((P * C).sum() + eps * (P * (P.log() - 1)).sum()).item()

    (g,) = torch.autograd.grad(prompt_ot_loss(z, z0, eps=eps, tol=1e-14, n_iters=20000), z)
    h, fd = 1e-6, torch.zeros(z.numel(), dtype=F64)
    base = z.detach().reshape(-1)
    for k in range(z.numel()):
        d = torch.zeros_like(base)
        d[k] = h
        fd[k] = (value((base + d).view_as(z)) - value((base - d).view_as(z))) / (2 * h)
    torch.testing.assert_close(g.reshape(-1), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_prompt_ot_low_precision_is_finite_and_close(dtype, eps):
    z, z0 = _unit(6, 8, 0), _unit(6, 8, 1)
    val = prompt_ot_loss(z.to(dtype), z0.to(dtype), eps=eps)
    assert val.dtype == dtype and torch.isfinite(val)
    assert abs(val.item() - prompt_ot_loss(z, z0).item()) < 2e-2


# ----------------------------------------------------------------------------------------------------- errors
C34 = torch.rand(3, 4)


@pytest.mark.parametrize(
    "call, text",
    [
        (lambda: sinkhorn(C34, torch.tensor([0.5, 0.6, -0.1]), None, 0.1), "a must be strictly positive"),
        (lambda: emd(C34, torch.tensor([0.5, 0.6, -0.1])), "a must be non-negative"),
        (lambda: sinkhorn(C34, None, torch.full((4,), 0.3), 0.1), "b must sum to 1"),
        (lambda: emd(C34, None, torch.full((4,), 0.3)), "b must sum to 1"),
        (lambda: sinkhorn(C34, torch.full((4,), 0.25), None, 0.1), "a must be a 1-D marginal of length 3"),
        (lambda: emd(C34, None, torch.full((3,), 1 / 3)), "b must be a 1-D marginal of length 4"),
        (lambda: emd(C34, torch.full((3, 1), 1 / 3)), "got shape (3, 1)"),
        (lambda: sinkhorn(C34, None, None, 0.0), "eps must be a finite float > 0"),
        (lambda: sinkhorn(C34, None, None, -0.5), "got -0.5"),
        (lambda: sinkhorn(C34, None, None, float("inf")), "eps must be"),
        (lambda: sinkhorn(torch.rand(3), None, None, 0.1), "cost"),
        (lambda: emd(torch.tensor([[1.0, float("nan")]])), "cost must be finite"),
        (lambda: prompt_ot_loss(torch.randn(4, 3), torch.randn(4, 3), eps=-1e-3), "eps must be a finite float >= 0"),
        (lambda: prompt_ot_loss(torch.randn(4, 3), torch.randn(5, 2)), "same feature dimension"),
        (lambda: prompt_ot_loss(torch.randn(4, 3, 2), torch.randn(4, 3)), "z must be a 2-D"),
    ],
)
def test_bad_input_raises_clear_value_error(call, text):
    with pytest.raises(ValueError) as info:
        call()
    assert text in str(info.value)
