"""The authors' ``indices/<ds>/shot_K-seed_S.json`` files as a reproducer uses them: K and seed from
the file, the test split from the matching CoOp ``split_zhou_*.json``, never val as the headline."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from _synth import make_coop_split, write_templates
from fdalign.cli import main

CLASSES = ["banded", "dotted", "zigzagged"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy."]


pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def dtd(tmp_path_factory) -> dict:
    """CoOp's DTD layout (images/ + split_zhou_DescribableTextures.json) and an index file of the
    authors' format, shot_2-seed_3.json, whose impaths are absolute on another machine."""
    d = tmp_path_factory.mktemp("dtd_index")
    split_json = make_coop_split(d / "dtd", CLASSES, n_train=4, n_test=2, n_val=2, name="DescribableTextures", size=8)
    lists = json.loads(split_json.read_text())

    def part(name, per_class):
        rows, idx = [], []
        for c in range(len(CLASSES)):
            mine = [i for i, r in enumerate(lists[name]) if r[1] == c][:per_class]
            idx += mine
            rows += [
                {"impath": f"/home/author/DATA/dtd/images/{lists[name][i][0]}", "label": c, "classname": CLASSES[c]}
                for i in mine
            ]
        return {"data": rows, "indices": idx}

    index = d / "indices" / "dtd" / "shot_2-seed_3.json"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps({"train": part("train", 2), "val": part("val", 2)}))
    tfile = write_templates(d / "templates.txt", TEMPLATES)
    return {
        "index": index,
        "images": d / "dtd" / "images",
        "split": split_json,
        "lists": lists,
        "templates": tfile,
        "dir": d,
    }


def _train(tiny, dtd, out, *extra, index=None):
    return main(
        [
            "train",
            "--model-config",
            str(tiny["config"]),
            "--pretrained",
            str(tiny["checkpoint"]),
            "--data",
            str(index or dtd["index"]),
            "--image-root",
            str(dtd["images"]),
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--templates",
            str(dtd["templates"]),
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
            "--out",
            str(out),
            *extra,
        ]
    )


def test_index_file_fixes_k_and_seed_and_brings_the_split_zhou_test_list(tiny_openclip, dtd, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_openclip, dtd, out) == 0, capsys.readouterr().err  # no --shots: K = 2 from the file
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["shots"], cfg["seed"], cfg["dataset_name"]) == (2, 3, "dtd")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["index_file"] == {"path": str(dtd["index"]), "shots": 2, "seed": 3}
    assert list(doc["metrics"]) == ["test"] and doc["metrics"]["test"]["zero-shot"]["n"] == 6  # split_zhou test
    assert "K = 2, its seed 3" in (out / "report.md").read_text()

    from fdalign.data import load_split

    index = json.loads(dtd["index"].read_text())
    for part in ("train", "val"):  # exactly the file's images, found through its indices
        got = sorted(x.path for x in load_split(out / "splits" / f"{part}.json").samples)
        assert got == sorted(dtd["lists"][part][i][0] for i in index[part]["indices"])


def test_explicit_shots_that_disagree_with_the_index_file_are_refused(tiny_openclip, dtd, tmp_path, capsys):
    assert _train(tiny_openclip, dtd, tmp_path / "run", "--shots", "4") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fdalign train: error: --shots 4 disagrees with the index file {dtd['index']}, which holds 2 "
        "images per class; K is taken from the file: drop --shots, or pass the shot_4-seed_S.json file"
    )
    assert _train(tiny_openclip, dtd, tmp_path / "run2", "--shots", "2", "--epochs", "0") == 2  # agrees: goes on
    assert "disagrees" not in capsys.readouterr().err


