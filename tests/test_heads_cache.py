"""Tip-Adapter / Tip-Adapter-F / APE / APE-T on small hand-checkable cases (no images, no models)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fdalign.heads import PrototypeHead
from fdalign.heads import cache as cache_mod
from fdalign.heads.ape import APEConfig, fit_ape, fit_ape_t
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
SMALL_APE = APEConfig(
    channels="0.5,1.0",
    alpha="0.5:3:4",
    beta="1,5",
    gamma="0,1",
    fit=FitConfig(epochs=3, batch_size=4, weight_decay=0.1),
)


def test_affinity_is_exp_of_minus_beta_one_minus_cos_by_hand():
    theta = [0.0, math.pi / 3, math.pi / 2, math.pi]
    keys = torch.tensor([[3 * math.cos(t), 3 * math.sin(t)] for t in theta])  # |k| = 3: normalised inside
    f = torch.tensor([[2.0, 0.0]])
    beta = 2.5
    head = TipAdapter(
        torch.zeros(2, 2) + torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        1.0,
        keys,
        torch.tensor([0, 1, 1, 0]),
        alpha=1.0,
        beta=beta,
    )
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
    with pytest.raises(SelectionLeakError):
        fit_ape_t(protos, 10.0, kf, ky, kf, test, SMALL_APE)


def test_tip_f_with_zero_epochs_equals_tip_and_training_moves_keys_deterministically():
    protos, (kf, ky), (vf, vy), (tf, _) = _problem(seed=1)
    val = feature_split(vf, vy, "val", "val")
    tip = fit_tip(protos, 10.0, kf, ky, val, SMALL_TIP)
    cfg0 = TipConfig(SMALL_TIP.alpha, SMALL_TIP.beta, fit=FitConfig(epochs=0))
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
    cfg = TipConfig(SMALL_TIP.alpha, SMALL_TIP.beta, fit=FitConfig(epochs=10, batch_size=8, lr=1e-2))
    head = TipAdapter(tip.prototypes, tip.scale, tip.keys, tip.labels, tip.alpha, tip.beta, trainable=True)
    before = F.cross_entropy(head(kf), ky).item()
    cache_mod.fit_and_select_epoch(
        "e", head, [head.keys], kf, ky, val, FitConfig(epochs=10, batch_size=8, lr=1e-2), None
    )
    after = F.cross_entropy(head(kf), ky).item()
    assert after < before
    assert cfg.fit.epochs == 10


def test_grid_values():
    assert grid_values("0.1:3:3") == (0.1, 1.55, 3.0)
    assert grid_values("1,2.5") == (1.0, 2.5)
    assert grid_values([0, 1]) == (0.0, 1.0)
    assert grid_values("2:9:1") == (2.0,)
    assert grid_values("0.1:7:3:open") == (0.1, 2.4, 4.7)  # the authors' form: lo + (hi - lo) i / n, hi excluded
    assert grid_values("0:1:4:open") == (0.0, 0.25, 0.5, 0.75)
    from fdalign.errors import FDAlignError

    with pytest.raises(FDAlignError, match="tip.beta"):
        grid_values("1:x:3", "tip.beta")
    with pytest.raises(FDAlignError, match="ape.gamma"):
        grid_values("0:1:4:closed", "ape.gamma")


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


def test_tip_f_trains_from_the_configured_start_point(monkeypatch):
    protos, (kf, ky), (vf, vy), _ = _problem(seed=1)
    val = feature_split(vf, vy, "val", "val")
    tip = fit_tip(protos, 10.0, kf, ky, val, SMALL_TIP)
    starts = []
    real = cache_mod.fit_and_select_epoch

    def spy(what, head, *a, **k):
        starts.append((head.beta, head.alpha))
        return real(what, head, *a, **k)

    monkeypatch.setattr("fdalign.heads.tip.fit_and_select_epoch", spy)
    fit_tip_f(tip, kf, ky, val, SMALL_TIP)  # default: from Tip's searched point
    fit_tip_f(
        tip, kf, ky, val, TipConfig(SMALL_TIP.alpha, SMALL_TIP.beta, fit=SMALL_TIP.fit, init_alpha=1.17, init_beta=1.0)
    )  # the authors': (beta 1, their init alpha)
    assert starts == [(tip.beta, tip.alpha), (1.0, 1.17)] and (tip.beta, tip.alpha) != (1.0, 1.17)
