"""Black-box tests of dive_nb.losses.dive: float64 loops, EMA recursion, state_dict resume, gradients, errors."""
import math

import pytest
import torch

from dive_nb.losses.dive import (EMACenter, avl_loss, cosine_structure_loss, difference_vectors,
                                 pvl_loss)

SHAPES = [(0, 1, 2), (1, 4, 3), (2, 7, 5), (3, 8, 16), (4, 5, 2)]


def _rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _sq(a, b):
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


def _loop_avl(U, V, c):
    return sum(_sq(U[j], c) + _sq(V[j], c) for j in range(U.shape[0])) / U.shape[0]


def _loop_pvl(U, V):
    return sum(_sq(U[j], V[j]) for j in range(U.shape[0])) / U.shape[0]


def _loop_pooled_mean(U, V):
    n, d = U.shape
    return [sum(float(U[j, k]) + float(V[j, k]) for j in range(n)) / (2 * n) for k in range(d)]


@pytest.mark.parametrize("seed,n,d", SHAPES)
def test_avl_pvl_match_loops(seed, n, d):
    g = torch.Generator().manual_seed(seed)
    U, V, c = _rand(g, n, d), _rand(g, n, d), _rand(g, d)
    assert avl_loss(U, V, c).item() == pytest.approx(_loop_avl(U, V, c), rel=1e-12)
    assert pvl_loss(U, V).item() == pytest.approx(_loop_pvl(U, V), rel=1e-12)
    # zero cases: all difference vectors at the centre; u = v (per-pair translation)
    assert avl_loss(c.expand(n, d), c.expand(n, d), c).item() == 0.0
    assert pvl_loss(U, U.clone()).item() == 0.0
    # symmetric in the two modalities
    torch.testing.assert_close(avl_loss(V, U, c), avl_loss(U, V, c))
    torch.testing.assert_close(pvl_loss(V, U), pvl_loss(U, V))


@pytest.mark.parametrize("seed,n,d", SHAPES)
def test_difference_vectors(seed, n, d):
    g = torch.Generator().manual_seed(10 + seed)
    ft, pre = _rand(g, n, d).requires_grad_(), _rand(g, n, d).requires_grad_()
    u = difference_vectors(ft, pre)
    torch.testing.assert_close(u, ft.detach() - pre.detach())
    u.sum().backward()
    assert pre.grad is None
    torch.testing.assert_close(ft.grad, torch.ones_like(ft))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 0.99])
def test_ema_recursion_matches_loop(alpha):
    g = torch.Generator().manual_seed(int(alpha * 100))
    d = 3
    ema = EMACenter(d, alpha=alpha).double()
    ref = [0.0] * d
    for step, n in enumerate([2, 5, 1, 4]):
        U, V = _rand(g, n, d), _rand(g, n, d)
        m = _loop_pooled_mean(U, V)
        ref = [alpha * r + (1 - alpha) * mk for r, mk in zip(ref, m)]
        out = ema.update(U, V)
        torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ema.center, out)


def test_ema_closed_form_alpha_half():
    ema = EMACenter(2, alpha=0.5)
    m1 = torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, 1.0]])  # pooled mean (2, 2)
    m2 = torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([[0.0, 8.0], [0.0, 0.0]])  # pooled mean (1, 2)
    ema.update(*m1)
    out = ema.update(*m2)
    torch.testing.assert_close(out, 0.25 * torch.tensor([2.0, 2.0]) + 0.5 * torch.tensor([1.0, 2.0]))


def test_ema_buffer_state_dict_resume_and_no_graph():
    g = torch.Generator().manual_seed(5)
    a = EMACenter(6, alpha=0.9)
    assert a.center.requires_grad is False
    assert [n for n, _ in a.named_parameters()] == []
    assert [n for n, _ in a.named_buffers()] == ["center"]
    batches = [(torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)) for _ in range(5)]
    for U, V in batches[:3]:
        a.update(U, V)
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    b = EMACenter(6, alpha=0.9)
    b.load_state_dict(sd)
    for U, V in batches[3:]:
        torch.testing.assert_close(b.update(U, V), a.update(U, V), rtol=0, atol=0)
    X = torch.randn(4, 6, generator=g, requires_grad=True)
    snap = a.update(X * 3, X - 1)
    assert snap.grad_fn is None and not snap.requires_grad
    before = snap.clone()
    a.update(X + 5, X)
    torch.testing.assert_close(snap, before)  # returned centre is a snapshot


def _geometry(fi, pi, ft, pt, ema, lam=1.0):
    "DiVE's geometry terms in the registry's order (update the centre, then AVL at it) from this module's functions."
    U, V = difference_vectors(fi, pi), difference_vectors(ft, pt)
    return lam * (avl_loss(U, V, ema.update(U, V)) + pvl_loss(U, V))


