"""APE and APE-T against hand computations of their authors' formulas (shared/REFERENCE.md)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fdalign.heads.ape import (
    APEConfig,
    APEHead,
    APETHead,
    cache_text_divergence,
    channel_criterion,
    fit_ape,
    fit_ape_t,
    search_ape_t,
    select_channels,
)
from fdalign.heads.cache import FitConfig, feature_split, grid_values
from fdalign.heads.tip import TipAdapter, TipConfig, fit_tip
from fdalign.selection import SelectionLog

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(c=4, d=8, shots=3, n_val=3, n_test=20, seed=0):
    """Class centres in D dims, cache / val / test features around them (noisy enough to be imperfect)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    protos = F.normalize(centres + 0.8 * torch.randn(c, d, generator=g), dim=-1)

    def draw(n):
        y = torch.arange(c).repeat_interleave(n)
        return centres[y] + 1.0 * torch.randn(len(y), d, generator=g), y

    return protos, draw(shots), draw(n_val), draw(n_test)


def _criterion_by_loops(protos, keys, labels, w_sim, w_var):
    """-w_sim * sim + w_var * var with explicit loops: sim = mean over class pairs i != j and over all
    (text or shot) feature pairs of their product; var = the sample variance over classes."""
    w, k = F.normalize(protos.double(), dim=-1), F.normalize(keys.double(), dim=-1)
    c, d = w.shape
    feats = [[w[i]] + [k[j] for j in range(len(labels)) if labels[j] == i] for i in range(c)]
    out = []
    for ch in range(d):
        pair_means = []  # mean over each class pair's feature pairs, then over the class pairs
        for i in range(c):
            for j in range(c):
                if i != j:
                    pair_means.append(
                        sum(a[ch] * b[ch] for a in feats[i] for b in feats[j]) / (len(feats[i]) * len(feats[j]))
                    )
        sim = sum(pair_means) / len(pair_means)
        mu = sum(w[i][ch] for i in range(c)) / c
        var = sum((w[i][ch] - mu) ** 2 for i in range(c)) / (c - 1)
        out.append(-w_sim * sim + w_var * var)
    return torch.tensor(out)


def test_channel_criterion_uses_the_sample_variance_by_hand():
    protos, (kf, ky), _, _ = _problem(c=3, d=5, shots=2)
    got = channel_criterion(protos, kf, ky, (0.3, 0.7))
    assert torch.allclose(got.double(), _criterion_by_loops(protos, kf, ky, 0.3, 0.7), atol=1e-7)


def test_channel_set_is_the_top_q_of_the_hand_criterion():
    protos, (kf, ky), _, _ = _problem(c=5, d=16, shots=3, seed=2)
    want = _criterion_by_loops(protos, kf, ky, 0.5, 0.5)
    for q in (1, 5, 11):
        got = select_channels(protos, kf, ky, q, (0.5, 0.5))
        assert got.tolist() == sorted(torch.argsort(-want)[:q].tolist())
    # the criterion's weights matter: all weight on the text variance keeps the channels of highest variance
    var = F.normalize(protos.double(), dim=-1).var(0)
    assert select_channels(protos, kf, ky, 4, (0.0, 1.0)).tolist() == sorted(torch.argsort(-var)[:4].tolist())


def test_cache_text_weight_is_exp_gamma_kl_in_bits_by_hand():
    # 2 classes on the unit circle: text at 0 and 90 degrees; key 0 near its class's text, key 1 on the wrong side
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    angles = [0.2, 0.3]  # key 1 (class 1) sits close to class 0's text: the text classifier gets it wrong
    keys = torch.tensor([[math.cos(t), math.sin(t)] for t in angles])
    labels = torch.tensor([0, 1])
    got = cache_text_divergence(keys, text, labels)
    want = []
    for (x, y), lab in zip(keys.tolist(), labels.tolist()):
        z = [x, y]  # the cosines to the two unit text vectors, unscaled
        p = [math.exp(v) / (math.exp(z[0]) + math.exp(z[1])) for v in z]
        want.append(
            sum(l * math.log2((l + 1e-6) / (pc + 1e-6)) for l, pc in zip([1.0 * (c == lab) for c in (0, 1)], p))
        )
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert want[1] > 1.0 > want[0] > 0  # the misclassified key diverges more
    head = APEHead(text, 100.0, keys, labels, torch.tensor([0, 1]), alpha=1.0, beta=1.0, gamma=0.3)
    r = head.key_weights()
    assert r.tolist() == pytest.approx([math.exp(0.3 * d) for d in want], rel=1e-5)
    assert r[1] > r[0] > 1.0  # R >= 1, largest where the text classifier is wrong


