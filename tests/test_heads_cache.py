"""Tip-Adapter / Tip-Adapter-F / APE / APE-T on small hand-checkable cases (no images, no models)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from fdalign.heads import PrototypeHead
from fdalign.heads import cache as cache_mod
from fdalign.heads.ape import APEConfig, APEHead, channel_criterion, fit_ape, fit_ape_t, select_channels
from fdalign.heads.cache import FitConfig, affinity, class_sums, feature_split, grid_values
from fdalign.heads.tip import TipAdapter, TipConfig, fit_tip, fit_tip_f
from fdalign.selection import SelectionLeakError, SelectionLog


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(c=4, d=8, shots=3, n_val=3, n_test=20, seed=0):
    """Class centres in D dims, cache / val / test features around them (noisy enough to be imperfect)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    protos = F.normalize(centres + 0.8 * torch.randn(c, d, generator=g), dim=-1)  # text != image centres

    def draw(n):
        y = torch.arange(c).repeat_interleave(n)
        return centres[y] + 1.0 * torch.randn(len(y), d, generator=g), y

    return protos, draw(shots), draw(n_val), draw(n_test)


def _dense_tip(f, protos, scale, keys, labels, alpha, beta):
    """Tip-Adapter's logits straight from the paper's formula, with the whole [B, N] matrix and one-hot L."""
    f, w, k = (F.normalize(x.double(), dim=-1) for x in (f, protos, keys))
    one_hot = F.one_hot(labels, w.shape[0]).double()
    return scale * f @ w.t() + alpha * torch.exp(-beta * (1 - f @ k.t())) @ one_hot


SMALL_TIP = TipConfig(alpha="0.5:3:6", beta="0.5:6:5", fit=FitConfig(epochs=3, batch_size=4))
SMALL_APE = APEConfig(channels="0.5,1.0", alpha="0.5:3:4", beta="1,5", gamma="0,1",
                      fit=FitConfig(epochs=3, batch_size=4))


def test_affinity_is_exp_of_minus_beta_one_minus_cos_by_hand():
    theta = [0.0, math.pi / 3, math.pi / 2, math.pi]
    keys = torch.tensor([[3 * math.cos(t), 3 * math.sin(t)] for t in theta])  # |k| = 3: normalised inside
    f = torch.tensor([[2.0, 0.0]])
    beta = 2.5
    head = TipAdapter(torch.zeros(2, 2) + torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1.0, keys,
                      torch.tensor([0, 1, 1, 0]), alpha=1.0, beta=beta)
    want_a = [math.exp(-beta * (1 - math.cos(t))) for t in theta]
    got_a = affinity(F.normalize(f, dim=-1), F.normalize(keys, dim=-1), beta)[0]
    assert got_a.tolist() == pytest.approx(want_a, rel=1e-6)
    # the cache logits of class c add the affinities of class c's keys
    zero_shot = torch.tensor([[1.0, 0.0]])  # cos to e0 and e1, scale 1
    cache = head(f) - zero_shot
    assert cache[0].tolist() == pytest.approx([want_a[0] + want_a[3], want_a[1] + want_a[2]], rel=1e-6)


def test_class_sums_equal_one_hot_product():
    a = torch.arange(12.0).view(2, 6)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    want = a @ F.one_hot(labels, 4).float()
    assert torch.equal(class_sums(a, labels, 4), want)


def test_tip_with_alpha_zero_equals_zero_shot():
    protos, (kf, ky), _, (tf, _) = _problem()
    tip = TipAdapter(protos, 37.0, kf, ky, alpha=0.0, beta=5.0)
    zs = PrototypeHead(protos, scale=37.0)
    assert torch.allclose(tip(tf), zs(tf), atol=1e-5)


def test_tip_logits_match_dense_formula_while_streaming(monkeypatch):
    protos, (kf, ky), _, (tf, _) = _problem()
    tip = TipAdapter(protos, 20.0, kf, ky, alpha=1.7, beta=4.2, chunk=7)
    shapes = []
    real = cache_mod.affinity

    def spy(f, k, beta):
        shapes.append(tuple(f.shape))
        return real(f, k, beta)

    monkeypatch.setattr("fdalign.heads.tip.affinity", spy)
    got = tip(tf)
    assert torch.allclose(got.double(), _dense_tip(tf, protos, 20.0, kf, ky, 1.7, 4.2), atol=1e-4)
    # 80 test rows, never more than 7 at once against the cache
    assert max(s[0] for s in shapes) == 7 and sum(s[0] for s in shapes) == tf.shape[0]


