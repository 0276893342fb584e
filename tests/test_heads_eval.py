"""`fdalign eval --heads` end to end: a real (1-epoch) FD-Align run on generated folders, its cache heads
on zero-shot CLIP and on the fine-tuned encoder side by side, and the plain-model form."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from _synth import class_colour, make_image, make_imagefolder
from fdalign.cli import build_parser, main

CLASSES = ["red apple", "green leaf", "blue sky"]
HEADS_YAML = """\
tip: {alpha: "0.5:3:4", beta: "1:6:3", fit: {epochs: 2, batch_size: 4}}
ape: {channels: "0.5,1", alpha: "0.5,2", beta: "1,5", gamma: "0,1", fit: {epochs: 2, batch_size: 4}}
chunk: 5
"""


pytestmark = pytest.mark.usefixtures("cli_env")


def _noisy_folder(root, noise, n, seed):
    """Class folders of the ID colours under heavy noise, so that accuracies land between 0 and 100."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name.replace(" ", "_")).mkdir(parents=True)
        for i in range(n):
            make_image(class_colour(c, len(CLASSES)), 32, rng, noise).save(root / name.replace(" ", "_") / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tiny_openclip, tmp_path_factory):
    d = tmp_path_factory.mktemp("heads_eval")
    idf = make_imagefolder(d / "id", CLASSES, n_train=3, n_test=0, n_val=2, seed=0)
    _noisy_folder(idf / "test", noise=110.0, n=8, seed=2)
    ood = _noisy_folder(d / "ood", noise=160.0, n=4, seed=3)
    (d / "heads.yaml").write_text(HEADS_YAML)
    run = d / "run"
    rc = main(
        [
            "train",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(idf),
            "--shots",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--templates",
            "tip7",
            "--spc-keep",
            "5",
            "--spc-k",
            "2",
            "--wiseft-alphas",
            "0",
            "1",
            "--device",
            "cpu",
            "--lr",
            "1e-3",
            "--no-progress",
            "--ood",
            f"shifted={ood}",
            "--out",
            str(run),
        ]
    )
    assert rc == 0
    return {"id": idf, "ood": ood, "run": run, "yaml": d / "heads.yaml"}


def _dense_tip_top1(encoder, prototypes, scale, cache_ds, test_ds, alpha, beta):
    """Tip-Adapter top-1 computed whole: encode image by image, the paper's formula with one-hot L."""
    encoder.eval()
    with torch.no_grad():

        def enc(ds):
            xs, ys = zip(*(ds[i] for i in range(len(ds))))
            return F.normalize(encoder(torch.stack(xs)).double(), dim=-1), torch.tensor(ys)

        keys, ky = enc(cache_ds)
        f, y = enc(test_ds)
    w = F.normalize(prototypes.double(), dim=-1)
    logits = scale * f @ w.t() + alpha * torch.exp(-beta * (1 - f @ keys.t())) @ F.one_hot(ky, len(w)).double()
    return 100.0 * (logits.argmax(1) == y).double().mean().item()


def _parse(chosen: str) -> dict:
    return {k: float(v) for k, v in (p.split("=") for p in chosen.split(" (")[0].split(", "))}


