"""The differentiable text path of the backends (FLYP, CLIP-LoRA): same features as encode_text, gradients,
a state of text weights only, and training it moves what encode_text returns."""

from __future__ import annotations

import pytest
import torch

from fdalign.backends import load_clip

TEXTS = ["a photo of a cat.", "the dog", "of the mountains at night, far away"]


@pytest.fixture(scope="module")
def openclip_backend(tiny_openclip):
    return load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])


@pytest.fixture(scope="module")
def hf_backend(tiny_hf):
    return load_clip("hf:" + str(tiny_hf["dir"]))


@pytest.mark.parametrize("which", ["openclip_backend", "hf_backend"])
def test_text_tower_equals_encode_text_and_has_gradients(which, request):
    backend = request.getfixturevalue(which)
    tower = backend.text_tower
    tokens = backend.tokenize(TEXTS)
    assert tokens.dtype == torch.int64 and tokens.shape[0] == len(TEXTS)
    feats = tower(tokens)
    # padded to the longest prompt: the short prompts' features must not depend on the padding
    assert torch.allclose(feats.detach(), backend.encode_text(TEXTS), atol=1e-5)
    names = list(tower.state_dict())
    assert names and not any(n.startswith(("visual", "vision_model", "visual_projection")) for n in names)
    assert "logit_scale" not in names
    tower.requires_grad_(True)
    try:
        feats = tower(tokens)
        feats.sum().backward()
        grads = [p.grad for p in tower.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    finally:
        tower.requires_grad_(False)
        tower.zero_grad(set_to_none=True)


def test_text_tower_shares_the_weights_encode_text_runs(tiny_openclip):
    backend = load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    before = backend.encode_text(TEXTS)
    with torch.no_grad():
        for p in backend.text_tower.parameters():  # a shift of every weight (a uniform one could cancel in LayerNorm)
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(before, backend.encode_text(TEXTS), atol=1e-4)
