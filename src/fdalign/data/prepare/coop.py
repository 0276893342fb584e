"""The CoOp data sets: the official archives' images in CoOp's folders, plus CoOp's split file.

CoOp's ``split_zhou_<Name>.json`` (from CoOp's Google Drive, given with ``--split-file``) fixes the
train / val / test images; its paths are relative to the image folder. Every entry is resolved
against the images found in the archives before anything is written; entries that do not resolve
are listed. FGVC-Aircraft has no CoOp split file: its official variant lists, read by
torchvision's parser, give an ImageFolder ``train/ val/ test/``.

Stanford Cars' site is gone; the Kaggle mirror ("stanford-car-dataset-by-classes-folder") keeps each
image's 5-digit id but moves it into ``car_data/{train,test}/<class>/``. The id within its split is
the documented key: ``car_data/train/<class>/00001.jpg`` is ``cars_train/00001.jpg``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fdalign.data.prepare import official
from fdalign.data.prepare.base import Download, Options, Plan, Preparer, first, register
from fdalign.data.prepare.paths import join
from fdalign.data.prepare.sources import Sources
from fdalign.errors import FDAlignError

COOP_SPLITS = "CoOp's Google Drive (github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"


@dataclass(frozen=True)
class Rename:
    """A mirror's file names mapped to the official ones by a documented key."""

    pattern: str  # groups name the key
    template: str  # the official path relative to the image folder
    doc: str


@dataclass(frozen=True)
class CoopSet:
    name: str  # registry name
    title: str
    split_name: str  # split_zhou_<split_name>.json
    folder: str
    image_dir: str  # where CoOp keeps the images inside the folder ("" = the folder itself)
    image: str  # regex with a group 'rel': the path under image_dir
    counts: tuple[int, int, int, int]  # train, val, test images, classes (CoOp's Table)
    needs: str
    disk_gb: float
    required: tuple[tuple[str, str], ...] = ()  # (pattern, what) that prove the archive is the official one
    renames: tuple[Rename, ...] = ()
    downloads: tuple[Download, ...] = ()
    official: Callable[[Sources], list[str] | None] | None = None  # the official lists (.official)
    drive_id: str | None = None  # split_zhou_<split_name>.json on CoOp's Google Drive (its DATASETS.md)


def _check_official(src: Sources, s: CoopSet, images: dict, plan: Plan) -> None:
    """Every image the official annotation files list must be in the archive."""
    listed = s.official(src) if s.official else None
    if listed is None:
        if s.official:
            plan.notes.append(
                f"{s.title}: the official annotation files were not given: the archive's "
                "completeness was checked through the split file only"
            )
        return
    missing = sorted(set(listed) - set(images))
    if missing:
        raise FDAlignError(
            f"{len(missing)} of {len(set(listed))} images named by {s.title}'s official annotations "
            f"are not in the --from files: {first(missing)}; nothing was written: give the complete "
            f"archives ({s.needs})"
        )
    plan.notes.append(f"{s.title}: all {len(set(listed))} images of the official annotations are there")


def _images(src: Sources, s: CoopSet, plan: Plan) -> dict[str, object]:
    """Path under image_dir -> member, official names first, then a known mirror's renames."""
    found: dict = {}
    for m, hit in src.find(s.image):
        plan.pick(found, hit.group("rel"), m)
    if found or not s.renames:
        return found
    for r in s.renames:
        for m, hit in src.find(r.pattern):
            plan.pick(found, r.template.format(**hit.groupdict()), m)
        if found:
            plan.notes.append(f"{s.title}: {len(found)} files of a mirror mapped to the official names: {r.doc}")
            return found
    return found


def _read_split(path: Path, s: CoopSet) -> tuple[dict, bytes]:
    named = re.fullmatch(r"split_zhou_(.+)\.json", path.name)
    if named and named.group(1) != s.split_name:
        raise FDAlignError(
            f"--split-file {path} is CoOp's split of {named.group(1)}, not {s.title}; pass "
            f"split_zhou_{s.split_name}.json ({COOP_SPLITS})"
        )
    try:
        data = path.read_bytes()
        d = json.loads(data)
    except FileNotFoundError:
        raise FDAlignError(
            f"--split-file {path} does not exist; get split_zhou_{s.split_name}.json from {COOP_SPLITS}"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FDAlignError(
            f"--split-file {path} is not JSON ({e}); download split_zhou_{s.split_name}.json again"
        ) from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("train", "val", "test")):
        raise FDAlignError(
            f"--split-file {path} is not a CoOp split (train / val / test lists of "
            f"[path, label, classname]); pass split_zhou_{s.split_name}.json"
        )
    return d, data