def test_tip_search_picks_the_brute_force_best_on_val():
    protos, (kf, ky), (vf, vy), _ = _problem(seed=6, n_val=15)  # 9 distinct val scores on the grid
    log = SelectionLog()
    tip = fit_tip(protos, 10.0, kf, ky, feature_split(vf, vy, "val", "val (60)"), SMALL_TIP, log)
    best, best_c = None, None
    for beta in grid_values(SMALL_TIP.beta):  # beta-major, first maximum wins
        for alpha in grid_values(SMALL_TIP.alpha):
            acc = (_dense_tip(vf, protos, 10.0, kf, ky, alpha, beta).argmax(1) == vy).double().mean().item()
            if best is None or acc > best + 1e-12:
                best, best_c = acc, (beta, alpha)
    assert (tip.beta, tip.alpha) == best_c
    entry = log.entries["Tip: beta, alpha"]
    assert entry["on"] == "val (60)" and entry["score"] == pytest.approx(100 * best)
    assert tip.alpha != grid_values(SMALL_TIP.alpha)[0]  # not simply the first grid point
    assert len(entry["scores"]) == 6 * 5
    # candidates in beta-major order (the order ties are broken in)
    order = [(b, a) for b in grid_values(SMALL_TIP.beta) for a in grid_values(SMALL_TIP.alpha)]
    assert list(entry["scores"]) == [str(c) for c in order]


def test_search_handed_a_test_split_is_refused():
    protos, (kf, ky), (vf, vy), _ = _problem()
    test = feature_split(vf, vy, "test", "test")
    with pytest.raises(SelectionLeakError):
        fit_tip(protos, 10.0, kf, ky, test, SMALL_TIP)
    with pytest.raises(SelectionLeakError):
        fit_ape(protos, 10.0, kf, ky, test, SMALL_APE)
    val = feature_split(vf, vy, "val", "val")
    tip = fit_tip(protos, 10.0, kf, ky, val, SMALL_TIP)
    with pytest.raises(SelectionLeakError):  # refused before any training
        fit_tip_f(tip, kf, ky, feature_split(vf, vy, "ood", "ood"), SMALL_TIP)
    ape = fit_ape(protos, 10.0, kf, ky, val, SMALL_APE)
    with pytest.raises(SelectionLeakError):
        fit_ape_t(ape, kf, ky, test, SMALL_APE)


def test_tip_f_with_zero_epochs_equals_tip_and_training_moves_keys_deterministically():
    protos, (kf, ky), (vf, vy), (tf, _) = _problem(seed=1)
    val = feature_split(vf, vy, "val", "val")
    tip = fit_tip(protos, 10.0, kf, ky, val, SMALL_TIP)
    cfg0 = TipConfig(SMALL_TIP.alpha, SMALL_TIP.beta, FitConfig(epochs=0))
    tip_f0 = fit_tip_f(tip, kf, ky, val, cfg0)
    assert (tip_f0.alpha, tip_f0.beta) == (tip.alpha, tip.beta)
    assert torch.allclose(tip_f0(tf), tip(tf), atol=1e-5)

    log = SelectionLog()
    a = fit_tip_f(tip, kf, ky, val, SMALL_TIP, log)
    b = fit_tip_f(tip, kf, ky, val, SMALL_TIP)
    assert not torch.allclose(a.keys, tip.keys, atol=1e-4)  # the keys were trained
    assert torch.equal(a.keys, b.keys)  # same seed, same keys
    assert set(log.entries["Tip-F: epoch"]["scores"]) == {"1", "2", "3"}
    assert not tip.keys.requires_grad  # the Tip head itself is untouched


def test_tip_f_training_lowers_the_training_loss():
    protos, (kf, ky), (vf, vy), _ = _problem(seed=2, shots=6)
    val = feature_split(vf, vy, "val", "val")
    tip = fit_tip(protos, 10.0, kf, ky, val, SMALL_TIP)
    cfg = TipConfig(SMALL_TIP.alpha, SMALL_TIP.beta, FitConfig(epochs=10, batch_size=8, lr=1e-2))
    head = TipAdapter(tip.prototypes, tip.scale, tip.keys, tip.labels, tip.alpha, tip.beta, trainable=True)
    before = F.cross_entropy(head(kf), ky).item()
    cache_mod.fit_and_select_epoch("e", head, [head.keys], kf, ky, val, FitConfig(epochs=10, batch_size=8, lr=1e-2),
                                   None)
    after = F.cross_entropy(head(kf), ky).item()
    assert after < before
    assert cfg.fit.epochs == 10


