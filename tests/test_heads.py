"""PrototypeHead: frozen (paper) and trainable (released code) logits against hand computations."""

import math

import pytest
import torch

from fdalign.heads import PrototypeHead, head_from_state_dict


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_frozen_head_matches_hand_computed_cosines():
    protos = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: (0.6, 0.8), (0, 1)
    feats = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    head = PrototypeHead(protos, scale=10.0)
    got = head(feats)
    # hand: f1 = (1, 0) -> cos = 0.6, 0 ; f2 = (1, 1)/sqrt2 -> cos = 1.4/sqrt2, 1/sqrt2
    want = torch.tensor([[6.0, 0.0], [10 * 1.4 / math.sqrt(2), 10 / math.sqrt(2)]])
    torch.testing.assert_close(got, want)
    assert list(head.parameters()) == []  # nothing to train
    assert head.kind == "frozen"


def test_trainable_head_init_equals_frozen_and_weights_are_not_renormalised():
    torch.manual_seed(0)
    protos = torch.randn(3, 5)
    feats = torch.randn(4, 5)
    frozen = PrototypeHead(protos, scale=100.0)
    head = PrototypeHead(protos, scale=100.0, trainable=True)
    torch.testing.assert_close(head(feats), frozen(feats))
    # the released init: weight = normalize(P) * scale, bias = 0
    want_w = torch.stack([torch.tensor(_unit(p.tolist())) * 100 for p in protos])
    torch.testing.assert_close(head.weight.detach(), want_w)
    assert torch.equal(head.bias.detach(), torch.zeros(3))

    with torch.no_grad():
        head.weight.mul_(2.0)  # a norm change must show in the logits: no renormalisation
        head.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    f = feats / feats.norm(dim=1, keepdim=True)
    want = f @ (2 * want_w).t() + torch.tensor([1.0, -1.0, 0.5])
    torch.testing.assert_close(head(feats), want)
    # the input features are normalised: scaling them changes nothing
    torch.testing.assert_close(head(7.0 * feats), want)


def test_trainable_head_gets_gradients_and_state_round_trips():
    head = PrototypeHead(torch.randn(2, 4), scale=5.0, trainable=True)
    head(torch.randn(3, 4)).sum().backward()
    assert head.weight.grad is not None and head.bias.grad is not None
    for h in (head, PrototypeHead(torch.randn(2, 4), scale=5.0)):
        again = head_from_state_dict(h.state_dict(), h.kind, h.scale)
        x = torch.randn(3, 4)
        assert torch.equal(again(x), h(x))


def test_head_rejects_bad_shape():
    with pytest.raises(ValueError):
        PrototypeHead(torch.randn(4), scale=1.0)
