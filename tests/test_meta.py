"""Meta-training on episodes and ``fdalign meta-train`` / ``meta-eval`` end to end on generated data."""

import json

import pytest
import torch
import torch.nn.functional as F

from _synth import make_imagefolder, write_templates
from fdalign.cli import main
from fdalign.data.episodes import EpisodeSpec
from fdalign.heads.episodes import ProtoNetHead
from test_episodes import write_class_splits

ROLES = {
    "base": ["red", "green", "blue", "yellow"],
    "val": ["cyan", "pink", "grey"],
    "novel": ["black", "white", "orange", "purple"],
}
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy."]


pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta")
    write_class_splits(d / "mini", ROLES, per_class=4)
    t1 = make_imagefolder(d / "t1", ["oak", "pine", "elm"], n_train=0, n_test=4, seed=1) / "test"
    t2 = make_imagefolder(d / "t2", ["cat", "dog", "cow", "hen"], n_train=2, n_test=2, seed=2)
    t3 = make_imagefolder(d / "t3", ["ash", "fir", "yew"], n_train=0, n_test=4, seed=3) / "test"
    make_imagefolder(d / "t3small", ["bay"], n_train=0, n_test=2, seed=4)
    (d / "t3small" / "test" / "bay").rename(t3 / "bay")  # one class too small for 1 shot + 2 queries
    write_templates(d / "templates.txt", TEMPLATES)
    return {"mini": d / "mini", "t1": t1, "t2": t2, "t3": t3, "templates": d / "templates.txt"}


def _train_args(tiny, data, out, *extra):
    return [
        "meta-train",
        "--model-config",
        str(tiny["config"]),
        "--pretrained",
        str(tiny["checkpoint"]),
        "--data",
        str(data["mini"]),
        "--templates",
        str(data["templates"]),
        "--n-way",
        "3",
        "--k-shot",
        "1",
        "--q-query",
        "2",
        "--episodes-per-step",
        "2",
        "--episodes-per-epoch",
        "4",
        "--epochs",
        "2",
        "--val-episodes",
        "3",
        "--spc-keep",
        "3",
        "--spc-k",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--lr",
        "1e-2",
        "--no-progress",
        "--no-tensorboard",
        "--out",
        str(out),
        *extra,
    ]


def test_meta_train_then_meta_eval_on_two_targets(tiny_openclip, data, tmp_path, capsys):
    tiny, out = tiny_openclip, tmp_path / "run"
    rc = main(
        _train_args(
            tiny_openclip, data, out, "--test-episodes", "6", "--test-shots", "1", "2", "--target", f"t1={data['t1']}"
        )
    )
    assert rc == 0, capsys.readouterr().err
    for name in (
        "config.yaml",
        "hashes.json",
        "log.csv",
        "selection.json",
        "model/best.safetensors",
        "checkpoint/last.json",
        "metrics.json",
        "report.md",
    ):
        assert (out / name).is_file(), name
    sel = json.loads((out / "selection.json").read_text())
    assert sel["epoch"]["on"].startswith("val classes") and "over 3 classes" in sel["epoch"]["on"]  # not novel's 4
    assert sel["epoch"]["chosen"] in (1, 2)
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 2 * 2
    from fdalign.train.meta import MetaConfig

    cfg = MetaConfig.from_yaml(out / "config.yaml")
    assert (cfg.n_way, cfg.k_shot, cfg.q_query, cfg.beta, cfg.target) == (3, 1, 2, 20.0, [f"t1={data['t1']}"])
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["metrics"]) == {"novel", "t1"} and set(doc["hashes"]) == {"novel", "t1"}

    # meta-eval's two encoders: the selected fine-tuned weights and the untouched pretrained ones
    from fdalign.train.run import load_model
    from fdalign.workflows.meta import _load_run_models

    _, models, _, _ = _load_run_models(out, no_zeroshot=False)
    base = {
        k[len("visual.") :]: v
        for k, v in torch.load(tiny["checkpoint"], weights_only=True)["state_dict"].items()
        if k.startswith("visual.")
    }
    saved = load_model(out / "model" / "best.safetensors").encoder
    ft, zs = models["fine-tuned"][0].state_dict(), models["zero-shot"][0].state_dict()
    assert all(torch.equal(zs[k], base[k]) for k in base) and all(torch.equal(ft[k], saved[k]) for k in saved)
    assert any(not torch.equal(ft[k], base[k]) for k in base)

    rc = main(
        [
            "meta-eval",
            str(out),
            "--target",
            f"t1={data['t1']}",
            "--target",
            f"t2={data['t2']}",
            "--target",
            f"t3={data['t3']}",
            "--episodes",
            "25",
            "--ways",
            "3",
            "--shots",
            "1",
            "2",
            "--queries",
            "2",
            "--runs",
            "2",
            "--templates",
            str(data["templates"]),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "episodes" / "metrics.json").read_text())
    m = doc["metrics"]
    assert list(m) == ["novel", "t1", "t2", "t3"]
    assert doc["settings"]["skipped classes (fewer than K+Q images)"]["t3"] == {"3-way 1-shot": 1, "3-way 2-shot": 1}
    assert doc["settings"]["skipped classes (fewer than K+Q images)"]["t2"] == {"3-way 1-shot": 0, "3-way 2-shot": 0}
    for per_spec in m.values():
        assert list(per_spec) == ["3-way 1-shot", "3-way 2-shot"]
        for per_model in per_spec.values():
            assert set(per_model) == {"fine-tuned", "zero-shot"}
            for model in per_model.values():
                assert {"proto", "text", "combined"} <= set(model)
                r = model["proto"]
                assert r["episodes"] == 50 and 0 <= r["mean"] <= 100 and r["ci95"] >= 0
                assert r["mean"] == pytest.approx(sum(r["run_means"]) / 2)
    report = (out / "episodes" / "report.md").read_text()
    assert "fine-tuned | proto" in report and "zero-shot | text" in report and "t2 3-way 2-shot" in report
    assert "1.96·std of the run means" in report and "chosen on val classes" in report


