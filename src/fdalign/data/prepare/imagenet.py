"""ImageNet, its four test variants, and miniImageNet (built from ImageNet's train images).

Layouts (what the ``imagenet`` and ``miniimagenet`` presets read under ``--data-root``)::

    imagenet/train/<wnid>/<wnid>_N.JPEG       from the train tar of per-class tars, or an extracted tree
    imagenet/val/<wnid>/ILSVRC2012_val_N.JPEG sorted by the devkit's ground truth or LOC_val_solution.csv
    imagenet/classnames.txt                   '<wnid> <name>' (CLIP's / CoOp's names)
    imagenetv2/<0..999>/*.jpeg                and imagenetv2-threshold0.7/, imagenetv2-top-images/
    imagenet-sketch/<wnid>/*, imagenet-a/<wnid>/*, imagenet-r/<wnid>/*
    miniImageNet/{train,val,test}.csv, images/<name>.jpg, classnames.txt
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path

from fdalign.data.prepare.base import Options, Plan, Preparer, register
from fdalign.data.prepare.paths import join
from fdalign.data.prepare.sources import Sources
from fdalign.errors import FDAlignError

WNID = r"n\d{8}"
TRAIN_IMAGE = rf"({WNID})(?:\.tar)?/({WNID}_\d+\.JPEG)"
VAL_IMAGE = r"(ILSVRC2012_val_\d{8}\.JPEG)"


def _classnames_txt(wnids) -> bytes:
    from fdalign.data.imagenet import imagenet_classnames, imagenet_wnids

    names = dict(zip(imagenet_wnids(), imagenet_classnames()))
    return "".join(f"{w} {names.get(w, w)}\n" for w in sorted(wnids)).encode()


def _devkit_labels(src: Sources) -> list[str] | None:
    """Val wnids in file order from the devkit, read by torchvision's own parser (which also checks
    the devkit's MD5); None when no devkit was given."""
    hits = src.find(r"(ILSVRC2012_devkit_t12\.tar\.gz)")
    if not hits:
        return None
    import torch
    from torchvision.datasets import imagenet as tv

    m = hits[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "ILSVRC2012_devkit_t12.tar.gz").write_bytes(src.read(m))
        try:
            tv.parse_devkit_archive(tmp)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            why = "its MD5 is not the devkit's" if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            raise FDAlignError(
                f"{m.path or m.name} is not ImageNet's ILSVRC2012 devkit ({why}); download "
                "ILSVRC2012_devkit_t12.tar.gz again from image-net.org"
            ) from None
        _, val_wnids = torch.load(os.path.join(tmp, tv.META_FILE), weights_only=True)
    return list(val_wnids)


def _solution_labels(src: Sources) -> dict[str, str] | None:
    """Kaggle's LOC_val_solution.csv: image id -> wnid (the first word of its boxes)."""
    hits = src.find(r"(LOC_val_solution\.csv)")
    if not hits:
        return None
    m = hits[0][0]
    rows = csv.DictReader(io.StringIO(src.read(m).decode("utf-8")))
    try:
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}
    except (KeyError, IndexError):
        raise FDAlignError(
            f"{m.path or m.name} is not Kaggle's LOC_val_solution.csv (ImageId,PredictionString); download it again"
        ) from None


def plan_imagenet(src: Sources, opts: Options) -> Plan:
    plan = Plan()
    for m, hit in src.find(TRAIN_IMAGE):
        plan.add(m, join("train", hit.group(1), hit.group(2)), "train", hit.group(1))
    flat = []
    for m, hit in src.find(VAL_IMAGE):
        parent = m.name.rsplit("/", 2)[-2] if "/" in m.name else ""
        if re.fullmatch(WNID, parent):  # val/ already sorted into class folders
            plan.add(m, join("val", parent, hit.group(1)), "val", parent)
        else:
            flat.append((m, hit.group(1)))
    if flat:
        _sort_flat_val(src, flat, plan)
    plan.extra["classnames.txt"] = _classnames_txt(plan.counts.get("train") or plan.counts.get("val") or {})
    return plan