def _criterion_by_loops(protos, keys, labels, lam):
    """APE's criterion written with explicit loops over channels and class pairs."""
    w, k = F.normalize(protos.double(), dim=-1), F.normalize(keys.double(), dim=-1)
    c, d = w.shape
    means = [torch.stack([w[i]] + [k[j] for j in range(len(labels)) if labels[j] == i]).mean(0) for i in range(c)]
    out = []
    for ch in range(d):
        sim = sum(means[i][ch] * means[j][ch] for i in range(c) for j in range(c) if i != j) / (c * (c - 1))
        mu = sum(w[i][ch] for i in range(c)) / c
        var = sum((w[i][ch] - mu) ** 2 for i in range(c)) / c
        out.append(lam * var - (1 - lam) * sim)
    return torch.tensor(out)


def test_ape_criterion_matches_loops():
    protos, (kf, ky), _, _ = _problem(c=3, d=5, shots=2)
    got = channel_criterion(protos, kf, ky, lam=0.3)
    assert torch.allclose(got.double(), _criterion_by_loops(protos, kf, ky, 0.3), atol=1e-6)


def test_ape_picks_a_planted_discriminative_channel():
    g = torch.Generator().manual_seed(0)
    c, d, planted = 6, 10, 7
    protos = torch.full((c, d), 0.3) + 0.01 * torch.randn(c, d, generator=g)  # the same in every class
    protos[:, planted] = torch.tensor([1.0, -1.0] * (c // 2))  # differs across classes, anti-correlated
    labels = torch.arange(c).repeat_interleave(2)
    keys = protos[labels] + 0.01 * torch.randn(len(labels), d, generator=g)
    assert select_channels(protos, keys, labels, q=1).tolist() == [planted]
    assert planted in select_channels(protos, keys, labels, q=3).tolist()


def _dense_ape(f, protos, scale, keys, labels, idx, alpha, beta, gamma, residual=None):
    """APE's logits with every matrix whole, in float64 (module docstring of fdalign.heads.ape); with
    ``residual`` ``[C, Q]`` APE-T's: added to the text classifier's channels and to each class's keys."""
    f, w, k = (F.normalize(x.double(), dim=-1) for x in (f, protos, keys))
    fr, wr, kr = (F.normalize(x[:, idx], dim=-1) for x in (f, w, k))
    if residual is not None:
        res = residual.double()
        wr = F.normalize(w[:, idx] + res, dim=-1)
        kr = F.normalize(k[:, idx] + res[labels], dim=-1)
        w = w.clone()
        w[:, idx] += res
        w = F.normalize(w, dim=-1)
    p = torch.softmax(scale * kr @ wr.t(), dim=-1)
    r = p[torch.arange(len(labels)), labels] ** gamma
    one_hot = F.one_hot(labels, w.shape[0]).double()
    return scale * f @ w.t() + alpha * (torch.exp(-beta * (1 - fr @ kr.t())) * r) @ one_hot


def test_ape_logits_match_dense_formula_and_ape_t_with_zero_epochs_is_ape():
    protos, (kf, ky), (vf, vy), (tf, _) = _problem(seed=4)
    idx = torch.tensor([1, 2, 5, 6])
    head = APEHead(protos, 15.0, kf, ky, idx, alpha=1.3, beta=3.0, gamma=1.5, chunk=9)
    want = _dense_ape(tf, protos, 15.0, kf, ky, idx, 1.3, 3.0, 1.5)
    assert torch.allclose(head(tf).double(), want, atol=1e-4)
    with torch.no_grad():  # APE-T: a category residual on the refined channels
        head.residual.copy_(0.3 * torch.randn(head.residual.shape, generator=torch.Generator().manual_seed(1)))
    want_t = _dense_ape(tf, protos, 15.0, kf, ky, idx, 1.3, 3.0, 1.5, residual=head.residual)
    assert torch.allclose(head(tf).double(), want_t, atol=1e-4)

    val = feature_split(vf, vy, "val", "val")
    ape = fit_ape(protos, 15.0, kf, ky, val, SMALL_APE)
    cfg0 = APEConfig(**{**SMALL_APE.__dict__, "fit": FitConfig(epochs=0)})
    ape_t0 = fit_ape_t(ape, kf, ky, val, cfg0)
    assert (ape_t0.alpha, ape_t0.beta, ape_t0.gamma) == (ape.alpha, ape.beta, ape.gamma)
    assert torch.allclose(ape_t0(tf), ape(tf), atol=1e-4)
    ape_t = fit_ape_t(ape, kf, ky, val, SMALL_APE)
    assert ape_t.residual.abs().max() > 0  # the category residual was trained


def test_ape_search_picks_the_brute_force_best_on_val():
    protos, (kf, ky), (vf, vy), _ = _problem(seed=3, n_val=15)  # 7 distinct val scores, gamma 1 wins
    ape = fit_ape(protos, 15.0, kf, ky, feature_split(vf, vy, "val", "val"), SMALL_APE)
    best, best_c = None, None
    for frac, beta, gamma, alpha in itertools.product(
        grid_values(SMALL_APE.channels), grid_values(SMALL_APE.beta), grid_values(SMALL_APE.gamma),
        grid_values(SMALL_APE.alpha),
    ):
        q = round(frac * protos.shape[1])
        idx = select_channels(protos, kf, ky, q)
        acc = (_dense_ape(vf, protos, 15.0, kf, ky, idx, alpha, beta, gamma).argmax(1) == vy).double().mean().item()
        if best is None or acc > best + 1e-12:
            best, best_c = acc, (q, beta, gamma, alpha)
    assert (len(ape.channels), ape.beta, ape.gamma, ape.alpha) == best_c
    assert ape.gamma == 1.0


def test_grid_values():
    assert grid_values("0.1:3:3") == (0.1, 1.55, 3.0)
    assert grid_values("1,2.5") == (1.0, 2.5)
    assert grid_values([0, 1]) == (0.0, 1.0)
    assert grid_values("2:9:1") == (2.0,)
    from fdalign.errors import FDAlignError

    with pytest.raises(FDAlignError, match="tip.beta"):
        grid_values("1:x:3", "tip.beta")


def test_search_top1_breaks_ties_like_topk_accuracy():
    from fdalign.eval.metrics import topk_accuracy
    from fdalign.heads.cache import top1

    logits = torch.tensor([[1.0, 1.0, 0.0], [2.0, 3.0, 3.0], [0.0, 0.0, 0.0], [5.0, 1.0, 5.0]])
    for labels in ([0, 1, 0, 2], [1, 2, 2, 0], [0, 1, 1, 0]):
        y = torch.tensor(labels)
        assert top1(logits, y) == pytest.approx(topk_accuracy(logits, y, ks=(1,))[1])


def test_trained_head_keeps_the_best_val_epoch_not_the_last():
    protos, (kf, ky), (vf, vy), _ = _problem(seed=0, n_val=10)
    head = TipAdapter(protos, 10.0, kf, ky, 2.0, 3.0, trainable=True)
    log = SelectionLog()
    val = feature_split(vf, vy, "val", "v")
    cache_mod.fit_and_select_epoch("e", head, [head.keys], kf, ky, val, FitConfig(epochs=6, batch_size=4, lr=0.05), log)
    entry = log.entries["e"]
    scores = {int(k): v for k, v in entry["scores"].items()}
    assert entry["chosen"] == max(scores, key=lambda e: (scores[e], -e)) != 6  # first best, not the last epoch
    with torch.no_grad():
        assert cache_mod.top1(head(vf), vy) == pytest.approx(scores[entry["chosen"]])


def test_grid_edges_name_the_axes_chosen_at_an_end():
    from fdalign.heads.cache import grid_edges

    cands = [(b, a) for b in (1.0, 2.0, 3.0) for a in (0.5, 1.0)]
    assert grid_edges((2.0, 1.0), cands, ["beta", "alpha"]) == ["alpha (highest)"]
    assert grid_edges((1.0, 0.5), cands, ["beta", "alpha"]) == ["beta (lowest)", "alpha (lowest)"]
    assert grid_edges((2.0, 7.0), [(2.0, 7.0)], ["beta", "alpha"]) == []  # a one-point grid has no edge