@pytest.mark.parametrize("seed,n,d", SHAPES)
def test_geometry_at_the_updated_centre_matches_loops(seed, n, d):
    g = torch.Generator().manual_seed(20 + seed)
    fi, pi, ft, pt = (_rand(g, n, d) for _ in range(4))
    lam = float(torch.empty(()).uniform_(0.1, 1000.0, generator=g))
    ema = EMACenter(d, alpha=0.7).double()
    ema.update(_rand(g, 3, d), _rand(g, 3, d))
    c_old = [float(x) for x in ema.center]
    U, V = fi - pi, ft - pt
    c_new = [0.7 * co + 0.3 * m for co, m in zip(c_old, _loop_pooled_mean(U, V))]
    assert _geometry(fi, pi, ft, pt, ema, lam).item() == pytest.approx(lam * (_loop_avl(U, V, c_new) + _loop_pvl(U, V)), rel=1e-10)


def test_geometry_gradients_by_hand():
    g = torch.Generator().manual_seed(3)
    fi, pi, ft, pt = (_rand(g, 6, 4) for _ in range(4))
    # gradient wrt the fine-tuned embeddings, by hand (centre constant): 2 lam/n [(u - c) + (u - v)]
    a, b = fi.clone().requires_grad_(), ft.clone().requires_grad_()
    pre_i = pi.clone().requires_grad_()
    ema = EMACenter(4, alpha=0.5).double()
    _geometry(a, pre_i, b, pt, ema, lam=2.0).backward()
    c = ema.center
    U, V = fi - pi, ft - pt
    torch.testing.assert_close(a.grad, 2 * 2.0 / 6 * ((U - c) + (U - V)))
    torch.testing.assert_close(b.grad, 2 * 2.0 / 6 * ((V - c) + (V - U)))
    assert pre_i.grad is None


def test_uniform_translation_preserves_all_distances_and_zero_loss():
    g = torch.Generator().manual_seed(9)
    pi, pt, shift = _rand(g, 8, 5), _rand(g, 8, 5), _rand(g, 5)
    fi, ft = pi + shift, pt + shift
    assert _geometry(fi, pi, ft, pt, EMACenter(5, alpha=0.0).double()).item() == pytest.approx(0.0, abs=1e-24)
    pre_all, ft_all = torch.cat([pi, pt]), torch.cat([fi, ft])
    torch.testing.assert_close(torch.cdist(ft_all, ft_all), torch.cdist(pre_all, pre_all))


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    U, V, c = _rand(g, 4, 3).requires_grad_(), _rand(g, 4, 3).requires_grad_(), _rand(g, 3)
    assert torch.autograd.gradcheck(lambda a, b: avl_loss(a, b, c), (U, V))
    assert torch.autograd.gradcheck(pvl_loss, (U, V))
    B, D = _rand(g, 4, 3), _rand(g, 4, 3)
    assert torch.autograd.gradcheck(lambda a, t: cosine_structure_loss(a, B, t, D), (U, V))


def _loop_cos(fi, pi, ft, pt):
    def cos(a, b):
        return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))
    n = fi.shape[0]
    return sum((cos(fi[i], fi[k]) - cos(pi[i], pi[k])) ** 2 + (cos(ft[i], ft[k]) - cos(pt[i], pt[k])) ** 2
               for i in range(n) for k in range(n)) / n ** 2


@pytest.mark.parametrize("seed,n,d", SHAPES)
def test_cosine_structure_loss(seed, n, d):
    g = torch.Generator().manual_seed(40 + seed)
    fi, pi, ft, pt = (_rand(g, n, d) for _ in range(4))
    assert cosine_structure_loss(fi, pi, ft, pt).item() == pytest.approx(_loop_cos(fi, pi, ft, pt), rel=1e-10, abs=1e-14)
    # invariant to separate rotations and positive rescalings of each modality (blind to the cross-modal pairing)
    Qi, _ = torch.linalg.qr(_rand(g, d, d))
    Qt, _ = torch.linalg.qr(_rand(g, d, d))
    scale = _rand(g, n, 1).abs() + 0.1
    assert cosine_structure_loss(pi @ Qi * scale, pi, pt @ Qt, pt).item() == pytest.approx(0.0, abs=1e-20)


def test_cosine_structure_hand_made():
    fi, pi = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # images: off-diagonal cosine 1/sqrt(2) -> 0; texts: 0 -> 1/sqrt(2); four entries with squared change 1/2
    expected = (2 * 0.5 + 2 * 0.5) / 4
    assert cosine_structure_loss(fi, pi, t, fi).item() == pytest.approx(expected, rel=1e-6)


def test_errors():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="ft and pre must have the same shape"):
        difference_vectors(x, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="ft must be a 2-D"):
        difference_vectors(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"center must be a \(4,\) tensor"):
        avl_loss(x, x, torch.zeros(3))
    with pytest.raises(ValueError, match="u and v must have the same shape"):
        pvl_loss(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least one reference pair"):
        avl_loss(x[:0], x[:0], torch.zeros(4))
    with pytest.raises(ValueError, match="0 <= alpha < 1"):
        EMACenter(4, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        EMACenter(4, alpha=float("nan"))
    with pytest.raises(ValueError, match="dim"):
        EMACenter(2.5)
    with pytest.raises(ValueError, match="dimension 4"):
        EMACenter(4).update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ft_txt and pre_txt"):
        cosine_structure_loss(x, x, x, torch.zeros(3, 2))