def _resolve(rel: str, s: CoopSet, images: dict) -> str | None:
    for cand in (rel, rel[len(s.image_dir) + 1 :] if s.image_dir and rel.startswith(s.image_dir + "/") else None):
        if cand is not None and cand in images:
            return cand
    return None


def plan_coop(s: CoopSet):
    def plan(src: Sources, opts: Options) -> Plan:
        p = Plan()
        for pattern, what in s.required:
            src.one(pattern, what, f"{s.title} needs {s.needs}")
        images = _images(src, s, p)
        if not images:
            raise FDAlignError(
                f"no {s.title} images found in {', '.join(str(x.path) for x in src.list)}; {s.title} needs {s.needs}"
            )
        if opts.split_file is None:
            raise FDAlignError(
                f"{s.title} needs CoOp's split file: add --split-file split_zhou_{s.split_name}.json "
                f"(from {COOP_SPLITS})"
            )
        split, raw = _read_split(opts.split_file, s)
        top = [s.image_dir] if s.image_dir else []
        for rel, m in images.items():
            p.put(m, join(*top, *rel.split("/")))
        unresolved = []
        for role in ("train", "val", "test"):
            for e in split[role]:
                if not (isinstance(e, list) and len(e) >= 3):
                    raise FDAlignError(
                        f"--split-file {opts.split_file}: {role} entry {e!r} is not [path, label, classname]"
                    )
                if _resolve(str(e[0]), s, images) is None:
                    unresolved.append(str(e[0]))
                    p.missing.setdefault(role, []).append(str(e[0]))
                else:
                    p.count(role, str(e[2]))
        if unresolved:
            total = sum(len(split[r]) for r in ("train", "val", "test"))
            hint = (
                (
                    " (the files look renamed: a mirror not known to fdalign; known: "
                    + "; ".join(r.doc for r in s.renames)
                    + ")"
                )
                if s.renames
                else ""
            )
            raise FDAlignError(
                f"{len(unresolved)} of {total} entries of {opts.split_file} match no {s.title} image in the --from "
                f"files{hint}: {first(unresolved)}; nothing was written: give the complete official archives "
                f"({s.needs}) or the split file of this data set"
            )
        _check_official(src, s, images, p)
        p.split_file = f"split_zhou_{s.split_name}.json"
        p.extra[p.split_file] = raw
        from fdalign.data.prepare.place import sha256_bytes

        p.split_sha256 = sha256_bytes(raw)
        return p

    return plan