def _sort_flat_val(src: Sources, flat, plan: Plan) -> None:
    """ImageNet's val arrives as 50,000 files in one folder: their classes come from the devkit."""
    solution = _solution_labels(src)
    devkit = None if solution is not None else _devkit_labels(src)
    if solution is None and devkit is None:
        raise FDAlignError(
            f"ImageNet's val images are flat ({flat[0][0].name}, ...): their classes are in the devkit; add "
            "--from ILSVRC2012_devkit_t12.tar.gz (image-net.org) or Kaggle's LOC_val_solution.csv"
        )
    if devkit is not None:
        solution = {f"ILSVRC2012_val_{i:08d}": w for i, w in enumerate(devkit, 1)}
    have = set()
    for m, fname in flat:
        stem = fname.rsplit(".", 1)[0]
        wnid = solution.get(stem)
        if wnid is None:
            raise FDAlignError(
                f"val image {m.name} has no label in the devkit / LOC_val_solution.csv; are both from ILSVRC2012?"
            )
        plan.add(
            m, join("val", wnid, fname, what=f"the class of {stem} in the devkit / LOC_val_solution.csv"), "val", wnid
        )
        have.add(stem)
    plan.missing["val"] = sorted(f"{s}.JPEG" for s in set(solution) - have)


def plan_class_folders(pattern: str, split: str = "test"):
    """A set shipped as class folders: ``pattern`` has groups (class, file), placed as ``class/file``."""

    def plan(src: Sources, opts: Options) -> Plan:
        p = Plan()
        for m, hit in src.find(pattern):
            p.add(m, join(hit.group(1), hit.group(2)), split, hit.group(1))
        return p

    return plan


IMAGENET_README = "image-net.org (ILSVRC2012), or Kaggle's imagenet-object-localization-challenge"
register(
    Preparer(
        "imagenet",
        "ImageNet",
        "imagenet",
        needs="ILSVRC2012_img_train.tar (or its extracted train/ tree), ILSVRC2012_img_val.tar (or a val/ folder) and "
        f"ILSVRC2012_devkit_t12.tar.gz or LOC_val_solution.csv; from {IMAGENET_README}",
        disk_gb=147,
        expected={"train": (1281167, 1000), "val": (50000, 1000)},
        plan=plan_imagenet,
        reads="imagenet (train/ and val/ as the test split; classnames.txt)",
        layout="<wnid>.tar/<wnid>_N.JPEG or train/<wnid>/<wnid>_N.JPEG, and ILSVRC2012_val_NNNNNNNN.JPEG",
        signature=rf"(?:{TRAIN_IMAGE}|{VAL_IMAGE})",
        looks="ImageNet (ILSVRC2012): 1000 classes of photos",
    )
)

_V2 = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main"
for _variant, _folder in [
    ("matched-frequency", "imagenetv2"),
    ("threshold0.7", "imagenetv2-threshold0.7"),
    ("top-images", "imagenetv2-top-images"),
]:
    register(
        Preparer(
            _folder,
            f"ImageNet-V2 ({_variant})",
            _folder,
            needs=f"imagenetv2-{_variant}.tar.gz from {_V2}/imagenetv2-{_variant}.tar.gz",
            disk_gb=1.3,
            expected={"test": (10000, 1000)},
            plan=plan_class_folders(rf"imagenetv2-{re.escape(_variant)}-format-val/(\d+)/([^/]+\.jpe?g)"),
            reads=f"{_folder} (folder k = ImageNet class k)",
            layout=f"imagenetv2-{_variant}-format-val/<0..999>/<file>.jpeg",
            signature=rf"imagenetv2-{re.escape(_variant)}-format-val/\d+/[^/]+\.jpe?g",
            looks=f"ImageNet-V2 {_variant}: 1000 class folders named 0..999",
        )
    )

