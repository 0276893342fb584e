"""Every method of issue 27 through the one loop (train/methods.py, train/step.py): each trains and evaluates,
and each step's loss is the method's formula, computed here independently."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import fdalign
from fdalign.losses import classification_loss, clip_contrastive, cosine_logits
from fdalign.prototypes import shuffled_spurious_prototypes, spurious_prototypes
from fdalign.train.methods import METHODS, method_spec
from fdalign.train.step import LossSettings, StepExtras, TextSide, fdalign_forward
from test_cli_train import folders  # noqa: F401 (the generated ID / OOD folders and templates)

pytestmark = pytest.mark.usefixtures("cli_env")


def _config(tiny, data, out, **kw):
    d = dict(
        model_config=str(tiny["config"]),
        pretrained=str(tiny["checkpoint"]),
        data=str(data["id"]),
        ood=[f"ood={data['ood']}"],
        shots=2,
        epochs=1,
        batch_size=3,
        num_workers=0,
        templates=str(data["templates"]),
        spc_keep=3,
        spc_k=2,
        wiseft_alphas=[0.0, 0.5, 1.0],
        device="cpu",
        lr=1e-3,
        beta=1.0,
        progress=False,
        tensorboard=False,
        out=str(out),
    )
    d.update(kw)
    return fdalign.TrainConfig(**d)


def _log(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "method, extra",
    [
        ("fine-tune", {}),
        ("logit-kd", {}),
        ("feature-kd", {}),
        ("l2-sp", {}),
        ("flyp", {}),
        ("clip-lora", {}),
        ("fd-align", {"spurious": "shuffled"}),
        ("fd-align", {"spurious": "random"}),
    ],
)
def test_every_method_trains_and_reports(tiny_openclip, folders, tmp_path, method, extra):  # noqa: F811
    out = tmp_path / "run"
    cfg = _config(tiny_openclip, folders, out, method=method, **extra)
    if method == "clip-lora":  # its authors' settings (LoRA on both towers), the tests' short schedule
        cfg = fdalign.TrainConfig.for_method(
            method, **{k: v for k, v in cfg.to_dict().items() if k not in METHODS[method].defaults and k != "method"}
        )
        assert cfg.trainable == "lora" and cfg.lora_rank == 2
    run = fdalign.finetune(cfg)
    assert run.config.method == method
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test", "ood"} <= set(metrics["metrics"] if "metrics" in metrics else metrics)
    rows = _log(out)
    assert rows and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    reg = [float(r["kl"]) for r in rows]
    if method_spec(method).regulariser == "none" or method == "fine-tune":
        assert all(v == 0.0 for v in reg)
    elif method == "l2-sp":  # theta0 = the weights before the first step: 0 there, then the distance travelled
        assert reg[0] == 0.0 and reg[-1] > 0, reg
    else:
        assert any(v > 0 for v in reg), reg


# ----------------------------------------------------------------------------------------------
# one step of each method against its formula, written out here


def _enc(seed=0, d_in=6, d=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d_in, d))


def _batch(b=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 2, 3, generator=g), torch.tensor([0, 1, 2, 1, 0])[:b]


def test_logit_kd_step_is_ce_plus_class_kl_toward_f0():
    ft, f0 = _enc(0), _enc(1)  # f0 a different network: the KL is not zero
    protos = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    images, labels = _batch()
    head = lambda f: cosine_logits(f, protos, 10.0)  # noqa: E731
    s = LossSettings(beta=0.7, scale=10.0, regulariser="logit-kd")
    loss, parts = fdalign_forward(ft, f0, head, images, labels, protos, s)
    zt, z0 = head(ft(images)), head(f0(images)).detach()
    p_t, log_t, log_0 = zt.softmax(-1), zt.log_softmax(-1), z0.log_softmax(-1)
    kl = (p_t * (log_t - log_0)).sum(-1).mean()  # KL(P_class(ft) || P_class(f0)), fine-tuned side first
    want = classification_loss(zt, labels) + 0.7 * kl
    assert torch.allclose(loss, want, atol=1e-6) and torch.allclose(parts["kl"], kl, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in f0.parameters())  # the frozen side only gives a target


def test_feature_kd_step_and_l2_sp_step():
    ft, f0 = _enc(0), _enc(1)
    images, labels = _batch()
    protos = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    head = lambda f: cosine_logits(f, protos, 10.0)  # noqa: E731
    loss, _ = fdalign_forward(ft, f0, head, images, labels, None, LossSettings(beta=2.0, regulariser="feature-kd"))
    cos = torch.nn.functional.cosine_similarity(ft(images), f0(images), dim=-1)
    assert torch.allclose(loss, classification_loss(head(ft(images)), labels) + 2.0 * (1 - cos).mean(), atol=1e-6)
    start = [p.detach().clone() + 0.1 for p in ft.parameters()]
    extras = StepExtras(params=list(ft.parameters()), start=start)
    loss, parts = fdalign_forward(
        ft, None, head, images, labels, None, LossSettings(beta=3.0, regulariser="l2-sp"), None, extras
    )
    sq = sum(float(((p - q) ** 2).sum()) for p, q in zip(ft.parameters(), start))
    assert parts["kl"].item() == pytest.approx(sq, rel=1e-5)
    assert loss.item() == pytest.approx(classification_loss(head(ft(images)), labels).item() + 3.0 * sq, rel=1e-5)


class _CaptionTower(torch.nn.Module):
    """Tokens ``[N, 2]`` = (class, template) -> a feature that names the class, plus a template-dependent part."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)

    def forward(self, tokens):
        return self.emb(tokens[:, 0]) + 0.1 * self.emb(tokens[:, 1] + 5)


