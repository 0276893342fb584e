"""``fdalign export`` and ``fdalign predict`` on runs trained through the CLI on the tiny models.

Exports are loaded with plain open_clip and plain transformers, and their image features are compared
with features computed independently from the base checkpoint and the run's saved encoder weights.
"""

import csv
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from _synth import make_imagefolder, write_templates
from fdalign.cli import main
from fdalign.errors import FDAlignError

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy."]
ATOL = 1e-5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDALIGN_CACHE", str(d / "cache"))  # never write to the user's cache
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        data = make_imagefolder(d / "id", CLASSES, n_train=4, n_test=2, seed=0)
        tfile = write_templates(d / "templates.txt", TEMPLATES)
        yield {"dir": d, "data": data, "templates": tfile}
        torch.set_num_threads(n)


def _train(env, out, *model_args):
    rc = main(
        [
            "train",
            *model_args,
            "--data",
            str(env["data"]),
            "--shots",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--num-workers",
            "0",
            "--templates",
            str(env["templates"]),
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
            "1e-2",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def oc_run(env, tiny_openclip):
    return _train(
        env,
        env["dir"] / "oc_run",
        "--model-config",
        str(tiny_openclip["config"]),
        "--pretrained",
        str(tiny_openclip["checkpoint"]),
    )


@pytest.fixture(scope="module")
def hf_run(env, tiny_hf):
    return _train(env, env["dir"] / "hf_run", "--model", f"hf:{tiny_hf['dir']}")


def _saved_encoder(run):
    from safetensors.torch import load_file

    return {
        k[len("encoder.") :]: v
        for k, v in load_file(run / "model" / "best.safetensors").items()
        if k.startswith("encoder.")
    }


def _test_images(env, spec):
    from fdalign.backends.image import eval_transform
    from fdalign.data import ImageDataset, open_dataset

    test = open_dataset(env["data"])["test"]
    return torch.stack([x for x, _ in ImageDataset(test, eval_transform(spec))]), test


# ------------------------------------------------------------------------------------------------
# Round trips


def test_open_clip_round_trip_with_plain_open_clip(env, oc_run, tiny_openclip, tmp_path, capsys):
    import open_clip

    from conftest import TINY_OPENCLIP_CFG
    from fdalign.backends.openclip import image_spec_from_visual

    out = tmp_path / "exp"
    # the fine-tuned weights (the default is the model val selected, which may be a WiSE-FT mix)
    assert (
        main(["export", str(oc_run), "--format", "open_clip", "--out", str(out), "--wiseft-alpha", "fine-tuned"]) == 0
    )
    assert "open_clip_model.safetensors" in capsys.readouterr().out

    # expected: the base checkpoint with the run's saved image tower, built without fdalign
    base = open_clip.CLIP(**TINY_OPENCLIP_CFG)
    base.load_state_dict(torch.load(tiny_openclip["checkpoint"], weights_only=True)["state_dict"])
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    base.visual.load_state_dict(_saved_encoder(oc_run))
    x, _ = _test_images(env, image_spec_from_visual(base.visual))
    with torch.no_grad():
        want = base.eval().encode_image(x)

        # 1) open_clip's local-dir layout: no registration needed, even for a custom architecture
        m1, _, pre = open_clip.create_model_and_transforms(f"local-dir:{out}")
        # 2) by name + pretrained file, after registering the run's own config JSON
        open_clip.add_model_config(tiny_openclip["config"])
        m2, _, _ = open_clip.create_model_and_transforms(
            tiny_openclip["config"].stem, pretrained=str(out / "open_clip_model.safetensors")
        )
        # 3) load_checkpoint into the same architecture
        m3 = open_clip.CLIP(**TINY_OPENCLIP_CFG)
        assert not open_clip.load_checkpoint(m3, str(out / "open_clip_model.safetensors")).missing_keys
        for m in (m1, m2, m3):
            assert (m.eval().encode_image(x) - want).abs().max().item() < ATOL
    # the text tower and logit scale are the base model's, bit for bit; the image tower moved
    exported = m3.state_dict()
    for k, v in base_state.items():
        if k.startswith("visual."):
            continue
        assert torch.equal(exported[k], v), k
    assert any(not torch.equal(exported[k], v) for k, v in base_state.items() if k.startswith("visual."))
    assert pre.transforms[-1].mean == list(open_clip.OPENAI_DATASET_MEAN)


def test_hf_round_trip_with_plain_transformers_wiseft(env, hf_run, tiny_hf, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from conftest import TINY_HF_MEAN
    from fdalign.backends import ImageSpec

    alpha = 0.25  # not 0.5, where swapping the two sides of the mix would go unnoticed
    out = tmp_path / "exp_hf"
    assert main(["export", str(hf_run), "--format", "hf", "--out", str(out), "--wiseft-alpha", str(alpha)]) == 0

    model = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)
    assert tuple(processor.image_processor.image_mean) == pytest.approx(TINY_HF_MEAN)
    assert processor.tokenizer("a red apple")["input_ids"]

    # expected: (1 - alpha) * base + alpha * fine-tuned, mixed by hand from the two files
    base = CLIPModel.from_pretrained(tiny_hf["dir"]).eval()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    ft = _saved_encoder(hf_run)
    mixed = {k: (1 - alpha) * base_state[k] + alpha * v if v.is_floating_point() else v for k, v in ft.items()}
    base.load_state_dict(mixed, strict=False)
    x, _ = _test_images(env, ImageSpec(32, TINY_HF_MEAN, tiny_hf["std"], "bilinear"))

    def feats(m):
        f = m.get_image_features(pixel_values=x)
        return f if isinstance(f, torch.Tensor) else f.pooler_output

    with torch.no_grad():
        assert (feats(model) - feats(base)).abs().max().item() < ATOL
    exported = model.state_dict()
    for k, v in base_state.items():
        if not k.startswith(("vision_model.", "visual_projection.")):
            assert torch.equal(exported[k], v), k
    manifest = json.loads((out / "fdalign_export.json").read_text())
    assert manifest["wiseft_alpha"] == alpha and manifest["classnames"] == sorted(CLASSES)

    # predict reads the HF export exactly as it reads the run with the same mix
    for target, extra, csv_path in (
        (out, [], tmp_path / "a.csv"),
        (hf_run, ["--wiseft-alpha", str(alpha)], tmp_path / "b.csv"),
    ):
        assert (
            main(
                [
                    "predict",
                    str(target),
                    str(env["data"] / "test"),
                    "--out",
                    str(csv_path),
                    "--topk",
                    "3",
                    "--device",
                    "cpu",
                    "--no-progress",
                    *extra,
                ]
            )
            == 0
        )
    a, b = _read_csv(tmp_path / "a.csv"), _read_csv(tmp_path / "b.csv")
    assert len(a) == 6 and [r["path"] for r in a] == [r["path"] for r in b]
    for ra, rb in zip(a, b):
        pa = {ra[f"top{i}"]: float(ra[f"top{i}_prob"]) for i in (1, 2, 3)}
        pb = {rb[f"top{i}"]: float(rb[f"top{i}_prob"]) for i in (1, 2, 3)}
        assert pa == pytest.approx(pb, abs=ATOL)


def test_head_file_reproduces_the_run_head(env, oc_run, tmp_path):
    from safetensors import safe_open

    from fdalign.train.run import load_run

    out = tmp_path / "exp"
    assert main(["export", str(oc_run), "--format", "open_clip", "--out", str(out)]) == 0
    with safe_open(str(out / "fdalign_head.safetensors"), "pt") as f:
        w, b, meta = f.get_tensor("weight"), f.get_tensor("bias"), f.metadata()
    run = load_run(oc_run)
    assert json.loads(meta["classnames"]) == run.classnames == sorted(CLASSES)
    feats = torch.randn(5, w.shape[1])
    # the formula the card documents, by hand, against the run's own head module
    torch.testing.assert_close(F.normalize(feats, dim=-1) @ w.t() + b, run.head(feats), atol=ATOL, rtol=0)


def test_model_card_records_data_method_selection_and_metrics(oc_run, tmp_path):
    import yaml

    out = tmp_path / "exp"
    assert main(["export", str(oc_run), "--format", "open_clip", "--out", str(out), "--wiseft-alpha", "0.5"]) == 0
    card = (out / "README.md").read_text()
    cfg = yaml.safe_load((oc_run / "config.yaml").read_text())
    hashes = json.loads((oc_run / "hashes.json").read_text())
    for h in hashes.values():
        assert h in card
    for key in ("shots", "seed", "alpha", "beta", "spc"):
        assert f"- **{key}**: {cfg[key]}" in card, key
    assert "chosen on val" in card and "row **wiseft-0.5**" in card
    top1 = json.loads((oc_run / "metrics.json").read_text())["metrics"]["test"]["wiseft-0.5"]["top1"]
    assert f"| wiseft-0.5 | {top1:.2f} |" in card
    assert f'"local-dir:{out.name}"' in card and str(tmp_path) not in card.split("## Loading")[1].split("```\n\n")[0]


# ------------------------------------------------------------------------------------------------
# predict


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _expected_probs(env, oc_run):
    """softmax over all classes of the logits `fdalign eval` computes for the fine-tuned model."""
    from fdalign.data import ImageDataset, open_dataset
    from fdalign.eval import apply_head, extract_features
    from fdalign.train.run import load_run

    run = load_run(oc_run)
    test = open_dataset(env["data"])["test"]
    feats, _ = extract_features(
        run.backend.image_encoder, ImageDataset(test, run.backend.preprocess_eval()), progress=False
    )
    probs = torch.softmax(apply_head(run.head, feats), dim=1)
    return {test.resolve(s): p for s, p in zip(test.samples, probs)}, run.classnames, test


@pytest.mark.parametrize("source", ["run", "export"])
def test_predict_agrees_with_eval_logits(env, oc_run, tmp_path, source):
    target = oc_run
    if source == "export":
        target = tmp_path / "exp"
        assert (
            main(["export", str(oc_run), "--format", "open_clip", "--out", str(target), "--wiseft-alpha", "fine-tuned"])
            == 0
        )
    want, classnames, test = _expected_probs(env, oc_run)
    out = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                str(target),
                str(env["data"] / "test"),
                *(["--wiseft-alpha", "fine-tuned"] if source == "run" else []),  # an export holds its weights
                "--out",
                str(out),
                "--topk",
                "2",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == sorted(want)  # every test image once, folders walked in order
    for r in rows:
        p = want[r["path"]]
        order = p.argsort(descending=True)[:2]
        assert [r["top1"], r["top2"]] == [classnames[i] for i in order]
        got = torch.tensor([float(r["top1_prob"]), float(r["top2_prob"])])
        torch.testing.assert_close(got, p[order], atol=ATOL, rtol=0)  # softmax over all 3 classes, not 2
    # and the CSV's top-1 accuracy is the one the run's evaluation reported
    label = {test.resolve(s): test.classnames[s.label] for s in test.samples}
    acc = 100.0 * sum(r["top1"] == label[r["path"]] for r in rows) / len(rows)
    metrics = json.loads((oc_run / "metrics.json").read_text())["metrics"]["test"]["fine-tuned"]
    assert acc == pytest.approx(metrics["top1"])


def test_predict_lists_unreadable_files_and_keeps_going(env, oc_run, tmp_path, capsys):
    images = tmp_path / "imgs"
    (images / "a" / "b").mkdir(parents=True)
    src = sorted((env["data"] / "test").rglob("*.png"))
    shutil.copy(src[0], images / "a" / "1.png")
    (images / "a" / "b" / "2_broken.png").write_bytes(b"not an image")
    shutil.copy(src[-1], images / "a" / "b" / "3.png")
    (images / "notes.txt").write_text("skipped: not an image extension")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "preds.csv"
    rc = main(
        [
            "predict",
            str(oc_run),
            str(images),
            str(missing),
            "--wiseft-alpha",
            "fine-tuned",
            "--out",
            str(out),
            "--topk",
            "9",
            "--device",
            "cpu",
            "--no-progress",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "2 unreadable" in captured.out
    assert "2_broken.png" in captured.err and "missing.jpg" in captured.err
    rows = _read_csv(out)
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["1.png", "2_broken.png", "3.png", "missing.jpg"]
    assert [bool(r["error"]) for r in rows] == [False, True, False, True]
    assert "top3" in rows[0] and "top4" not in rows[0]  # --topk is capped at the 3 classes
    want, classnames, _ = _expected_probs(env, oc_run)
    for row, img in ((rows[0], src[0]), (rows[2], src[-1])):  # rows after the broken file stay aligned
        assert row["top1"] == classnames[int(want[str(img)].argmax())]
        assert float(row["top1_prob"]) == pytest.approx(float(want[str(img)].max()), abs=ATOL)


# ------------------------------------------------------------------------------------------------
# Errors


def _one_line(capsys, command):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"fdalign {command}: error:")
    return err


def test_unfinished_run_is_refused(oc_run, tmp_path, capsys):
    run = tmp_path / "unfinished"
    shutil.copytree(oc_run, run)
    (run / "selection.json").unlink()  # written only when training ends
    assert main(["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "e")]) == 2
    err = _one_line(capsys, "export")
    assert "not finished" in err and "--resume" in err
    assert not (tmp_path / "e").exists()
    assert main(["predict", str(run), str(tmp_path), "--out", str(tmp_path / "p.csv")]) == 2
    assert "not finished" in _one_line(capsys, "predict")


def test_format_errors(oc_run, tmp_path, capsys):
    from fdalign.exporting import export_run

    with pytest.raises(FDAlignError, match="unknown export format 'onnx'"):
        export_run(oc_run, "onnx", tmp_path / "e")
    with pytest.raises(SystemExit) as e:
        main(["export", str(oc_run), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert e.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
    assert main(["export", str(oc_run), "--format", "hf", "--out", str(tmp_path / "e")]) == 2
    assert "--format open_clip" in _one_line(capsys, "export")
    assert (
        main(["export", str(oc_run), "--format", "open_clip", "--out", str(tmp_path / "e"), "--wiseft-alpha", "1.5"])
        == 2
    )
    assert "outside [0, 1]" in _one_line(capsys, "export")


def test_existing_output_needs_force(oc_run, tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["export", str(oc_run), "--format", "open_clip", "--out", str(out)]
    assert main(args) == 0
    first = (out / "open_clip_model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "--force" in _one_line(capsys, "export")
    assert main(args + ["--force", "--wiseft-alpha", "0"]) == 0  # replaced: now the zero-shot weights
    assert (out / "open_clip_model.safetensors").read_bytes() != first
    assert json.loads((out / "fdalign_export.json").read_text())["wiseft_alpha"] == 0.0
    assert "row **zero-shot**" in (out / "README.md").read_text()  # alpha 0 is the zero-shot model
    # --force never deletes a folder that is not an export
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    capsys.readouterr()
    assert main(["export", str(oc_run), "--format", "open_clip", "--out", str(other), "--force"]) == 2
    assert "neither" in _one_line(capsys, "export")
    assert (other / "thesis.tex").read_text() == "keep me"


def test_open_clip_layout_keeps_a_custom_preprocessing(tiny_openclip, tmp_path):
    """A config with its own mean/std (open_clip_config.json layout) comes back with them via local-dir."""
    import open_clip

    from conftest import TINY_OPENCLIP_CFG
    from fdalign.backends import load_clip
    from fdalign.exporting import _write_open_clip

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    cfg = tmp_path / "tiny-pp.json"
    cfg.write_text(json.dumps({"model_cfg": TINY_OPENCLIP_CFG, "preprocess_cfg": {"mean": mean, "std": std}}))
    backend = load_clip(None, pretrained=str(tiny_openclip["checkpoint"]), model_config=cfg)
    out = tmp_path / "exp"
    out.mkdir()
    _write_open_clip(backend, out)
    _, _, pre = open_clip.create_model_and_transforms(f"local-dir:{out}")
    norm = pre.transforms[-1]
    assert tuple(norm.mean) == pytest.approx(mean) and tuple(norm.std) == pytest.approx(std)


def test_atomic_directory_keeps_the_old_folder_on_failure(tmp_path):
    from fdalign.io import atomic_directory

    out = tmp_path / "out"
    with atomic_directory(out) as d:
        (d / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, replace=True) as d:
            (d / "a.txt").write_text("two")
            raise RuntimeError("killed mid-export")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(FileExistsError):
        with atomic_directory(out) as d:
            pass
    with atomic_directory(out, replace=True) as d:
        (d / "b.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left behind


def test_export_refuses_a_model_that_does_not_reproduce_the_run(oc_run, tmp_path, monkeypatch, capsys):
    import fdalign.exporting as ex

    real = ex._write_open_clip

    def broken(backend, out):  # e.g. a writer that saved the image tower wrongly
        from safetensors.torch import load_file, save_file

        files = real(backend, out)
        state = load_file(out / files["weights"])
        state["visual.proj"] = state["visual.proj"] * 2
        save_file(state, out / files["weights"])
        return files

    monkeypatch.setattr(ex, "_write_open_clip", broken)
    out = tmp_path / "exp"
    assert main(["export", str(oc_run), "--format", "open_clip", "--out", str(out)]) == 2
    assert "does not reproduce" in _one_line(capsys, "export")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_hf_export_writes_an_image_processor_when_the_base_had_none(tiny_hf, tmp_path):
    from transformers import CLIPImageProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN

    from fdalign.backends import load_clip
    from fdalign.exporting import _image_processor

    src = tmp_path / "no_processor"
    shutil.copytree(tiny_hf["dir"], src)
    (src / "preprocessor_config.json").unlink()
    with pytest.warns(UserWarning, match="no image processor"):
        backend = load_clip(f"hf:{src}")
    _image_processor(backend).save_pretrained(tmp_path / "out")
    proc = CLIPImageProcessor.from_pretrained(tmp_path / "out")
    assert tuple(proc.image_mean) == pytest.approx(OPENAI_CLIP_MEAN)
    assert proc.crop_size == {"height": 32, "width": 32} and proc.resample == 3  # bicubic, the fallback's
