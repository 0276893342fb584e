"""`fdalign prototypes` end to end on the tiny random open_clip model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from fdalign.cli import main


def _args(tiny, classes, out, *extra):
    return [
        "prototypes",
        "--model",
        "tiny",
        "--pretrained",
        str(tiny["checkpoint"]),
        "--model-config",
        str(tiny["config"]),
        "--classes",
        str(classes),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def classes_file(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("cat\ndog\nsea lion\n")
    return f


def test_writes_three_tensors(tiny_openclip, classes_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FDALIGN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "protos.safetensors"
    assert main(_args(tiny_openclip, classes_file, out, "--templates", "openai80", "--batch-size", "64")) == 0
    with safe_open(str(out), framework="pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        meta = f.metadata()
    assert shapes == {"class_prototypes": (3, 32), "spurious_prototypes": (80, 32), "corrected_prototypes": (20, 32)}
    assert dtypes == {torch.float32}
    dropped = json.loads(meta["dropped_templates"])
    assert len(dropped) == 20 and len(json.loads(meta["templates"])) == 80
    printed = capsys.readouterr().out
    assert "C=3" in printed and "M=80" in printed and "D=32" in printed and str(out) in printed
    assert all(t in printed for t in dropped)
    assert len(list((tmp_path / "cache" / "prompt_features").glob("*.safetensors"))) == 1


def test_no_spc_and_template_file(tiny_openclip, classes_file, tmp_path):
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\n# comment\nart of the {}.\n")
    out = tmp_path / "p.safetensors"
    assert main(_args(tiny_openclip, classes_file, out, "--templates", str(tpl), "--no-spc", "--no-cache")) == 0
    with safe_open(str(out), framework="pt") as f:
        assert sorted(f.keys()) == ["class_prototypes", "spurious_prototypes"]
        assert tuple(f.get_tensor("spurious_prototypes").shape) == (2, 32)


def test_missing_classes_file_exits_2(tmp_path, capsys):
    code = main(
        [
            "prototypes",
            "--model",
            "tiny",
            "--classes",
            str(tmp_path / "nope.txt"),
            "--out",
            str(tmp_path / "p.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope.txt" in err and err.startswith("fdalign prototypes: error:")
    assert not (tmp_path / "p.safetensors").exists()


def test_bad_template_file_exits_2(tmp_path, classes_file, capsys):
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\nno placeholder here\n")
    code = main(
        [
            "prototypes",
            "--model",
            "tiny",
            "--classes",
            str(classes_file),
            "--templates",
            str(tpl),
            "--out",
            str(tmp_path / "p.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"{tpl}:2" in err and "no placeholder here" in err and err.count("\n") == 1


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prototypes", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in (
        "--model",
        "--pretrained",
        "--model-config",
        "--classes",
        "--templates",
        "--spc-keep",
        "--spc-k",
        "--spc-seed",
        "--no-spc",
        "--batch-size",
        "--device",
        "--no-cache",
        "--out",
    ):
        assert opt in text