def test_meta_train_resume_matches_uninterrupted(tiny_openclip, data, tmp_path):
    from fdalign.backends import load_clip
    from fdalign.cli import build_parser
    from fdalign.cli.meta import _config
    from fdalign.data.episodes import load_class_splits
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.meta import meta_train

    splits = load_class_splits(data["mini"])

    def run(out, stop_after=None, resume=False):
        # --selection last: the returned weights are the last epoch's, which the resumed run must reach
        extra = ["--selection", "last"] + (["--resume"] if resume else [])
        args = build_parser().parse_args(_train_args(tiny_openclip, data, out, *extra))
        cfg = _config(args)
        backend = load_clip(None, pretrained=cfg.pretrained, model_config=cfg.model_config)
        protos = build_prototypes(backend, splits["base"].classnames, TEMPLATES, spc=SPCConfig(keep=3, k=2))

        def kill(epoch, _):
            if epoch == stop_after:
                raise KeyboardInterrupt

        try:
            return meta_train(
                backend,
                splits["base"],
                splits["val"],
                protos.loss_prototypes,
                cfg,
                out,
                protos.class_prototypes,
                progress=False,
                on_epoch_end=kill,
            )
        except KeyboardInterrupt:
            return None

    full = run(tmp_path / "a")
    assert run(tmp_path / "b", stop_after=1) is None
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.val_acc == full.val_acc and resumed.steps == full.steps == 4
    a, b = full.encoder.state_dict(), resumed.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "log.csv").read_text().count("\n") == (tmp_path / "b" / "log.csv").read_text().count("\n")


def test_episode_head_and_loss_see_every_episode_image(monkeypatch):
    """The head closure scores the queries against their own episode's support; KL gets all images."""
    import fdalign.train.meta as meta

    spec = EpisodeSpec(3, 2, 2)
    proto = ProtoNetHead(5.0, learn_scale=False)
    head, labels = meta.episode_head(proto, spec, episodes=2)
    torch.manual_seed(0)
    feats = torch.randn(2 * 3 * 4, 8)
    logits = head(feats)
    assert logits.shape == (2 * 3 * 2, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2] * 2
    ep1 = feats[12:]  # second episode: 6 support (way-major) then 6 queries
    p = F.normalize(torch.stack([F.normalize(ep1[2 * n : 2 * n + 2], dim=-1).mean(0) for n in range(3)]), dim=-1)
    assert torch.allclose(logits[6:], 5.0 * F.normalize(ep1[6:], dim=-1) @ p.t(), atol=1e-5)


def test_meta_train_loss_is_fdalign_forward_on_all_images(tiny_openclip, data, tmp_path, monkeypatch):
    import fdalign.train.meta as meta

    seen = []
    real = meta.fdalign_forward

    def spy(ft, f0, head, images, labels, spurious, s):
        seen.append((images.shape[0], labels.clone(), s.beta, f0 is not None, images.clone()))
        return real(ft, f0, head, images, labels, spurious, s)

    class EpisodeSpy(meta.EpisodeDataset):
        def __init__(self, pool, *a, **k):
            seen_splits.append(pool.split.name)
            super().__init__(pool, *a, **k)

    seen_splits = []
    monkeypatch.setattr(meta, "fdalign_forward", spy)
    monkeypatch.setattr(meta, "EpisodeDataset", EpisodeSpy)
    rc = main(_train_args(tiny_openclip, data, tmp_path / "r", "--test-episodes", "0"))
    assert rc == 0
    assert seen_splits == ["base", "base"]  # training episodes come from the base classes only
    assert [(n, b, f0) for n, _, b, f0, _ in seen] == [(2 * 3 * 3, 20.0, True)] * 4  # 2 epochs x 2 steps
    assert seen[0][1].tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert not torch.equal(seen[0][4], seen[2][4])  # epoch 2 draws new episodes


