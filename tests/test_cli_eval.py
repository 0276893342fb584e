"""``fdalign zeroshot`` / ``fdalign eval`` end to end on the tiny open_clip fixture and synthetic folders."""

from __future__ import annotations

import json

import pytest
import torch

from _synth import make_imagefolder
from fdalign.cli import build_parser, main

CLASSES = ["red apple", "green leaf", "blue sky"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_data")
    idf = make_imagefolder(d / "id", CLASSES, n_train=2, n_test=4, seed=0)
    # OOD set: a folder of class folders (no split level), only 2 of the 3 ID classes
    ood = make_imagefolder(d / "ood_tmp", ["blue sky", "red apple"], n_train=0, n_test=3, seed=1) / "test"
    bad = make_imagefolder(d / "bad_tmp", ["red apple", "purple cow"], n_train=0, n_test=2, seed=2) / "test"
    return {"id": idf, "ood": ood, "bad": bad}


def _zeroshot_args(tiny, folders, *extra):
    return [
        "zeroshot",
        "--model",
        "tiny",
        "--model-config",
        str(tiny["config"]),
        "--pretrained",
        str(tiny["checkpoint"]),
        "--data",
        str(folders["id"]),
        "--templates",
        "tip7",
        *extra,
    ]


def test_help_documents_every_option_with_default(capsys):
    parser = build_parser()
    for cmd in ("zeroshot", "eval"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        text = capsys.readouterr().out
        for opt in ("--data", "--ood", "--templates", "--batch-size", "--device", "--split", "--out"):
            assert opt in text
        assert "(default: 256)" in text and "(default: openai80)" in text


def test_zeroshot_end_to_end_matches_direct_computation(tiny_openclip, folders, tmp_path, capsys):
    out = tmp_path / "zs"
    rc = main(
        _zeroshot_args(
            tiny_openclip, folders, "--ood", f"shifted={folders['ood']}", "--out", str(out), "--batch-size", "5"
        )
    )
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    assert set(m) == {"test", "shifted"}
    for s, n in (("test", 12), ("shifted", 6)):
        r = m[s]["zero-shot"]
        assert set(r) == {"top1", "top5", "n"} and r["n"] == n
        assert 0.0 <= r["top1"] <= r["top5"] == 100.0  # top-5 of <=3 classes is everything
    assert doc["roles"] == {"test": "test", "shifted": "ood"}
    assert doc["hashes"]["test"].startswith("list:")
    report = (out / "report.md").read_text()
    assert "| zero-shot |" in report and "shifted top-1" in report
    assert "| zero-shot |" in capsys.readouterr().out

    # independent computation: encode with open_clip directly, cosine to the mean of the
    # normalised prompt features, OOD restricted to the two classes it has
    import open_clip
    from PIL import Image

    from fdalign.prompts import TIP7

    cfg = json.loads(open(tiny_openclip["config"]).read())
    model = open_clip.CLIP(**cfg)
    model.load_state_dict(torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"])
    model.eval()
    from fdalign.backends import load_clip

    tf = load_clip(
        "tiny", pretrained=str(tiny_openclip["checkpoint"]), model_config=str(tiny_openclip["config"])
    ).preprocess_eval()
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        protos = []
        for c in CLASSES:
            t = model.encode_text(tok([tpl.replace("{}", c) for tpl in TIP7]))
            protos.append(torch.nn.functional.normalize(torch.nn.functional.normalize(t, dim=-1).mean(0), dim=0))
        protos = torch.stack(protos)

        def acc(root, names, subset):
            correct = total = 0
            for folder in sorted(p for p in root.iterdir() if p.is_dir()):
                y = CLASSES.index(folder.name.replace("_", " "))
                for f in sorted(folder.iterdir()):
                    x = tf(Image.open(f)).unsqueeze(0)
                    sims = torch.nn.functional.normalize(model.encode_image(x), dim=-1) @ protos.T
                    pred = subset[int(sims[0, subset].argmax())]
                    correct += int(pred == y)
                    total += 1
            return 100 * correct / total

        assert m["test"]["zero-shot"]["top1"] == pytest.approx(acc(folders["id"] / "test", CLASSES, [0, 1, 2]))
        assert m["shifted"]["zero-shot"]["top1"] == pytest.approx(acc(folders["ood"], CLASSES, [0, 2]))


def test_ood_class_not_in_id_set_exits_2(tiny_openclip, folders, tmp_path, capsys):
    rc = main(_zeroshot_args(tiny_openclip, folders, "--ood", f"bad={folders['bad']}", "--out", str(tmp_path / "o")))
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fdalign zeroshot: error:") and "purple cow" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_eval_with_model_name_is_zeroshot(tiny_openclip, folders, tmp_path):
    out = tmp_path / "e"
    rc = main(
        [
            "eval",
            "tiny",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(folders["id"]),
            "--templates",
            "tip7",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    zs = tmp_path / "zs"
    main(_zeroshot_args(tiny_openclip, folders, "--out", str(zs)))
    a = json.loads((out / "metrics.json").read_text())["metrics"]
    b = json.loads((zs / "metrics.json").read_text())["metrics"]
    assert a == b


# ------------------------------------------------------------------------------------------------
# fdalign eval RUN: a run directory built with the trainer's API (fdalign.train.run.save_model)


def _make_run(tiny, folders, run_dir, mode="fdalign", wiseft_alpha=None):
    """A run directory as `fdalign train` writes it. The heads use CLASSES order, which is not the
    (sorted) folder order of the data, so evaluating it exercises relabelling by class name."""
    import copy

    from fdalign.backends import load_clip
    from fdalign.heads import PrototypeHead
    from fdalign.prompts import load_templates
    from fdalign.prototypes import build_prototypes
    from fdalign.train.config import TrainConfig
    from fdalign.train.run import save_model

    backend = load_clip("tiny", pretrained=str(tiny["checkpoint"]), model_config=str(tiny["config"]))
    protos = build_prototypes(backend, CLASSES, load_templates("tip7"), spc=None, cache_dir=False)
    zs_head = PrototypeHead(protos.class_prototypes, scale=backend.logit_scale)
    head = PrototypeHead(protos.class_prototypes, scale=backend.logit_scale, trainable=True)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        head.weight.add_(torch.randn(head.weight.shape, generator=g) * 20)
        head.bias.add_(torch.randn(head.bias.shape, generator=g))
    enc = copy.deepcopy(backend.image_encoder)
    if mode != "linear-probe":
        with torch.no_grad():  # "fine-tuning": a visible change of the encoder's weights
            for p in enc.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    cfg = TrainConfig(
        model="tiny",
        pretrained=str(tiny["checkpoint"]),
        model_config=str(tiny["config"]),
        data=str(folders["id"]),
        templates="tip7",
        mode=mode,
        out=str(run_dir),
        ood=[f"shifted={folders['ood']}"],
    )
    cfg.to_yaml(run_dir / "config.yaml")
    save_model(
        run_dir / "model" / "best.safetensors",
        enc,
        head,
        zs_head,
        metadata={"classnames": CLASSES, "base_fingerprint": backend.fingerprint},
    )
    selection = {"epoch": {"chosen": 3, "on": "val (2-shot of val/, 6 images)", "metric": "top1", "score": 50.0}}
    if wiseft_alpha is not None:
        selection["wiseft_alpha"] = {"chosen": wiseft_alpha, "on": "val", "metric": "top1", "score": 60.0}
    (run_dir / "selection.json").write_text(json.dumps(selection))
    (run_dir / "report.md").write_text("training report\n")
    return enc, head, zs_head, backend


def _direct_top1(encoder, head, root, subset=None):
    """Accuracy by hand: per image, transform, encode, head, argmax over the subset."""
    import open_clip
    from PIL import Image

    from fdalign.backends import ImageSpec
    from fdalign.backends.image import eval_transform

    tf = eval_transform(ImageSpec(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD))
    subset = subset or list(range(len(CLASSES)))
    encoder.eval()
    correct = total = 0
    with torch.no_grad():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            y = CLASSES.index(folder.name.replace("_", " "))
            for f in sorted(folder.iterdir()):
                logits = head(encoder(tf(Image.open(f)).unsqueeze(0)))
                correct += int(subset[int(logits[0, subset].argmax())] == y)
                total += 1
    return 100 * correct / total


def test_eval_run_directory(tiny_openclip, folders, tmp_path, capsys):
    run_dir = tmp_path / "run"
    enc, head, zs_head, backend = _make_run(tiny_openclip, folders, run_dir, wiseft_alpha=0.5)
    # data and OOD sets default to the run's
    rc = main(["eval", str(run_dir), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert (run_dir / "report.md").read_text() == "training report\n"  # training report kept
    doc = json.loads((run_dir / "eval" / "metrics.json").read_text())
    m = doc["metrics"]
    assert set(m) == {"test", "shifted"}
    assert list(m["test"]) == ["zero-shot", "fine-tuned", "wiseft-0.5"]
    assert m["test"]["fine-tuned"]["top1"] == pytest.approx(_direct_top1(enc, head, folders["id"] / "test"))
    assert m["shifted"]["fine-tuned"]["top1"] == pytest.approx(_direct_top1(enc, head, folders["ood"], [0, 2]))
    base = backend.image_encoder
    assert m["test"]["zero-shot"]["top1"] == pytest.approx(_direct_top1(base, zs_head, folders["id"] / "test"))

    # the zero-shot row equals `fdalign zeroshot` with the same model and templates
    zs_out = tmp_path / "zs"
    main(_zeroshot_args(tiny_openclip, folders, "--ood", f"shifted={folders['ood']}", "--out", str(zs_out)))
    zs = json.loads((zs_out / "metrics.json").read_text())["metrics"]
    for s in ("test", "shifted"):
        assert m[s]["zero-shot"]["top1"] == pytest.approx(zs[s]["zero-shot"]["top1"])

    report = (run_dir / "eval" / "report.md").read_text()
    assert "| fine-tuned |" in report and "| zero-shot |" in report
    assert "3, chosen on val (2-shot of val/, 6 images) by top1 = 50.00" in report


def test_eval_linear_probe_run_shares_encoder_features(tiny_openclip, folders, tmp_path, monkeypatch):
    """A linear probe's encoder is the base encoder: one pass over each set feeds both heads."""
    import fdalign.eval.pipeline as pipeline  # where every pass over a set ends

    run_dir = tmp_path / "lp"
    _make_run(tiny_openclip, folders, run_dir, mode="linear-probe")
    calls = []
    real = pipeline._one_pass

    def counting(encoders, dataset, *a):
        calls.append((len(dataset), len(encoders)))
        return real(encoders, dataset, *a)

    monkeypatch.setattr(pipeline, "_one_pass", counting)
    assert main(["eval", str(run_dir), "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    assert calls == [(12, 1), (6, 1)]  # test and shifted once each, one encoder: not once per model
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert list(m["test"]) == ["zero-shot", "fine-tuned"]


def test_eval_rejects_non_run_directory(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "not an fdalign run directory" in capsys.readouterr().err


def test_eval_run_on_data_with_other_classes_exits_2(tiny_openclip, folders, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _make_run(tiny_openclip, folders, run_dir)
    other = make_imagefolder(tmp_path / "other", ["red apple", "purple cow", "blue sky"], 0, 1)
    assert main(["eval", str(run_dir), "--data", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'purple cow'" in err and len(err.splitlines()) == 1


def test_eval_with_a_pixel_cache_says_what_it_did_and_gives_the_same_metrics(tiny_openclip, folders, tmp_path, capsys):
    """`fdalign eval RUN --pixel-cache DIR`: the first evaluation fills it (2 misses: test, shifted), the second
    reads it (2 hits) and decodes nothing; metrics equal the run without a cache; --no-pixel-cache is off."""
    run_dir = tmp_path / "run"
    _make_run(tiny_openclip, folders, run_dir, wiseft_alpha=0.5)
    pixels = tmp_path / "pixels"
    common = ["eval", str(run_dir), "--device", "cpu", "--num-workers", "0"]
    assert main([*common, "--no-pixel-cache", "--out", str(tmp_path / "plain")]) == 0
    assert "pixel cache" not in capsys.readouterr().out
    lines = []
    for i in range(2):
        assert main([*common, "--pixel-cache", str(pixels), "--out", str(tmp_path / f"cached{i}")]) == 0
        lines.append([x for x in capsys.readouterr().out.splitlines() if x.startswith("pixel cache:")])
    assert lines[0][0].startswith("pixel cache: 0 hits, 2 misses, 0 damaged")
    assert lines[1][0].startswith("pixel cache: 2 hits, 0 misses, 0 damaged")
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())["metrics"]
    for i in range(2):
        assert json.loads((tmp_path / f"cached{i}" / "metrics.json").read_text())["metrics"] == plain
    assert len(list(pixels.glob("*/*.npy"))) == 2
