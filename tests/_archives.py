"""Miniature copies of the official archives, in their real formats (names, tar / zip, .mat / CSV / TXT).

Each builder writes the files a user downloads, with a few images per class, and returns the
``--from`` paths plus the counts the miniature holds (for ``--expect-counts``).
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import zipfile
from pathlib import Path

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark


_SERIAL = itertools.count()


def jpeg(i: int = 0) -> bytes:
    """A small JPEG unlike every other one made here (the selection guard compares image contents)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([i, next(_SERIAL)])
    im = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def write_tar(path: Path, files: dict[str, bytes], gz: bool | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    gz = path.name.endswith((".gz", ".tgz")) if gz is None else gz
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def drop_member(path: Path, suffixes=(".jpg", ".jpeg", ".JPEG")) -> str:
    """Rewrite a tar or zip without its first image; return that image's name."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            files = {i.filename: zf.read(i) for i in zf.infolist()}
    else:
        with tarfile.open(path) as tf:
            files = {i.name: tf.extractfile(i).read() for i in tf.getmembers() if i.isfile()}
    gone = next(n for n in files if n.endswith(suffixes))
    del files[gone]
    (write_zip if path.name.endswith(".zip") else write_tar)(path, files)
    return gone


def expect(path: Path, counts: dict[str, tuple[int, int]]) -> Path:
    path.write_text(json.dumps({k: list(v) for k, v in counts.items()}))
    return path


# ----------------------------------------------------------------------------------------------
# ImageNet


def devkit(path: Path, val_wnids: list[str]) -> Path:
    """ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (synsets) and the val ground truth (1-based ids)."""
    import numpy as np
    import scipy.io

    fields = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    syn = np.zeros((len(WNIDS) + 1, 1), dtype=fields)
    for i, w in enumerate(WNIDS):
        syn[i, 0] = (i + 1, w, f"class {w}", "gloss", 0, np.zeros((0,)), 0, 4)
    syn[len(WNIDS), 0] = (len(WNIDS) + 1, "n00000000", "fish", "a parent synset", 3, np.zeros((0,)), 1, 0)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": syn})
    gt = "".join(f"{WNIDS.index(w) + 1}\n" for w in val_wnids)
    return write_tar(
        path,
        {
            "ILSVRC2012_devkit_t12/data/meta.mat": mat.getvalue(),
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": gt.encode(),
        },
    )


def imagenet(root: Path, per_class: int = 4, val_per_class: int = 2, labels: str = "devkit") -> dict:
    """ILSVRC2012_img_train.tar (a tar of per-class tars), a flat ILSVRC2012_img_val.tar and the devkit
    (or LOC_val_solution.csv)."""
    inner = {
        f"{w}.tar": tar_bytes({f"{w}_{100 + i}.JPEG": jpeg(c * 10 + i) for i in range(per_class)})
        for c, w in enumerate(WNIDS)
    }
    train = write_tar(root / "ILSVRC2012_img_train.tar", inner)
    val_wnids = [WNIDS[i % len(WNIDS)] for i in range(val_per_class * len(WNIDS))]
    val = write_tar(
        root / "ILSVRC2012_img_val.tar",
        {f"ILSVRC2012_val_{i:08d}.JPEG": jpeg(100 + i) for i in range(1, len(val_wnids) + 1)},
    )
    if labels == "devkit":
        lab = devkit(root / "ILSVRC2012_devkit_t12.tar.gz", val_wnids)
    else:
        rows = "".join(f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4\n" for i, w in enumerate(val_wnids, 1))
        lab = root / "LOC_val_solution.csv"
        lab.write_text("ImageId,PredictionString\n" + rows)
    n = len(WNIDS)
    return {
        "from": [train, val, lab],
        "counts": {"train": (per_class * n, n), "val": (val_per_class * n, n)},
        "val_wnids": val_wnids,
    }


def variant_archives(root: Path, per_class: int = 2) -> dict:
    """ImageNet-V2 (tar.gz, folders 0..999), -Sketch (zip), -A and -R (tar), on the three WNIDS."""
    from fdalign.data.imagenet import imagenet_wnids

    order = list(imagenet_wnids())
    v2 = write_tar(
        root / "imagenetv2-matched-frequency.tar.gz",
        {
            f"imagenetv2-matched-frequency-format-val/{order.index(w)}/{c}{i:03d}abc.jpeg": jpeg(c * 7 + i)
            for c, w in enumerate(WNIDS)
            for i in range(per_class)
        },
    )
    sk = write_zip(
        root / "ImageNet-Sketch.zip",
        {f"sketch/{w}/sketch_{i}.JPEG": jpeg(c + i) for c, w in enumerate(WNIDS) for i in range(per_class)},
    )
    a = write_tar(
        root / "imagenet-a.tar",
        {f"imagenet-a/{w}/0.{c}{i}_a.jpg": jpeg(c * 3 + i) for c, w in enumerate(WNIDS[1:]) for i in range(per_class)}
        | {"imagenet-a/README.txt": b"ImageNet-A"},
    )
    r = write_tar(
        root / "imagenet-r.tar",
        {f"imagenet-r/{w}/art_{c}{i}.jpg": jpeg(c * 5 + i) for c, w in enumerate(WNIDS[1:]) for i in range(per_class)}
        | {"imagenet-r/README.txt": b"ImageNet-R"},
    )
    n = len(WNIDS)
    return {
        "imagenetv2": ([v2], {"test": (per_class * n, n)}),
        "imagenet-sketch": ([sk], {"test": (per_class * n, n)}),
        "imagenet-a": ([a], {"test": (per_class * (n - 1), n - 1)}),
        "imagenet-r": ([r], {"test": (per_class * (n - 1), n - 1)}),
    }


# ----------------------------------------------------------------------------------------------
# The CoOp sets: the official archive's names and packing, and a CoOp split file over them.
# Per class: 2 train, 1 val, 1 test images in the split and one more in the archive only.


def _pack_caltech(root: Path, files: dict, listed: list) -> list[Path]:
    inner = tar_bytes(files, mode="w:gz")
    return [
        write_zip(
            root / "caltech-101.zip",
            {
                "caltech-101/101_ObjectCategories.tar.gz": inner,
                "caltech-101/Annotations.tar": tar_bytes({"Annotations/x.mat": b"x"}),
            },
        )
    ]


def _halves(listed: list, parts: int = 2) -> list[list]:
    return [listed[i::parts] for i in range(parts)]


def _pack_pets(root: Path, files: dict, listed: list) -> list[Path]:
    """images.tar.gz and annotations.tar.gz ('<image> <class id> <species> <breed id>' lines)."""
    trainval, test = ("".join(f"{Path(n).stem} 1 1 1\n" for n in half).encode() for half in _halves(listed))
    return [
        write_tar(root / "images.tar.gz", files),
        write_tar(
            root / "annotations.tar.gz",
            {
                "annotations/trainval.txt": trainval,
                "annotations/test.txt": test,
                "annotations/list.txt": trainval + test,
            },
        ),
    ]


def _pack_flowers(root: Path, files: dict, listed: list) -> list[Path]:
    """102flowers.tgz, imagelabels.mat (1-based class per image id) and setid.mat (trnid / valid / tstid)."""
    import numpy as np
    import scipy.io

    ids = [int(Path(n).stem.split("_")[1]) for n in listed]
    labels, setid = io.BytesIO(), io.BytesIO()
    scipy.io.savemat(labels, {"labels": np.array([[1 + i % 3 for i in range(max(ids))]])})
    scipy.io.savemat(setid, {k: np.array([part]) for k, part in zip(("trnid", "valid", "tstid"), _halves(ids, 3))})
    (root / "imagelabels.mat").write_bytes(labels.getvalue())
    (root / "setid.mat").write_bytes(setid.getvalue())
    return [write_tar(root / "102flowers.tgz", files), root / "imagelabels.mat", root / "setid.mat"]


def _pack_dtd(root: Path, files: dict, listed: list) -> list[Path]:
    """dtd-r1.0.1.tar.gz with dtd/images/<class>/... and the partition lists dtd/labels/{train,val,test}1.txt."""
    labels = {
        f"dtd/labels/{s}1.txt": "".join(n.split("dtd/images/")[1] + "\n" for n in part).encode()
        for s, part in zip(("train", "val", "test"), _halves(listed, 3))
    }
    return [write_tar(root / "dtd-r1.0.1.tar.gz", files | labels)]


def _pack_food(root: Path, files: dict, listed: list) -> list[Path]:
    """food-101.tar.gz with food-101/images/<class>/<id>.jpg and food-101/meta/{train,test}.json."""
    meta = {}
    for s, part in zip(("train", "test"), _halves(listed)):
        d: dict = {}
        for n in part:
            c, i = n.split("/")[-2:]
            d.setdefault(c, []).append(f"{c}/{Path(i).stem}")
        meta[f"food-101/meta/{s}.json"] = json.dumps(d).encode()
    return [write_tar(root / "food-101.tar.gz", files | meta)]


def _pack_cars(root: Path, files: dict, listed: list) -> list[Path]:
    return [
        write_tar(root / f"cars_{s}.tgz", {k: v for k, v in files.items() if k.startswith(f"cars_{s}/")})
        for s in ("train", "test")
    ]


COOP_MINI = {
    # name: (split_zhou name, classes, member(c, k, n), rel(c, k, n), pack)
    "caltech101": (
        "Caltech101",
        ["accordion", "airplanes", "anchor"],
        "101_ObjectCategories/{c}/image_{k:04d}.jpg",
        "{c}/image_{k:04d}.jpg",
        _pack_caltech,
    ),
    "oxford_pets": ("OxfordPets", ["Abyssinian", "Bengal", "beagle"], "images/{c}_{k}.jpg", "{c}_{k}.jpg", _pack_pets),
    "stanford_cars": (
        "StanfordCars",
        ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"],
        "cars_{s}/{n:05d}.jpg",
        "cars_{s}/{n:05d}.jpg",
        _pack_cars,
    ),
    "oxford_flowers": (
        "OxfordFlowers",
        ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
        "jpg/image_{n:05d}.jpg",
        "image_{n:05d}.jpg",
        _pack_flowers,
    ),
    "food101": (
        "Food101",
        ["apple_pie", "baby_back_ribs", "baklava"],
        "food-101/images/{c}/{n}.jpg",
        "{c}/{n}.jpg",
        _pack_food,
    ),
    "sun397": (
        "SUN397",
        ["a/abbey", "b/bakery/shop", "c/canyon"],
        "SUN397/{c}/sun_a{n:04d}.jpg",
        "{c}/sun_a{n:04d}.jpg",
        lambda root, f, listed: [write_tar(root / "SUN397.tar.gz", f | {"SUN397/ClassName.txt": b"/a/abbey\n"})],
    ),
    "dtd": (
        "DescribableTextures",
        ["banded", "blotchy", "braided"],
        "dtd/images/{c}/{c}_{k:04d}.jpg",
        "{c}/{c}_{k:04d}.jpg",
        _pack_dtd,
    ),
    "eurosat": (
        "EuroSAT",
        ["AnnualCrop", "Forest", "River"],
        "2750/{c}/{c}_{k}.jpg",
        "{c}/{c}_{k}.jpg",
        lambda root, f, listed: [write_zip(root / "EuroSAT.zip", f)],
    ),
    "ucf101": (
        "UCF101",
        ["Apply_Eye_Makeup", "Archery", "Basketball"],
        "UCF-101-midframes/{c}/v_{c}_g{k:02d}_c01.jpg",
        "{c}/v_{c}_g{k:02d}_c01.jpg",
        lambda root, f, listed: [write_zip(root / "UCF-101-midframes.zip", f)],
    ),
}
ROLES = ["train", "train", "val", "test", None]  # None: in the archive, not in the split


def coop(name: str, root: Path, drop: int = 0, drop_extra: int = 0) -> dict:
    """A CoOp set's archive(s) and its split_zhou file; ``drop`` leaves that many images of the split
    out of the archive, ``drop_extra`` that many of the images the split does not use (the official
    annotations still list them all)."""
    split_name, classes, member, rel, pack = COOP_MINI[name]
    files, listed, split, n, dropped = {}, [], {"train": [], "val": [], "test": []}, 0, []
    root.mkdir(parents=True, exist_ok=True)
    for y, c in enumerate(classes):
        for k, role in enumerate(ROLES, 1):
            n += 1
            s = "test" if role == "test" else "train"  # Stanford Cars: val comes from cars_train
            m, r = member.format(c=c, k=k, n=n, s=s), rel.format(c=c, k=k, n=n, s=s)
            listed.append(m)
            if role is not None:
                split[role].append([r, y, c.split("/")[-1].replace("_", " ")])
                if len(dropped) < drop:
                    dropped.append(r)
                    continue
            elif len(dropped) < drop + drop_extra:
                dropped.append(r)
                continue
            files[m] = jpeg(n)
    paths = pack(root, files, listed)
    sf = root / f"split_zhou_{split_name}.json"
    sf.write_text(json.dumps(split))
    nc = len(classes)
    return {
        "from": paths,
        "split": sf,
        "dropped": dropped,
        "counts": {"train": (2 * nc, nc), "val": (nc, nc), "test": (nc, nc)},
    }


def aircraft(root: Path, drop: int = 0) -> dict:
    variants = ["707-320", "A300B4", "F-16A/B"]
    files, lists, n, dropped = {}, {"train": [], "val": [], "test": []}, 1000000, []
    for v in variants:
        for role in ["train", "train", "val", "test"]:
            n += 1
            lists[role].append(f"{n} {v}\n")
            if len(dropped) < drop:
                dropped.append(f"{n}.jpg")
                continue
            files[f"fgvc-aircraft-2013b/data/images/{n}.jpg"] = jpeg(n)
    files["fgvc-aircraft-2013b/data/variants.txt"] = "".join(f"{v}\n" for v in variants).encode()
    for role, lines in lists.items():
        files[f"fgvc-aircraft-2013b/data/images_variant_{role}.txt"] = "".join(lines).encode()
    nc = len(variants)
    return {
        "from": [write_tar(root / "fgvc-aircraft-2013b.tar.gz", files)],
        "dropped": dropped,
        "counts": {"train": (2 * nc, nc), "val": (nc, nc), "test": (nc, nc)},
    }


def cub(root: Path, drop: int = 0, per_class: int = 3) -> dict:
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    files = {f"CUB_200_2011/images/{c}/{c[4:]}_{i:04d}_1.jpg": jpeg(i) for c in classes for i in range(per_class)}
    for k in list(files)[:drop]:
        del files[k]
    files["CUB_200_2011/classes.txt"] = b"1 001.Black_footed_Albatross\n"
    return {"from": [write_tar(root / "CUB_200_2011.tgz", files)], "counts": {"test": (2 * per_class, 2)}}


def miniimagenet(root: Path, per_class: int = 3, drop: int = 0) -> dict:
    """Ravi & Larochelle's CSVs over ImageNet train images: 2 classes per role (WNIDS + 3 more);
    ``drop``: the first class's last files are not in the train tar."""
    wnids = WNIDS + ["n01491361", "n01494475", "n01496331"]
    inner = {
        f"{w}.tar": tar_bytes({f"{w}_{10 * (i + 1)}.JPEG": jpeg(i) for i in range(per_class - (drop if c == 0 else 0))})
        for c, w in enumerate(wnids)
    }
    train = write_tar(root / "ILSVRC2012_img_train.tar", inner)
    csvs = root / "csv"
    csvs.mkdir(parents=True, exist_ok=True)
    for r, role in enumerate(["train", "val", "test"]):
        rows = [f"{w}{i:08d}.jpg,{w}\n" for w in wnids[2 * r : 2 * r + 2] for i in range(1, per_class + 1)]
        (csvs / f"{role}.csv").write_text("filename,label\n" + "".join(rows))
    return {"from": [train, csvs], "counts": {r: (2 * per_class, 2) for r in ("train", "val", "test")}, "wnids": wnids}


# ----------------------------------------------------------------------------------------------
# Cross-domain targets


def cars_target(root: Path, per_class: int = 3, drop: int = 0) -> dict:
    """cars_train.tgz + car_devkit.tgz (devkit/cars_meta.mat, devkit/cars_train_annos.mat)."""
    import numpy as np
    import scipy.io

    classes = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"]
    names = np.empty((1, len(classes)), dtype=object)
    names[0, :] = classes
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"class_names": names})
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    n = len(classes) * per_class
    ann = np.zeros((1, n), dtype=fields)
    files = {}
    for k in range(n):
        fname = f"{k + 1:05d}.jpg"
        ann[0, k] = (1, 1, 10, 10, k % len(classes) + 1, fname)
        if k >= drop:
            files[f"cars_train/{fname}"] = jpeg(k)
    annos = io.BytesIO()
    scipy.io.savemat(annos, {"annotations": ann})
    return {
        "from": [
            write_tar(root / "cars_train.tgz", files),
            write_tar(
                root / "car_devkit.tgz",
                {"devkit/cars_meta.mat": meta.getvalue(), "devkit/cars_train_annos.mat": annos.getvalue()},
            ),
        ],
        "counts": {"test": (n, len(classes))},
    }


