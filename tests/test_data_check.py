"""Bad-image detection and ``fdalign data check`` / ``fdalign data sample``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from _synth import make_coop_split, make_imagefolder, truncate_file
from fdalign.cli import main
from fdalign.data import find_benchmark, load_split, open_dataset, verify_images
from fdalign.errors import FDAlignError


@pytest.fixture()
def broken(tmp_path):
    root = make_imagefolder(tmp_path / "d", ["a", "b"], n_train=3, n_test=2, size=16)
    train = open_dataset(root)["train"]
    bad = Path(train.resolve(train.samples[4]))
    truncate_file(bad)
    return train, str(bad)


def test_truncated_image_is_detected_even_when_pil_allows_truncation(broken):
    train, bad = broken
    with Image.open(bad) as im:  # opens fine: only decoding fails
        assert im.size == (16, 16)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(FDAlignError, match=rf"image {bad} in split 'train' cannot be read"):
            verify_images(train, on_error="raise", workers=2)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_skip_bad_images_warns_with_count(broken, caplog):
    train, bad = broken
    with caplog.at_level(logging.WARNING, logger="fdalign.data.check"):
        kept, bads = verify_images(train, on_error="skip", workers=2)
    assert bads == [bad]
    assert len(kept) == len(train) - 1 and bad not in [kept.resolve(s) for s in kept.samples]
    assert "skipping 1 unreadable image(s) of 6" in caplog.text and bad in caplog.text


def test_verify_good_split_is_unchanged(tmp_path):
    train = open_dataset(make_imagefolder(tmp_path, ["a"], n_train=3, n_test=1, size=4))["train"]
    kept, bads = verify_images(train, on_error="raise")
    assert kept is train and bads == []


def test_find_benchmark_aliases():
    assert find_benchmark("imagenet_sketch").name == "ImageNet-Sketch"
    assert find_benchmark("oxford pets").test_size == 3669
    with pytest.raises(FDAlignError, match="unknown benchmark"):
        find_benchmark("mnist")


def test_cli_check_good_folder(tmp_path, capsys):
    root = make_imagefolder(tmp_path, ["a", "b", "c"], n_train=4, n_test=2, size=4)
    assert main(["data", "check", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found" in out
    assert "train" in out and "12" in out  # split size


def test_cli_check_broken_folder(broken, capsys):
    train, bad = broken
    root = Path(train.root).parent
    assert main(["data", "check", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and f"unreadable image {bad}" in out


def test_cli_check_benchmark_size_from_filename(tmp_path, capsys):
    split = make_coop_split(tmp_path, [f"c{i}" for i in range(10)], n_train=1, n_test=2, name="EuroSAT", size=4)
    assert main(["data", "check", str(split), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "EuroSAT" in out and "20 images but EuroSAT has 8100 (8080 missing)" in out
    # the right class count raises no class problem
    assert "classes but EuroSAT" not in out


def test_cli_check_missing_files_are_problems(tmp_path, capsys):
    split = make_coop_split(tmp_path, ["a", "b"], n_train=1, n_test=1, size=4)
    (tmp_path / "images" / "b" / "b_0001.png").unlink()
    assert main(["data", "check", str(split), "--no-progress", "--benchmark", "DTD"]) == 1
    out = capsys.readouterr().out
    assert "unreadable image" in out and "b_0001.png" in out
    assert "2 classes but DTD has 47" in out


def test_cli_check_user_error_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_sample_writes_replayable_splits(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "d", ["a", "b"], n_train=6, n_test=1, size=4)
    out = tmp_path / "shots"
    assert main(["data", "sample", str(root), "--shots", "2", "--seed", "7", "--out", str(out)]) == 0
    train = load_split(out / "train.json")
    val = open_dataset(out / "val.json")["val"]
    assert train.class_counts() == [2, 2] and val.class_counts() == [2, 2]
    assert not {s.path for s in train.samples} & {s.path for s in val.samples}
    assert json.loads((out / "train.json").read_text())["format"] == "fdalign-split"