VGG = "https://www.robots.ox.ac.uk/~vgg/data"
COOP_SETS = [
    CoopSet(
        "caltech101",
        "Caltech101",
        "Caltech101",
        "caltech-101",
        "101_ObjectCategories",
        r"101_ObjectCategories(?:\.tar\.gz)?/(?P<rel>[^/]+/image_\d{4}\.jpg)",
        (4128, 1649, 2465, 100),
        "caltech-101.zip or 101_ObjectCategories.tar.gz (data.caltech.edu/records/mzrjq-6wc02)",
        0.15,
    ),
    CoopSet(
        "oxford_pets",
        "OxfordPets",
        "OxfordPets",
        "oxford_pets",
        "images",
        r"images/(?P<rel>[^/]+_\d+\.jpg)",
        (2944, 736, 3669, 37),
        f"images.tar.gz and annotations.tar.gz ({VGG}/pets/)",
        0.8,
        required=((r"annotations/(trainval\.txt)", "the Pets annotations (annotations/trainval.txt)"),),
        official=official.pets,
        downloads=(
            Download(f"{VGG}/pets/data/images.tar.gz", "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c", "images.tar.gz"),
            Download(
                f"{VGG}/pets/data/annotations.tar.gz", "md5:95a8c909bbe2e81eed6a22bccdf3f68f", "annotations.tar.gz"
            ),
        ),
    ),
    CoopSet(
        "stanford_cars",
        "StanfordCars",
        "StanfordCars",
        "stanford_cars",
        "",
        r"(?P<rel>cars_(?:train|test)/\d{5}\.jpg)",
        (6509, 1635, 8041, 196),
        "cars_train.tgz and cars_test.tgz (the original site is gone: a mirror, e.g. Kaggle's "
        "stanford-car-dataset-by-classes-folder, whose renamed files are mapped back)",
        1.9,
        renames=(
            Rename(
                r"(?P<split>train|test)/[^/]+/(?P<id>\d{5})\.jpg",
                "cars_{split}/{id}.jpg",
                "Kaggle's car_data/{train,test}/<class>/NNNNN.jpg is cars_{train,test}/NNNNN.jpg by its 5-digit id",
            ),
        ),
    ),
    CoopSet(
        "oxford_flowers",
        "Flowers102",
        "OxfordFlowers",
        "oxford_flowers",
        "jpg",
        r"jpg/(?P<rel>image_\d{5}\.jpg)",
        (4093, 1633, 2463, 102),
        f"102flowers.tgz, imagelabels.mat and setid.mat ({VGG}/flowers/102/)",
        0.35,
        official=official.flowers,
        downloads=(
            Download(f"{VGG}/flowers/102/102flowers.tgz", "md5:52808999861908f626f3c1f4e79d11fa", "102flowers.tgz"),
            Download(f"{VGG}/flowers/102/imagelabels.mat", "md5:e0620be6f572b9609742df49c70aed4d", "imagelabels.mat"),
            Download(f"{VGG}/flowers/102/setid.mat", "md5:a5357ecc9cb78c4bef273ce3793fc85c", "setid.mat"),
        ),
    ),
    CoopSet(
        "food101",
        "Food101",
        "Food101",
        "food-101",
        "images",
        r"images/(?P<rel>[a-z_]+/\d+\.jpg)",
        (50500, 20200, 30300, 101),
        "food-101.tar.gz (data.vision.ee.ethz.ch/cvl/food-101.tar.gz)",
        5.0,
        official=official.food101,
        downloads=(
            Download(
                "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                "md5:85eeb15f3717b99a5da872d97d918f87",
                "food-101.tar.gz",
            ),
        ),
    ),
    CoopSet(
        "sun397",
        "SUN397",
        "SUN397",
        "sun397",
        "SUN397",
        r"SUN397/(?P<rel>[a-z]/[a-z0-9_-]+(?:/[a-z0-9_-]+)*/sun_\w+\.jpg)",
        (15880, 3970, 19850, 397),
        "SUN397.tar.gz (vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz)",
        37.0,
        downloads=(
            Download(
                "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
                "md5:8ca2778205c41d23104230ba66911c7a",
                "SUN397.tar.gz",
            ),
        ),
    ),
    CoopSet(
        "dtd",
        "DTD",
        "DescribableTextures",
        "dtd",
        "images",
        r"images/(?P<rel>[a-z-]+/[a-z-]+_\d+\.jpg)",
        (2820, 1128, 1692, 47),
        f"dtd-r1.0.1.tar.gz ({VGG}/dtd/)",
        0.6,
        official=official.dtd,
        downloads=(
            Download(
                f"{VGG}/dtd/download/dtd-r1.0.1.tar.gz", "md5:fff73e5086ae6bdbea199a49dfb8a4c1", "dtd-r1.0.1.tar.gz"
            ),
        ),
    ),
    CoopSet(
        "eurosat",
        "EuroSAT",
        "EuroSAT",
        "eurosat",
        "2750",
        r"(?:2750|EuroSAT_RGB)/(?P<rel>[A-Za-z]+/[A-Za-z]+_\d+\.jpg)",
        (13500, 5400, 8100, 10),
        "EuroSAT.zip (the RGB version; torchvision's mirror on huggingface.co/datasets/torchgeo/eurosat)",
        0.1,
        downloads=(
            Download(
                "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                "md5:c8fa014336c82ac7804f0398fcb19387",
                "EuroSAT.zip",
            ),
        ),
    ),
    CoopSet(
        "ucf101",
        "UCF101",
        "UCF101",
        "ucf101",
        "UCF-101-midframes",
        r"UCF-101-midframes/(?P<rel>[A-Za-z_]+/v_[^/]+\.jpg)",
        (7639, 1898, 3783, 101),
        f"UCF-101-midframes.zip (the middle frame of each video, {COOP_SPLITS})",
        0.3,
    ),
]