def test_eval_run_with_heads_prints_the_side_by_side_table(trained, tmp_path, capsys, monkeypatch):
    import fdalign.eval.features as features  # the cache-aware paths end here
    import fdalign.eval.heads as heads_mod

    calls = []
    for mod in (heads_mod, features):
        real = mod.extract_features

        def counting(encoder, dataset, real=real, **kw):
            calls.append((id(encoder), len(dataset)))
            return real(encoder, dataset, **kw)

        monkeypatch.setattr(mod, "extract_features", counting)
    import fdalign.eval.pipeline as pipeline  # the test / OOD sets: every encoder in one pass

    one_pass = pipeline._one_pass

    def counting_pass(encoders, dataset, *a):
        calls.extend((id(e), len(dataset)) for e in encoders)
        return one_pass(encoders, dataset, *a)

    monkeypatch.setattr(pipeline, "_one_pass", counting_pass)
    run = trained["run"]
    rc = main(
        [
            "eval",
            str(run),
            "--heads",
            "zeroshot,tip,tip-f,ape,ape-t",
            "--heads-config",
            str(trained["yaml"]),
            "--device",
            "cpu",
            "--batch-size",
            "4",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    print(printed)
    rows = [
        "Zero-shot",
        "Zero-shot + FD-Align",
        "Tip",
        "Tip + FD-Align",
        "Tip-F",
        "Tip-F + FD-Align",
        "APE",
        "APE + FD-Align",
        "APE-T",
        "APE-T + FD-Align",
    ]
    for r in rows:
        assert f"| {r} |" in printed
    doc = json.loads((run / "eval-heads" / "metrics.json").read_text())
    assert list(doc["metrics"]) == ["test", "shifted"] and list(doc["metrics"]["test"]) == rows
    # each split once per encoder: cache (6), val (6), test (24), shifted (12), for 2 encoders
    assert sorted(n for _, n in calls) == sorted([6, 6, 24, 12] * 2) and len({e for e, _ in calls}) == 2

    sel = doc["selection"]
    val_desc = f"val (6 images of {run}/splits/val.json)"
    for what in (
        "Tip: beta, alpha",
        "Tip + FD-Align: beta, alpha",
        "Tip-F + FD-Align: epoch",
        "APE: Q, beta, gamma, alpha",
        "APE-T + FD-Align: epoch",
        "APE-T + FD-Align: beta, alpha",
    ):
        assert sel[what]["on"] == val_desc
    assert sel["Tip: beta, alpha"]["candidates"] == 4 * 3
    report = (run / "eval-heads" / "report.md").read_text()
    assert "chosen on " + val_desc in report and "never used to select" in report

    # the Tip rows equal the paper's formula computed whole, on each encoder, with the chosen alpha, beta
    from fdalign.data import ImageDataset, load_split
    from fdalign.train.run import load_run

    loaded = load_run(run)
    tf = loaded.backend.preprocess_eval()
    cache = ImageDataset(load_split(run / "splits" / "train.json"), tf)
    from fdalign.data import open_dataset

    protos, scale = loaded.zeroshot_head.prototypes, loaded.zeroshot_head.scale
    for name, root in (("test", trained["id"]), ("shifted", trained["ood"])):
        split = open_dataset(str(root))["test"]
        assert split.classnames == loaded.classnames
        for row, encoder in (("Tip", loaded.zero_shot_encoder()), ("Tip + FD-Align", loaded.backend.image_encoder)):
            c = _parse(sel[f"{row}: beta, alpha"]["chosen"])
            want = _dense_tip_top1(encoder, protos, scale, cache, ImageDataset(split, tf), c["alpha"], c["beta"])
            assert doc["metrics"][name][row]["top1"] == pytest.approx(want)
    assert 0 < doc["metrics"]["shifted"]["Tip"]["top1"] < 100  # a case the check can get wrong

    # the Zero-shot rows are plain `fdalign eval RUN`'s zero-shot row and the prototypes on the tuned encoder
    assert main(["eval", str(run), "--device", "cpu", "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())["metrics"]
    for s in ("test", "shifted"):
        assert doc["metrics"][s]["Zero-shot"]["top1"] == pytest.approx(plain[s]["zero-shot"]["top1"])


def test_eval_model_with_heads_samples_the_cache_from_train(tiny_openclip, trained, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "tiny",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(trained["id"]),
            "--shots",
            "2",
            "--seed",
            "2",
            "--heads",
            "tip,ape",
            "--heads-config",
            str(trained["yaml"]),
            "--templates",
            "tip7",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["metrics"]["test"]) == ["Tip", "APE"]
    sel = doc["selection"]
    assert sel["cache"].startswith(f"2-shot of {trained['id']} train split, seed 2 (6 images)")
    assert sel["Tip: beta, alpha"]["on"] == "val (2-shot of val/, seed 2, 6 images)"


def test_bad_heads_and_config_exit_2(trained, tmp_path, capsys):
    run = str(trained["run"])
    assert main(["eval", run, "--heads", "tip,lora", "--device", "cpu"]) == 2
    assert "unknown head lora" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("tip: {alphas: '1,2'}\n")
    assert main(["eval", run, "--heads", "tip", "--heads-config", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'tip.alphas'" in err and str(bad) in err


def test_help_shows_heads_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    text = capsys.readouterr().out
    for opt in ("--heads", "--shots", "--seed", "--heads-config"):
        assert opt in text
    assert "(default: 16)" in text


def test_each_encoder_fits_its_heads_on_its_own_features(monkeypatch):
    """evaluate_heads on two stand-in encoders: every head of encoder e sees e's cache and val features."""
    from torch.utils.data import TensorDataset

    import fdalign.eval.heads as heads_mod
    from fdalign.eval import EvalSet
    from fdalign.heads.cache import FitConfig
    from fdalign.heads.tip import TipConfig

    g = torch.Generator().manual_seed(0)
    c, d = 3, 6
    images = torch.randn(12, 4, generator=g)
    labels = torch.arange(c).repeat(4)
    enc_zs, enc_ft = torch.nn.Linear(4, d), torch.nn.Linear(4, d)
    data = heads_mod.CacheData(TensorDataset(images[:6], labels[:6]), TensorDataset(images[6:9], labels[6:9]), "v")
    seen = {}
    real = heads_mod.fit_heads

    def spy(heads, prototypes, scale, tf, ty, val, cfg, log, label, progress, views=None):
        seen[label] = (tf, val.dataset.tensors[0], val.role)
        return real(heads, prototypes, scale, tf, ty, val, cfg, log, label, progress, views)

    monkeypatch.setattr(heads_mod, "fit_heads", spy)
    cfg = heads_mod.HeadsConfig(tip=TipConfig("1,2", "1,3", FitConfig(epochs=1)))
    sets = {"test": EvalSet("test", TensorDataset(images[9:], labels[9:]))}
    metrics, sel = heads_mod.evaluate_heads(
        {"": enc_zs, "FT": enc_ft}, ["tip", "tip-f"], torch.randn(c, d), 10.0, data, sets, cfg
    )
    with torch.no_grad():
        for label, enc in (("", enc_zs), ("FT", enc_ft)):
            tf, vf, role = seen[label]
            assert torch.allclose(tf, enc(images[:6])) and torch.allclose(vf, enc(images[6:9])) and role == "val"
    assert list(metrics["test"]) == ["Tip", "Tip + FT", "Tip-F", "Tip-F + FT"]
    assert sel["Tip-F + FT: epoch"]["on"] == "v"


def test_heads_config_errors_name_the_field():
    from fdalign.errors import FDAlignError
    from fdalign.eval.heads import HeadsConfig

    for d, field in (
        ({"tip": {"fit": {"epochs": -1}}}, "tip.fit.epochs"),
        ({"ape": {"lam": 2}}, "ape.lam"),
        ({"chunk": 0}, "chunk"),
        ({"ape": {"gamma": "a,b"}}, "ape.gamma"),
        ({"ape": {"channels": "0,0.5"}}, "ape.channels"),
        ({"tip": 3}, "tip"),
        ({"ape": {"weights": [0.5]}}, "ape.weights"),
        ({"logit_scale": 0}, "logit_scale"),
        ({"tip": {"init_alpha": "x"}}, "tip.init_alpha"),
        ({"ape": {"t_channels": 0}}, "ape.t_channels"),
    ):
        with pytest.raises(FDAlignError, match=f"'{field}'"):
            HeadsConfig.from_dict(d, "h.yaml")
    cfg = HeadsConfig.from_dict({"tip": {"beta": "1,2", "fit": {"epochs": 3}}})
    assert cfg.tip.beta == "1,2" and cfg.tip.fit.epochs == 3 and cfg.tip.alpha == "0.1:3:20:open"
    assert HeadsConfig.from_dict({"ape": {"weights": [0.7, 0.3]}}).ape.weights == (0.7, 0.3)


class _Jittered(torch.utils.data.Dataset):
    """Stand-in for augmented images: each read adds noise from the global torch RNG, as transforms do."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.5 * torch.randn(self.x.shape[1]), int(self.y[i])


def test_augmented_cache_views_are_averaged_seeded_and_read_one_per_epoch():
    from torch.utils.data import TensorDataset

    import fdalign.eval.heads as heads_mod
    import fdalign.heads.cache as cache_mod

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.arange(3).repeat(2)
    enc = torch.nn.Linear(4, 5)
    data = heads_mod.CacheData(TensorDataset(x, y), TensorDataset(x, y), "v", _Jittered(x, y))
    cfg = heads_mod.HeadsConfig(views=3, view_seed=7)
    kw = dict(batch_size=4, progress=False)
    state = torch.random.get_rng_state()
    (keys, labels), views = heads_mod.encode_cache(enc, data, cfg, kw)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert views.shape == (3, 6, 5) and torch.allclose(views.norm(dim=-1), torch.ones(3, 6))
    assert torch.allclose(keys, views.mean(0)) and torch.equal(labels, y)
    # view v is seeded view_seed + v: one view from seed 8 is the second of the run above
    (_, _), one = heads_mod.encode_cache(enc, data, heads_mod.HeadsConfig(views=1, view_seed=8), kw)
    assert torch.equal(one[0], views[1])
    assert not torch.allclose(views[0], views[1])
    # Tip-F reads view (e - 1) mod V in epoch e
    from fdalign.heads.cache import FitConfig, feature_split
    from fdalign.heads.tip import TipAdapter

    head = TipAdapter(torch.randn(3, 5), 10.0, keys, labels, 1.0, 2.0, trainable=True)
    inputs = []
    head.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    cache_mod.fit_and_select_epoch(
        "e",
        head,
        [head.keys],
        views,
        labels,
        feature_split(keys, labels, "val", "v"),
        FitConfig(epochs=4, batch_size=6),
        None,
    )
    train_inputs = inputs[0::2]  # one batch per epoch, then the val scoring of that epoch
    for epoch, view in ((1, 0), (2, 1), (3, 2), (4, 0)):
        got = sorted(map(tuple, train_inputs[epoch - 1].tolist()))
        assert got == sorted(map(tuple, views[view].tolist()))


def test_fresh_views_give_every_training_epoch_its_own_draw():
    from torch.utils.data import TensorDataset

    import fdalign.eval.heads as heads_mod

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.arange(3).repeat(2)
    enc = torch.nn.Linear(4, 5)
    data = heads_mod.CacheData(TensorDataset(x, y), TensorDataset(x, y), "v", _Jittered(x, y))
    kw = dict(batch_size=4, progress=False)
    cfg = heads_mod.HeadsConfig(views=2, view_seed=3, fresh_views=True)
    (keys, _), fresh = heads_mod.encode_cache(enc, data, cfg, kw, fresh=4)
    (keys2, _), cache_views = heads_mod.encode_cache(enc, data, heads_mod.HeadsConfig(views=6, view_seed=3), kw)
    assert torch.allclose(keys, cache_views[:2].mean(0))  # the keys: the cache's 2 views
    assert torch.equal(fresh, cache_views[2:])  # then 4 further draws (seeds 5..8), one per epoch
    # the epochs to draw: those of the longest trained head asked for
    assert heads_mod._training_epochs(["tip", "ape"], cfg) == 0
    cfg.ape.fit.epochs = 30
    assert heads_mod._training_epochs(["tip-f", "ape-t"], cfg) == 30
    assert heads_mod._training_epochs(["tip-f", "ape"], cfg) == cfg.tip.fit.epochs == 20


def test_authors_preset_holds_the_published_settings(tmp_path):
    from fdalign.errors import FDAlignError
    from fdalign.eval.heads import HeadsConfig, _config
    from fdalign.heads.cache import grid_values

    imagenet = HeadsConfig.for_preset("authors", "ImageNet")
    assert (imagenet.logit_scale, imagenet.views, imagenet.fresh_views) == (100.0, 10, True)
    t, a = imagenet.tip, imagenet.ape
    assert grid_values(t.beta)[-1] == pytest.approx(0.1 + 199 * 6.9 / 200) and len(grid_values(t.beta)) == 200
    assert grid_values(t.alpha)[-1] == pytest.approx(0.1 + 19 * 2.9 / 20) and (t.init_alpha, t.init_beta) == (1.17, 1)
    assert grid_values(a.gamma) == pytest.approx((0, 0.1, 0.2, 0.3, 0.4))  # s_gamma 0.5, n_gamma 5
    assert grid_values(a.alpha)[-1] == pytest.approx(0.1 + 19 * 6.9 / 20) and a.init_alpha == 2
    assert round(float(a.channels) * 512) == 250 and a.weights == (0.7, 0.3)  # 500 of 1024 channels
    assert (a.fit.lr, a.fit.eps, a.fit.weight_decay, a.fit.epochs) == (1e-4, 1e-3, 0.1, 20)
    eurosat = HeadsConfig.for_preset("authors:EuroSAT")  # named explicitly
    assert eurosat.tip.fit.epochs == 100 and eurosat.ape.fit.epochs == 200
    assert grid_values(eurosat.ape.gamma)[-1] == pytest.approx(1.5 * 19 / 20)
    other = HeadsConfig.for_preset("authors", "my_world")  # no published row: their common grid
    assert other.ape.alpha == "0.1:7:20:open" and other.logit_scale == 100.0 and "common" in other.preset
    assert HeadsConfig.for_preset(None) == HeadsConfig()
    with pytest.raises(FDAlignError, match="heads-preset"):
        HeadsConfig.for_preset("theirs")
    with pytest.raises(FDAlignError, match="no published settings"):
        HeadsConfig.for_preset("authors:mnist")
    # --heads-config fields override the preset's
    y = tmp_path / "h.yaml"
    y.write_text("views: 0\nape: {fit: {epochs: 5}}\n")

    class Args:
        heads_preset, heads_config, data = "authors", str(y), "/data/dtd/split_zhou_DescribableTextures.json"

    cfg = _config(Args())
    assert cfg.views == 0 and cfg.ape.fit.epochs == 5 and cfg.ape.fit.weight_decay == 0.1
    assert cfg.logit_scale == 100.0 and cfg.tip.init_alpha == 2 and cfg.preset == "authors (dtd)"


def test_logit_scale_setting_replaces_the_cache_heads_scale():
    import fdalign.eval.heads as heads_mod
    from fdalign.heads.cache import feature_split

    g = torch.Generator().manual_seed(0)
    protos, keys, y = torch.randn(3, 6, generator=g), torch.randn(9, 6, generator=g), torch.arange(3).repeat(3)
    val = feature_split(keys, y, "val", "v")
    cfg = heads_mod.HeadsConfig(logit_scale=100.0)
    cfg.tip.alpha, cfg.tip.beta = "1", "2"
    got = heads_mod.fit_heads(["zeroshot", "tip"], protos, 7.0, keys, y, val, cfg)
    assert got["tip"].scale == 100.0 and got["zeroshot"].scale == 7.0


def test_zeroshot_alone_encodes_no_cache(monkeypatch):
    from torch.utils.data import TensorDataset

    import fdalign.eval.features as features  # the cache-aware paths end here
    import fdalign.eval.heads as heads_mod
    from fdalign.eval import EvalSet
    from fdalign.heads import PrototypeHead

    calls = []
    for mod in (heads_mod, features):
        real = mod.extract_features
        monkeypatch.setattr(
            mod, "extract_features", lambda e, ds, real=real, **kw: (calls.append(len(ds)), real(e, ds, **kw))[1]
        )
    import fdalign.eval.pipeline as pipeline

    one_pass = pipeline._one_pass
    monkeypatch.setattr(
        pipeline, "_one_pass", lambda es, ds, *a: (calls.extend(len(ds) for _ in es), one_pass(es, ds, *a))[1]
    )
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    enc, protos = torch.nn.Linear(4, 6), torch.randn(3, 6)
    data = heads_mod.CacheData(TensorDataset(x[:3], y[:3]), TensorDataset(x[:3], y[:3]), "v")
    m, _ = heads_mod.evaluate_heads(
        {"": enc}, ["zeroshot"], protos, 7.0, data, {"t": EvalSet("t", TensorDataset(x, y))}
    )
    assert calls == [5]
    with torch.no_grad():
        want = (PrototypeHead(protos, 7.0)(enc(x)).argmax(1) == y).double().mean().item() * 100
    assert m["t"]["Zero-shot"]["top1"] == pytest.approx(want)


def test_heads_refuse_a_val_image_that_is_also_a_test_image(tiny_openclip, trained, tmp_path, capsys):
    """Head hyper-parameters are chosen on val/: a val file with a test image's bytes stops the evaluation."""
    import shutil

    data = tmp_path / "id"
    shutil.copytree(trained["id"], data)
    leaked = sorted((data / "test" / "blue_sky").glob("*.png"))[0]
    victim = sorted((data / "val" / "blue_sky").glob("*.png"))[0]
    victim.unlink()
    shutil.copyfile(leaked, data / "val" / "blue_sky" / "copied.png")
    rc = main(
        [
            "eval",
            "tiny",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(data),
            "--shots",
            "2",
            "--seed",
            "2",
            "--heads",
            "tip",
            "--heads-config",
            str(trained["yaml"]),
            "--templates",
            "tip7",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "copied.png" in err and leaked.name in err and "validation split" in err


def test_every_coop_and_imagenet_preset_data_set_has_its_published_heads_row():
    from fdalign.eval.heads import HeadsConfig
    from fdalign.experiments import sweep as sw

    for preset in ("coop", "imagenet"):
        cfg = sw.load_sweep_config(preset)
        assert cfg.heads == ["tip", "tip-f", "ape", "ape-t"] and cfg.heads_preset == "authors"
        for ds in cfg.datasets:
            got = HeadsConfig.for_preset("authors", ds.dataset_name or ds.name).preset
            assert "common" not in got, (preset, ds.name, got)
