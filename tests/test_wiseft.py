"""WiSE-FT interpolation: endpoints are exact, the midpoint is the mean, integer buffers are kept."""

import pytest
import torch
from torch import nn

from fdalign.train.wiseft import alpha_name, interpolate_module, interpolate_state_dicts


def _pair():
    torch.manual_seed(0)
    zs = {"w": torch.randn(3, 4), "b": torch.randn(4), "ids": torch.arange(5)}
    ft = {"w": torch.randn(3, 4), "b": torch.randn(4), "ids": torch.arange(5) + 1}
    return zs, ft


def test_endpoints_and_mean():
    zs, ft = _pair()
    a0 = interpolate_state_dicts(zs, ft, 0.0)
    a1 = interpolate_state_dicts(zs, ft, 1.0)
    mid = interpolate_state_dicts(zs, ft, 0.5)
    for k in ("w", "b"):
        assert torch.equal(a0[k], zs[k])
        assert torch.equal(a1[k], ft[k])
        torch.testing.assert_close(mid[k], (zs[k] + ft[k]) / 2)
    q = interpolate_state_dicts(zs, ft, 0.25)
    torch.testing.assert_close(q["w"], 0.75 * zs["w"] + 0.25 * ft["w"])
    # integer tensors are not averaged
    assert torch.equal(mid["ids"], ft["ids"]) and mid["ids"].dtype == torch.int64


def test_mismatch_raises():
    zs, ft = _pair()
    with pytest.raises(ValueError):
        interpolate_state_dicts({"w": zs["w"]}, ft, 0.5)
    with pytest.raises(ValueError):
        interpolate_state_dicts(dict(zs, w=torch.zeros(2, 2)), ft, 0.5)


def test_interpolate_module_and_bf16():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    m = interpolate_module(a, b, 0.5)
    torch.testing.assert_close(m.weight, (a.weight + b.weight) / 2)
    assert m is not b and torch.equal(b.weight, b.weight)  # original untouched
    zs = {"w": torch.ones(2, dtype=torch.bfloat16)}
    ft = {"w": torch.full((2,), 3.0, dtype=torch.bfloat16)}
    out = interpolate_state_dicts(zs, ft, 0.5)["w"]
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.full((2,), 2.0, dtype=torch.bfloat16))
    assert alpha_name(0.5) == "wiseft-0.5"
