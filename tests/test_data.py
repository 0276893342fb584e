"""Loaders, K-shot sampling, saved splits, the paper's index format, hashes and OOD mapping."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from _synth import make_coop_split, make_csv, make_imagefolder
from fdalign.data import (
    ImageDataset,
    LabeledSplit,
    Sample,
    fewshot_val,
    load_fewshot_indices,
    load_split,
    map_ood_to_id,
    open_dataset,
    parse_ood_arg,
    pick_split,
    sample_fewshot,
    sample_kshot,
    save_fewshot_indices,
    save_split,
    split_hash,
)
from fdalign.errors import FDAlignError

CLASSES = ["golden retriever", "tabby cat", "red fox"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("folder"), CLASSES, n_train=8, n_test=3, n_val=5, size=8)


# ----------------------------------------------------------------------------------------------
# Loaders


def test_imagefolder_layout(folder):
    splits = open_dataset(str(folder))
    assert set(splits) == {"train", "val", "test"}
    tr = splits["train"]
    # sorted folder names, "_" -> space
    assert tr.classnames == ["golden retriever", "red fox", "tabby cat"]
    assert tr.class_keys == ["golden_retriever", "red_fox", "tabby_cat"]
    assert tr.class_counts() == [8, 8, 8]
    assert splits["test"].class_counts() == [3, 3, 3]
    # every sample's folder is the class of its label
    for s in tr.samples:
        assert Path(s.path).parts[0] == tr.class_keys[s.label]
        assert Path(tr.resolve(s)).is_file()


def test_imagedataset_returns_transformed_rgb(folder):
    split = open_dataset(folder)["test"]
    ds = ImageDataset(split, transform=lambda im: (im.mode, im.size))
    assert len(ds) == 9
    (mode, size), label = ds[4]
    assert (mode, size, label) == ("RGB", (8, 8), split.samples[4].label)


def test_imagefolder_mismatched_classes(tmp_path):
    make_imagefolder(tmp_path, ["a", "b"], n_train=1, n_test=1, size=4)
    (tmp_path / "test" / "zebra").mkdir()
    (tmp_path / "test" / "a" / "a_0000.png").rename(tmp_path / "test" / "zebra" / "z.png")
    shutil.rmtree(tmp_path / "test" / "a")
    with pytest.raises(FDAlignError, match=r"extra class folder.*zebra.*missing class folder.*\ba\b"):
        open_dataset(tmp_path)


def test_empty_class_folder(tmp_path):
    make_imagefolder(tmp_path, ["a", "b"], n_train=1, n_test=1, size=4)
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(FDAlignError, match=r"class folder .*train[/\\]c contains no images"):
        open_dataset(tmp_path)


def test_flat_class_folders_are_one_test_split(tmp_path):
    make_imagefolder(tmp_path, ["a", "b"], n_train=2, n_test=0, size=4)
    splits = open_dataset(tmp_path / "train")
    assert list(splits) == ["test"]
    assert pick_split(splits, "train") is splits["test"]


def test_classnames_file_overrides_and_checks_count(folder, tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("dog\n\nfox\ncat\n")
    splits = open_dataset(folder, classnames=str(f))
    assert splits["train"].classnames == ["dog", "fox", "cat"]
    f.write_text("dog\nfox\n")
    with pytest.raises(FDAlignError, match="2 names but the data has 3 classes"):
        open_dataset(folder, classnames=str(f))


def test_csv_manifest(tmp_path):
    path = make_csv(tmp_path, ["b", "a"], n_per_class=2, size=4, domain="photo")
    splits = open_dataset(str(path))
    s = pick_split(splits, "test")
    assert s.classnames == ["a", "b"]  # sorted unique names
    assert s.class_counts() == [2, 2]
    assert all(x.domain == "photo" for x in s.samples)
    # label "b" images were written under img/b/
    assert all(Path(x.path).parts[1] == s.classnames[x.label] for x in s.samples)
    assert all(Path(s.resolve(x)).is_file() for x in s.samples)


def test_csv_integer_labels_need_classnames(tmp_path):
    path = make_csv(tmp_path, ["x", "y"], n_per_class=1, size=4, int_labels=True)
    with pytest.raises(FDAlignError, match="integer labels"):
        open_dataset(path)
    names = tmp_path / "n.txt"
    names.write_text("first\nsecond\n")
    s = pick_split(open_dataset(path, classnames=str(names)), "test")
    assert s.classnames == ["first", "second"] and s.class_counts() == [1, 1]


def test_csv_requires_header(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("a.png,cat\n")
    with pytest.raises(FDAlignError, match="header row"):
        open_dataset(p)


def test_coop_split_loads_and_guesses_image_root(tmp_path):
    path = make_coop_split(tmp_path, ["a", "b c"], n_train=3, n_test=2, n_val=1, name="Pets", size=4)
    splits = open_dataset(path)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 4}
    assert splits["train"].classnames == ["a", "b c"]
    assert Path(splits["train"].root) == (tmp_path / "images").resolve()


def test_coop_split_missing_files(tmp_path):
    path = make_coop_split(tmp_path, ["a", "b"], n_train=2, n_test=1, size=4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(FDAlignError) as e:
        open_dataset(path, image_root=str(elsewhere))
    msg = str(e.value)
    assert "6 of 6 images" in msg and str(elsewhere) in msg and "--image-root" in msg
    assert "a/a_0000.png" in msg


# ----------------------------------------------------------------------------------------------
# K-shot sampling


def _shuffled(split: LabeledSplit, seed: int) -> LabeledSplit:
    samples = list(split.samples)
    random.Random(seed).shuffle(samples)
    return replace(split, samples=samples)


def test_kshot_deterministic_and_order_independent(folder):
    train = open_dataset(folder)["train"]
    a = sample_kshot(train, 4, seed=1)
    b = sample_kshot(open_dataset(folder)["train"], 4, seed=1)  # independent load
    c = sample_kshot(_shuffled(train, 123), 4, seed=1)
    d = sample_kshot(train, 4, seed=2)
    paths = lambda s: [x.path for x in s.samples]  # noqa: E731
    assert paths(a) == paths(b) == paths(c)
    assert paths(a) != paths(d)
    assert a.class_counts() == [4, 4, 4]
    assert len(set(paths(a))) == 12
    # the labels still match the class folders
    assert all(Path(x.path).parts[0] == a.class_keys[x.label] for x in a.samples)
    # shots nest: the 2-shot set of a seed is inside its 4-shot set
    assert set(paths(sample_kshot(train, 2, seed=1))) <= set(paths(a))


def test_kshot_differs_across_seeds_for_most_seeds(folder):
    train = open_dataset(folder)["train"]
    sets = {tuple(x.path for x in sample_kshot(train, 1, seed=s).samples) for s in range(10)}
    assert len(sets) > 3  # 512 possible 1-shot sets; identical results would mean the seed is ignored


def test_kshot_too_few_images(folder):
    train = open_dataset(folder)["train"]
    small = train.subset([i for i, s in enumerate(train.samples) if s.label != 1 or s.path.endswith("0000.png")])
    with pytest.raises(FDAlignError, match="class 'red fox' has 1 images .* needs 2"):
        sample_kshot(small, 2, seed=0)


def test_fewshot_val_from_val_split(folder):
    splits = open_dataset(folder)
    v = fewshot_val(splits, 8, seed=0)
    assert v.name == "val" and v.class_counts() == [4, 4, 4]
    assert all(Path(splits["val"].resolve(x)).parent.parent.name == "val" for x in v.samples)
    assert fewshot_val(splits, 2, seed=0).class_counts() == [2, 2, 2]


def test_fewshot_val_carved_from_train(folder):
    splits = {"train": open_dataset(folder)["train"]}
    shots = sample_fewshot(splits, 4, seed=3)
    tr, va = shots["train"], shots["val"]
    assert tr.class_counts() == [4, 4, 4] and va.class_counts() == [4, 4, 4]
    assert va.name == "val-from-train"
    assert not {x.path for x in tr.samples} & {x.path for x in va.samples}
    # the training shots do not depend on whether validation was carved out
    assert [x.path for x in tr.samples] == [x.path for x in sample_kshot(splits["train"], 4, 3).samples]
    with pytest.raises(FDAlignError, match=r"has 8 images .* needs 10"):
        fewshot_val(splits, 6, seed=0)  # 6 + 4 > 8


def test_save_load_split_roundtrip(folder, tmp_path):
    shots = sample_kshot(open_dataset(folder)["train"], 2, seed=5)
    save_split(shots, tmp_path / "run" / "train.json")
    back = load_split(tmp_path / "run" / "train.json")
    assert back == shots
    # open_dataset recognises the file, and the root can be moved
    moved = tmp_path / "moved"
    shutil.copytree(folder / "train", moved)
    again = open_dataset(tmp_path / "run" / "train.json", image_root=str(moved))["train"]
    assert [x.path for x in again.samples] == [x.path for x in shots.samples]
    assert all(Path(again.resolve(x)).is_file() and str(moved) in again.resolve(x) for x in again.samples)


def test_paper_indices_roundtrip(tmp_path):
    split_json = make_coop_split(tmp_path / "ds", ["a", "b", "c"], n_train=6, n_test=1, n_val=3, size=4)
    source = open_dataset(split_json)
    shots = {"train": sample_kshot(source["train"], 2, 0), "val": sample_kshot(source["val"], 2, 0)}
    idx = tmp_path / "indices" / "synth" / "shot_2-seed_0.json"
    save_fewshot_indices(shots, idx, source=source)

    # Pretend the file came from the authors' machine: rewrite impaths under a foreign prefix.
    d = json.loads(idx.read_text())
    image_root = Path(source["train"].root)
    for part in d.values():
        for e in part["data"]:
            rel = Path(e["impath"]).relative_to(image_root).as_posix()
            e["impath"] = f"/home/someone/DATA/synth/images/{rel}"
    idx.write_text(json.dumps(d))

    by_path = load_fewshot_indices(idx, image_root)
    by_index = load_fewshot_indices(idx, image_root, split_file=split_json)
    for part in ("train", "val"):
        want = [(x.path, x.label) for x in shots[part].samples]
        assert [(x.path, x.label) for x in by_path[part].samples] == want
        assert [(x.path, x.label) for x in by_index[part].samples] == want
        assert by_path[part].classnames == ["a", "b", "c"]
    # open_dataset dispatches on the format
    assert open_dataset(idx, image_root=str(image_root))["train"].samples == by_path["train"].samples

    with pytest.raises(FDAlignError, match=r"^12 images .* not found under image root"):
        load_fewshot_indices(idx, tmp_path)


# ----------------------------------------------------------------------------------------------
# Hashes


def test_split_hash_content_and_list(tmp_path):
    root = make_imagefolder(tmp_path / "d", ["a", "b"], n_train=3, n_test=1, size=4)
    train = open_dataset(root)["train"]
    h = split_hash(train)
    assert h.startswith("content:") and split_hash(train, content=False).startswith("list:")
    assert split_hash(_shuffled(train, 0)) == h  # order-free
    # moving the data does not change it
    shutil.copytree(root, tmp_path / "copy")
    assert split_hash(open_dataset(tmp_path / "copy")["train"]) == h
    # one image's bytes change -> content hash changes, list hash only if the size changes
    target = Path(train.resolve(train.samples[2]))
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF
    lst = split_hash(train, content=False)
    target.write_bytes(bytes(data))
    assert split_hash(train) != h
    assert split_hash(train, content=False) == lst
    # a label change alters both
    relabelled = replace(train, samples=[Sample(s.path, 1 - s.label) for s in train.samples])
    assert split_hash(relabelled, content=False) != lst


# ----------------------------------------------------------------------------------------------
# OOD


def _ood(classnames, keys=None, labels=None) -> LabeledSplit:
    labels = labels if labels is not None else list(range(len(classnames)))
    return LabeledSplit(classnames, [Sample(f"{i}.png", y) for i, y in enumerate(labels)], None, "sketch", keys)


def test_map_ood_by_name():
    ood = _ood(["Tabby_Cat", "golden  retriever"], labels=[0, 1, 1])
    mapped, present = map_ood_to_id(ood, ["red fox", "golden retriever", "tabby cat"])
    assert [s.label for s in mapped.samples] == [2, 1, 1]
    assert present == [1, 2]
    assert mapped.classnames == ["red fox", "golden retriever", "tabby cat"]


def test_map_ood_by_key_and_integer_folders():
    ids = ["tench", "goldfish", "great white shark"]
    wnids = ["n01440764", "n01443537", "n01484850"]
    ood = _ood(["n01484850", "n01440764"], keys=["n01484850", "n01440764"])
    mapped, present = map_ood_to_id(ood, ids, id_keys=wnids)
    assert [s.label for s in mapped.samples] == [2, 0] and present == [0, 2]
    # ImageNet-V2 style: folders named by ID index
    v2 = _ood(["0", "2"], keys=["0", "2"], labels=[1, 0])
    mapped, present = map_ood_to_id(v2, ids)
    assert [s.label for s in mapped.samples] == [2, 0] and present == [0, 2]


def test_map_ood_missing_class_names_close_matches():
    with pytest.raises(FDAlignError, match=r"'tabby kat'.*close ID names: 'tabby cat'"):
        map_ood_to_id(_ood(["tabby kat"]), ["tabby cat", "red fox"])
    with pytest.raises(FDAlignError, match="matches 2 ID classes"):
        map_ood_to_id(_ood(["crane"]), ["crane", "Crane", "fox"])


def test_parse_ood_arg():
    assert parse_ood_arg("sketch=/data/a=b") == ("sketch", "/data/a=b")
    for bad in ("/data/sketch", "=/x", "sketch=", "a b=/x"):
        with pytest.raises(FDAlignError, match="NAME=PATH"):
            parse_ood_arg(bad)


def test_counter_sanity(folder):
    # class_counts agrees with an independent count
    s = open_dataset(folder)["val"]
    assert s.class_counts() == [Counter(x.label for x in s.samples)[c] for c in range(3)]


def test_wnid_classnames_file_matches_by_key(tmp_path):
    make_imagefolder(tmp_path, ["n02", "n01"], n_train=1, n_test=1, size=4)
    for split in ("train", "test"):  # rename folders to real-looking wnids
        for old, new in (("n01", "n01440764"), ("n02", "n01443537")):
            (tmp_path / split / old).rename(tmp_path / split / new)
    names = tmp_path / "classnames.txt"
    names.write_text("n01443537 goldfish\nn01440764 tench\n")  # not in folder order
    splits = open_dataset(tmp_path, classnames=str(names))
    assert splits["train"].class_keys == ["n01440764", "n01443537"]
    assert splits["train"].classnames == ["tench", "goldfish"]
