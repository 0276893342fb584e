"""The cross-domain targets of the ``miniimagenet`` preset: CUB, Stanford Cars, Places, Plantae.

Each is a folder of class folders used whole (``{data_root}/CUB_200_2011/images``,
``StanfordCars``, ``Places``, ``Plantae``), taken from the sources the cross-domain few-shot
literature uses (Tseng et al., ICLR 2020, "feature-wise transformation"):

* CUB-200-2011: all 11,788 images of CUB_200_2011.tgz;
* Stanford Cars: the 8,144 images of cars_train.tgz, sorted into the 196 classes of the devkit's
  annotations (read by torchvision's StanfordCars parser);
* Places: places365standard_easyformat.tar, the first 200 files (by name) of each of the 365 train
  classes: 73,000 images;
* Plantae: the Plantae images of iNaturalist 2017 (or the plantae.tar.gz of that paper), the 200
  classes with the most images, the first 600 files (by name) of each. That paper drew the 600 at
  random, so no image count is published: only the 200 classes are checked.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fdalign.data.prepare.base import Options, Plan, Preparer, register
from fdalign.data.prepare.paths import join
from fdalign.data.prepare.sources import Sources
from fdalign.errors import FDAlignError


def _folder(name: str) -> str:
    return name.replace("/", "-")  # 'Ram C/V Cargo Van Minivan 2012' cannot be a folder name


def _plan_cub(src: Sources, opts: Options) -> Plan:
    p = Plan()
    for m, hit in src.find(r"CUB_200_2011/images/(\d{3}\.[^/]+)/([^/]+\.jpg)"):
        p.add(m, join("images", hit.group(1), hit.group(2)), "test", hit.group(1))
    return p


def _plan_cars(src: Sources, opts: Options) -> Plan:
    from torchvision.datasets import StanfordCars

    need = "cars_train.tgz and car_devkit.tgz (from a Stanford Cars mirror)"
    p = Plan()
    images: dict = {}
    for m, hit in src.find(r"cars_train/(\d{5}\.jpg)"):
        p.pick(images, hit.group(1), m)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp, "stanford_cars")
        (base / "devkit").mkdir(parents=True)
        (base / "cars_train").mkdir()
        for name in ("cars_meta.mat", "cars_train_annos.mat"):
            m = src.one(rf"devkit/({name})", f"the devkit's {name}", f"give {need}")
            (base / "devkit" / name).write_bytes(src.read(m))
        try:
            ds = StanfordCars(tmp, split="train", download=False)
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            from fdalign.data.prepare.official import torchvision_said

            raise FDAlignError(
                f"the Stanford Cars devkit cannot be read ({torchvision_said(e)}); download car_devkit.tgz again"
            ) from None
        for f, y in ds._samples:
            name = os.path.basename(f)
            m = images.get(name)
            if m is None:
                p.missing.setdefault("test", []).append(f"cars_train/{name}")
                continue
            cls = ds.classes[y]
            p.add(m, join(_folder(cls), name, what="a class name of the devkit's cars_meta.mat"), "test", cls)
    return p


def _first_per_class(src: Sources, pattern: str, per_class: int, top: int | None = None) -> Plan:
    p = Plan()
    found: dict = {}
    for m, hit in src.find(pattern):
        p.pick(found, f"{hit.group(1)}/{hit.group(2)}", m)
    by_class: dict[str, list] = {}
    for key, m in found.items():
        c, name = key.split("/")
        by_class.setdefault(c, []).append((name, m))
    classes = sorted(by_class)
    if top is not None:  # the classes with the most images; ties by name
        classes = sorted(sorted(classes, key=lambda c: (-len(by_class[c]), c))[:top])
    for c in classes:
        for name, m in sorted(by_class[c], key=lambda t: t[0])[:per_class]:
            p.add(m, join(c, name), "test", c)
    return p


register(
    Preparer(
        "cub",
        "CUB-200-2011",
        "CUB_200_2011",
        needs="CUB_200_2011.tgz (data.caltech.edu/records/65de6-vp158)",
        disk_gb=1.2,
        expected={"test": (11788, 200)},
        plan=_plan_cub,
        reads="CUB_200_2011/images (a cross-domain target)",
        data_dir="images",
    )
)
register(
    Preparer(
        "cars-target",
        "Stanford Cars (cross-domain target)",
        "StanfordCars",
        needs="cars_train.tgz and car_devkit.tgz (the original site is gone: a mirror)",
        disk_gb=1.0,
        expected={"test": (8144, 196)},
        plan=_plan_cars,
        reads="StanfordCars (a cross-domain target)",
    )
)
register(
    Preparer(
        "places",
        "Places (cross-domain target)",
        "Places",
        needs="places365standard_easyformat.tar (data.csail.mit.edu/places/places365/)",
        disk_gb=1.8,
        expected={"test": (73000, 365)},
        plan=lambda src, opts: _first_per_class(src, r"places365_standard/train/([^/]+)/([^/]+\.jpg)", 200),
        reads="Places (a cross-domain target)",
    )
)
register(
    Preparer(
        "plantae",
        "Plantae (cross-domain target)",
        "Plantae",
        needs="iNaturalist 2017's train_val_images.tar.gz (its Plantae/ folder) or the plantae.tar.gz of the "
        "cross-domain few-shot code (github.com/hytseng0509/CrossDomainFewShot)",
        disk_gb=10.0,
        expected={"test": (None, 200)},
        plan=lambda src, opts: _first_per_class(src, r"Plantae/([^/]+)/([^/]+\.jpe?g)", 600, top=200),
        reads="Plantae (a cross-domain target)",
    )
)