register(
    Preparer(
        "imagenet-sketch",
        "ImageNet-Sketch",
        "imagenet-sketch",
        needs="ImageNet-Sketch.zip (github.com/HaohanWang/ImageNet-Sketch; also on the Hugging Face hub)",
        disk_gb=8.4,
        expected={"test": (50889, 1000)},
        plan=plan_class_folders(rf"sketch/({WNID})/([^/]+)"),
        reads="imagenet-sketch",
        layout="sketch/<wnid>/<file>",
        signature=rf"sketch/{WNID}/[^/]+",
        looks="ImageNet-Sketch: 1000 classes of sketches",
    )
)
register(
    Preparer(
        "imagenet-a",
        "ImageNet-A",
        "imagenet-a",
        needs="imagenet-a.tar from people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
        disk_gb=0.7,
        expected={"test": (7500, 200)},
        plan=plan_class_folders(rf"imagenet-a/({WNID})/([^/]+\.jpg)"),
        reads="imagenet-a",
        layout="imagenet-a/<wnid>/<file>.jpg",
        signature=rf"imagenet-a/{WNID}/[^/]+\.jpg",
        looks="ImageNet-A: 200 classes of natural adversarial examples",
    )
)
register(
    Preparer(
        "imagenet-r",
        "ImageNet-R",
        "imagenet-r",
        needs="imagenet-r.tar from people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
        disk_gb=2.2,
        expected={"test": (30000, 200)},
        plan=plan_class_folders(rf"imagenet-r/({WNID})/([^/]+\.jpg)"),
        reads="imagenet-r",
        layout="imagenet-r/<wnid>/<file>.jpg",
        signature=rf"imagenet-r/{WNID}/[^/]+\.jpg",
        looks="ImageNet-R: 200 classes of renditions",
    )
)


# ----------------------------------------------------------------------------------------------
# miniImageNet: Ravi & Larochelle's CSVs name images '<wnid><8 digits>.jpg'; the digits are the
# 1-based rank of the ImageNet train file among its class's files sorted by their number (the
# rule of the generator script everyone uses), so the images can be linked, not re-encoded.

MINI_ROLES = {"train": (38400, 64), "val": (9600, 16), "test": (12000, 20)}


def plan_miniimagenet(src: Sources, opts: Options) -> Plan:
    plan = Plan()
    found: dict = {}  # one file per name: a tar beside its extracted folder must not shift the ranks
    for m, hit in src.find(TRAIN_IMAGE):
        plan.pick(found, hit.group(2), m)
    by_class: dict[str, list] = {}
    for fname, m in found.items():
        wnid, number = fname.split(".")[0].rsplit("_", 1)
        by_class.setdefault(wnid, []).append((int(number), m))
    for v in by_class.values():
        v.sort(key=lambda t: t[0])
    wnids = set()
    for role in MINI_ROLES:
        m = src.one(
            rf"({role}\.csv)",
            f"miniImageNet's {role}.csv",
            "pass the folder holding Ravi & Larochelle's train.csv, val.csv and test.csv with --from",
        )
        text = src.read(m).decode("utf-8")
        plan.extra[f"{role}.csv"] = text.encode()
        missing = plan.missing.setdefault(role, [])
        for row in csv.DictReader(io.StringIO(text)):
            name, wnid = row.get("filename", ""), row.get("label", "")
            rank = re.fullmatch(rf"{WNID}(\d{{8}})\.jpg", name)
            if rank is None or not re.fullmatch(WNID, wnid):
                raise FDAlignError(
                    f"{m.name}: row {row} is not 'filename,label' of miniImageNet (n0153282900000005.jpg,n01532829)"
                )
            files = by_class.get(wnid, [])
            i = int(rank.group(1)) - 1
            if i >= len(files):
                missing.append(name)
                continue
            plan.add(files[i][1], join("images", name), role, wnid)
            wnids.add(wnid)
    if not by_class:
        raise FDAlignError(
            "miniImageNet is built from ImageNet's train images: add --from "
            "ILSVRC2012_img_train.tar (or its extracted train/ folder)"
        )
    plan.extra["classnames.txt"] = _classnames_txt(wnids)
    plan.notes.append("images are ImageNet's train files, linked or copied as they are (not resized to 84x84)")
    return plan


register(
    Preparer(
        "miniimagenet",
        "miniImageNet",
        "miniImageNet",
        needs="Ravi & Larochelle's train.csv, val.csv, test.csv (github.com/twitter/meta-learning-lstm, data/miniImagenet) "
        "and ImageNet's train images (ILSVRC2012_img_train.tar or its extracted folder)",
        disk_gb=7.0,
        expected=MINI_ROLES,
        plan=plan_miniimagenet,
        reads="miniImageNet ({train,val,test}.csv, images/, classnames.txt)",
    )
)
