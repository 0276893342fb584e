"""`fdalign data prepare` on the files users really have: every data set from its archive, its
extracted folder, the parent folder holding both, and a Mac re-zip; real class names (hyphens,
slashes, nested SUN397 classes); Caltech101's __MACOSX stub; EuroSAT_RGB.zip.

Labels are proven image by image through the loader training uses (``open_dataset`` /
``load_class_splits``): each image's bytes are traced back to the source member they came from,
whose class is known from the miniature's construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

import _archives as A
from fdalign.cli import main


def run(*argv) -> int:
    return main([str(a) for a in argv])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def md5s(monkeypatch):
    """torchvision checks the devkit's and Flowers' MD5s against the real files; miniatures declare theirs."""
    from torchvision.datasets import Flowers102
    from torchvision.datasets import imagenet as tv

    def use(name, m, root):
        if name == "imagenet":
            md5 = hashlib.md5(Path(m["from"][2]).read_bytes()).hexdigest()
            monkeypatch.setitem(tv.ARCHIVE_META, "devkit", ("ILSVRC2012_devkit_t12.tar.gz", md5))
        if name == "oxford_flowers":
            d = {
                k: (f, hashlib.md5((root / f).read_bytes()).hexdigest() if f.endswith(".mat") else md5)
                for k, (f, md5) in Flowers102._file_dict.items()
            }
            monkeypatch.setattr(Flowers102, "_file_dict", d)

    return use


def build(name: str, root: Path) -> dict:
    if name == "imagenet":
        return A.imagenet(root)
    if name in ("imagenetv2", "imagenet-sketch", "imagenet-a", "imagenet-r"):
        paths, counts = A.variant_archives(root)[name]
        return {"from": paths, "counts": counts}
    if name in A.COOP_MINI:
        return A.coop(name, root)
    if name == "places":  # all 3 of each class: fewer than the 200 kept per class
        return A.places(root) | {"counts": {"test": (6, 2)}}
    if name == "plantae":
        m = A.plantae(root)
        return m | {"counts": {"test": (sum(m["sizes"]), len(m["sizes"]))}}
    return {"fgvc_aircraft": A.aircraft, "cub": A.cub, "miniimagenet": A.miniimagenet,
            "cars-target": A.cars_target}[name](root)  # fmt: skip


NAMES = ["imagenet", "imagenetv2", "imagenet-sketch", "imagenet-a", "imagenet-r", *sorted(A.COOP_MINI),
         "fgvc_aircraft", "cub", "miniimagenet", "cars-target", "places", "plantae"]  # fmt: skip
FORMS = ["archive", "extracted", "parent", "mac-rezip"]


def prepare(name, m, sources, out, tmp_path, capsys) -> tuple[int, str]:
    exp = A.expect(tmp_path / f"expect-{name}.json", m["counts"])
    split = ["--split-file", m["split"]] if m.get("split") else []
    code = run("data", "prepare", name, "--from", *sources, "--out", out, "--expect-counts", exp, *split,
               "--no-progress", "--link", "copy")  # fmt: skip
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def labelled(out: Path, name: str) -> set[tuple[str, str, str, str]]:
    """(split, path, class name, SHA-256 of the bytes) of every image, read by the loader training uses."""
    from fdalign.data.opener import open_dataset
    from fdalign.data.prepare import get

    folder = out / get(name).folder
    man = json.loads((folder / "prepared.json").read_text())
    if man["split_file"]:
        splits = open_dataset(folder / man["split_file"])
    elif name == "miniimagenet":
        from fdalign.data.episodes import load_class_splits

        splits = load_class_splits(folder)
    else:
        splits = open_dataset(folder / man["data_dir"] if man["data_dir"] else folder)
    rows = set()
    for key, split in splits.items():
        for x in split.samples:
            p = split.resolve(x)
            rows.add((key, os.path.relpath(p, folder), split.classnames[x.label], sha(Path(p).read_bytes())))
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_every_set_from_archive_extracted_parent_and_mac_rezip(name, tmp_path, md5s, capsys):
    from fdalign.data.prepare import get

    dl = tmp_path / "dl"
    m = build(name, dl)
    md5s(name, m, dl)
    extracted = A.extract(m["from"], dl)  # beside the archives, as users do
    forms = {
        "archive": m["from"],
        "extracted": extracted,
        "parent": [dl],
        "mac-rezip": A.mac_rezip(extracted, tmp_path / "mac"),
    }
    want, row = None, {}
    for form, sources in forms.items():
        out = tmp_path / f"out-{form}"
        code, said = prepare(name, m, sources, out, tmp_path, capsys)
        assert code == 0, f"{form}: {said}"
        got = labelled(out, name)
        want = got if want is None else want
        assert got == want, form  # the same images, with the same labels, from every form
        man = json.loads((out / get(name).folder / "prepared.json").read_text())
        row[form] = "; ".join(
            [f"ok, {sum(c['images'] for c in man['counts'].values())} images"]
            + [f"{d['count']} {why} dropped" for why, d in man["dropped"].items()]
            + ([f"{man['duplicates']['count']} found twice, counted once"] if man["duplicates"]["count"] else [])
        )
        if form == "parent" and any(f.is_dir() for f in extracted) and any(str(f) != str(dl) for f in m["from"]):
            assert "found twice in the --from files and are counted once" in said, said
        if form == "mac-rezip" and any(f.is_dir() for f in extracted):
            assert "ignored" in said and "macOS / Windows metadata" in said, said
    if os.environ.get("FDALIGN_FORMS_TABLE"):
        with open(os.environ["FDALIGN_FORMS_TABLE"], "a") as fh:
            fh.write(json.dumps({name: row}) + "\n")


# ----------------------------------------------------------------------------------------------
# Real class names, label by label


def _members(paths) -> dict[str, bytes]:
    out = {}
    for p in paths:
        if p.name.endswith(".zip"):
            with zipfile.ZipFile(p) as zf:
                out |= {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
        elif p.name.endswith((".tar", ".tgz", ".tar.gz")):
            with tarfile.open(p) as tf:
                out |= {i.name: tf.extractfile(i).read() for i in tf.getmembers() if i.isfile()}
    return out


def proven(rows, source_class: dict[str, str], display=lambda c: c) -> int:
    """Every image's class (by the loader) is the class its bytes had in the source; returns how many."""
    for split, path, cls, digest in rows:
        assert display(source_class[digest]) == cls, (split, path, cls, source_class[digest])
    return len(rows)