def test_without_a_test_split_no_test_accuracy_is_reported(tiny_openclip, dtd, tmp_path, capsys):
    alone = tmp_path / "elsewhere" / "indices" / "dtd" / "shot_2-seed_3.json"  # no split_zhou anywhere near
    alone.parent.mkdir(parents=True)
    shutil.copy(dtd["index"], alone)
    images = tmp_path / "elsewhere" / "images"
    shutil.copytree(dtd["images"], images)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(alone),
            "--image-root",
            str(images),
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--templates",
            str(dtd["templates"]),
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
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "warning: no test accuracy exists: " in err and "--split-file split_zhou_<Name>.json" in err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["metrics"] == {} and doc["test"].startswith("no test accuracy exists")
    report = (out / "report.md").read_text()
    assert "**no test accuracy exists" in report and "val top-1" not in report

    rc = main(
        [
            "zeroshot",
            "--model",
            "tiny",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(alone),
            "--image-root",
            str(images),
        ]
    )
    assert rc == 2
    assert (
        "has no test split, so no test accuracy exists (its val images are selection data); pass "
        "--split-file" in capsys.readouterr().err
    )


def test_authors_spelling_and_index_path_pick_the_released_lr(tmp_path, capsys):
    from fdalign.train.config import TrainConfig, guess_dataset_name

    # REFERENCE.md, stanford cars: LP 6,5,2,1,0.9 / full 5e-5 (shots 1,2,4,8,16)
    assert (TrainConfig.released("StandfordCars", 16).lr, TrainConfig.released("StandfordCars", 16).lp_lr) == (
        5e-5,
        0.9,
    )
    assert TrainConfig.released("StandfordCars", 1).lp_lr == 6
    index = tmp_path / "indices" / "StandfordCars" / "shot_8-seed_2.json"
    assert guess_dataset_name(str(index)) == "StandfordCars"
    assert guess_dataset_name(str(tmp_path / "indices" / "dtd" / "my_split.json")) == "dtd"
    assert guess_dataset_name(str(tmp_path / "imagenet" / "images")) == "imagenet"
    index.parent.mkdir(parents=True)
    index.write_text(json.dumps({"train": {"data": []}, "val": {"data": []}}))
    assert main(["train", "--preset", "released", "--data", str(index), "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["dataset_name"], cfg["shots"], cfg["seed"], cfg["lr"], cfg["lp_lr"]) == ("StandfordCars", 8, 2, 5e-5, 1)


def test_several_split_files_beside_the_index_file_ask_for_one(dtd, tmp_path):
    from fdalign.data.fewshot import find_split_file
    from fdalign.errors import FDAlignError

    d = tmp_path / "indices" / "dtd"
    d.mkdir(parents=True)
    for name in ("split_zhou_A.json", "split_zhou_B.json"):
        (d / name).write_text("{}")
    with pytest.raises(
        FDAlignError,
        match=r"holds several split files \(split_zhou_A.json, split_zhou_B.json\); "
        r"pass --split-file with the one shot_2-seed_1.json was drawn from",
    ):
        find_split_file(d / "shot_2-seed_1.json", None)
    assert find_split_file(dtd["index"], dtd["images"]) == dtd["split"]  # beside the images folder


def test_index_file_without_val_and_folder_without_test_are_named(tiny_openclip, dtd, tmp_path, capsys):
    from fdalign.data.fewshot import load_fewshot_indices
    from fdalign.errors import FDAlignError

    only_train = tmp_path / "indices" / "dtd" / "shot_2-seed_1.json"
    only_train.parent.mkdir(parents=True)
    only_train.write_text(json.dumps({"train": json.loads(dtd["index"].read_text())["train"]}))
    assert _train(tiny_openclip, dtd, tmp_path / "run", "--split-file", str(dtd["split"]), index=only_train) == 2
    assert f"index file {only_train} has no 'val' part to select the epoch on" in capsys.readouterr().err
    train_only = tmp_path / "train_only"
    shutil.copytree(dtd["images"], train_only / "train")
    with pytest.raises(
        FDAlignError, match=r"--split-file .* has no test split \(no test/ folder, nor train/ \+ val/\)"
    ):
        load_fewshot_indices(dtd["index"], dtd["images"], split_file=train_only)
