"""`fdalign data check` on rendered worlds and prepared folders (issue 21 items 10 and 11; prepared.json)."""

from __future__ import annotations

import json

import pytest

import _archives as A
from fdalign.cli import main
from fdalign.data.check import claimed_benchmark

RENDER = [
    "world",
    "render",
    "--id-styles",
    "photo",
    "--ood-styles",
    "sketch",
    "--train-per-class",
    "2",
    "--val-per-class",
    "1",
    "--test-per-class",
    "2",
    "--image-size",
    "16",
    "--classes",
    "circle",
    "star",
    "--no-progress",
]


def test_world_sketch_alias_is_not_imagenet_sketch(tmp_path, capsys):
    w = tmp_path / "world"
    assert main(RENDER + ["--out", str(w)]) == 0
    capsys.readouterr()
    # what `world render` itself suggests
    assert main(["data", "check", str(w), "--ood", f"sketch={w}/ood/sketch", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "50889" not in out and "OK: no problems found" in out
    # the full name is a claim: that set is checked against ImageNet-Sketch's size
    assert main(["data", "check", str(w), "--ood", f"imagenet-sketch={w}/ood/sketch", "--no-progress"]) == 1
    assert "4 images but ImageNet-Sketch has 50889" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name,size,claimed",
    [
        ("sketch", 288, None),
        ("sketch", 50000, "ImageNet-Sketch"),
        ("imagenet-sketch", 288, "ImageNet-Sketch"),
        ("a", 7400, "ImageNet-A"),
        ("a", 12, None),
        ("r", 30000, "ImageNet-R"),
        ("v2", 500, None),
        ("imagenet_v2", 500, "ImageNet-V2"),
        ("painting", 50889, None),
    ],
)
def test_a_short_alias_claims_a_benchmark_only_near_its_size(name, size, claimed):
    b = claimed_benchmark(name, size)
    assert (b.name if b else None) == claimed


def test_interrupted_world_render_is_reported_unfinished(tmp_path, monkeypatch, capsys):
    from fdalign.world import generator

    real, calls = generator.render_grid, []

    def dies_on_test_block(*a, **k):  # blocks: train, val, then test
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generator, "render_grid", dies_on_test_block)
    w = tmp_path / "world"
    assert main(RENDER + ["--out", str(w)]) == 130
    assert (w / "val").is_dir() and not (w / "world.json").exists()
    capsys.readouterr()
    assert main(["data", "check", str(w), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is an unfinished world render" in err and "run the same `fdalign world render` command again" in err
    monkeypatch.setattr(generator, "render_grid", real)
    assert main(RENDER + ["--out", str(w)]) == 0
    assert main(["data", "check", str(w), "--no-progress"]) == 0


def test_prepared_folder_changed_since_prepare(tmp_path, capsys):
    m = A.coop("eurosat", tmp_path / "dl")
    exp = A.expect(tmp_path / "e.json", m["counts"])
    out = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "prepare",
                "eurosat",
                "--from",
                *map(str, m["from"]),
                "--split-file",
                str(m["split"]),
                "--out",
                str(out),
                "--expect-counts",
                str(exp),
                "--no-progress",
            ]
        )
        == 0
    )
    split = out / "eurosat" / "split_zhou_EuroSAT.json"
    capsys.readouterr()
    assert main(["data", "check", str(split), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "prepared: EuroSAT by fdalign" in text and f"--expect-counts {exp} (NOT the published counts)" in text
    # the published-size check of the file name (EuroSAT: 8100) gives way to what prepare recorded
    assert "8100" not in text
    # a test image deleted after preparing: data check says what prepare recorded
    entry = json.loads(split.read_text())["test"][0][0]
    (out / "eurosat" / "2750" / entry).unlink()
    assert main(["data", "check", str(split), "--no-progress"]) == 1
    assert f"unreadable image {out / 'eurosat' / '2750' / entry}" in capsys.readouterr().out


def test_prepared_class_folders_compared_with_what_prepare_recorded(tmp_path, capsys):
    m = A.cub(tmp_path / "dl")
    exp = A.expect(tmp_path / "e.json", m["counts"])
    out = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "prepare",
                "cub",
                "--from",
                *map(str, m["from"]),
                "--out",
                str(out),
                "--expect-counts",
                str(exp),
                "--no-progress",
            ]
        )
        == 0
    )
    images = out / "CUB_200_2011" / "images"
    next(next(images.iterdir()).iterdir()).unlink()
    capsys.readouterr()
    assert main(["data", "check", str(images), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "test: 5 images in 2 classes, but" in text and "recorded 6 in 2 when it was prepared (1 missing)" in text