DRIVE_IDS = {  # CoOp's DATASETS.md links each split file as drive.google.com/file/d/<id>
    "caltech101": "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
    "oxford_pets": "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
    "stanford_cars": "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
    "oxford_flowers": "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
    "food101": "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
    "sun397": "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq",
    "dtd": "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
    "eurosat": "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
    "ucf101": "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
}
COOP_SETS = [replace(s, drive_id=DRIVE_IDS[s.name]) for s in COOP_SETS]

for _s in COOP_SETS:
    train, val, test, classes = _s.counts
    register(
        Preparer(
            _s.name,
            _s.title,
            _s.folder,
            needs=_s.needs,
            disk_gb=_s.disk_gb,
            expected={"train": (train, classes), "val": (val, classes), "test": (test, classes)},
            plan=plan_coop(_s),
            reads=f"{_s.folder}/split_zhou_{_s.split_name}.json",
            downloads=_s.downloads,
            split_help=f"split_zhou_{_s.split_name}.json from {COOP_SPLITS}",
            split_file=f"split_zhou_{_s.split_name}.json",
            split_drive_id=_s.drive_id,
        )
    )


# ----------------------------------------------------------------------------------------------
# FGVC-Aircraft: the official variant lists (torchvision's parser) -> ImageFolder train/ val/ test/


def _variant_folder(name: str) -> str:
    # a variant like 'F-16A/B' cannot be a folder name; ImageFolder reads '_' as a space
    return name.replace("/", "-").replace("_", " ")


def plan_aircraft(src: Sources, opts: Options) -> Plan:
    from torchvision.datasets import FGVCAircraft

    p = Plan()
    need = "fgvc-aircraft-2013b.tar.gz (www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/)"
    images: dict = {}
    for m, hit in src.find(r"fgvc-aircraft-2013b/data/images/(\d+\.jpg)"):
        p.pick(images, hit.group(1), m)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "fgvc-aircraft-2013b", "data")
        data.mkdir(parents=True)
        for name in ["variants.txt"] + [f"images_variant_{s}.txt" for s in ("train", "val", "test")]:
            m = src.one(
                rf"fgvc-aircraft-2013b/data/({re.escape(name)})", f"FGVC-Aircraft's data/{name}", f"give {need}"
            )
            (data / name).write_bytes(src.read(m))
        for split in ("train", "val", "test"):
            try:
                ds = FGVCAircraft(tmp, split=split, annotation_level="variant", download=False)
            except (KeyError, ValueError, RuntimeError) as e:
                raise FDAlignError(
                    f"FGVC-Aircraft's data/images_variant_{split}.txt names a variant not in "
                    f"variants.txt ({official.torchvision_said(e)}); download {need} again"
                ) from None
            for f, y in zip(ds._image_files, ds._labels):
                base = os.path.basename(f)
                m = images.get(base)
                if m is None:
                    p.missing.setdefault(split, []).append(f"data/images/{base}")
                    continue
                cls = ds.classes[y]
                p.add(m, join(split, _variant_folder(cls), base, what="a variant of variants.txt"), split, cls)
    if any("/" in c for v in p.counts.values() for c in v):
        p.notes.append("variants with '/' (e.g. F-16A/B) are folders with '-' (F-16A-B)")
    return p


register(
    Preparer(
        "fgvc_aircraft",
        "FGVCAircraft",
        "fgvc_aircraft",
        needs="fgvc-aircraft-2013b.tar.gz (www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/)",
        disk_gb=2.8,
        expected={"train": (3334, 100), "val": (3333, 100), "test": (3333, 100)},
        plan=plan_aircraft,
        reads="fgvc_aircraft (ImageFolder train/ val/ test/)",
    )
)
