"""The robust fine-tuning methods' loss terms (issue 27) against hand computations: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from fdalign.losses import clip_contrastive, feature_kd, l2_sp, logit_kd


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _softmax(row):
    m = max(row)
    e = [math.exp(r - m) for r in row]
    return [x / sum(e) for x in e]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_logit_kd_value_and_gradient_by_hand(temperature):
    zt, z0 = _rand(3, 4, seed=1) * 3, _rand(3, 4, seed=2) * 3
    zt.requires_grad_(True)
    z0.requires_grad_(True)
    loss = logit_kd(zt, z0, temperature)
    loss.backward()
    b = zt.shape[0]
    want, grad = 0.0, []
    for i in range(b):
        p = _softmax([v / temperature for v in zt[i].tolist()])
        q = _softmax([v / temperature for v in z0[i].tolist()])
        d = [math.log(pk) - math.log(qk) for pk, qk in zip(p, q)]
        kl = sum(pk * dk for pk, dk in zip(p, d))  # KL(P_t || P_0): the fine-tuned side is first
        want += kl / b
        grad.append([pk * (dk - kl) / temperature / b for pk, dk in zip(p, d)])
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(zt.grad, torch.tensor(grad), atol=1e-12)
    assert z0.grad is None  # the zero-shot side is a constant target


def test_logit_kd_is_zero_on_equal_logits_and_accepts_log_probs():
    z = _rand(2, 5)
    assert logit_kd(z, z).item() == pytest.approx(0.0, abs=1e-14)
    z0 = _rand(2, 5, seed=3)
    assert logit_kd(z, torch.log_softmax(z0, -1)).item() == pytest.approx(logit_kd(z, z0).item(), rel=1e-12)


def test_feature_kd_value_and_gradient_by_hand():
    ft, f0 = _rand(3, 4, seed=4), _rand(3, 4, seed=5)
    ft.requires_grad_(True)
    f0.requires_grad_(True)
    loss = feature_kd(ft * 2.0, f0 * 0.5)  # feature norms must not matter
    loss.backward()
    b = ft.shape[0]
    want, grad = 0.0, []
    for i in range(b):
        u, v = ft[i].tolist(), f0[i].tolist()
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        cos = sum(x * y for x, y in zip(u, v)) / (nu * nv)
        want += (1 - cos) / b
        # d(1 - cos)/du = -(v / (|u||v|) - cos * u / |u|^2); the 2.0 factor cancels through the chain rule
        grad.append([-(y / (nu * nv) - cos * x / nu**2) / b for x, y in zip(u, v)])
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(ft.grad, torch.tensor(grad), atol=1e-12)
    assert f0.grad is None


def test_l2_sp_value_and_gradient_by_hand():
    w = [_rand(2, 3, seed=6).requires_grad_(True), _rand(4, seed=7).requires_grad_(True)]
    w0 = [_rand(2, 3, seed=8).requires_grad_(True), _rand(4, seed=9).requires_grad_(True)]
    loss = l2_sp(w, w0)
    loss.backward()
    want = sum((a - b) ** 2 for p, q in zip(w, w0) for a, b in zip(p.flatten().tolist(), q.flatten().tolist()))
    assert loss.item() == pytest.approx(want, rel=1e-12)
    for p, q in zip(w, w0):
        assert torch.allclose(p.grad, 2 * (p - q).detach(), atol=1e-12)
        assert q.grad is None
    assert l2_sp([w[0].detach()], [w[0].detach()]).item() == 0.0


def test_clip_contrastive_value_and_gradient_by_hand():
    img, txt, scale = _rand(3, 4, seed=10), _rand(3, 4, seed=11), 7.0
    img.requires_grad_(True)
    loss = clip_contrastive(img, txt, scale)
    loss.backward()
    b = img.shape[0]
    u = [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in img.tolist()]
    v = [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in txt.tolist()]
    s = [[scale * sum(a * c for a, c in zip(u[i], v[j])) for j in range(b)] for i in range(b)]
    rows = [_softmax(s[i]) for i in range(b)]
    cols = [_softmax([s[i][j] for i in range(b)]) for j in range(b)]  # cols[j][i]: caption j over images
    want = 0.5 * (sum(-math.log(rows[i][i]) for i in range(b)) + sum(-math.log(cols[j][j]) for j in range(b))) / b
    assert loss.item() == pytest.approx(want, rel=1e-12)
    # dL/dS[i][j] = ((softmax_row - I) + (softmax_col - I)) / (2B); then through S = scale u v^T and u = x/|x|
    g = [[(rows[i][j] + cols[j][i] - 2 * (i == j)) / (2 * b) for j in range(b)] for i in range(b)]
    grad = []
    for i in range(b):
        du = [scale * sum(g[i][j] * v[j][d] for j in range(b)) for d in range(4)]
        norm = math.sqrt(sum(x * x for x in img[i].tolist()))
        dot = sum(a * c for a, c in zip(u[i], du))
        grad.append([(du[d] - u[i][d] * dot) / norm for d in range(4)])
    assert torch.allclose(img.grad, torch.tensor(grad), atol=1e-12)


def test_clip_contrastive_pairs_rows():
    """Captions in the images' order give a lower loss than the same captions rolled by one."""
    img = _rand(4, 6, seed=12)
    txt = img + 0.1 * _rand(4, 6, seed=13)
    assert clip_contrastive(img, txt, 10.0) < clip_contrastive(img, txt.roll(1, 0), 10.0)
