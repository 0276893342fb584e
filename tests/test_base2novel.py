"""Base-to-novel: the class split, no novel class image or name before evaluation (checked by content:
what the text encoder is given and which image files are opened), each test half scored among its own
classes, and the harmonic mean recomputed from the runs' files."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import fdalign
from _synth import make_imagefolder, tiny_train_config, write_templates
from fdalign.data.classsplit import base_class_indices, first_half, restrict_classes
from fdalign.data.opener import open_dataset
from fdalign.errors import FDAlignError

# 5 classes: first-half = ceil(5/2) = 3. Folder (= label) order is sorted, so NOT this list's order.
CLASSES = ["red apple", "green leaf", "blue sky", "yellow sun", "purple grape"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}."]

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("b2n")
    root = make_imagefolder(d / "data", CLASSES, n_train=3, n_val=2, n_test=4, seed=0)
    tfile = write_templates(d / "templates.txt", TEMPLATES)
    by_label = sorted(c.replace(" ", "_") for c in CLASSES)  # label order: sorted folders
    return {
        "data": root,
        "templates": tfile,
        "base": [f.replace("_", " ") for f in by_label[:3]],
        "novel": [f.replace("_", " ") for f in by_label[3:]],
    }


def _config(tiny, mini, out, **kw):
    return tiny_train_config(
        tiny,
        mini["data"],
        mini["templates"],
        out,
        spc_keep=3,
        spc_k=2,
        beta=1.0,
        wiseft_alphas=[0.0, 0.5, 1.0],
        base_classes="first-half",
        **kw,
    )


def test_first_half_is_ceil_in_label_order():
    assert first_half(5) == [0, 1, 2] and first_half(4) == [0, 1] and first_half(24) == list(range(12))
    names = ["b", "a", "c"]  # label order is the data's, never re-sorted by name
    assert base_class_indices("first-half", names) == [0, 1]


def test_base_class_file_by_name_or_folder(tmp_path, mini):
    split = open_dataset(mini["data"])["train"]
    f = tmp_path / "base.txt"
    f.write_text("yellow_sun\nBlue Sky\n")
    idx = base_class_indices(str(f), split.classnames, split.class_keys)
    assert [split.classnames[i] for i in idx] == ["blue sky", "yellow sun"]
    r = restrict_classes(split, idx)
    assert r.classnames == ["blue sky", "yellow sun"] and r.class_keys == ["blue_sky", "yellow_sun"]
    assert sorted(set(r.labels)) == [0, 1]
    for s in r.samples:  # relabelled to the new order, images of those classes only
        assert s.path.split("/")[0] == r.class_keys[s.label]
    assert len(r) == 2 * 3
    for bad in ("pink cloud\n", "\n", "".join(f"{c}\n" for c in CLASSES)):
        f.write_text(bad)
        with pytest.raises(FDAlignError, match="base-classes"):
            base_class_indices(str(f), split.classnames, split.class_keys)


def _spy(monkeypatch):
    """Record, in order, every prompt given to the text encoder, every image file opened, and the moment
    the last selection (the WiSE-FT weight on val) has been made."""
    import PIL.Image

    import fdalign.backends as backends
    import fdalign.workflows.kshot as kshot

    events = []
    load = backends.load_clip

    def load_clip(*a, **kw):
        b = load(*a, **kw)
        enc = b.encode_text

        def encode_text(texts, *x, **y):
            events.append(("text", list(texts)))
            return enc(texts, *x, **y)

        b.encode_text = encode_text
        return b

    opened = PIL.Image.open

    def open_(fp, *a, **kw):
        events.append(("image", str(fp)))
        return opened(fp, *a, **kw)

    rows = kshot._wiseft_rows

    def wiseft_rows(*a, **kw):
        out = rows(*a, **kw)
        events.append(("selected", None))
        return out

    monkeypatch.setattr(backends, "load_clip", load_clip)
    monkeypatch.setattr(PIL.Image, "open", open_)
    monkeypatch.setattr(kshot, "_wiseft_rows", wiseft_rows)
    return events


def _protos(tiny, classes):
    """``(backend, [C, D] prototypes of classes)``: mean of the normalised prompt features, renormalised."""
    from fdalign.backends import load_clip

    b = load_clip(None, pretrained=str(tiny["checkpoint"]), model_config=str(tiny["config"]), device="cpu")
    text = b.encode_text([t.replace("{}", c) for c in classes for t in TEMPLATES]).view(
        len(classes), len(TEMPLATES), -1
    )
    return b, F.normalize(F.normalize(text, dim=-1).mean(1), dim=-1)


def _zero_shot_top1(tiny, mini, classes, split_dir):
    """Zero-shot top-1 on the test images of ``classes`` among ``classes`` only, computed here from CLIP."""
    from fdalign.data import ImageDataset

    b, protos = _protos(tiny, classes)
    split = open_dataset(mini["data"])["test"]
    keep = [split.classnames.index(c) for c in classes]
    ds = ImageDataset(restrict_classes(split, keep), b.preprocess_eval())
    correct = 0
    with torch.no_grad():
        for img, y in ds:
            f = F.normalize(b.image_encoder(img[None]), dim=-1)
            correct += int((f @ protos.t()).argmax().item() == y)
    return 100.0 * correct / len(ds), len(ds)


def test_no_novel_class_reaches_training_or_selection(tiny_openclip, mini, tmp_path, monkeypatch):
    import fdalign.eval

    events = _spy(monkeypatch)
    evaluated, run_evaluation = {}, fdalign.eval.run_evaluation

    def spy_evaluation(models, sets, *a, **kw):
        evaluated.update({name: dict(models) for name in sets})
        return run_evaluation(models, sets, *a, **kw)

    monkeypatch.setattr(fdalign.eval, "run_evaluation", spy_evaluation)
    out = tmp_path / "run"
    run = fdalign.finetune(_config(tiny_openclip, mini, out))
    cut = events.index(("selected", None))
    before, after = events[:cut], events[cut + 1 :]
    novel_folders = {c.replace(" ", "_") for c in mini["novel"]}
    base_folders = {c.replace(" ", "_") for c in mini["base"]}

    texts_before = [t for kind, ts in before if kind == "text" for t in ts]
    assert texts_before, "the spy saw no prompt"
    for t in texts_before:
        assert not any(n in t for n in mini["novel"]), t
    assert {t for t in texts_before} == {tp.replace("{}", c) for c in mini["base"] for tp in TEMPLATES}
    images_before = [p for kind, p in before if kind == "image"]
    assert images_before
    for p in images_before:
        parts = set(p.replace("\\", "/").split("/"))
        assert parts & base_folders and not parts & novel_folders, p
        assert "/test/" not in p.replace("\\", "/"), p  # nor a test image, base or novel
    # after selection the novel classes are scored (the spy does see them)
    texts_after = [t for kind, ts in after if kind == "text" for t in ts]
    assert {tp.replace("{}", c) for c in mini["novel"] for tp in TEMPLATES} <= set(texts_after)
    assert any(set(p.split("/")) & novel_folders for kind, p in after if kind == "image")

    for name in ("train", "val"):  # the saved splits, by content
        saved = json.loads((out / "splits" / f"{name}.json").read_text())
        assert saved["classnames"] == mini["base"]
        assert all(path.split("/")[0] in base_folders for path, *_ in saved["samples"]), name
        assert all(saved["class_keys"][label] == path.split("/")[0] for path, label, *_ in saved["samples"])

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["class_split"] == {"rule": "first-half", "base": mini["base"], "novel": mini["novel"]}
    assert doc["roles"]["novel"] == "novel" and doc["roles"]["test"] == "test"
    # each half scored among its own classes: zero-shot CLIP, recomputed here
    for classes, name in ((mini["novel"], "novel"), (mini["base"], "test")):
        top1, n = _zero_shot_top1(tiny_openclip, mini, classes, name)
        assert doc["metrics"][name]["zero-shot"]["n"] == n == 4 * len(classes)
        assert doc["metrics"][name]["zero-shot"]["top1"] == pytest.approx(top1)
    # every row's own encoder, with a head of the novel classes' text prototypes only
    _, novel_protos = _protos(tiny_openclip, mini["novel"])
    for row, (encoder, head) in evaluated["novel"].items():
        assert encoder is run.models[row][0], row
        assert torch.allclose(head.prototypes.cpu(), novel_protos, atol=1e-5), row
    assert run.metrics["novel"].keys() == run.metrics["test"].keys() == {"zero-shot", "fine-tuned", "wiseft-0.5"}


def test_harmonic_mean_from_run_files(tiny_openclip, mini, tmp_path):
    from fdalign.experiments.report import build_report

    root = tmp_path / "runs"
    for seed in (1, 2):
        fdalign.finetune(_config(tiny_openclip, mini, root / f"s{seed}", seed=seed))
    rep = build_report([root], tmp_path / "report", plots=False, features=False)
    groups = rep.summary["protocols"]["base2novel"]["groups"]
    assert len(groups) == 1
    rows = groups[0]["rows"]
    assert set(rows) >= {"zero-shot", "fd-align", "wise-ft of fd-align"}
    docs = [json.loads((root / f"s{s}" / "metrics.json").read_text()) for s in (1, 2)]
    for row, model in (("zero-shot", "zero-shot"), ("fd-align", "fine-tuned")):
        base = [d["metrics"]["test"][model]["top1"] for d in docs]
        novel = [d["metrics"]["novel"][model]["top1"] for d in docs]
        b, n = sum(base) / 2, sum(novel) / 2
        assert rows[row]["base"]["mean"] == pytest.approx(b)
        assert rows[row]["novel"]["mean"] == pytest.approx(n)
        hm = 2 / (1 / b + 1 / n) if b and n else 0.0  # HM of the means (CoCoOp), not the mean of HMs
        assert rows[row]["hm"] == pytest.approx(hm)
    sel = [json.loads((root / f"s{s}" / "selection.json").read_text())["wiseft_alpha"]["chosen"] for s in (1, 2)]
    name = {0.0: "zero-shot", 1.0: "fine-tuned"}
    novel_w = [d["metrics"]["novel"][name.get(a, f"wiseft-{a:g}")]["top1"] for d, a in zip(docs, sel)]
    assert rows["wise-ft of fd-align"]["novel"]["mean"] == pytest.approx(sum(novel_w) / 2)
    md = "\n".join(
        str(x) for _, items in [s for s in rep.sections if s[0] == "Base-to-novel generalisation"] for x in items
    )
    assert "HM" in md and not math.isnan(rows["fd-align"]["hm"])


def test_cli_base_classes_flag(tiny_openclip, mini, tmp_path, capsys):
    from fdalign.cli import main

    out = tmp_path / "cli"
    argv = [
        "train",
        "--model-config",
        str(tiny_openclip["config"]),
        "--pretrained",
        str(tiny_openclip["checkpoint"]),
        "--data",
        str(mini["data"]),
        "--shots",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--templates",
        str(mini["templates"]),
        "--spc-keep",
        "3",
        "--spc-k",
        "2",
        "--wiseft-alphas",
        "0",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--base-classes",
        "first-half",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    b, n = m["test"]["fine-tuned"]["top1"], m["novel"]["fine-tuned"]["top1"]
    hm = 2 * b * n / (b + n) if b + n else 0.0
    assert f"fine-tuned: {b:.2f} / {n:.2f} / {hm:.2f}" in text
    bad = tmp_path / "none.txt"
    assert main(argv[:-4] + ["--base-classes", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "base-classes" in capsys.readouterr().err
