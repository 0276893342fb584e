"""Hostile or damaged inputs, met as a user meets them on the command line (issue 21 items 8, 9, F7, F8).

Non-UTF-8 file names, a ``predict --out`` that is a folder, damaged ``config.yaml`` / ``world.json``,
``--lr nan``, a 20000 x 20000 image and a class folder named ``...``: each must give one line naming the
file (exit 2) or work, never a traceback, and never drop or reuse data without a word.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import zlib

import pytest

from _synth import make_imagefolder
from fdalign.cli import main
from test_messages import _error as _one_line_error  # the shared command lines
from test_messages import _model, _train, data, train_run, trained  # noqa: F401 (fixtures: a plain data set and a run trained on it)

CLASSES = ["red apple", "green leaf", "blue sky"]
ODD = b"caf\xe9.png"  # Latin-1 bytes: not valid UTF-8, as on an old camera card or a Windows share

pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """An ImageFolder whose every split holds one image with a non-UTF-8 name (a byte name on disk)."""
    root = make_imagefolder(tmp_path_factory.mktemp("odd") / "data", CLASSES, n_train=3, n_test=2, n_val=3)
    for split in ("train", "val", "test"):
        d = os.fsencode(root / split / "red_apple")
        os.rename(os.path.join(d, b"red_apple_0000.png"), os.path.join(d, ODD))
    return root


@pytest.fixture(scope="module")
def odd_run(tiny_openclip, odd_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("odd_run") / "run"
    train_run(tiny_openclip, odd_data, out, "--shots", "3")  # every train image, the odd one too
    return out


# ------------------------------------------------------------------------------------------------
# item 8: non-UTF-8 file names


def test_non_utf8_names_train_with_the_image_in_the_shots(odd_run, odd_data):
    from fdalign.data import load_split

    train = load_split(odd_run / "splits" / "train.json")  # the JSON round-trips the byte name
    names = [os.fsencode(train.resolve(s)) for s in train.samples]
    assert os.path.join(os.fsencode(odd_data / "train" / "red_apple"), ODD) in names
    assert all(os.path.isfile(n) for n in names)
    assert (odd_run / "report.md").is_file() and (odd_run / "metrics.json").is_file()


def test_non_utf8_names_zeroshot_and_eval(tiny_openclip, odd_data, odd_run, tmp_path, capsys):
    assert (
        main(
            [
                "zeroshot",
                *_model(tiny_openclip),
                "--data",
                str(odd_data),
                "--templates",
                "tip7",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path / "zs"),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert doc["metrics"]["test"]["zero-shot"]["n"] == 6  # the odd test image is scored, not dropped
    assert main(["eval", str(odd_run), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["test"]["fine-tuned"]["n"] == 6


def test_non_utf8_names_predict_writes_its_row(odd_run, odd_data, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert (
        main(["predict", str(odd_run), str(odd_data / "test"), "--out", str(out), "--device", "cpu", "--no-progress"])
        == 0
    )
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == 6 and all(r["top1"] and not r["error"] for r in rows)
    assert any(r["path"].endswith("caf\\udce9.png") for r in rows)  # the byte shown as an escape


def test_data_check_notes_non_utf8_names(odd_data, capsys):
    assert main(["data", "check", str(odd_data), "--no-progress"]) == 0  # every command reads them
    out = capsys.readouterr().out
    assert "3 problem" not in out and "not valid UTF-8" in out and "caf\\udce9.png" in out


# ------------------------------------------------------------------------------------------------
# item 9: predict --out is a folder


def test_predict_out_folder_fails_before_inference(trained, data, tmp_path, capsys, monkeypatch):
    import fdalign.prediction

    monkeypatch.setattr(fdalign.prediction, "predict", lambda *a, **k: pytest.fail("inference ran before the check"))
    (tmp_path / "preds").mkdir()
    assert main(["predict", str(trained["run"]), str(data / "test"), "--out", str(tmp_path / "preds")]) == 2
    err = _one_line_error(capsys, "predict")
    assert "is a directory" in err and "preds/predictions.csv" in err


# ------------------------------------------------------------------------------------------------
# F7: damaged or foreign state files, --lr nan, a 20000 x 20000 image


def _damage(kind: str, path):
    text = path.read_text()
    if kind == "non-utf8":
        path.write_bytes(b"model: \xff\xfe\n" + text.encode())
    elif kind == "list":
        path.write_text("[1, 2]\n")
    elif kind == "empty":
        path.write_text("")
    elif kind == "cut":  # at a line boundary, before the ood: line
        lines = text.splitlines(keepends=True)
        cut = next(i for i, line in enumerate(lines) if line.startswith("ood:"))
        path.write_text("".join(lines[:cut]))


@pytest.mark.parametrize(
    "kind,said",
    [
        ("non-utf8", "is not UTF-8 text"),
        ("list", "must be a mapping"),
        ("empty", "is empty"),
        ("cut", "lacks ood, out"),
    ],
)
def test_damaged_run_config_is_named(trained, data, tmp_path, capsys, kind, said):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    _damage(kind, run / "config.yaml")
    for command in (
        ["eval", str(run), "--device", "cpu", "--no-progress"],
        ["export", str(run), "--format", "open_clip", "--out", str(tmp_path / "e")],
        ["predict", str(run), str(data / "test"), "--out", str(tmp_path / "p.csv")],
    ):
        assert main(command) == 2, command
        err = _one_line_error(capsys, command[0])
        assert f"{run / 'config.yaml'}" in err and said in err, err
    assert not (run / "eval").exists()  # no evaluation that silently dropped the OOD sets


def test_cut_run_config_with_ood_sets_is_refused_not_evaluated_without_them(tiny_openclip, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=2, n_test=2, n_val=2)
    ood = make_imagefolder(tmp_path / "o", CLASSES, n_train=0, n_test=2, seed=3) / "test"
    run = tmp_path / "run"
    assert main(_train(tiny_openclip, data, run, "--ood", f"shifted={ood}", "--wiseft-alphas", "0", "1")) == 0
    _damage("cut", run / "config.yaml")
    assert main(["eval", str(run), "--device", "cpu", "--no-progress"]) == 2
    assert "cut short" in _one_line_error(capsys, "eval")


def test_nan_options_are_refused_by_name(tiny_openclip, tmp_path, capsys):
    for flag in ("--lr", "--grad-clip", "--beta"):
        assert main(_train(tiny_openclip, tmp_path / "none", tmp_path / "r", flag, "nan")) == 2
        err = _one_line_error(capsys, "train")
        assert f"{flag[2:].replace('-', '_')} = nan is not a number" in err, err


def _bomb_png() -> bytes:
    """A PNG whose header claims 20000 x 20000 pixels (PIL refuses it as a decompression bomb on open)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_image_without_verification_is_one_line(tiny_openclip, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=2, n_test=2, n_val=2)
    for p in (data / "train" / "red_apple").iterdir():
        p.write_bytes(_bomb_png())
    assert main(_train(tiny_openclip, data, tmp_path / "run", "--no-verify-images")) == 2
    err = _one_line_error(capsys, "train")
    assert "red_apple" in err and "DecompressionBombError" in err


