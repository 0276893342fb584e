"""The training loop: exact plain fine-tuning at beta 0, bitwise resume, the LR schedule, selection on val only,
checkpoints and the run directory."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fdalign.backends import load_clip
from fdalign.prototypes import build_prototypes
from fdalign.selection import EvalSplit, SelectionLeakError, SelectionLog, select, select_by, val_score
from fdalign.spc import SPCConfig
from fdalign.train import trainer as trainer_mod
from fdalign.train.checkpoint import flatten_optimizer_state, load_checkpoint, unflatten_optimizer_state
from fdalign.train.config import TrainConfig
from fdalign.train.run import load_model
from fdalign.train.trainer import cosine_lr, epoch_seed, train

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy.", "a blurry {}."]


pytestmark = pytest.mark.usefixtures("one_thread")


def _backend(tiny_openclip):
    return load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])


@pytest.fixture(scope="module")
def protos(tiny_openclip):
    return build_prototypes(_backend(tiny_openclip), CLASSES, TEMPLATES, spc=SPCConfig(keep=4, k=2), cache_dir=False)


def _tensors(n_per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_per_class * len(CLASSES), 3, 32, 32, generator=g)
    y = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    return TensorDataset(x, y)


def _cfg(**kw):
    base = dict(
        shots=4,
        epochs=2,
        batch_size=4,
        num_workers=0,
        device="cpu",
        progress=False,
        spc_keep=4,
        spc_k=2,
        tensorboard=False,
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------


def test_cosine_schedule_matches_closed_form():
    base, total, warm = 0.1, 20, 4
    for s in range(total):
        if s < warm:
            want = base * (s + 1) / warm
        else:
            want = 0.5 * base * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        assert cosine_lr(s, total, warm, base) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert cosine_lr(0, 10, 0, 1.0) == 1.0
    assert cosine_lr(5, 10, 0, 1.0, min_lr=0.2) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 2)))


def test_logged_lr_follows_schedule(tiny_openclip, protos, tmp_path):
    ds = _tensors()  # 12 images, batch 4 -> 3 steps per epoch, 6 in all
    train(_backend(tiny_openclip), ds, _tensors(1, seed=1), protos, _cfg(warmup_steps=2, lr=0.01), tmp_path)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "lr", "ce", "kl", "loss", "images_per_s"]
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    for i, r in enumerate(rows):
        want = 0.01 * (i + 1) / 2 if i < 2 else 0.5 * 0.01 * (1 + math.cos(math.pi * (i - 2) / 4))
        assert float(r["lr"]) == pytest.approx(want)
        assert float(r["loss"]) == pytest.approx(float(r["ce"]) + float(r["kl"]), rel=1e-5)
        assert float(r["kl"]) >= -1e-6


def test_beta_zero_is_exactly_plain_fine_tuning(tiny_openclip, protos, tmp_path, monkeypatch):
    """A hand-written CE-only loop with the same data order and optimiser must give the same bits."""
    ds, val = _tensors(), _tensors(1, seed=1)
    cfg = _cfg(
        beta=0.0,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        wd_skip_norm_bias=False,
        warmup_steps=1,
        lr=0.05,
        epochs=2,
    )

    def no_f0(_):
        raise AssertionError("beta = 0 must not build the frozen encoder")

    monkeypatch.setattr(trainer_mod, "_frozen_copy", no_f0)
    res = train(_backend(tiny_openclip), ds, val, protos, dataclass_replace(cfg, selection="last"), tmp_path / "a")

    # the reference: plain CE fine-tuning of the image tower with a cosine (zero-shot prototype) head
    ref = _backend(tiny_openclip).image_encoder
    ref.train()
    scale = _backend(tiny_openclip).logit_scale
    P = F.normalize(protos.class_prototypes, dim=-1)
    opt = torch.optim.SGD(list(ref.parameters()), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total, step = 6, 0
    for epoch in range(2):
        # the documented order: a permutation from a generator seeded with epoch_seed(seed, epoch)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
        for x, y in DataLoader(torch.utils.data.Subset(ds, order.tolist()), batch_size=4):
            lr = 0.05 * (step + 1) / 1 if step < 1 else 0.5 * 0.05 * (1 + math.cos(math.pi * (step - 1) / (total - 1)))
            for grp in opt.param_groups:
                grp["lr"] = lr
            logits = scale * F.normalize(ref(x), dim=-1) @ P.t()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    got = res.encoder.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(got[k], v), k

    # and the KL term really changes the result (so this test can fail)
    monkeypatch.undo()
    res1 = train(
        _backend(tiny_openclip), ds, val, protos, dataclass_replace(cfg, beta=1.0, selection="last"), tmp_path / "b"
    )
    assert any(not torch.equal(res1.encoder.state_dict()[k], v) for k, v in ref.state_dict().items())


def dataclass_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_resume_after_kill_is_bitwise_identical(tiny_openclip, protos, tmp_path):
    from _synth import make_imagefolder
    from fdalign.data import ImageDataset, fewshot_val, open_dataset, sample_kshot

    root = make_imagefolder(
        tmp_path / "data", CLASSES, n_train=4, n_test=1, n_val=4, size=32
    )  # test/ keeps val/ as val
    splits = open_dataset(root)
    tr, va = sample_kshot(splits["train"], 4, 1), fewshot_val(splits, 4, 1)
    cfg = _cfg(epochs=3, head="trainable", optimizer="adamw", warmup_steps=2, beta=2.0, spc=True)

    def datasets(backend):  # random crops + flips: the augmentation RNG must be replayed too
        return ImageDataset(tr, backend.preprocess_train(scale=(0.3, 1.0), hflip=True)), ImageDataset(
            va, backend.preprocess_eval()
        )

    b = _backend(tiny_openclip)
    full = train(b, *datasets(b), protos, cfg, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_first(epoch, _top1):
        if epoch == 1:
            raise Killed

    b = _backend(tiny_openclip)
    with pytest.raises(Killed):
        train(b, *datasets(b), protos, cfg, tmp_path / "resumed", on_epoch_end=kill_after_first)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint").epoch == 1
    b = _backend(tiny_openclip)  # a fresh process would load the pretrained weights again
    resumed = train(b, *datasets(b), protos, dataclass_replace(cfg, resume=True), tmp_path / "resumed")

    assert resumed.val_top1 == full.val_top1 and resumed.best_epoch == full.best_epoch
    for name, (a, c) in {"encoder": (full.encoder, resumed.encoder), "head": (full.head, resumed.head)}.items():
        sa, sc = a.state_dict(), c.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sc[k]), f"{name}.{k}"
    # the last-epoch checkpoints agree as well (weights and optimiser state)
    ca, cb = load_checkpoint(tmp_path / "full" / "checkpoint"), load_checkpoint(tmp_path / "resumed" / "checkpoint")
    for k, v in ca.encoder.items():
        assert torch.equal(v, cb.encoder[k]), k
    for idx, st in ca.optimizer["state"].items():
        for k, v in st.items():
            assert torch.equal(v, cb.optimizer["state"][idx][k])

    def losses(run):
        with open(tmp_path / run / "log.csv") as f:
            return [(r["step"], r["lr"], r["ce"], r["kl"]) for r in csv.DictReader(f)]

    assert losses("full") == losses("resumed")


def test_resume_refuses_other_settings_and_fresh_run_refuses_existing(tiny_openclip, protos, tmp_path):
    from fdalign.errors import FDAlignError

    ds, val = _tensors(), _tensors(1, seed=1)
    train(_backend(tiny_openclip), ds, val, protos, _cfg(epochs=1), tmp_path)
    with pytest.raises(FDAlignError, match="already holds"):
        train(_backend(tiny_openclip), ds, val, protos, _cfg(epochs=1), tmp_path)
    with pytest.raises(FDAlignError, match="different settings"):
        train(_backend(tiny_openclip), ds, val, protos, _cfg(epochs=2, lr=0.5, resume=True), tmp_path)


def test_linear_probe_keeps_encoder_and_best_model_file(tiny_openclip, protos, tmp_path):
    ds, val = _tensors(), _tensors(2, seed=1)
    b = _backend(tiny_openclip)
    before = _params(b.image_encoder)
    res = train(b, ds, val, protos, _cfg(mode="linear-probe", epochs=2, lp_lr=0.5), tmp_path)
    for k, v in res.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res.head.trainable and not torch.equal(res.head.weight, res.zeroshot_head.weight)
    saved = load_model(tmp_path / "model" / "best.safetensors")
    assert saved.metadata["epoch"] == res.best_epoch
    assert torch.equal(saved.head.weight, res.head.weight.detach().cpu())
    assert saved.metadata["classnames"] == CLASSES
    sel = SelectionLog.load(tmp_path / "selection.json").entries["epoch"]
    assert sel["chosen"] == res.best_epoch and sel["scores"] == {str(i + 1): v for i, v in enumerate(res.val_top1)}
    assert res.best_val_top1 == max(res.val_top1)


def test_lp_ft_runs_both_phases(tiny_openclip, protos, tmp_path):
    ds, val = _tensors(), _tensors(1, seed=1)
    b = _backend(tiny_openclip)
    before = _params(b.image_encoder)
    res = train(b, ds, val, protos, _cfg(mode="lp-ft", lp_epochs=1, epochs=1, selection="last"), tmp_path)
    assert len(res.val_top1) == 2 and res.steps == 6
    assert any(not torch.equal(v, before[k]) for k, v in res.encoder.state_dict().items())
    ck = load_checkpoint(tmp_path / "checkpoint")
    assert ck.meta["phase"] == "fdalign" and ck.epoch == 2


# ----------------------------------------------------------------------------------------------
# selection never sees the test set


def test_selection_refuses_test_and_ood_splits(tiny_openclip, protos, tmp_path):
    ds = _tensors(1)
    for role in ("test", "ood", "train"):
        split = EvalSplit(ds, role)
        with pytest.raises(SelectionLeakError):
            val_score(split, lambda d: 1.0)
        with pytest.raises(SelectionLeakError):
            select("epoch", {1: 0.5}, split)
        with pytest.raises(SelectionLeakError):
            select_by("alpha", [0.0, 1.0], lambda c, d: c, split)
    with pytest.raises(SelectionLeakError):
        select("epoch", {1: 0.5}, ds)  # a bare dataset says nothing about its role
    with pytest.raises(SelectionLeakError):
        train(_backend(tiny_openclip), _tensors(), EvalSplit(ds, "test"), protos, _cfg(epochs=1), tmp_path)


def test_select_records_choice_and_breaks_ties_to_first():
    split = EvalSplit(_tensors(1), "val", "val (K-shot of val/, 3 images)")
    log = SelectionLog()
    assert select("epoch", {1: 50.0, 2: 75.0, 3: 75.0}, split, log) == 2
    chosen, scores = select_by("wiseft_alpha", [0.0, 0.5, 1.0], lambda a, d: {0.0: 1, 0.5: 3, 1.0: 2}[a], split, log)
    assert chosen == 0.5 and scores == {0.0: 1.0, 0.5: 3.0, 1.0: 2.0}
    assert log.entries["epoch"] == {
        "chosen": 2,
        "on": "val (K-shot of val/, 3 images)",
        "metric": "top1",
        "score": 75.0,
        "scores": {"1": 50.0, "2": 75.0, "3": 75.0},
    }


def test_optimizer_state_flatten_round_trip():
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, rest = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {f"optim.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq")}
    back = unflatten_optimizer_state(tensors, rest)
    opt2 = torch.optim.AdamW(m.parameters(), lr=0.1)
    opt2.load_state_dict(back)
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(v, opt2.state_dict()["state"][i][k])


def test_lp_ft_starts_from_the_best_probe_head_and_selects_only_fdalign_epochs(
    tiny_openclip, protos, tmp_path, monkeypatch
):
    """As released: the FD-Align phase loads the probe's best-on-val head, and only its own epochs compete."""
    scripted = iter([50.0, 90.0, 60.0, 10.0, 20.0])  # probe epochs 1-3 (best: 2), FD-Align epochs 4-5 (best: 5)
    monkeypatch.setattr(trainer_mod, "_val_top1", lambda *a, **k: next(scripted))
    heads = {}

    def snapshot(epoch, _):
        heads[epoch] = load_checkpoint(tmp_path / "checkpoint").head

    # lr 0 in the FD-Align phase: the head it ends with is the head it started from
    cfg = _cfg(mode="lp-ft", lp_epochs=3, epochs=2, lp_lr=0.5, lr=0.0, selection="best")
    res = train(_backend(tiny_openclip), _tensors(), _tensors(1, seed=1), protos, cfg, tmp_path, on_epoch_end=snapshot)
    assert not torch.equal(heads[2]["weight"], heads[3]["weight"])  # the probe kept learning after its best epoch
    assert torch.equal(res.head.weight.detach(), heads[2]["weight"])
    assert torch.equal(res.head.bias.detach(), heads[2]["bias"])
    assert res.best_epoch == 5 and res.best_val_top1 == 20.0
    sel = SelectionLog.load(tmp_path / "selection.json").entries
    assert sel["lp_epoch"]["chosen"] == 2 and sel["lp_epoch"]["scores"] == {"1": 50.0, "2": 90.0, "3": 60.0}
    assert sel["epoch"]["chosen"] == 5 and sel["epoch"]["scores"] == {"4": 10.0, "5": 20.0}


def test_lp_ft_killed_at_the_phase_boundary_resumes_to_the_same_weights(tiny_openclip, protos, tmp_path):
    cfg = _cfg(mode="lp-ft", lp_epochs=2, epochs=1, lp_lr=0.5, beta=1.0, selection="best")
    full = train(_backend(tiny_openclip), _tensors(), _tensors(1, seed=1), protos, cfg, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_probe(epoch, _):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(
            _backend(tiny_openclip),
            _tensors(),
            _tensors(1, seed=1),
            protos,
            cfg,
            tmp_path / "r",
            on_epoch_end=kill_after_probe,
        )
    res = train(
        _backend(tiny_openclip),
        _tensors(),
        _tensors(1, seed=1),
        protos,
        dataclass_replace(cfg, resume=True),
        tmp_path / "r",
    )
    assert res.best_epoch == full.best_epoch == 3
    for k, v in full.head.state_dict().items():
        assert torch.equal(v, res.head.state_dict()[k]), k
    for k, v in full.encoder.state_dict().items():
        assert torch.equal(v, res.encoder.state_dict()[k]), k