def test_dtd_hyphenated_class_prepared_and_official_partitions_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(A.COOP_MINI, "dtd", (*A.COOP_MINI["dtd"][:1], ["banded", "polka-dotted", "crystalline"],
                                             *A.COOP_MINI["dtd"][2:]))  # fmt: skip
    m = A.coop("dtd", tmp_path / "dl")
    code, said = prepare("dtd", m, m["from"], tmp_path / "out", tmp_path, capsys)
    assert code == 0, said
    assert "DTD: all 15 images of the official annotations are there" in said
    classes = {sha(b): n.split("/")[2] for n, b in _members(m["from"]).items() if n.endswith(".jpg")}
    assert proven(labelled(tmp_path / "out", "dtd"), classes) == 12
    # from the extracted folder too, the official partitions (dtd/labels) are checked
    code, said = prepare("dtd", m, A.extract(m["from"], tmp_path / "x"), tmp_path / "out2", tmp_path, capsys)
    assert code == 0 and "DTD: all 15 images of the official annotations are there" in said


def test_food101_from_its_extracted_folder_checks_meta(tmp_path, capsys):
    m = A.coop("food101", tmp_path / "dl")
    code, said = prepare("food101", m, A.extract(m["from"], tmp_path / "x"), tmp_path / "out", tmp_path, capsys)
    assert code == 0 and "Food101: all 15 images of the official annotations are there" in said
    classes = {sha(b): n.split("/")[2] for n, b in _members(m["from"]).items() if n.endswith(".jpg")}
    assert proven(labelled(tmp_path / "out", "food101"), classes, lambda c: c.replace("_", " ")) == 12