def test_meta_train_user_errors(tiny_openclip, data, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: adam\n")
    assert main(_train_args(tiny_openclip, data, tmp_path / "r", "--config", str(bad))) == 2
    assert "optimizer = 'adam' is not one of sgd, adamw" in capsys.readouterr().err
    rc = main(_train_args(tiny_openclip, data, tmp_path / "r", "--n-way", "4"))
    assert rc == 2
    assert "4-way episodes need 4 classes but 'val' has 3" in capsys.readouterr().err
    rc = main(_train_args(tiny_openclip, data, tmp_path / "r", "--test-shots", "5"))
    assert rc == 2
    assert "only 0 of the 4 classes of 'novel' have that many" in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.yaml").exists()  # failed before loading a model


def test_meta_eval_of_a_kshot_train_run(tiny_openclip, data, tmp_path, capsys):
    """A run of `fdalign train` is evaluated on episodes too: its encoder beside the pretrained one."""
    from test_cli_train import CLASSES

    idf = make_imagefolder(tmp_path / "id", CLASSES, n_train=4, n_test=1, seed=3)
    run = tmp_path / "kshot"
    assert (
        main(
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
                "--num-workers",
                "0",
                "--templates",
                str(data["templates"]),
                "--spc-keep",
                "3",
                "--spc-k",
                "2",
                "--wiseft-alphas",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                "--no-tensorboard",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    rc = main(
        [
            "meta-eval",
            str(run),
            "--data",
            "none",
            "--target",
            f"t2={data['t2']}",
            "--episodes",
            "5",
            "--ways",
            "2",
            "--shots",
            "1",
            "--queries",
            "2",
            "--heads",
            "proto",
            "--templates",
            str(data["templates"]),
            "--out",
            str(tmp_path / "ep"),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "ep" / "metrics.json").read_text())["metrics"]
    assert set(m["t2"]["2-way 1-shot"]) == {"fine-tuned", "zero-shot"}
    assert set(m["t2"]["2-way 1-shot"]["fine-tuned"]) == {"proto"}


def test_meta_eval_of_a_model_name_is_zero_shot_only(tiny_openclip, data, tmp_path, capsys):
    rc = main(
        [
            "meta-eval",
            "tiny",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(data["mini"]),
            "--episodes",
            "5",
            "--ways",
            "3",
            "--shots",
            "1",
            "--queries",
            "2",
            "--heads",
            "proto",
            "text",
            "--templates",
            str(data["templates"]),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "zs"),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "zs" / "metrics.json").read_text())["metrics"]
    assert list(m) == ["novel"] and list(m["novel"]["3-way 1-shot"]) == ["zero-shot"]
    assert set(m["novel"]["3-way 1-shot"]["zero-shot"]) == {"proto", "text"}
    rc = main(
        [
            "meta-eval",
            "tiny",
            "--model-config",
            str(tiny_openclip["config"]),
            "--data",
            str(data["mini"]),
            "--ways",
            "9",
            "--templates",
            str(data["templates"]),
        ]
    )
    assert rc == 2 and "9-way episodes need 9 classes but 'novel' has 4;" in capsys.readouterr().err


def test_a_second_meta_train_on_one_run_directory_is_refused(tiny_openclip, data, tmp_path, capsys):
    from test_integrity import run_while_locked

    out = tmp_path / "r"
    rc, pid = run_while_locked(out, _train_args(tiny_openclip, data, out))
    err = capsys.readouterr().err
    assert rc == 2 and f"pid {pid}" in err, err
    assert not (out / "config.yaml").exists()  # it wrote nothing


def test_a_diverged_meta_train_stops_with_one_line_and_writes_no_scores(tiny_openclip, data, tmp_path, capsys):
    out = tmp_path / "r"
    # one step: its loss is finite, the weights after it are not (the loss check alone would not see it)
    rc = main(
        _train_args(
            tiny_openclip,
            data,
            out,
            "--lr",
            "inf",
            "--test-episodes",
            "2",
            "--test-shots",
            "1",
            "--episodes-per-epoch",
            "2",
            "--epochs",
            "1",
        )
    )
    err = capsys.readouterr().err
    assert rc == 2 and "diverged" in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert not (out / "metrics.json").exists()  # no episode accuracy for a NaN encoder
