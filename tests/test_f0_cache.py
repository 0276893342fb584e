"""Views that depend on (seed, epoch, index) only, and the f0 cache built on them: read back bitwise,
shared by runs that vary only what f0 does not see, recomputed when anything it depends on changes."""

import pytest
import torch
from torch.utils.data import DataLoader

from _synth import NoisyTensors as Augmented
from fdalign.backends import load_clip
from fdalign.data.views import SeededViews, view_seed
from fdalign.prototypes import build_prototypes
from fdalign.spc import SPCConfig
from fdalign.train import trainer as trainer_mod
from fdalign.train.config import TrainConfig
from fdalign.train.trainer import train

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy.", "a blurry {}."]
EPOCHS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def test_views_are_a_function_of_seed_epoch_index_whatever_the_workers():
    views = SeededViews(Augmented(), seed=5)
    views.set_epoch(3)
    by_workers = {}
    for workers in (0, 2):
        got = {}
        for x, _, idx in DataLoader(views, batch_size=5, shuffle=False, num_workers=workers):
            got.update({int(i): xi for i, xi in zip(idx, x)})
        by_workers[workers] = got
    for i in range(12):
        assert torch.equal(by_workers[0][i], by_workers[2][i]), i
        torch.manual_seed(view_seed(5, 3, i))  # the documented recipe, by hand
        assert torch.equal(by_workers[0][i], Augmented()[i][0])
    assert not torch.equal(by_workers[0][0], by_workers[0][1])
    views.set_epoch(4)
    assert not torch.equal(views[0][0], by_workers[0][0])  # another epoch, another view
    state = torch.get_rng_state()
    views[0]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone


def _backend(tiny, perturb=0.0):
    b = load_clip(None, pretrained=str(tiny["checkpoint"]), model_config=tiny["config"])
    if perturb:
        with torch.no_grad():
            next(b.image_encoder.parameters()).add_(perturb)
    return b


def _protos(backend, templates=TEMPLATES, k=2):
    return build_prototypes(backend, CLASSES, templates, spc=SPCConfig(keep=4, k=k), cache_dir=False)


def _run(tiny, tmp_path, name, cache=None, data_key="data-A", templates=TEMPLATES, k=2, perturb=0.0, **kw):
    opts = dict(
        shots=4,
        epochs=EPOCHS,
        batch_size=4,
        num_workers=0,
        device="cpu",
        progress=False,
        tensorboard=False,
        lr=1e-2,
        beta=2.0,
        spc_keep=4,
        spc_k=k,
        selection="last",
        f0_cache=cache,
    )
    opts.update(kw)
    b = _backend(tiny, perturb)
    val = torch.utils.data.TensorDataset(torch.randn(3, 3, 32, 32), torch.arange(3))
    return train(b, Augmented(), val, _protos(b, templates, k), TrainConfig(**opts), tmp_path / name, data_key=data_key)


def _same(a, b):
    return all(torch.equal(v, b.encoder.state_dict()[k]) for k, v in a.encoder.state_dict().items())


def test_a_second_run_reads_f0_from_the_cache_and_ends_bitwise_equal(tiny_openclip, tmp_path, monkeypatch):
    plain = _run(tiny_openclip, tmp_path, "plain")
    first = _run(tiny_openclip, tmp_path, "first", cache=str(tmp_path / "c"))
    assert (first.f0_cache_epochs_read, first.f0_cache_epochs_written) == (0, EPOCHS)
    assert _same(plain, first)

    class NoF0(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("f0 ran although its answers were cached")

    monkeypatch.setattr(trainer_mod, "_frozen_copy", lambda enc, mode="eval", dtype=None: NoF0())
    second = _run(tiny_openclip, tmp_path, "second", cache=str(tmp_path / "c"), num_workers=2)
    assert (second.f0_cache_epochs_read, second.f0_cache_epochs_written) == (EPOCHS, 0)
    assert _same(plain, second)
    # a sweep neighbour (other beta, alpha, lr) shares the entry: f0 never sees those
    other = _run(tiny_openclip, tmp_path, "other", cache=str(tmp_path / "c"), beta=5.0, alpha=0.5, lr=3e-3)
    assert other.f0_cache_epochs_read == EPOCHS


@pytest.mark.parametrize(
    "change",
    [
        dict(seed=2),
        dict(templates=TEMPLATES[:4] + ["a sketch of a {}."]),
        dict(k=3),
        dict(perturb=1e-3),
        dict(data_key="data-B (another shots sample)"),
    ],
)
def test_changing_any_ingredient_recomputes(tiny_openclip, tmp_path, change):
    _run(tiny_openclip, tmp_path, "base", cache=str(tmp_path / "c"))
    changed = _run(tiny_openclip, tmp_path, "changed", cache=str(tmp_path / "c"), **change)
    assert (changed.f0_cache_epochs_read, changed.f0_cache_epochs_written) == (0, EPOCHS)


def test_cache_is_refused_for_a_random_f0(tiny_openclip, tmp_path):
    with pytest.warns(UserWarning, match="deterministic f0"):
        res = _run(tiny_openclip, tmp_path, "r", cache=str(tmp_path / "c"), f0_mode="released")
    assert res.f0_cache_epochs_written == 0 and not (tmp_path / "c").exists()


def test_a_view_cycle_reuses_views_and_cache_entries(tiny_openclip, tmp_path):
    res = _run(tiny_openclip, tmp_path, "cyc", cache=str(tmp_path / "c"), epochs=3, view_cycle=1)
    assert (res.f0_cache_epochs_written, res.f0_cache_epochs_read) == (1, 2)  # epochs 2, 3 re-use epoch 1's views
    assert sorted(p.name for p in next((tmp_path / "c").iterdir()).glob("epoch_*")) == ["epoch_0000.safetensors"]


def test_a_bfloat16_f0_gives_nearly_the_same_kl_and_its_own_cache_entry(tiny_openclip, tmp_path):
    """f0 in bfloat16 (the default on CUDA) only feeds a softmax: the logged KL stays close to fp32's."""
    import csv

    fp32 = _run(tiny_openclip, tmp_path, "fp32", cache=str(tmp_path / "c"), f0_precision="fp32")
    bf16 = _run(tiny_openclip, tmp_path, "bf16", cache=str(tmp_path / "c"), f0_precision="bf16")
    assert bf16.f0_cache_epochs_written == EPOCHS and fp32.f0_cache_epochs_written == EPOCHS  # separate entries

    def kl(name):
        with open(tmp_path / name / "log.csv") as f:
            return [float(r["kl"]) for r in csv.DictReader(f)]

    a, b = kl("fp32"), kl("bf16")
    assert max(a) > 1e-4 and a != b
    assert all(abs(x - y) <= 0.05 * max(a) + 1e-4 for x, y in zip(a, b))
