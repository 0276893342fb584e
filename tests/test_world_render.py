"""`fdalign world render`: layout, determinism against the generator, resuming, refusing to mix."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from fdalign.cli import main
from fdalign.errors import FDAlignError
from fdalign.world.generator import render_grid
from fdalign.world.render import MANIFEST, SPEC_FILE, RenderConfig, block_seed, render_world

CLASSES = ("circle", "digit seven", "star")


def _cfg(**kw):
    base = dict(
        id_styles=("photo",),
        ood_styles=("sketch", "jpeg corrupted"),
        train_per_class=3,
        val_per_class=2,
        test_per_class=2,
        seed=5,
        image_size=16,
        classes=CLASSES,
        progress=False,
    )
    return RenderConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "w"
    assert (
        main(
            [
                "world",
                "render",
                "--out",
                str(root),
                "--id-styles",
                "photo",
                "--ood-styles",
                "sketch",
                "jpeg corrupted",
                "--train-per-class",
                "3",
                "--val-per-class",
                "2",
                "--test-per-class",
                "2",
                "--seed",
                "5",
                "--image-size",
                "16",
                "--classes",
                *CLASSES,
                "--no-progress",
            ]
        )
        == 0
    )
    return root


def test_layout_counts_and_imagefolder(world):
    from fdalign.data import open_dataset

    splits = open_dataset(str(world))
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].classnames == ["circle", "digit seven", "star"]  # folder digit_seven -> "digit seven"
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3 * 3, 2 * 3, 2 * 3]
    for style in ("sketch", "jpeg_corrupted"):
        ood = open_dataset(str(world / "ood" / style))
        assert len(ood["test"]) == 2 * 3
    doc = json.loads((world / MANIFEST).read_text())
    assert len(doc["files"]) == (3 + 2 + 2 + 2 + 2) * 3
    assert doc["sets"]["ood"] == {"sketch": "ood/sketch", "jpeg_corrupted": "ood/jpeg_corrupted"}
    assert not list(world.rglob(".*.tmp")) and not (world / SPEC_FILE).exists()


def test_pixels_are_the_generators_and_hashes_match(world):
    # independent of the renderer's loop: the generator's grid for (test, photo) and (ood, sketch)
    for split, style, folder in (("test", "photo", world / "test"), ("ood", "sketch", world / "ood" / "sketch")):
        batch = render_grid(2, block_seed(5, split, style), classes=list(CLASSES), styles=[style], image_size=16)
        for k, cls in enumerate(CLASSES):
            for i in range(2):
                name = f"photo-{i:04d}.png" if split == "test" else f"{i:04d}.png"
                got = np.asarray(Image.open(folder / cls.replace(" ", "_") / name).convert("RGB"))
                assert np.array_equal(got, batch.images[k * 2 + i]), (split, cls, i)
    doc = json.loads((world / MANIFEST).read_text())
    for rel, digest in list(doc["files"].items())[:5]:
        assert hashlib.sha256((world / rel).read_bytes()).hexdigest() == digest
    # train, val and test never share an image
    assert len(set(doc["files"].values())) == len(doc["files"])


def test_same_seed_same_files_other_seed_other_files(world, tmp_path):
    again = render_world(_cfg(), tmp_path / "again")
    assert json.loads(again.read_text())["files"] == json.loads((world / MANIFEST).read_text())["files"]
    other = json.loads(render_world(_cfg(seed=6), tmp_path / "other").read_text())["files"]
    assert other != json.loads(again.read_text())["files"]


def test_interrupted_render_resumes_without_rewriting(tmp_path):
    root = tmp_path / "w"
    full = json.loads(render_world(_cfg(), root).read_text())["files"]
    # an interruption: no manifest yet, the spec in place, one block half written
    (root / MANIFEST).unlink()
    (root / SPEC_FILE).write_text(json.dumps(_cfg().spec()))
    lost = root / "test" / "star" / "photo-0001.png"
    lost.unlink()
    kept = root / "test" / "circle" / "photo-0000.png"  # same block as the lost file: that block is re-rendered
    mtime = kept.stat().st_mtime_ns
    assert json.loads(render_world(_cfg(), root).read_text())["files"] == full
    assert lost.is_file() and kept.stat().st_mtime_ns == mtime


def test_other_settings_or_foreign_folder_are_refused(world, tmp_path):
    with pytest.raises(FDAlignError, match="other settings.*seed"):
        render_world(_cfg(seed=7), world)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(FDAlignError, match="not a rendered world"):
        render_world(_cfg(), tmp_path / "mine")


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(id_styles=("photo",), ood_styles=("photo",)), ["--ood-styles", "held out"]),
        (dict(id_styles=("fotograph",)), ["--id-styles", "fotograph"]),
        (dict(classes=("circle", "blob")), ["--classes", "blob"]),
        (dict(test_per_class=0), ["--test-per-class"]),
    ],
)
def test_bad_options_are_user_errors(kw, words):
    with pytest.raises(FDAlignError) as e:
        _cfg(**kw).validate()
    assert all(w in str(e.value) for w in words)