def places(root: Path, per_class: int = 3, keep: int = 2) -> dict:
    """places365standard_easyformat.tar: places365_standard/{train,val}/<class>/NNNNNNNN.jpg."""
    classes = ["airfield", "apartment_building-outdoor"]
    files = {f"places365_standard/train/{c}/{i:08d}.jpg": jpeg(i) for c in classes for i in range(1, per_class + 1)}
    files |= {f"places365_standard/val/{c}/Places365_val_{i:08d}.jpg": jpeg(i) for c in classes for i in range(2)}
    return {
        "from": [write_tar(root / "places365standard_easyformat.tar", files)],
        "counts": {"test": (keep * len(classes), len(classes))},
    }


def plantae(root: Path, sizes=(4, 3, 1)) -> dict:
    """plantae.tar.gz: Plantae/<species>/<hash>.jpg."""
    files = {f"Plantae/Species_{k}/{i:032x}.jpg": jpeg(i) for k, n in enumerate(sizes) for i in range(n)}
    return {"from": [write_tar(root / "plantae.tar.gz", files)], "sizes": sizes}


# ----------------------------------------------------------------------------------------------
# The forms users have: the archive, its extracted folder, the parent holding both, a Mac re-zip

KEEP_PACKED = ("ILSVRC2012_devkit_t12.tar.gz",)  # torchvision reads the devkit as the archive itself