@pytest.mark.parametrize("content", [b"[1, 2]\n", b"\xff\xfe{}"])
def test_damaged_world_manifest_is_named(tmp_path, capsys, content):
    out = tmp_path / "w"
    args = [
        "world",
        "render",
        "--out",
        str(out),
        "--train-per-class",
        "1",
        "--val-per-class",
        "1",
        "--test-per-class",
        "1",
        "--classes",
        "circle",
        "square",
        "--ood-styles",
        "sketch",
        "--no-progress",
    ]
    assert main(args) == 0
    (out / "world.json").write_bytes(content)
    assert main(args) == 2
    assert str(out / "world.json") in _one_line_error(capsys, "world")


# ------------------------------------------------------------------------------------------------
# F8: world render over a damaged world; a class folder named '...'


def test_world_render_again_checks_and_repairs_recorded_hashes(tmp_path, capsys):
    import hashlib

    out = tmp_path / "w"
    args = [
        "world",
        "render",
        "--out",
        str(out),
        "--train-per-class",
        "2",
        "--val-per-class",
        "1",
        "--test-per-class",
        "1",
        "--classes",
        "circle",
        "square",
        "--ood-styles",
        "sketch",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "wrote 10 images" in capsys.readouterr().out
    recorded = json.loads((out / "world.json").read_text())["files"]
    gone, broken = out / "train" / "circle" / "photo-0001.png", out / "test" / "square" / "photo-0000.png"
    gone.unlink()
    broken.write_bytes(broken.read_bytes()[:-20])
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "wrote 10 images" not in said and "checked 10 images" in said
    assert "1 missing (train/circle/photo-0001.png)" in said and "1 changed (test/square/photo-0000.png)" in said
    for rel, want in recorded.items():  # every file is back to the bytes world.json records
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == want, rel
    assert main(args) == 0
    assert "all match" in capsys.readouterr().out


def test_class_folder_named_dots_is_not_dropped_silently(tiny_openclip, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=2, n_test=0)
    (data / "train" / "blue_sky").rename(data / "train" / "...")
    assert main(["data", "check", str(data), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "'...'" in captured.out and "skipped" in captured.out
    assert "'...'" in captured.err  # the loader says it too, whatever command reads the folder
