"""``fdalign.FDAlignLoss``: the FD-Align objective as a module for users' own loops.

Checked against a hand computation (CE + beta * KL written with torch.nn.functional.kl_div), and
against the trainer itself: a ten-line user loop gives the trainer's loss on the trainer's batch.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import fdalign
from fdalign.losses import FDAlignLoss
from fdalign.spc import SPCConfig
from test_cli_train import folders  # noqa: F401 (the generated ID / OOD folders and templates)


def _hand_loss(feat_t, feat_0, labels, class_protos, spurious, scale, alpha, beta, direction):
    """alpha * CE + beta * KL from the paper's formulas, written independently of fdalign.losses."""
    ft, f0 = F.normalize(feat_t, dim=-1), F.normalize(feat_0, dim=-1)
    ce = F.cross_entropy(scale * ft @ F.normalize(class_protos, dim=-1).t(), labels)
    sp = F.normalize(spurious, dim=-1)
    log_pt, log_p0 = F.log_softmax(scale * ft @ sp.t(), -1), F.log_softmax(scale * f0 @ sp.t(), -1)
    if direction == "paper":  # KL(P_t || P_0) per image, mean over images
        kl = F.kl_div(log_p0, log_pt, log_target=True, reduction="batchmean")
    else:  # torch.nn.KLDivLoss()(log P_t, P_0): KL(P_0 || P_t) / (B K)
        kl = F.kl_div(log_pt, log_p0.exp(), reduction="sum") / log_pt.numel()
    return alpha * ce + beta * kl, ce, kl


@pytest.mark.parametrize("direction", ["paper", "released"])
def test_features_path_equals_the_formula(direction):
    g = torch.Generator().manual_seed(0)
    feat_t, feat_0 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    class_protos, spurious = torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    loss_fn = FDAlignLoss(
        spurious, class_prototypes=class_protos, alpha=0.7, beta=2.5, scale=10.0, kl_direction=direction
    )
    loss, parts = loss_fn(feat_t, labels, f0_features=feat_0)
    want, ce, kl = _hand_loss(feat_t, feat_0, labels, class_protos, spurious, 10.0, 0.7, 2.5, direction)
    assert kl.item() > 1e-3  # a KL that can tell the directions apart
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["kl"], kl)
    torch.testing.assert_close(loss, want)
    # the f0 cache path: precomputed log-probabilities give the same loss
    again, _ = loss_fn(feat_t, labels, log_p0=parts["log_p0"])
    torch.testing.assert_close(again, loss)


def test_gradients_reach_ft_only_and_f0_keeps_its_mode():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 8))
    loss_fn = FDAlignLoss(
        torch.randn(4, 8),
        class_prototypes=torch.randn(3, 8),
        encoder=encoder,
        f0=fdalign.losses.frozen_copy(encoder),
        beta=1.0,
        scale=10.0,
    )
    loss_fn.train()
    assert not loss_fn.f0.training  # f0_mode "eval": dropout off in f0 whatever train() says
    assert not list(loss_fn.parameters()) or all(not p.requires_grad for p in loss_fn.parameters())
    assert {id(p) for p in encoder.parameters()}.isdisjoint(id(p) for p in loss_fn.parameters())
    loss, _ = loss_fn(torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert encoder[2].weight.grad is not None and loss_fn.f0[2].weight.grad is None


def test_a_user_loop_gives_the_trainers_loss_on_its_batch(tiny_openclip, folders, tmp_path, monkeypatch):  # noqa: F811
    """Record the trainer's 2nd step (ft already moved, so the KL is not zero), then replay it."""
    import fdalign.train.trainer as trainer_mod

    seen, real = [], trainer_mod.fdalign_forward

    def spy(ft, f0, head, images, labels, spurious, settings, log_p0=None):
        loss, parts = real(ft, f0, head, images, labels, spurious, settings, log_p0)
        seen.append((copy.deepcopy(ft.state_dict()), images.clone(), labels.clone(), loss.item(), parts["kl"].item()))
        return loss, parts

    monkeypatch.setattr(trainer_mod, "fdalign_forward", spy)
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    cfg = fdalign.TrainConfig(
        model_config=str(tiny_openclip["config"]),
        pretrained=str(tiny_openclip["checkpoint"]),
        data=str(folders["id"]),
        shots=2,
        epochs=1,
        batch_size=3,
        num_workers=0,
        templates=str(folders["templates"]),
        spc_keep=3,
        spc_k=2,
        beta=2.0,
        lr=5e-2,
        wiseft_alphas=[1.0],
        device="cpu",
        progress=False,
        out=str(tmp_path / "run"),
        tensorboard=False,
    )
    torch.manual_seed(0)
    fdalign.finetune(cfg)
    state, images, labels, trainer_loss, trainer_kl = seen[1]
    assert trainer_kl > 1e-4

    # the user's loop: the loss from a fresh CLIP, its class names and templates; ft starts where the trainer was
    from fdalign.data import open_dataset

    backend = fdalign.load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    classnames = open_dataset(str(folders["id"]))["train"].classnames
    loss_fn = FDAlignLoss.from_clip(
        backend, classnames, str(folders["templates"]), spc=SPCConfig(keep=3, k=2), beta=2.0
    )
    backend.image_encoder.load_state_dict(state)
    opt = torch.optim.SGD(backend.image_encoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss, parts = loss_fn(images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - trainer_loss) < 1e-6, (losses[0], trainer_loss)
    assert losses[-1] < losses[0]  # and it trains


def test_from_text_encoder_equals_from_clip(tiny_openclip, tmp_path, monkeypatch):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    backend = fdalign.load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    names, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "a {} drawing.", "art of a {}."]
    a = FDAlignLoss.from_clip(backend, names, templates, spc=False, beta=1.0)
    b = FDAlignLoss.from_text_encoder(
        backend.encode_text, backend.image_encoder, names, templates, scale=backend.logit_scale, spc=False, beta=1.0
    )
    torch.testing.assert_close(a.spurious, b.spurious)
    torch.testing.assert_close(a.class_prototypes, b.class_prototypes)
    feats, labels = torch.randn(4, a.spurious.shape[1]), torch.tensor([0, 1, 2, 0])
    f0_feats = feats + 0.1 * torch.randn_like(feats)
    torch.testing.assert_close(a(feats, labels, f0_features=f0_feats)[0], b(feats, labels, f0_features=f0_feats)[0])