def _dense_ape(f, protos, scale, keys, labels, idx, alpha, beta, gamma):
    """APE's logits from the authors' formula, every matrix whole, float64."""
    f, w, k = (F.normalize(x.double(), dim=-1) for x in (f, protos, keys))
    fr, wr, kr = (F.normalize(x[:, idx], dim=-1) for x in (f, w, k))
    one_hot = F.one_hot(labels, w.shape[0]).double()
    p = torch.softmax(kr @ wr.t(), dim=-1)
    kl_bits = (one_hot * torch.log2((one_hot + 1e-6) / (p + 1e-6))).sum(1, keepdim=True)
    return scale * f @ w.t() + alpha * torch.exp(-beta * (1 - fr @ kr.t())) @ (torch.exp(gamma * kl_bits) * one_hot)


def test_ape_logits_match_the_dense_formula_while_streaming():
    protos, (kf, ky), _, (tf, _) = _problem(seed=4)
    idx = torch.tensor([1, 2, 5, 6])
    head = APEHead(protos, 100.0, kf, ky, idx, alpha=1.3, beta=3.0, gamma=0.7, chunk=9)
    assert torch.allclose(head(tf).double(), _dense_ape(tf, protos, 100.0, kf, ky, idx, 1.3, 3.0, 0.7), atol=1e-4)


def test_ape_search_picks_the_brute_force_best_on_val():
    protos, (kf, ky), (vf, vy), _ = _problem(seed=3, n_val=15)
    cfg = APEConfig(channels="0.5,1.0", alpha="0.5:3:4", beta="1,5", gamma="0:1:4:open")
    log = SelectionLog()
    ape = fit_ape(protos, 15.0, kf, ky, feature_split(vf, vy, "val", "val"), cfg, log)
    best, best_c = None, None
    for frac in grid_values(cfg.channels):
        q = round(frac * protos.shape[1])
        idx = select_channels(protos, kf, ky, q)
        for beta in grid_values(cfg.beta):
            for gamma in grid_values(cfg.gamma):
                for alpha in grid_values(cfg.alpha):
                    logits = _dense_ape(vf, protos, 15.0, kf, ky, idx, alpha, beta, gamma)
                    acc = (logits.argmax(1) == vy).double().mean().item()
                    if best is None or acc > best + 1e-12:
                        best, best_c = acc, (q, beta, gamma, alpha)
    assert (len(ape.channels), ape.beta, ape.gamma, ape.alpha) == best_c
    assert ape.gamma > 0  # the cache-text weight earns its place on this problem
    assert log.entries["APE: Q, beta, gamma, alpha"]["score"] == pytest.approx(100 * best)


def test_default_search_visits_the_authors_grid(monkeypatch):
    import fdalign.heads.ape as ape_mod

    seen = {}

    def spy(what, candidates, score, split, log, progress=False):
        seen[what] = list(candidates)
        return seen[what][0]

    monkeypatch.setattr(ape_mod, "search", spy)
    protos, (kf, ky), (vf, vy), _ = _problem(d=16)
    fit_ape(protos, 100.0, kf, ky, feature_split(vf, vy, "val", "val"))
    betas = [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]  # i (s - 0.1) / steps + 0.1, the top excluded
    alphas = [i * (7 - 0.1) / 20 + 0.1 for i in range(20)]
    gammas = [i * 1 / 20 for i in range(20)]  # 0 .. 0.95
    want = [(8, b, g, a) for b in betas for g in gammas for a in alphas]  # Q = D / 2
    got = seen["APE: Q, beta, gamma, alpha"]
    assert len(got) == len(want) == 80_000
    assert all(g[0] == w[0] and g[1:] == pytest.approx(w[1:], abs=1e-6) for g, w in zip(got[::997], want[::997]))
    assert max(c[3] for c in got) == pytest.approx(6.655) and max(c[2] for c in got) == pytest.approx(0.95)