def test_sun397_nested_classes_label_by_label(tmp_path, capsys, monkeypatch):
    classes3 = ["a/abbey", "b/bakery/shop", "c/church/indoor"]
    monkeypatch.setitem(A.COOP_MINI, "sun397", (A.COOP_MINI["sun397"][0], classes3, *A.COOP_MINI["sun397"][2:]))
    m = A.coop("sun397", tmp_path / "dl")
    code, said = prepare("sun397", m, m["from"], tmp_path / "out", tmp_path, capsys)
    assert code == 0, said
    src = {sha(b): n[len("SUN397/") :].rsplit("/", 1)[0] for n, b in _members(m["from"]).items() if n.endswith(".jpg")}
    # CoOp's split names a nested class by its last part ('shop', 'indoor'); the folder keeps the nesting
    assert proven(labelled(tmp_path / "out", "sun397"), src, lambda c: c.split("/")[-1]) == 12
    assert (tmp_path / "out" / "sun397" / "SUN397" / "c" / "church" / "indoor").is_dir()


def test_cars_and_aircraft_slashed_names_label_by_label(tmp_path, capsys):
    m = A.cars_target(tmp_path / "dl")
    code, said = prepare("cars-target", m, m["from"], tmp_path / "out", tmp_path, capsys)
    assert code == 0, said
    names = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"]
    # annotation k (0-based) has class k % 2: file NNNNN.jpg is class (N - 1) % 2
    src = {sha(b): names[(int(n[-9:-4]) - 1) % 2] for n, b in _members(m["from"]).items() if n.endswith(".jpg")}
    assert proven(labelled(tmp_path / "out", "cars-target"), src, lambda c: c.replace("/", "-")) == 6
    m = A.aircraft(tmp_path / "dl2")
    code, said = prepare("fgvc_aircraft", m, m["from"], tmp_path / "out2", tmp_path, capsys)
    assert code == 0, said
    variants = ["707-320", "A300B4", "F-16A/B"]  # 4 images each, in order (aircraft builder)
    src = {sha(b): variants[(int(Path(n).stem) - 1000001) // 4] for n, b in _members(m["from"]).items() if n.endswith(".jpg")}  # fmt: skip
    assert proven(labelled(tmp_path / "out2", "fgvc_aircraft"), src, lambda c: c.replace("/", "-")) == 12


def test_caltech101_official_zip_with_its_macosx_stub_and_faces_easy(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(
        A.COOP_MINI, "caltech101", (A.COOP_MINI["caltech101"][0], ["Faces_easy", "airplanes", "anchor"],
                                    *A.COOP_MINI["caltech101"][2:])
    )  # fmt: skip
    m = A.coop("caltech101", tmp_path / "dl")
    z = m["from"][0]
    with zipfile.ZipFile(z) as zf:
        files = {i.filename: zf.read(i) for i in zf.infolist()}
    files["__MACOSX/caltech-101/._101_ObjectCategories.tar.gz"] = A.APPLEDOUBLE  # as the official zip has
    files["__MACOSX/caltech-101/._Annotations.tar"] = A.APPLEDOUBLE
    A.write_zip(z, files)
    code, said = prepare("caltech101", m, m["from"], tmp_path / "out", tmp_path, capsys)
    assert code == 0, said
    assert "ignored 2 macOS / Windows metadata" in said and "._101_ObjectCategories.tar.gz" in said
    inner = _members([z])["caltech-101/101_ObjectCategories.tar.gz"]
    (tmp_path / "inner.tar.gz").write_bytes(inner)
    src = {sha(b): n.split("/")[1] for n, b in _members([tmp_path / "inner.tar.gz"]).items()}
    assert proven(labelled(tmp_path / "out", "caltech101"), src, lambda c: c.replace("_", " ")) == 12
    man = json.loads((tmp_path / "out" / "caltech-101" / "prepared.json").read_text())
    assert man["dropped"]["system"]["count"] == 2
    # the unzipped folder (stub beside it) works the same way
    code, said = prepare("caltech101", m, A.extract([z], tmp_path / "x"), tmp_path / "out2", tmp_path, capsys)
    assert code == 0 and "ignored 1 macOS" in said, said


def test_eurosat_rgb_zip(tmp_path, capsys):
    m = A.coop("eurosat", tmp_path / "dl")
    files = _members(m["from"])
    rgb = A.write_zip(
        tmp_path / "dl" / "EuroSAT_RGB.zip", {n.replace("2750/", "EuroSAT_RGB/"): b for n, b in files.items()}
    )
    code, said = prepare("eurosat", m, [rgb], tmp_path / "out", tmp_path, capsys)
    assert code == 0, said
    src = {sha(b): n.split("/")[1] for n, b in files.items()}
    rows = labelled(tmp_path / "out", "eurosat")
    assert proven(rows, src, {"AnnualCrop": "AnnualCrop", "Forest": "Forest", "River": "River"}.get) == 12
    assert all(r[1].startswith("2750/") for r in rows)  # where CoOp's split expects them


def test_extracted_folder_itself_and_its_parent_count_each_image_once(tmp_path, capsys):
    paths, counts = A.variant_archives(tmp_path / "dl")["imagenet-a"]
    folder = A.extract(paths, tmp_path / "dl")[0]
    assert folder.name == "imagenet-a"
    m = {"from": [folder], "counts": counts}
    code, said = prepare("imagenet-a", m, [folder], tmp_path / "o1", tmp_path, capsys)
    assert code == 0, said
    code, said = prepare("imagenet-a", m, [tmp_path / "dl"], tmp_path / "o2", tmp_path, capsys)
    assert code == 0, said  # 4 images, not 8, although the tar sits beside the folder
    n = counts["test"][0]
    assert f"{n} images were found twice in the --from files and are counted once: used {folder}/" in said
    assert "not " + str(paths[0]) + "/imagenet-a/" in said
    man = json.loads((tmp_path / "o2" / "imagenet-a" / "prepared.json").read_text())
    assert man["duplicates"]["count"] == n and man["counts"]["test"]["images"] == n


# ----------------------------------------------------------------------------------------------
# The published class names every preparer must accept


def test_patterns_accept_every_published_class_name():
    """Each preparer's member pattern, and the path function, on the full class lists the package ships."""
    import re

    from fdalign.data.prepare import coop, get, published
    from fdalign.data.prepare.paths import join

    counts = {"dtd": 47, "food101": 101, "sun397": 397, "stanford_cars": 196, "fgvc_aircraft": 100,
              "caltech101": 100, "oxford_flowers": 102, "oxford_pets": 37}  # fmt: skip
    for name, n in counts.items():
        assert len(published.CLASSES[name]) == n == len(set(published.CLASSES[name])), name
        assert get(name).expected["test"][1] == n
    sets = {s.name: s for s in coop.COOP_SETS}
    member = {
        "dtd": lambda c: f"dtd/images/{c}/{c}_0001.jpg",
        "food101": lambda c: f"food-101/images/{c}/1234.jpg",
        "sun397": lambda c: f"SUN397{c}/sun_aabcdefghijklmno.jpg",  # ClassName.txt lines: /b/bakery/shop
        "caltech101": lambda c: f"101_ObjectCategories/{c}/image_0001.jpg",
        "oxford_pets": lambda c: f"images/{c}_1.jpg",
    }
    for name, make in member.items():
        rx = re.compile(r"(?:^|/)" + sets[name].image + "$")
        for c in published.CLASSES[name]:
            hit = rx.search(make(c))
            assert hit, (name, c)
            join(*hit.group("rel").split("/"))
    caltech = re.compile(r"(?:^|/)" + sets["caltech101"].image + "$")
    for extra in ("Faces_easy", "BACKGROUND_Google"):  # in the archive, not among CoOp's 100
        assert caltech.search(f"101_ObjectCategories/{extra}/image_0001.jpg")
    for c in published.CLASSES["stanford_cars"]:  # class names become folders through _folder / the path function
        from fdalign.data.prepare.targets import _folder

        join(_folder(c), "00001.jpg")
    for c in published.CLASSES["fgvc_aircraft"]:
        join("train", coop._variant_folder(c), "0034309.jpg")
    assert "Ram C/V Cargo Van Minivan 2012" in published.CLASSES["stanford_cars"]
    assert {"F-16A/B", "F/A-18"} <= set(published.CLASSES["fgvc_aircraft"])
    assert "polka-dotted" in published.CLASSES["dtd"] and "/b/bakery/shop" in published.CLASSES["sun397"]


# ----------------------------------------------------------------------------------------------
# miniImageNet's ranks and --link copy


def test_miniimagenet_ranks_a_class_files_by_number_not_string(tmp_path, capsys):
    """'<wnid>00000004.jpg' is the 4th file by NUMBER: _1 _2 _9 _10 _100, not _1 _10 _100 _2 _9."""
    wnids = A.WNIDS + ["n01491361", "n01494475", "n01496331"]
    numbers = [100, 9, 1, 10, 2]  # unequal widths, listed out of order
    inner = {
        f"{w}.tar": A.tar_bytes({f"{w}_{k}.JPEG": A.jpeg(c * 1000 + k) for k in numbers}) for c, w in enumerate(wnids)
    }
    train = A.write_tar(tmp_path / "dl" / "ILSVRC2012_img_train.tar", inner)
    csvs = tmp_path / "dl" / "csv"
    csvs.mkdir()
    for r, role in enumerate(["train", "val", "test"]):
        rows = [f"{w}{i:08d}.jpg,{w}\n" for w in wnids[2 * r : 2 * r + 2] for i in range(1, 6)]
        (csvs / f"{role}.csv").write_text("filename,label\n" + "".join(rows))
    m = {"from": [train, csvs], "counts": {r: (10, 2) for r in ("train", "val", "test")}}
    code, said = prepare("miniimagenet", m, m["from"], tmp_path / "out", tmp_path, capsys)
    assert code == 0, said
    images = tmp_path / "out" / "miniImageNet" / "images"
    with tarfile.open(train) as tf:
        for w in wnids:
            sub = tarfile.open(fileobj=tf.extractfile(f"{w}.tar"))
            for rank, k in enumerate(sorted(numbers), 1):  # 1, 2, 9, 10, 100
                assert (images / f"{w}{rank:08d}.jpg").read_bytes() == sub.extractfile(f"{w}_{k}.JPEG").read(), (w, k)


def test_link_copy_gives_each_file_its_own_inode_and_says_how_each_was_placed(tmp_path, capsys):
    paths, counts = A.variant_archives(tmp_path / "dl")["imagenet-r"]
    folder = A.extract(paths, tmp_path / "x")[0]
    src = sorted(p for p in folder.rglob("*.jpg"))
    for mode, expect_same in (("copy", False), ("hard", True)):
        exp = A.expect(tmp_path / "e.json", counts)
        out = tmp_path / f"out-{mode}"
        assert run("data", "prepare", "imagenet-r", "--from", folder, "--out", out, "--expect-counts", exp,
                   "--link", mode, "--no-progress") == 0  # fmt: skip
        for s in src:
            d = out / "imagenet-r" / s.parent.name / s.name
            assert d.read_bytes() == s.read_bytes()
            assert (os.stat(d).st_ino == os.stat(s).st_ino) is expect_same, (mode, d)
        man = json.loads((out / "imagenet-r" / "prepared.json").read_text())
        assert man["placed"][mode] == len(src) and sum(v for k, v in man["placed"].items() if k != mode) == 0
    # a staging folder left by a hard-link run is not kept by a --link copy rerun: each file gets its own inode
    from fdalign.data.prepare import place

    out = tmp_path / "out-resume"
    real, calls = place._place, []

    def dies(*a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a)
        return real(*a)

    place._place = dies
    try:
        assert run("data", "prepare", "imagenet-r", "--from", folder, "--out", out, "--expect-counts", exp,
                   "--link", "hard", "--no-progress") == 130  # fmt: skip
    finally:
        place._place = real
    assert run("data", "prepare", "imagenet-r", "--from", folder, "--out", out, "--expect-counts", exp,
               "--link", "copy", "--no-progress") == 0  # fmt: skip
    for s in src:
        assert os.stat(out / "imagenet-r" / s.parent.name / s.name).st_ino != os.stat(s).st_ino
    man = json.loads((out / "imagenet-r" / "prepared.json").read_text())
    assert man["placed"]["copy"] == len(src) and man["placed"]["kept"] == 0