def _top_level(path: Path) -> set[str]:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            return {n.split("/")[0] for n in zf.namelist()}
    with tarfile.open(path) as tf:
        return {n.split("/")[0] for n in tf.getnames()}


def extract(paths: list[Path], into: Path) -> list[Path]:
    """What a user gets with `tar xf` / `unzip` (one level: archives inside stay packed): the
    top-level folder of each archive, or a folder named after an archive with loose files at its top."""
    out = []
    into.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.is_dir() or p.name in KEEP_PACKED or not p.name.endswith((".tar", ".tar.gz", ".tgz", ".zip")):
            out.append(p)
            continue
        tops = _top_level(p)
        stem = p.name.split(".")[0]
        dest = into if len(tops) == 1 else into / stem
        if p.name.endswith(".zip"):
            with zipfile.ZipFile(p) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(p) as tf:
                tf.extractall(dest, filter="data")
        out += [into / t for t in sorted(tops)] if len(tops) == 1 else [dest]
    return list(dict.fromkeys(out))


APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(50)


def mac_rezip(folders: list[Path], into: Path) -> list[Path]:
    """Each extracted folder zipped by macOS's Compress: __MACOSX/.../._<name> beside every file,
    .DS_Store in every folder, and ._<name> files a copy to an exFAT drive leaves next to each file."""
    out = []
    into.mkdir(parents=True, exist_ok=True)
    for f in folders:
        if not f.is_dir():
            out.append(f)
            continue
        files: dict[str, bytes] = {}
        for p in sorted(f.rglob("*")):
            rel = f"{f.name}/{p.relative_to(f).as_posix()}"
            if p.is_dir():
                files[f"{rel}/.DS_Store"] = b"Bud1" + bytes(20)
                continue
            files[rel] = p.read_bytes()
            head, _, name = rel.rpartition("/")
            files[f"__MACOSX/{head}/._{name}"] = APPLEDOUBLE
            files[f"{head}/._{name}"] = APPLEDOUBLE
        files[f"{f.name}/.DS_Store"] = b"Bud1" + bytes(20)
        files[f"{f.name}/Thumbs.db"] = b"\xd0\xcf\x11\xe0"
        out.append(write_zip(into / f"{f.name}.zip", files))
    return out
