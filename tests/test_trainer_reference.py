"""The trainer against an independent FD-Align loop written here, for beta > 0.

The reference below shares nothing with fdalign but the public determinism contract (the epoch's
data order :func:`epoch_order`, the view seed :func:`view_seed` and the dropout seed
:func:`augmentation_seed`): it encodes the prompts
itself, builds class and spurious prototypes and the SPC correction with scikit-learn directly,
deep-copies the encoder as f0, runs f0 on the same augmented batch, and writes CE, the KL (both
directions) and SGD by hand. After a few steps the trainer's weights must equal the reference's.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _synth import NoisyTensors as Augmented
from fdalign.backends import load_clip
from fdalign.data.views import view_seed
from fdalign.prototypes import build_prototypes
from fdalign.spc import SPCConfig
from fdalign.train import trainer as trainer_mod
from fdalign.train.config import TrainConfig
from fdalign.train.trainer import augmentation_seed, epoch_order, train

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy.", "a blurry {}."]
KEEP, K, SPC_SEED = 4, 2, 0
N_PER_CLASS, BATCH, EPOCHS, LR, WD = 4, 4, 2, 0.05, 5e-4


pytestmark = pytest.mark.usefixtures("one_thread")


class DropoutBackend:
    """The tiny CLIP with dropout on its image features (a stand-in for a dropout/BatchNorm backbone)."""

    def __init__(self, inner):
        self.inner = inner
        self.logit_scale = inner.logit_scale
        self.name = "tiny+dropout"
        self._encoder = nn.Sequential(inner.image_encoder, nn.Dropout(0.3))

    @property
    def image_encoder(self):
        return self._encoder

    def encode_text(self, texts, **kw):
        return self.inner.encode_text(texts, **kw)

    def to(self, device):
        self._encoder.to(device)
        return self


def _backend(tiny_openclip, dropout):
    b = load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    return DropoutBackend(b) if dropout else b


def _reference_prototypes(backend, renormalize):
    """Class prototypes [C, D] and SPC-corrected spurious prototypes [k, D], computed from scratch."""
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest

    prompts = [[t.replace("{}", c) for t in TEMPLATES] for c in CLASSES]
    feats = torch.stack([F.normalize(backend.encode_text(p), dim=-1) for p in prompts])  # [C, M, D]
    cls = F.normalize(feats.mean(dim=1), dim=-1)
    spur = F.normalize(feats.mean(dim=0), dim=-1).double().numpy()  # [M, D]
    normality = IsolationForest(random_state=SPC_SEED).fit(spur).score_samples(spur)
    kept = np.sort(np.argsort(-normality, kind="stable")[:KEEP])
    centres = torch.from_numpy(KMeans(n_clusters=K, random_state=SPC_SEED, n_init=10).fit(spur[kept]).cluster_centers_)
    centres = centres.float()
    return cls, F.normalize(centres, dim=-1) if renormalize else centres


def _kl(feat_t, feat_0, spur, scale, direction, renormalize):
    s = F.normalize(spur, dim=-1) if renormalize else spur
    log_pt = F.log_softmax(scale * F.normalize(feat_t, dim=-1) @ s.t(), dim=-1)
    log_p0 = F.log_softmax(scale * F.normalize(feat_0, dim=-1) @ s.t(), dim=-1).detach()
    if direction == "paper":  # KL(P_t || P_0) per image, mean over the batch
        return (log_pt.exp() * (log_pt - log_p0)).sum(-1).mean()
    return (log_p0.exp() * (log_p0 - log_pt)).sum() / log_pt.numel()  # KLDivLoss 'mean': over B*k


def _reference(tiny_openclip, cfg, dropout):
    backend = _backend(tiny_openclip, dropout)
    ft = backend.image_encoder
    f0 = copy.deepcopy(ft).requires_grad_(False)
    scale = backend.logit_scale
    cls, spur = _reference_prototypes(backend, cfg.spc_renormalize)
    params = list(ft.parameters())
    if cfg.head == "trainable":
        weight, bias = nn.Parameter(cls * scale), nn.Parameter(torch.zeros(len(CLASSES)))
        params += [weight, bias]
        head = lambda f: F.linear(F.normalize(f, dim=-1), weight, bias)  # noqa: E731
    else:
        weight = bias = None
        head = lambda f: scale * F.normalize(f, dim=-1) @ cls.t()  # noqa: E731
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True, weight_decay=WD)
    ds = Augmented(flip=True)
    total = EPOCHS * math.ceil(len(ds) / BATCH)
    step = 0
    for epoch in range(EPOCHS):
        torch.manual_seed(augmentation_seed(cfg.seed, epoch))
        ft.train()
        f0.train(cfg.f0_mode == "released")
        order = epoch_order(cfg.seed, epoch, len(ds))
        for b in range(0, len(order), BATCH):
            items = []
            for i in order[b : b + BATCH]:  # each view drawn from its own seed, the epoch's stream untouched
                state = torch.get_rng_state()
                torch.manual_seed(view_seed(cfg.seed, epoch, i))
                items.append(ds[i])
                torch.set_rng_state(state)
            x = torch.stack([it[0] for it in items])
            y = torch.tensor([it[1] for it in items])
            for grp in opt.param_groups:
                grp["lr"] = 0.5 * LR * (1 + math.cos(math.pi * step / total))
            feat_t = ft(x)
            with torch.no_grad():
                feat_0 = f0(x)
            loss = cfg.alpha * F.cross_entropy(head(feat_t), y) + cfg.beta * _kl(
                feat_t, feat_0, spur, scale, cfg.kl_direction, cfg.spc_renormalize
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return ft, weight, bias


CASES = {
    # the paper's setting: frozen prototype head, KL(P_t || P_0), deterministic f0
    "frozen-head": dict(head="frozen", kl_direction="paper", f0_mode="eval", spc_renormalize=True, dropout=False),
    # the released setting: trainable head, their KL, raw centres, f0 in train mode on a dropout encoder
    "trainable-head": dict(
        head="trainable", kl_direction="released", f0_mode="released", spc_renormalize=False, dropout=True
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_equals_independent_fdalign_loop(tiny_openclip, tmp_path, case):
    opts = dict(CASES[case])
    dropout = opts.pop("dropout")
    cfg = TrainConfig(
        shots=N_PER_CLASS,
        epochs=EPOCHS,
        batch_size=BATCH,
        num_workers=0,
        device="cpu",
        progress=False,
        tensorboard=False,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=WD,
        wd_skip_norm_bias=False,
        lr=LR,
        warmup_steps=0,
        selection="last",
        alpha=0.7,
        beta=2.5 if opts["kl_direction"] == "paper" else 40.0,
        spc=True,
        spc_keep=KEEP,
        spc_k=K,
        spc_seed=SPC_SEED,
        **opts,
    )
    backend = _backend(tiny_openclip, dropout)
    protos = build_prototypes(
        backend,
        CLASSES,
        TEMPLATES,
        cache_dir=False,
        spc=SPCConfig(keep=KEEP, k=K, seed=SPC_SEED, renormalize=cfg.spc_renormalize),
    )
    val = torch.utils.data.TensorDataset(torch.randn(3, 3, 32, 32), torch.arange(3))
    res = train(backend, Augmented(flip=True), val, protos, cfg, tmp_path)

    ref_ft, ref_w, ref_b = _reference(tiny_openclip, cfg, dropout)
    moved = 0.0
    pretrained = _backend(tiny_openclip, dropout).image_encoder.state_dict()
    for k, v in ref_ft.state_dict().items():
        torch.testing.assert_close(res.encoder.state_dict()[k], v, rtol=1e-4, atol=2e-6, msg=lambda m: f"{k}: {m}")
        moved = max(moved, (v - pretrained[k]).abs().max().item())
    assert moved > 1e-3  # the comparison is not between two untrained models
    if ref_w is not None:
        torch.testing.assert_close(res.head.weight.detach(), ref_w.detach(), rtol=1e-4, atol=2e-6)
        torch.testing.assert_close(res.head.bias.detach(), ref_b.detach(), rtol=1e-4, atol=2e-6)
        assert not torch.allclose(ref_w, res.zeroshot_head.weight)  # the head did learn


def test_kl_matters_to_the_reference(tiny_openclip, tmp_path):
    """Guards the guard: without the KL term the reference lands elsewhere, so the test above can fail."""
    cfg = TrainConfig(
        seed=1, alpha=0.7, beta=2.5, head="frozen", kl_direction="paper", f0_mode="eval", spc_renormalize=True
    )
    with_kl, _, _ = _reference(tiny_openclip, cfg, dropout=False)
    without, _, _ = _reference(tiny_openclip, TrainConfig(seed=1, alpha=0.7, beta=0.0), dropout=False)
    diff = max((a - b).abs().max().item() for a, b in zip(with_kl.state_dict().values(), without.state_dict().values()))
    assert diff > 1e-4


@pytest.mark.parametrize("mode", ["eval", "released"])
def test_f0_mode_is_what_the_config_says(tiny_openclip, tmp_path, monkeypatch, mode):
    """eval: f0 runs deterministically (dropout off) while ft trains; released: f0 in train mode."""
    seen = []
    real = trainer_mod._frozen_copy

    def spy(encoder, f0_mode="eval", dtype=None):
        f0 = real(encoder, f0_mode, dtype)
        f0.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
        assert f0 is not encoder and all(p is not q for p, q in zip(f0.parameters(), encoder.parameters()))
        return f0

    monkeypatch.setattr(trainer_mod, "_frozen_copy", spy)
    backend = _backend(tiny_openclip, dropout=True)
    protos = build_prototypes(backend, CLASSES, TEMPLATES, cache_dir=False, spc=SPCConfig(keep=KEEP, k=K))
    cfg = TrainConfig(
        shots=N_PER_CLASS,
        epochs=1,
        batch_size=BATCH,
        num_workers=0,
        device="cpu",
        progress=False,
        tensorboard=False,
        beta=1.0,
        spc_keep=KEEP,
        spc_k=K,
        f0_mode=mode,
        lr=1e-3,
    )
    val = torch.utils.data.TensorDataset(torch.randn(3, 3, 32, 32), torch.arange(3))
    train(backend, Augmented(flip=True), val, protos, cfg, tmp_path)
    assert seen and all(t == (mode == "released") for t in seen)
    with pytest.raises(Exception, match="f0_mode"):
        TrainConfig(f0_mode="train").validate()