def test_channel_counts_from_the_grid_fractions_up_to_1_then_counts(monkeypatch):
    """1.0 is all D channels (a fraction), not one channel; above 1 a count, clipped to D: the channel
    sets the search visits and the one APE-T keeps, counted directly (a search's tie would hide it)."""
    import fdalign.heads.ape as ape_mod

    seen = {}

    def spy(what, candidates, score, split, log, progress=False):
        seen[what] = list(candidates)
        return seen[what][-1]

    monkeypatch.setattr(ape_mod, "search", spy)
    protos, (kf, ky), (vf, vy), _ = _problem(d=16)
    val = feature_split(vf, vy, "val", "val")
    head = fit_ape(protos, 100.0, kf, ky, val, APEConfig(channels="0.25,3,100,1.0", alpha="1", beta="1", gamma="0"))
    assert [c[0] for c in seen["APE: Q, beta, gamma, alpha"]] == [4, 3, 16]  # 100 and 1.0: all 16, once
    assert head.channels.tolist() == list(range(16))  # the last candidate, Q = 1.0 x 16
    t_cfg = APEConfig(t_channels=1.0, alpha="1", beta="1", fit=FitConfig(epochs=0))
    assert fit_ape_t(protos, 100.0, kf, ky, kf, val, t_cfg).channels.tolist() == list(range(16))
    assert (
        len(fit_ape_t(protos, 100.0, kf, ky, kf, val, APEConfig(t_channels=0.5, fit=FitConfig(epochs=0))).channels) == 8
    )


def _dense_ape_t(f, protos, scale, keys, labels, idx, alpha, beta, residual, values):
    """APE-T's logits: the residual on the selected channels of the full keys and text, not renormalised."""
    f, w, k = (F.normalize(x.double(), dim=-1) for x in (f, protos, keys))
    w, k = w.clone(), k.clone()
    for c in range(w.shape[0]):
        for qi, ch in enumerate(idx.tolist()):
            w[c, ch] += residual[c, qi].double()
    for i, lab in enumerate(labels.tolist()):
        for qi, ch in enumerate(idx.tolist()):
            k[i, ch] += residual[lab, qi].double()
    one_hot = F.one_hot(labels, w.shape[0]).double()
    return scale * f @ w.t() + alpha * torch.exp(-beta * (1 - f @ k.t())) @ (values.double()[:, None] * one_hot)


def test_ape_t_logits_match_the_dense_formula():
    protos, (kf, ky), _, (tf, _) = _problem(seed=5)
    idx = torch.tensor([0, 3, 4])
    head = APETHead(protos, 100.0, kf, ky, idx, alpha=2.0, beta=4.0, chunk=7)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head.residual.copy_(0.3 * torch.randn(head.residual.shape, generator=g))
        head.values.copy_(0.5 + torch.rand(head.values.shape, generator=g))
    want = _dense_ape_t(tf, protos, 100.0, kf, ky, idx, 2.0, 4.0, head.residual.detach(), head.values.detach())
    assert torch.allclose(head(tf).double(), want, atol=1e-4)


