"""Loss functions against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fdalign import losses
from fdalign.errors import FDAlignError
from fdalign.losses import KL_DIRECTIONS, classification_loss, cosine_logits, fdalign_loss, spurious_kl


@pytest.fixture(autouse=True)
def _float64():
    """float64 so the comparisons with pure-Python loops can be tight."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _data(b=4, d=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(k, d, generator=g))


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _softmax(row):
    m = max(row)
    e = [math.exp(r - m) for r in row]
    return [x / sum(e) for x in e]


def _probs(feats, protos, scale):
    return [_softmax([scale * _cos(f.tolist(), p.tolist()) for p in protos]) for f in feats]


def test_cosine_logits_by_hand():
    f, _, p = _data()
    out = cosine_logits(f * 3.0, p * 0.5, scale=7.0)  # scaling inputs must not matter
    for i in range(f.shape[0]):
        for k in range(p.shape[0]):
            assert out[i, k].item() == pytest.approx(7.0 * _cos(f[i].tolist(), p[k].tolist()), rel=1e-12)


def test_cosine_logits_unnormalised_prototypes():
    f, _, p = _data()
    out = cosine_logits(f, p, scale=2.0, normalize_prototypes=False)
    for i in range(f.shape[0]):
        for k in range(p.shape[0]):
            dot = sum(a * b for a, b in zip((f[i] / f[i].norm()).tolist(), p[k].tolist()))
            assert out[i, k].item() == pytest.approx(2.0 * dot, rel=1e-12)


def test_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]])
    labels = torch.tensor([1, 0])
    expected = -(math.log(_softmax([1.0, 2.0, 0.5])[1]) + math.log(_softmax([-1.0, 0.0, 3.0])[0])) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("direction", KL_DIRECTIONS)
def test_kl_zero_for_identical_features(direction):
    f, _, p = _data()
    assert spurious_kl(f, f.clone(), p, 10.0, direction).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_paper_by_hand():
    ft, f0, p = _data()
    pt, p0 = _probs(ft, p, 10.0), _probs(f0, p, 10.0)
    expected = sum(sum(a * (math.log(a) - math.log(b)) for a, b in zip(rt, r0)) for rt, r0 in zip(pt, p0)) / len(pt)
    got = spurious_kl(ft, f0, p, 10.0, "paper").item()
    assert got > 0 and got == pytest.approx(expected, rel=1e-10)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")  # torch's note on 'mean' is the point here
def test_kl_released_by_hand_and_matches_kldivloss():
    ft, f0, p = _data()
    pt, p0 = _probs(ft, p, 10.0), _probs(f0, p, 10.0)
    b, k = len(pt), len(pt[0])
    expected = sum(sum(b_ * (math.log(b_) - math.log(a)) for a, b_ in zip(rt, r0)) for rt, r0 in zip(pt, p0)) / (b * k)
    got = spurious_kl(ft, f0, p, 10.0, "released")
    assert got.item() > 0 and got.item() == pytest.approx(expected, rel=1e-10)
    log_pt = torch.log_softmax(cosine_logits(ft, p, 10.0), dim=-1)
    p_0 = torch.softmax(cosine_logits(f0, p, 10.0), dim=-1)
    torch.testing.assert_close(got, torch.nn.KLDivLoss()(log_pt, p_0))


def test_directions_differ():
    ft, f0, p = _data()
    paper, released = (spurious_kl(ft, f0, p, 10.0, d).item() for d in ("paper", "released"))
    assert paper != pytest.approx(released)


def test_gradient_reaches_feat_t_only():
    ft, f0, p = _data()
    ft.requires_grad_(True)
    f0.requires_grad_(True)
    p.requires_grad_(True)
    logits = torch.randn(4, 3, requires_grad=True)
    total, parts = fdalign_loss(logits, torch.tensor([0, 1, 2, 0]), ft, f0, p, beta=2.0, scale=10.0)
    total.backward()
    assert f0.grad is None
    assert ft.grad is not None and ft.grad.abs().sum() > 0
    assert logits.grad is not None


def test_total_is_weighted_sum():
    ft, f0, p = _data()
    logits, labels = torch.randn(4, 3), torch.tensor([2, 1, 0, 0])
    for direction in KL_DIRECTIONS:
        total, parts = fdalign_loss(logits, labels, ft, f0, p, alpha=0.5, beta=20.0, scale=100.0, direction=direction)
        ce = classification_loss(logits, labels)
        kl = spurious_kl(ft, f0, p, 100.0, direction)
        torch.testing.assert_close(parts["ce"], ce)
        torch.testing.assert_close(parts["kl"], kl)
        torch.testing.assert_close(total, 0.5 * ce + 20.0 * kl)


def test_beta_zero_is_plain_cross_entropy(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("KL must not be computed when beta == 0")

    monkeypatch.setattr(losses, "spurious_kl", boom)
    logits, labels = torch.randn(4, 3), torch.tensor([2, 1, 0, 0])
    total, parts = fdalign_loss(logits, labels, None, None, None, beta=0.0, scale=100.0)
    assert torch.equal(total, classification_loss(logits, labels))
    assert parts["kl"].item() == 0.0


def test_unknown_direction():
    ft, f0, p = _data()
    with pytest.raises(FDAlignError, match="paper, released"):
        spurious_kl(ft, f0, p, 1.0, "reverse")
    with pytest.raises(FDAlignError):
        fdalign_loss(
            torch.randn(4, 3),
            torch.zeros(4, dtype=torch.long),
            None,
            None,
            None,
            beta=0,
            scale=1.0,
            direction="reverse",
        )


def test_released_beta_times_k_is_paper_beta_with_the_distributions_swapped():
    """The released KL is KL(P_0 || P_t) / k: beta 20 there with k = 20 is beta 1 in paper units."""
    from fdalign.losses import fdalign_loss

    g = torch.Generator().manual_seed(3)
    k, beta = 20, 1.0
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    spur, logits, y = torch.randn(k, 16, generator=g), torch.randn(6, 4, generator=g), torch.arange(6) % 4
    released, _ = fdalign_loss(logits, y, a, b, spur, beta=beta * k, scale=30.0, direction="released")
    paper, _ = fdalign_loss(logits, y, b, a, spur, beta=beta, scale=30.0, direction="paper")
    torch.testing.assert_close(released, paper, rtol=1e-5, atol=1e-6)
    not_scaled, _ = fdalign_loss(logits, y, a, b, spur, beta=beta, scale=30.0, direction="released")
    assert (paper - not_scaled).abs() > 1e-3  # the k really is there