def test_flyp_step_pairs_each_image_with_a_caption_of_its_own_class():
    ft = _enc(0)
    tower = _CaptionTower()
    c, t = 3, 4
    tokens = torch.stack([torch.tensor([[k, j] for j in range(t)]) for k in range(c)])  # [C, T, 2]
    images, labels = _batch()
    text = TextSide(tower, tokens, torch.Generator().manual_seed(5))
    s = LossSettings(beta=0.0, scale=10.0, regulariser="none", objective="contrastive")
    loss, _ = fdalign_forward(ft, None, None, images, labels, None, s, None, StepExtras(text=text))
    j = torch.randint(t, (labels.shape[0],), generator=torch.Generator().manual_seed(5))
    captions = torch.stack([tokens[int(y), int(i)] for y, i in zip(labels, j)])  # image b <-> its class's caption
    assert bool((captions[:, 0] == labels).all())
    want = clip_contrastive(ft(images), tower(captions), 10.0)
    assert torch.allclose(loss, want, atol=1e-6)
    # and the captions the step drew name each image's own class
    drawn = TextSide(tower, tokens, torch.Generator().manual_seed(5)).captions(labels)
    assert torch.equal(drawn[:, 0], labels)


def test_clip_lora_head_uses_prototypes_of_the_text_tower_as_it_is_now():
    tower = _CaptionTower()
    tokens = torch.stack([torch.tensor([[k, 0]]) for k in range(3)])  # one prompt per class
    text = TextSide(tower, tokens)
    before = text.prototypes().detach().clone()
    want = torch.nn.functional.normalize(tower(tokens[:, 0]), dim=-1)
    assert torch.allclose(before, want.detach(), atol=1e-6)
    text.prototypes().sum().backward()
    assert tower.emb.weight.grad is not None  # gradients reach the text tower through the prototypes


# ----------------------------------------------------------------------------------------------
# the spurious-prototype ablations


def test_shuffled_spurious_prototypes_mix_templates_and_keep_the_statistics():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(5, 7, 8, generator=g), dim=-1)  # [C, M, D]
    real, shuf = spurious_prototypes(feats), shuffled_spurious_prototypes(feats, seed=3)
    assert shuf.shape == real.shape
    # no shuffled prototype is a real one (a permutation shared by every class would only reorder them)
    dist = torch.cdist(shuf, real)
    assert float(dist.min()) > 1e-3, dist.min()
    # each shuffled prototype is the mean of one prompt of every class: with one-hot "prompts" (class c, template j
    # -> unit vector c*M + j) the mean shows which prompts went in, and every prompt is used exactly once
    c, m = 3, 4
    onehot = torch.eye(c * m).reshape(c, m, c * m)
    used = shuffled_spurious_prototypes(onehot, seed=1) > 0  # [M, C*M]
    assert torch.equal(used.sum(0), torch.ones(c * m, dtype=torch.long))
    for j in range(m):
        classes = [int(i) // m for i in used[j].nonzero()]
        assert sorted(classes) == list(range(c))
    templates = [[int(i) % m for i in used[j].nonzero()] for j in range(m)]
    assert any(len(set(t)) > 1 for t in templates)  # templates mixed inside a prototype


def test_spurious_ablations_change_the_run_prototypes(tiny_openclip, folders):  # noqa: F811
    from fdalign.backends import load_clip
    from fdalign.prompts import load_templates
    from fdalign.prototypes import build_prototypes

    backend = load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    templates = load_templates(str(folders["templates"]))
    names = ["red apple", "blue sky", "green leaf"]
    real = build_prototypes(backend, names, templates, spc=None, cache_dir=False)
    for kind in ("shuffled", "random"):
        other = build_prototypes(backend, names, templates, spc=None, cache_dir=False, spurious_kind=kind)
        assert other.spurious_prototypes.shape == real.spurious_prototypes.shape
        assert float(torch.cdist(other.spurious_prototypes, real.spurious_prototypes).min()) > 1e-4
        assert torch.equal(other.class_prototypes, real.class_prototypes)  # only the spurious side changes


def test_logit_kd_runs_its_kl_on_the_class_prototypes(tiny_openclip, folders, tmp_path, monkeypatch):  # noqa: F811
    """The trainer hands the step the class prototypes (the head's), not the spurious ones, for logit-kd."""
    from fdalign.train import trainer as trainer_mod

    seen, real = [], trainer_mod.fdalign_forward

    def spy(ft, f0, head, images, labels, spurious, s, *rest):
        seen.append((spurious.detach().cpu().clone(), s.regulariser))
        return real(ft, f0, head, images, labels, spurious, s, *rest)

    monkeypatch.setattr(trainer_mod, "fdalign_forward", spy)
    run = fdalign.finetune(_config(tiny_openclip, folders, tmp_path / "run", method="logit-kd"))
    want = torch.nn.functional.normalize(run.head.prototypes.detach().cpu(), dim=-1)
    assert seen and all(r == "logit-kd" for _, r in seen)
    assert all(
        p.shape == want.shape and torch.allclose(torch.nn.functional.normalize(p, dim=-1), want) for p, _ in seen
    )