def test_ape_t_at_init_equals_tip_adapter():
    protos, (kf, ky), (vf, vy), (tf, _) = _problem(seed=7)
    idx = select_channels(protos, kf, ky, 5, (0.2, 0.8))
    ape_t = APETHead(protos, 100.0, kf, ky, idx, alpha=1.7, beta=5.5)
    tip = TipAdapter(protos, 100.0, kf, ky, alpha=1.7, beta=5.5)
    assert torch.allclose(ape_t(tf), tip(tf), atol=1e-5)
    # untrained, its (beta, alpha) search is Tip-Adapter's: same choice, same logits
    val = feature_split(vf, vy, "val", "val")
    grids = dict(alpha="0.1:7:6:open", beta="0.1:7:8:open")
    cfg = APEConfig(**grids, fit=FitConfig(epochs=0))
    got = fit_ape_t(protos, 100.0, kf, ky, kf, val, cfg)
    want = fit_tip(protos, 100.0, kf, ky, val, TipConfig(**grids))
    assert (got.alpha, got.beta) == (want.alpha, want.beta)
    assert torch.allclose(got(tf), want(tf), atol=1e-5)


def test_ape_t_residual_and_value_weights_receive_gradients_and_adamw_decays_0_1(monkeypatch):
    protos, (kf, ky), (vf, vy), _ = _problem(seed=8, shots=4)
    head = APETHead(protos, 100.0, kf, ky, torch.tensor([1, 2, 6]), alpha=1.0, beta=1.0)
    F.cross_entropy(head(kf), ky).backward()
    assert head.residual.grad is not None and head.residual.grad.abs().sum() > 0
    assert head.values.grad is not None and head.values.grad.abs().sum() > 0
    assert head.residual.grad[:, 0].abs().sum() > 0  # every selected channel, not just some

    made = []
    real = torch.optim.AdamW

    def spy(params, **kw):
        params = list(params)
        made.append(({id(p) for p in params}, kw))
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    val = feature_split(vf, vy, "val", "val")
    cfg = APEConfig(
        alpha="1,2",
        beta="1,3",
        t_channels=5,
        fit=FitConfig(epochs=3, batch_size=4, lr=1e-2, eps=1e-3, weight_decay=0.1),
    )
    trained = fit_ape_t(protos, 100.0, kf, ky, kf, val, cfg)
    ((ids, kw),) = made
    assert ids == {id(trained.residual), id(trained.values)} and kw["weight_decay"] == 0.1
    assert trained.residual.abs().max() > 0 and not torch.allclose(trained.values, torch.ones_like(trained.values))
    assert trained.channels.tolist() == select_channels(protos, kf, ky, 5, (0.2, 0.8)).tolist()  # APE-T's weights
    assert trained.channels.tolist() != select_channels(protos, kf, ky, 5, (0.5, 0.5)).tolist()  # (not APE's)
    assert APEConfig().fit.weight_decay == 0.1 and APEConfig().t_weights == (0.2, 0.8)


def test_ape_t_search_picks_the_brute_force_best_with_trained_residual_and_values():
    protos, (kf, ky), (vf, vy), _ = _problem(seed=9, n_val=15)
    head = APETHead(protos, 20.0, kf, ky, torch.tensor([0, 2, 5]), alpha=1.0, beta=1.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # as after training: a residual and value weights far from 1
        head.residual.copy_(0.2 * torch.randn(head.residual.shape, generator=g))
        head.values.copy_(4 * torch.rand(head.values.shape, generator=g))
    cfg = APEConfig(alpha="0.5:6:6", beta="1,4,8")
    log = SelectionLog()
    search_ape_t(head, feature_split(vf, vy, "val", "val"), cfg, log, "APE-T: beta, alpha")
    res, val = head.residual.detach(), head.values.detach()
    best, best_c = None, None
    for beta in grid_values(cfg.beta):
        for alpha in grid_values(cfg.alpha):
            logits = _dense_ape_t(vf, protos, 20.0, kf, ky, head.channels, alpha, beta, res, val)
            acc = (logits.argmax(1) == vy).double().mean().item()
            if best is None or acc > best + 1e-12:
                best, best_c = acc, (beta, alpha)
    assert (head.beta, head.alpha) == best_c
    assert log.entries["APE-T: beta, alpha"]["score"] == pytest.approx(100 * best)
