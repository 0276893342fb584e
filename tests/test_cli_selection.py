"""``fdalign train``'s choices are made on val images only, checked by content; its WiSE-FT rows mix the
encoder *and* the head; ``--model-config`` works without ``--model``."""

import shutil
from pathlib import Path

import pytest
import torch

import fdalign.eval
import fdalign.selection as selection_mod
from _synth import make_imagefolder
from fdalign.cli import main
from fdalign.data import load_split
from fdalign.data.hashing import file_sha256
from fdalign.selection import EvalSplit, check_disjoint
from fdalign.train import trainer as trainer_mod

CLASSES = ["red apple", "green leaf", "blue sky"]


pytestmark = pytest.mark.usefixtures("cli_env")


def _args(tiny, data, out, *extra):
    tfile = Path(out).parent / "templates.txt"
    tfile.write_text("a photo of a {}.\na drawing of a {}.\nart of the {}.\na {} toy.\n")
    return [
        "train",
        "--model-config",
        str(tiny["config"]),
        "--pretrained",
        str(tiny["checkpoint"]),
        "--data",
        str(data),
        "--shots",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "3",
        "--num-workers",
        "0",
        "--templates",
        str(tfile),
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
        *extra,
    ]


def _files(split):
    return [str(split.resolve(s)) for s in split.samples]


def test_selection_and_wiseft_use_val_images_and_mix_both_parts(tiny_openclip, tmp_path, monkeypatch, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=3, n_val=2, n_test=2, seed=0)
    seen_splits, captured = [], {}
    real_select, real_select_by, real_eval = trainer_mod.select, selection_mod.select_by, fdalign.eval.run_evaluation

    def spy_select(what, scores, split, *a, **k):
        seen_splits.append((what, split))
        return real_select(what, scores, split, *a, **k)

    def spy_select_by(what, cands, fn, split, *a, **k):
        seen_splits.append((what, split))
        return real_select_by(what, cands, fn, split, *a, **k)

    def spy_eval(models, sets, **k):
        captured.update(models)
        return real_eval(models, sets, **k)

    monkeypatch.setattr(trainer_mod, "select", spy_select)
    monkeypatch.setattr(selection_mod, "select_by", spy_select_by)
    monkeypatch.setattr(fdalign.eval, "run_evaluation", spy_eval)
    out = tmp_path / "run"
    assert main(_args(tiny_openclip, data, out)) == 0, capsys.readouterr().err

    # every choice (epoch, WiSE-FT alpha) was made on exactly the recorded val images, none of them a test image
    val_files = sorted(_files(load_split(out / "splits" / "val.json")))
    test_digests = {file_sha256(p) for p in (data / "test").rglob("*.png")}
    assert {w for w, _ in seen_splits} == {"epoch", "wiseft_alpha"}
    for what, split in seen_splits:
        assert split.role == "val" and sorted(split.files) == val_files, what
        assert len(split.dataset) == len(val_files)
    assert all(Path(p).parts[-3] == "val" for p in val_files)
    assert not {file_sha256(p) for p in val_files} & test_digests

    # the WiSE-FT row is (zero-shot + fine-tuned) / 2 in every encoder tensor and every head tensor
    zs_enc, zs_head = captured["zero-shot"]
    ft_enc, ft_head = captured["fine-tuned"]
    mid_enc, mid_head = captured["wiseft-0.5"]
    zs, ft, mid = zs_enc.state_dict(), ft_enc.state_dict(), mid_enc.state_dict()
    assert any(not torch.equal(zs[k], ft[k]) for k in zs)
    for k in zs:
        if zs[k].is_floating_point():
            torch.testing.assert_close(mid[k], (zs[k] + ft[k]) / 2, rtol=1e-6, atol=1e-7, msg=k)
    for k, v in mid_head.state_dict().items():
        torch.testing.assert_close(v, (zs_head.state_dict()[k] + ft_head.state_dict()[k]) / 2, msg=k)


def test_a_val_folder_holding_a_test_image_is_refused_naming_it(tiny_openclip, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=3, n_val=2, n_test=2, seed=0)
    leaked = sorted((data / "test" / "green_leaf").glob("*.png"))[0]
    sorted((data / "val" / "green_leaf").glob("*.png"))[0].unlink()
    shutil.copyfile(leaked, data / "val" / "green_leaf" / "renamed.png")  # val keeps 2 images per class
    out = tmp_path / "run"
    assert main(_args(tiny_openclip, data, out)) == 2
    err = capsys.readouterr().err
    assert "renamed.png" in err and leaked.name in err and "test" in err
    assert "validation split" in err and "remove" in err
    assert not (out / "checkpoint").exists()  # refused before any training


def test_check_disjoint_hashes_only_files_of_a_val_size(tmp_path):
    val = []
    for i in range(3):
        p = tmp_path / f"v{i}.bin"
        p.write_bytes(bytes([i]) * (100 + i))
        val.append(str(p))
    others = []
    for i in range(50):  # sizes 200..249: none equals a val size, so none may be hashed
        p = tmp_path / f"t{i}.bin"
        p.write_bytes(b"x" * (200 + i))
        others.append(p)
    same_size = tmp_path / "same_size.bin"  # the size of v1, other bytes: hashed, no overlap
    same_size.write_bytes(b"z" * 101)
    split = EvalSplit(torch.utils.data.TensorDataset(torch.zeros(3)), "val", "val (3 files)", files=val)
    assert check_disjoint(split, {"test": others + [same_size]}) == 2  # v1 and same_size, nothing else
    dup = tmp_path / "sub" / "dup.bin"
    dup.parent.mkdir()
    dup.write_bytes(Path(val[2]).read_bytes())
    from fdalign.errors import FDAlignError

    with pytest.raises(FDAlignError, match=r"1 image\(s\).*v2\.bin = sketch image .*dup\.bin"):
        check_disjoint(split, {"test": others, "sketch": [dup]})


def test_zeroshot_with_model_config_and_no_model_name(tiny_openclip, tmp_path, capsys):
    data = make_imagefolder(tmp_path / "d", CLASSES, n_train=0, n_test=2, seed=0)
    rc = main(
        [
            "zeroshot",
            "--model-config",
            str(tiny_openclip["config"]),
            "--pretrained",
            str(tiny_openclip["checkpoint"]),
            "--data",
            str(data),
            "--device",
            "cpu",
            "--no-progress",
            "--templates",
            "tip7",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "zero-shot" in captured.out
    rc = main(["zeroshot", "--data", str(data), "--device", "cpu"])
    assert rc == 2 and "--model-config" in capsys.readouterr().err
