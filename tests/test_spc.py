"""Spurious Prototype Correction: outlier removal, clustering, determinism, edge cases."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from fdalign.errors import FDAlignError
from fdalign.spc import SPCConfig, correct_spurious_prototypes


def _clustered(m=80, d=16, planted=None, seed=0):
    """m unit vectors tightly around one direction; optionally one planted far-away outlier."""
    g = torch.Generator().manual_seed(seed)
    centre = F.normalize(torch.randn(d, generator=g), dim=0)
    x = F.normalize(centre + 0.05 * torch.randn(m, d, generator=g), dim=-1)
    if planted is not None:
        x[planted] = -centre  # the opposite direction: as far as a unit vector can be
    return x


def test_planted_outlier_is_dropped():
    x = _clustered(planted=37)
    res = correct_spurious_prototypes(x, SPCConfig(keep=79, k=5))
    assert res.dropped == [37]
    assert res.kept == [i for i in range(80) if i != 37]
    assert res.prototypes.shape == (5, 16)


def test_centres_are_cluster_means():
    # three well-separated groups of sizes 4, 5, 6: KMeans(k=3) must find them exactly, and an
    # unrenormalised centre is the plain mean of its group
    d = 8
    groups = [
        torch.eye(d)[i] + 0.01 * torch.randn(n, d, generator=torch.Generator().manual_seed(i))
        for i, n in enumerate([4, 5, 6])
    ]
    x = torch.cat(groups)
    raw = correct_spurious_prototypes(x, SPCConfig(keep=100, k=3, renormalize=False)).prototypes
    expected = torch.stack([g.mean(0) for g in groups])
    order = raw.argmax(dim=1).argsort()  # group i's centre points along axis i
    torch.testing.assert_close(raw[order], expected, rtol=0, atol=1e-6)

    norm = correct_spurious_prototypes(x, SPCConfig(keep=100, k=3)).prototypes
    torch.testing.assert_close(norm.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(norm[order], F.normalize(expected, dim=-1), rtol=0, atol=1e-6)


def test_same_seed_same_output():
    x = F.normalize(torch.randn(80, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    a = correct_spurious_prototypes(x, SPCConfig(seed=3))
    b = correct_spurious_prototypes(x, SPCConfig(seed=3))
    assert torch.equal(a.prototypes, b.prototypes) and a.kept == b.kept and a.dropped == b.dropped
    assert len(a.kept) == 60 and len(a.dropped) == 20 and sorted(a.kept + a.dropped) == list(range(80))
    assert a.prototypes.shape == (20, 16)


def test_keep_at_least_m_keeps_all():
    x = _clustered(m=10)
    res = correct_spurious_prototypes(x, SPCConfig(keep=60, k=3))
    assert res.kept == list(range(10)) and res.dropped == []


def test_k_not_below_kept_warns_and_returns_kept():
    x = _clustered(m=10, planted=4)
    with pytest.warns(UserWarning, match="k=20 >= 9 kept"):
        res = correct_spurious_prototypes(x, SPCConfig(keep=9, k=20))
    assert res.dropped == [4]
    assert torch.equal(res.prototypes, x[res.kept])


def test_no_warning_in_normal_case():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        correct_spurious_prototypes(_clustered(), SPCConfig())


@pytest.mark.parametrize("kw", [{"keep": 0}, {"k": 0}])
def test_bad_config(kw):
    with pytest.raises(FDAlignError):
        SPCConfig(**kw)
