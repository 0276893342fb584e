"""``fdalign train`` end to end on generated folders, and its one-line errors for bad input."""

import json
import shutil

import pytest
import torch
import yaml

from _synth import make_imagefolder, write_templates
from fdalign.cli import main

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy."]


pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_train")
    idf = make_imagefolder(d / "id", CLASSES, n_train=4, n_test=2, seed=0)
    ood = make_imagefolder(d / "ood", ["red apple", "blue sky"], n_train=0, n_test=2, seed=1) / "test"
    tfile = write_templates(d / "templates.txt", TEMPLATES)
    return {"id": idf, "ood": ood, "templates": tfile, "dir": d}


def _args(tiny, folders, out, *extra):
    return [
        "train",
        "--model-config",
        str(tiny["config"]),
        "--pretrained",
        str(tiny["checkpoint"]),
        "--data",
        str(folders["id"]),
        "--shots",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--templates",
        str(folders["templates"]),
        "--spc-keep",
        "3",
        "--spc-k",
        "2",
        "--wiseft-alphas",
        "0",
        "0.5",
        "1",
        "--device",
        "cpu",
        "--lr",
        "1e-3",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_train_end_to_end_writes_run_directory(tiny_openclip, folders, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(_args(tiny_openclip, folders, out, "--ood", f"shifted={folders['ood']}"))
    err = capsys.readouterr().err
    assert rc == 0, err
    # --epochs 1 with the default 1 epoch of warm-up: said before the run, once
    assert err.count("warning: the LR warm-up (warmup_epochs = 1) lasts the whole run (epochs = 1)") == 1, err

    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    assert set(m) == {"test", "shifted"}
    for s in m.values():
        assert list(s) == ["zero-shot", "fine-tuned", "wiseft-0.5"]
        for r in s.values():
            assert {"top1", "top5", "n"} <= set(r) and 0 <= r["top1"] <= 100
    assert m["test"]["zero-shot"]["n"] == 6 and m["shifted"]["zero-shot"]["n"] == 4
    assert doc["roles"] == {"test": "test", "shifted": "ood"}
    assert set(doc["hashes"]) == {"train", "val", "test", "shifted"}
    report = (out / "report.md").read_text()
    assert "wiseft-0.5" in report and "What was selected" in report and "shifted" in report

    sel = json.loads((out / "selection.json").read_text())
    assert set(sel) == {"epoch", "wiseft_alpha"}
    assert sel["epoch"]["chosen"] == 1 and sel["epoch"]["on"].startswith("val")
    assert sel["wiseft_alpha"]["chosen"] in (0.0, 0.5, 1.0) and sel["wiseft_alpha"]["on"].startswith("val")
    for name in (
        "config.yaml",
        "hashes.json",
        "log.csv",
        "model/best.safetensors",
        "splits/train.json",
        "splits/val.json",
        "checkpoint/last.safetensors",
        "checkpoint/last.json",
    ):
        assert (out / name).is_file(), name

    from fdalign.data import load_split
    from fdalign.train.config import TrainConfig

    cfg = TrainConfig.from_yaml(out / "config.yaml")
    assert (cfg.shots, cfg.epochs, cfg.ood) == (2, 1, [f"shifted={folders['ood']}"])
    train_split = load_split(out / "splits" / "train.json")
    assert len(train_split) == 6 and train_split.class_counts() == [2, 2, 2]
    assert len(load_split(out / "splits" / "val.json")) == 6  # 2 held-out training images per class

    # independent checks of two numbers: zero-shot from a fresh model, fine-tuned from the saved run
    from fdalign.backends import load_clip
    from fdalign.data import ImageDataset, open_dataset
    from fdalign.prototypes import build_prototypes
    from fdalign.train.run import load_run

    test = open_dataset(folders["id"])["test"]
    backend = load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=tiny_openclip["config"])
    protos = build_prototypes(backend, test.classnames, TEMPLATES, spc=None, cache_dir=False)
    x = torch.stack([img for img, _ in ImageDataset(test, backend.preprocess_eval())])
    y = torch.tensor(test.labels)
    with torch.no_grad():
        f = torch.nn.functional.normalize(backend.image_encoder.eval()(x), dim=-1)
        zs_pred = (f @ protos.class_prototypes.t()).argmax(1)
        assert m["test"]["zero-shot"]["top1"] == pytest.approx(100.0 * (zs_pred == y).float().mean().item())

        run = load_run(out)
        ft_pred = run.head(run.backend.image_encoder.eval()(x)).argmax(1)
        assert m["test"]["fine-tuned"]["top1"] == pytest.approx(100.0 * (ft_pred == y).float().mean().item())
        assert run.classnames == sorted(CLASSES) and run.config.shots == 2
        # the zero-shot head saved with the run is the prompt-prototype head
        torch.testing.assert_close(run.zeroshot_head.prototypes, protos.class_prototypes)
        # WiSE-FT from the saved run: alpha 0 is the base encoder, alpha 1 the fine-tuned one
        enc0, _ = run.wiseft(0.0)
        enc1, _ = run.wiseft(1.0)
        assert torch.equal(enc0(x), backend.image_encoder(x))
        assert torch.equal(enc1(x), run.backend.image_encoder(x))


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fdalign train: error:")
    return err


def test_shots_larger_than_a_class_exits_2(tiny_openclip, folders, tmp_path, capsys):
    rc = main(_args(tiny_openclip, folders, tmp_path / "run", "--shots", "9"))
    assert rc == 2
    assert "has 4 images" in _one_line_error(capsys)


def test_empty_class_folder_exits_2(tiny_openclip, folders, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(folders["id"], data)
    for split in ("train", "test"):
        (data / split / "purple_cow").mkdir()
    args = _args(tiny_openclip, folders, tmp_path / "run")
    args[args.index("--data") + 1] = str(data)
    assert main(args) == 2
    assert "purple_cow" in _one_line_error(capsys)


def test_unknown_config_key_and_bad_ood_exit_2(tiny_openclip, folders, tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("shots: 2\nepochz: 3\n")
    assert main(_args(tiny_openclip, folders, tmp_path / "run", "--config", str(bad))) == 2
    err = _one_line_error(capsys)
    assert "epochz" in err and str(bad) in err
    assert main(_args(tiny_openclip, folders, tmp_path / "run", "--ood", "no-equals-sign")) == 2
    assert "NAME=PATH" in _one_line_error(capsys)


def test_print_config_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("shots: 4\nlr: 0.5\n")
    assert main(["train", "--config", str(cfg), "--lr", "0.25", "--print-config"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert (d["shots"], d["lr"], d["optimizer"]) == (4, 0.25, "adamw")
    assert main(["train", "--preset", "released", "--dataset-name", "eurosat", "--shots", "16", "--print-config"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert (d["optimizer"], d["epochs"], d["beta"], d["lr"], d["batch_size"]) == ("sgd", 60, 20.0, 9e-5, 0)
