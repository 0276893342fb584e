"""`fdalign data prepare`: miniature copies of the official archives -> prepare -> data check -> a preset cell.

The miniatures (tests/_archives.py) have the real file names, packing (tar of tars, tar.gz inside a
zip, .mat devkit, CSV, TXT) and a CoOp split file; they hold a few images per class, so their counts
are declared with --expect-counts, and each test also shows that the published counts are checked
when it is not given.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

import _archives as A
from fdalign.cli import main


def run(*argv) -> int:
    return main([str(a) for a in argv])


def prep(name, m, out, tmp_path, *extra) -> int:
    exp = A.expect(tmp_path / f"expect-{name}.json", m["counts"])
    split = ["--split-file", m["split"]] if m.get("split") else []
    return run(
        "data",
        "prepare",
        name,
        "--from",
        *m["from"],
        "--out",
        out,
        "--expect-counts",
        exp,
        *split,
        "--no-progress",
        *extra,
    )


@pytest.fixture
def devkit_md5(monkeypatch):
    """torchvision checks the devkit's MD5 against the real one; a miniature declares its own."""
    from torchvision.datasets import imagenet as tv

    def use(path):
        monkeypatch.setitem(
            tv.ARCHIVE_META,
            "devkit",
            ("ILSVRC2012_devkit_t12.tar.gz", hashlib.md5(Path(path).read_bytes()).hexdigest()),
        )

    return use


def tiny_cell(tiny, **more) -> list[str]:
    """The override a user can use too: a preset's cell with another (here a tiny) model, one epoch."""
    sets = {
        "model": "tiny",
        "model_config": tiny["config"],
        "pretrained": tiny["checkpoint"],
        "epochs": 1,
        "precision": "fp32",
        "device": "cpu",
        "templates": "tip7",
        "spc": False,
        "num_workers": 0,
        "eval_batch_size": 64,
        # the cache heads without the authors' 10 augmented views and fresh views per epoch (hundreds of
        # encodes of the cache); test_report's cache-heads sweep runs those
        "heads_preset": None,
        **more,
    }
    return [x for k, v in sets.items() for x in ("--set", f"{k}={'null' if v is None else v}")]


def cell(preset, data_root, out, key, tiny) -> dict:
    assert (
        run(
            "sweep",
            preset,
            "--data-root",
            data_root,
            "--out",
            out,
            "--only",
            key,
            "--no-progress",
            *tiny_cell(tiny, batch_size=8),
        )
        == 0
    )
    metrics = json.loads((Path(out) / "runs" / key / "metrics.json").read_text())
    return metrics


# ----------------------------------------------------------------------------------------------
# ImageNet and its variants


def test_imagenet_tar_of_tars_flat_val_devkit_then_check_then_preset_cell(
    tmp_path, devkit_md5, tiny_openclip, cli_env, capsys
):
    m = A.imagenet(tmp_path / "dl", per_class=20)
    devkit_md5(m["from"][2])
    data = tmp_path / "data"
    assert prep("imagenet", m, data, tmp_path) == 0
    root = data / "imagenet"
    # every flat val file went to the class the devkit's ground truth gives it (line i = image i)
    for i, w in enumerate(m["val_wnids"], 1):
        assert (root / "val" / w / f"ILSVRC2012_val_{i:08d}.JPEG").is_file()
    assert sorted(p.name for p in (root / "train").iterdir()) == A.WNIDS
    assert (root / "classnames.txt").read_text().splitlines()[0] == "n01440764 tench"
    man = json.loads((root / "prepared.json").read_text())
    assert man["sources"][0]["sha256"] == hashlib.sha256(m["from"][0].read_bytes()).hexdigest()
    assert man["counts"]["val"]["per_class"] == {w: 2 for w in A.WNIDS}
    assert man["fdalign_version"] and man["expected_from"].startswith("--expect-counts")
    for name, (paths, counts) in A.variant_archives(tmp_path / "dl").items():
        assert prep(name, {"from": paths, "counts": counts}, data, tmp_path) == 0
    capsys.readouterr()
    assert (
        run(
            "data",
            "check",
            root,
            "--classnames",
            "imagenet",
            "--no-progress",
            "--ood",
            f"v2={data}/imagenetv2",
            "--ood",
            f"sketch={data}/imagenet-sketch",
            "--ood",
            f"a={data}/imagenet-a",
            "--ood",
            f"r={data}/imagenet-r",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "prepared: ImageNet" in out and "NOT the published counts" in out and "OK: no problems found" in out
    metrics = cell("imagenet", data, tmp_path / "sw", "imagenet/k16/s1/fine-tune", tiny_openclip)
    assert {"imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"} <= set(json.dumps(metrics).split('"'))


def test_imagenet_val_labels_from_kaggle_csv(tmp_path):
    m = A.imagenet(tmp_path / "dl", labels="csv")
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 0
    for i, w in enumerate(m["val_wnids"], 1):
        assert (tmp_path / "data" / "imagenet" / "val" / w / f"ILSVRC2012_val_{i:08d}.JPEG").is_file()


def test_flat_val_without_devkit_is_explained(tmp_path, capsys):
    m = A.imagenet(tmp_path / "dl")
    m["from"] = m["from"][:2]
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 2
    err = capsys.readouterr().err
    assert "ImageNet's val images are flat" in err and "ILSVRC2012_devkit_t12.tar.gz" in err
    assert "LOC_val_solution.csv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_foreign_devkit_is_refused_by_torchvisions_md5(tmp_path, capsys):
    m = A.imagenet(tmp_path / "dl")  # no MD5 override: the real devkit's checksum is expected
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 2
    assert "is not ImageNet's ILSVRC2012 devkit (its MD5 is not the devkit's)" in capsys.readouterr().err


def test_imagenet_published_counts_and_one_missing_val_file(tmp_path, devkit_md5, capsys):
    m = A.imagenet(tmp_path / "dl")
    devkit_md5(m["from"][2])
    assert run("data", "prepare", "imagenet", "--from", *m["from"], "--out", tmp_path / "d0") == 2
    err = capsys.readouterr().err
    assert "ImageNet train: 12 images in 3 classes, but the published ImageNet has 1281167 in 1000" in err
    # one val image gone from the archive: named as missing
    with tarfile.open(m["from"][1]) as tf:
        keep = {i.name: tf.extractfile(i).read() for i in tf.getmembers() if not i.name.endswith("00000004.JPEG")}
    A.write_tar(m["from"][1], keep)
    assert prep("imagenet", m, tmp_path / "d1", tmp_path) == 2
    err = capsys.readouterr().err
    assert "val: 5 images in 3 classes" in err and "(1 missing); not found: ILSVRC2012_val_00000004.JPEG" in err
    assert not (tmp_path / "d1").exists()


@pytest.mark.parametrize("name", ["imagenetv2", "imagenet-sketch", "imagenet-a", "imagenet-r"])
def test_variant_counts_published_and_one_file_removed(name, tmp_path, capsys):
    paths, counts = A.variant_archives(tmp_path / "dl")[name]
    assert run("data", "prepare", name, "--from", *paths, "--out", tmp_path / "d") == 2
    published = {
        "imagenetv2": "10000 in 1000",
        "imagenet-sketch": "50889 in 1000",
        "imagenet-a": "7500 in 200",
        "imagenet-r": "30000 in 200",
    }[name]
    assert f"has {published}" in capsys.readouterr().err
    n, c = counts["test"]
    assert prep(name, {"from": paths, "counts": counts}, tmp_path / "ok", tmp_path) == 0
    A.drop_member(paths[0])  # one image gone from the archive
    assert prep(name, {"from": paths, "counts": counts}, tmp_path / "d", tmp_path) == 2
    assert f"test: {n - 1} images in {c} classes, but --expect-counts" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_extracted_tree_is_linked_not_copied(tmp_path, devkit_md5):
    m = A.imagenet(tmp_path / "dl")
    devkit_md5(m["from"][2])
    tree = tmp_path / "extracted"
    for inner in tarfile.open(m["from"][0]).getmembers():
        sub = tarfile.open(fileobj=tarfile.open(m["from"][0]).extractfile(inner))
        sub.extractall(tree / "train" / inner.name[:-4], filter="data")
    tarfile.open(m["from"][1]).extractall(tree / "val", filter="data")
    m["from"] = [tree, m["from"][2]]
    assert prep("imagenet", m, tmp_path / "hard", tmp_path, "--link", "hard") == 0
    src = tree / "train" / A.WNIDS[0] / f"{A.WNIDS[0]}_100.JPEG"
    dst = tmp_path / "hard" / "imagenet" / "train" / A.WNIDS[0] / src.name
    assert os.stat(dst).st_ino == os.stat(src).st_ino
    assert prep("imagenet", m, tmp_path / "sym", tmp_path, "--link", "symbolic") == 0
    assert os.readlink(tmp_path / "sym" / "imagenet" / "train" / A.WNIDS[0] / src.name) == str(src.resolve())
    man = json.loads((tmp_path / "sym" / "imagenet" / "prepared.json").read_text())
    assert man["placed"]["symbolic"] == 18 and man["sources"][0]["files"] == 18


def test_interrupted_prepare_resumes_and_data_check_says_so(tmp_path, devkit_md5, monkeypatch, capsys):
    from fdalign.data.prepare import place

    m = A.imagenet(tmp_path / "dl")
    devkit_md5(m["from"][2])
    real, calls = place._place, []

    def dies_after_5(*a):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(place, "_place", dies_after_5)
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 130  # Ctrl-C
    assert not (tmp_path / "data" / "imagenet").exists()
    assert run("data", "check", tmp_path / "data" / "imagenet") == 2
    assert "was interrupted" in capsys.readouterr().err
    monkeypatch.setattr(place, "_place", real)
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 0
    man = json.loads((tmp_path / "data" / "imagenet" / "prepared.json").read_text())
    assert man["placed"]["kept"] == 5 and man["placed"]["copy"] == 13
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 0
    assert "already prepared" in capsys.readouterr().out


def test_truncated_tar_is_refused_before_writing(tmp_path, devkit_md5, capsys):
    m = A.imagenet(tmp_path / "dl")
    devkit_md5(m["from"][2])
    with tarfile.open(m["from"][1]) as tf:
        last = tf.getmembers()[-1]
    # cut inside the last image: every header is intact, so tarfile lists the archive without complaint
    data = m["from"][1].read_bytes()
    m["from"][1].write_bytes(data[: last.offset_data + 10])
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 2
    err = capsys.readouterr().err
    assert "ILSVRC2012_img_val.tar cannot be read as a tar or zip archive" in err and "download it again" in err
    assert "unexpected end of data" in err
    assert not (tmp_path / "data").exists()


def test_truncated_zip_is_refused_before_writing(tmp_path, capsys):
    paths, counts = A.variant_archives(tmp_path / "dl")["imagenet-sketch"]
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 30])
    assert prep("imagenet-sketch", {"from": paths, "counts": counts}, tmp_path / "data", tmp_path) == 2
    assert "ImageNet-Sketch.zip cannot be read as a tar or zip archive (BadZipFile" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_too_little_disk_space_is_refused_up_front(tmp_path, devkit_md5, monkeypatch, capsys):
    import shutil

    from fdalign.data.prepare import place

    m = A.imagenet(tmp_path / "dl")
    devkit_md5(m["from"][2])
    monkeypatch.setattr(place.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    assert prep("imagenet", m, tmp_path / "data", tmp_path) == 2
    assert "GB free; free some space, choose another --out" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------------
# The CoOp sets


COOP_KEYS = {
    "caltech101": "caltech101",
    "oxford_pets": "oxford_pets",
    "stanford_cars": "stanford_cars",
    "oxford_flowers": "oxford_flowers",
    "food101": "food101",
    "sun397": "sun397",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "ucf101": "ucf101",
}


@pytest.fixture
def flowers_md5(monkeypatch):
    """torchvision checks Flowers' .mat files against the official MD5s; a miniature declares its own."""
    from torchvision.datasets import Flowers102

    def use(root):
        d = {
            k: (f, hashlib.md5((Path(root) / f).read_bytes()).hexdigest() if f.endswith(".mat") else md5)
            for k, (f, md5) in Flowers102._file_dict.items()
        }
        monkeypatch.setattr(Flowers102, "_file_dict", d)

    return use


OFFICIAL_LISTS = {"oxford_pets": "OxfordPets", "oxford_flowers": "Flowers102", "dtd": "DTD", "food101": "Food101"}


@pytest.mark.parametrize("name", sorted(A.COOP_MINI))
def test_coop_set_prepare_check_counts_and_cell(name, tmp_path, tiny_openclip, cli_env, capsys, flowers_md5):
    m = A.coop(name, tmp_path / "dl")
    if name == "oxford_flowers":
        flowers_md5(tmp_path / "dl")
    data = tmp_path / "data"
    # the published numbers are what is checked unless a miniature declares its own
    assert run("data", "prepare", name, "--from", *m["from"], "--split-file", m["split"], "--out", data) == 2
    err = capsys.readouterr().err
    assert "in 3 classes, but the published" in err and "nothing was written" in err
    assert prep(name, m, data, tmp_path) == 0
    folder = next(p for p in data.iterdir() if not p.name.startswith("."))
    split = folder / m["split"].name
    assert json.loads(split.read_text()) == json.loads(m["split"].read_text())
    man = json.loads((folder / "prepared.json").read_text())
    assert man["split_file_sha256"] == hashlib.sha256(m["split"].read_bytes()).hexdigest()
    assert {k: v["images"] for k, v in man["counts"].items()} == {"train": 6, "val": 3, "test": 3}
    out = capsys.readouterr().out
    if name in OFFICIAL_LISTS:  # read by torchvision's parser: every listed image is in the archive
        assert f"note: {OFFICIAL_LISTS[name]}: all 15 images of the official annotations are there" in out
    assert run("data", "check", split, "--no-progress") == 0
    assert "prepared: " in capsys.readouterr().out
    assert run("data", "check", folder, "--no-progress") == 0  # the folder is read through its split file
    assert "test                    3        3" in capsys.readouterr().out
    metrics = cell("coop", data, tmp_path / "sw", f"{COOP_KEYS[name]}/k1/s1/fine-tune", tiny_openclip)
    assert metrics  # trained and evaluated on the prepared test split
    # one listed image missing from the archive: named, nothing written
    m2 = A.coop(name, tmp_path / "dl2", drop=1)
    assert prep(name, m2, tmp_path / "data2", tmp_path) == 2
    err = capsys.readouterr().err
    assert f"1 of 12 entries of {m2['split']} match no" in err and m2["dropped"][0] in err
    assert not (tmp_path / "data2").exists()
    if name in OFFICIAL_LISTS:  # an image the split does not use, but the official annotations list
        m3 = A.coop(name, tmp_path / "dl3", drop_extra=1)
        if name == "oxford_flowers":
            flowers_md5(tmp_path / "dl3")
        assert prep(name, m3, tmp_path / "data3", tmp_path) == 2
        err = capsys.readouterr().err
        assert (
            f"1 of 15 images named by {OFFICIAL_LISTS[name]}'s official annotations are not in the --from files" in err
        )
        assert Path(m3["dropped"][0]).name in err and not (tmp_path / "data3").exists()


def test_split_file_of_another_data_set(tmp_path, capsys):
    m = A.coop("oxford_pets", tmp_path / "dl")
    other = tmp_path / "split_zhou_Food101.json"
    other.write_text(m["split"].read_text())
    m["split"] = other
    assert prep("oxford_pets", m, tmp_path / "data", tmp_path) == 2
    assert "is CoOp's split of Food101, not OxfordPets; pass split_zhou_OxfordPets.json" in capsys.readouterr().err


def test_split_with_unresolvable_entries_lists_first_five_and_count(tmp_path, capsys):
    m = A.coop("dtd", tmp_path / "dl")
    d = json.loads(m["split"].read_text())
    d["test"] += [[f"zigzag/zigzag_{i:04d}.jpg", 0, "banded"] for i in range(7)]
    m["split"].write_text(json.dumps(d))
    assert prep("dtd", m, tmp_path / "data", tmp_path) == 2
    err = capsys.readouterr().err
    assert "7 of 19 entries" in err
    assert (
        "zigzag/zigzag_0000.jpg, zigzag/zigzag_0001.jpg, zigzag/zigzag_0002.jpg, zigzag/zigzag_0003.jpg, "
        "zigzag/zigzag_0004.jpg (and 2 more)" in err
    )


def test_pets_images_without_annotations_is_the_wrong_archive(tmp_path, capsys):
    m = A.coop("oxford_pets", tmp_path / "dl")
    m["from"] = m["from"][:1]
    assert prep("oxford_pets", m, tmp_path / "data", tmp_path) == 2
    err = capsys.readouterr().err
    assert "the Pets annotations (annotations/trainval.txt) not found" in err and "annotations.tar.gz" in err


def _kaggle_cars(m: dict, root: Path, rename) -> list[Path]:
    """The Kaggle mirror: car_data/car_data/{train,test}/<class>/NNNNN.jpg in one zip."""
    split = json.loads(m["split"].read_text())
    cls = {e[0]: e[2] for r in split.values() for e in r}
    files = {}
    for p in m["from"]:
        with tarfile.open(p) as tf:
            for i in tf.getmembers():
                s, num = i.name.split("/")
                files[f"car_data/car_data/{s[5:]}/{cls.get(i.name, 'Other Car')}/{rename(num)}"] = tf.extractfile(
                    i
                ).read()
    return [A.write_zip(root / "stanford-car-dataset-by-classes-folder.zip", files)]


def test_renamed_cars_mirror_is_mapped_by_id_and_said(tmp_path, capsys):
    m = A.coop("stanford_cars", tmp_path / "dl")
    m["from"] = _kaggle_cars(m, tmp_path / "kaggle", lambda n: n)
    assert prep("stanford_cars", m, tmp_path / "data", tmp_path) == 0
    out = capsys.readouterr().out
    assert "note: StanfordCars: 15 files of a mirror mapped to the official names" in out and "5-digit id" in out
    assert (tmp_path / "data" / "stanford_cars" / "cars_test" / "00004.jpg").is_file()


def test_unknown_cars_mirror_names_what_is_missing(tmp_path, capsys):
    m = A.coop("stanford_cars", tmp_path / "dl")
    m["from"] = _kaggle_cars(m, tmp_path / "other", lambda n: f"car_{n}")  # a mirror that renamed the files
    assert prep("stanford_cars", m, tmp_path / "data", tmp_path) == 2
    err = capsys.readouterr().err
    assert "no StanfordCars images found" in err and "cars_train.tgz and cars_test.tgz" in err


def test_fgvc_aircraft_variant_lists_to_image_folders(tmp_path, tiny_openclip, cli_env, capsys):
    m = A.aircraft(tmp_path / "dl")
    assert prep("fgvc_aircraft", m, tmp_path / "data", tmp_path) == 0
    root = tmp_path / "data" / "fgvc_aircraft"
    assert sorted(p.name for p in (root / "test").iterdir()) == ["707-320", "A300B4", "F-16A-B"]
    assert len(list((root / "train" / "A300B4").iterdir())) == 2
    assert run("data", "check", root, "--no-progress") == 0
    cell("coop", tmp_path / "data", tmp_path / "sw", "fgvc_aircraft/k1/s1/fine-tune", tiny_openclip)
    m2 = A.aircraft(tmp_path / "dl2", drop=1)
    assert prep("fgvc_aircraft", m2, tmp_path / "data2", tmp_path) == 2
    assert f"not found: data/images/{m2['dropped'][0]}" in capsys.readouterr().err


def test_cub_target(tmp_path, capsys):
    m = A.cub(tmp_path / "dl")
    assert prep("cub", m, tmp_path / "data", tmp_path) == 0
    assert run("data", "check", tmp_path / "data" / "CUB_200_2011" / "images", "--no-progress") == 0
    m2 = A.cub(tmp_path / "dl2", drop=1)
    assert prep("cub", m2, tmp_path / "data2", tmp_path) == 2
    assert "test: 5 images in 2 classes" in capsys.readouterr().err


def test_miniimagenet_from_csvs_and_imagenet_train(tmp_path, capsys):
    m = A.miniimagenet(tmp_path / "dl")
    assert prep("miniimagenet", m, tmp_path / "data", tmp_path) == 0
    root = tmp_path / "data" / "miniImageNet"
    # '<wnid>00000002.jpg' is the class's 2nd train file by number (numbers 10, 20, 30 -> 20)
    w = m["wnids"][0]
    with tarfile.open(m["from"][0]) as tf:
        inner = tarfile.open(fileobj=tf.extractfile(f"{w}.tar"))
        want = inner.extractfile(f"{w}_20.JPEG").read()
    assert (root / "images" / f"{w}00000002.jpg").read_bytes() == want
    capsys.readouterr()
    assert run("data", "check", root, "--no-progress") == 0
    assert "prepared: miniImageNet" in capsys.readouterr().out
    assert run("data", "prepare", "miniimagenet", "--from", *m["from"], "--out", tmp_path / "d0") == 2
    assert (
        "miniImageNet train: 6 images in 2 classes, but the published miniImageNet has 38400 in 64"
        in capsys.readouterr().err
    )
    m2 = A.miniimagenet(tmp_path / "dl2", drop=1)
    assert prep("miniimagenet", m2, tmp_path / "data2", tmp_path) == 2
    err = capsys.readouterr().err
    assert "miniImageNet train: 5 images in 2 classes" in err and f"not found: {w}00000003.jpg" in err


def test_list_names_files_counts_and_state(tmp_path, capsys):
    m = A.cub(tmp_path / "dl")
    prep("cub", m, tmp_path / "data", tmp_path)
    capsys.readouterr()
    assert run("data", "prepare", "--list", "--out", tmp_path / "data") == 0
    out = capsys.readouterr().out
    assert f"cub  ->  CUB_200_2011/ (CUB-200-2011)  [prepared under {tmp_path / 'data'}]" in out
    assert "imagenet-sketch" in out and "test 50,889/1000" in out and "[not prepared under" in out
    assert "--split-file split_zhou_OxfordPets.json" in out and "--download: images.tar.gz, annotations.tar.gz" in out


def test_authors_index_files_resolve_against_the_prepared_folder(tmp_path):
    from fdalign.data.opener import open_dataset

    m = A.coop("dtd", tmp_path / "dl")
    assert prep("dtd", m, tmp_path / "data", tmp_path) == 0
    folder = tmp_path / "data" / "dtd"
    split = json.loads((folder / "split_zhou_DescribableTextures.json").read_text())
    pick = {"train": [1, 4], "val": [2]}
    index = {
        s: {
            "data": [
                {
                    "impath": f"/their/machine/dtd/images/{split[s][i][0]}",
                    "label": split[s][i][1],
                    "classname": split[s][i][2],
                }
                for i in idx
            ],
            "indices": idx,
        }
        for s, idx in pick.items()
    }
    path = tmp_path / "indices" / "dtd" / "shot_1-seed_1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(index))
    splits = open_dataset(path, image_root=folder / "images")
    for s, idx in pick.items():
        got = [splits[s].resolve(x) for x in splits[s].samples]
        assert got == [str(folder / "images" / split[s][i][0]) for i in idx]
        assert all(Path(g).is_file() for g in got)
    assert len(splits["test"]) == 3  # the test list of the prepared split file


def test_readme_commands_name_registered_sets_and_real_options():
    import re

    from fdalign.data.prepare import REGISTRY, load_all

    load_all()
    pages = sorted((Path(__file__).resolve().parents[1] / "docs" / "getting-data").glob("*.md"))
    section = "\n".join(p.read_text() for p in pages)  # the docs' "Getting the data" pages
    names = re.findall(r"fdalign data prepare ([a-z0-9][a-z0-9_.-]*) ", section)
    assert len(names) >= 17 and set(names) <= set(REGISTRY)
    assert set(REGISTRY) - set(names) <= {"imagenetv2-threshold0.7", "imagenetv2-top-images"}
    for name in re.findall(r"fdalign data prepare (\w+) --download", section):
        assert REGISTRY[name].downloads, name


# ----------------------------------------------------------------------------------------------
# The episode protocol: miniImageNet and the cross-domain targets of the miniimagenet preset


def test_cars_target_from_the_devkit_annotations(tmp_path, capsys):
    m = A.cars_target(tmp_path / "dl")
    assert prep("cars-target", m, tmp_path / "data", tmp_path) == 0
    root = tmp_path / "data" / "StanfordCars"
    # annotation k has class k % 2 + 1 (1-based): files 1, 3, 5 are the Hummer's
    assert sorted(p.name for p in (root / "AM General Hummer SUV 2000").iterdir()) == [
        "00001.jpg",
        "00003.jpg",
        "00005.jpg",
    ]
    assert (root / "Ram C-V Cargo Van Minivan 2012" / "00002.jpg").is_file()
    m2 = A.cars_target(tmp_path / "dl2", drop=1)
    assert prep("cars-target", m2, tmp_path / "data2", tmp_path) == 2
    assert "not found: cars_train/00001.jpg" in capsys.readouterr().err


def test_places_and_plantae_keep_the_first_files_of_the_largest_classes(tmp_path):
    from fdalign.data.prepare.sources import Sources
    from fdalign.data.prepare.targets import _first_per_class

    pl = A.places(tmp_path / "dl", per_class=3)
    plan = _first_per_class(Sources(pl["from"]), r"places365_standard/train/([^/]+)/([^/]+\.jpg)", 2)
    assert sorted(d for _, d in plan.files) == [
        "airfield/00000001.jpg",
        "airfield/00000002.jpg",
        "apartment_building-outdoor/00000001.jpg",
        "apartment_building-outdoor/00000002.jpg",
    ]  # no val/ images
    pt = A.plantae(tmp_path / "dl", sizes=(2, 4, 3))
    plan = _first_per_class(Sources(pt["from"]), r"Plantae/([^/]+)/([^/]+\.jpe?g)", 2, top=2)
    assert plan.counts == {"test": {"Species_1": 2, "Species_2": 2}}  # the two largest classes, 2 files each
    assert sorted(d for _, d in plan.files)[0] == f"Species_1/{0:032x}.jpg"


def test_plantae_is_checked_on_its_200_classes(tmp_path, capsys):
    pt = A.plantae(tmp_path / "dl")
    assert run("data", "prepare", "plantae", "--from", *pt["from"], "--out", tmp_path / "d") == 2
    assert "3 classes, but the published Plantae (cross-domain target) has 200 classes" in capsys.readouterr().err


def test_miniimagenet_preset_cell_with_its_four_targets(tmp_path, tiny_openclip, cli_env):
    data = tmp_path / "data"
    mini = A.miniimagenet(tmp_path / "mini", per_class=6)
    assert prep("miniimagenet", mini, data, tmp_path) == 0
    for name, m in [
        ("cub", A.cub(tmp_path / "cub", per_class=6)),
        ("cars-target", A.cars_target(tmp_path / "cars", 6)),
        ("places", A.places(tmp_path / "places", per_class=6, keep=6)),
    ]:
        assert prep(name, m, data, tmp_path) == 0
    pt = A.plantae(tmp_path / "plantae", sizes=(6, 6))
    assert prep("plantae", {"from": pt["from"], "counts": {"test": (12, 2)}}, data, tmp_path) == 0
    for target in ("CUB_200_2011/images", "StanfordCars", "Places", "Plantae"):
        assert run("data", "check", data / target, "--no-progress") == 0
    A.drop_member(tmp_path / "places" / "places365standard_easyformat.tar")
    assert (
        prep(
            "places",
            A.places(tmp_path / "places2", per_class=6, keep=6)
            | {"from": [tmp_path / "places" / "places365standard_easyformat.tar"]},
            tmp_path / "data2",
            tmp_path,
        )
        == 2
    )
    key = "miniimagenet/k5/s1/fine-tune"
    assert (
        run(
            "sweep",
            "miniimagenet",
            "--data-root",
            data,
            "--out",
            tmp_path / "sw",
            "--only",
            key,
            "--no-progress",
            *tiny_cell(
                tiny_openclip,
                n_way=2,
                q_query=1,
                episodes_per_step=1,
                episodes_per_epoch=2,
                val_episodes=2,
                test_episodes=2,
            ),
        )
        == 0
    )
    metrics = json.loads((tmp_path / "sw" / "runs" / key / "metrics.json").read_text())
    assert {"cub", "cars", "places", "plantae"} <= set(json.dumps(metrics).split('"'))


def test_truncated_tar_gz_is_refused_before_writing(tmp_path, capsys):
    m = A.coop("dtd", tmp_path / "dl")
    data = m["from"][0].read_bytes()
    m["from"][0].write_bytes(data[: len(data) * 2 // 3])
    assert prep("dtd", m, tmp_path / "data", tmp_path) == 2
    err = capsys.readouterr().err
    assert "dtd-r1.0.1.tar.gz cannot be read as a tar or zip archive" in err and "download it again" in err
    assert not (tmp_path / "data").exists()


def test_a_second_prepare_into_the_same_folder_waits_its_turn(tmp_path, capsys):
    from filelock import FileLock

    m = A.cub(tmp_path / "dl")
    (tmp_path / "data").mkdir()
    with FileLock(str(tmp_path / "data" / ".CUB_200_2011.lock")):  # another process is writing it
        assert prep("cub", m, tmp_path / "data", tmp_path) == 2
    assert "another `fdalign data prepare` is writing" in capsys.readouterr().err
    assert not (tmp_path / "data" / "CUB_200_2011").exists()
    assert prep("cub", m, tmp_path / "data", tmp_path) == 0


def test_a_folder_of_class_tars_does_not_hold_every_tar_open(tmp_path, devkit_md5):
    """ImageNet's train tar extracted one level: one tar per class in a folder."""
    m = A.imagenet(tmp_path / "dl")
    devkit_md5(m["from"][2])
    train = tmp_path / "train"
    train.mkdir()
    with tarfile.open(m["from"][0]) as tf:
        tf.extractall(train, filter="data")
    for k in range(40):  # many more class tars than the three the prepare needs
        A.write_tar(train / f"n0200{k:04d}.tar", {f"n0200{k:04d}_1.JPEG": b"x"})
    from fdalign.data.prepare.sources import Sources

    before = len(os.listdir("/proc/self/fd"))
    src = Sources([train])
    assert len(os.listdir("/proc/self/fd")) - before <= 2
    assert len(src.find(r"(n\d{8})(?:\.tar)?/(n\d{8}_\d+\.JPEG)")) == 12 + 40
    counts = {"train": (12, 3), "val": m["counts"]["val"]}
    assert prep("imagenet", {"from": [train, *m["from"][1:]], "counts": counts}, tmp_path / "data", tmp_path) == 2
    # the 40 extra classes are counted: the count check names it, nothing written
    for k in range(40):
        (train / f"n0200{k:04d}.tar").unlink()
    assert prep("imagenet", {"from": [train, *m["from"][1:]], "counts": counts}, tmp_path / "data", tmp_path) == 0
    assert len(os.listdir("/proc/self/fd")) - before <= 2
