"""``open_dataset``: any data path (folder, CSV, CoOp JSON, saved split, the authors' index file) -> its splits.

It sits above :mod:`fdalign.data.datasets` (the readers) and :mod:`fdalign.data.fewshot` (saved
splits and index files), which both stay free of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fdalign.data import fewshot
from fdalign.data.datasets import (
    SPLIT_NAMES,
    LabeledSplit,
    _apply_classnames,
    load_coop_split,
    load_csv,
    load_imagefolder,
    val_as_test,
)
from fdalign.errors import FDAlignError


def open_dataset(
    data: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    classnames: str | None = None,
    check_files: bool = True,
    split_file: str | os.PathLike | None = None,
) -> dict[str, LabeledSplit]:
    """Open ``data`` by what it is: a folder (ImageFolder), a ``.csv`` manifest or a ``.json`` split.

    A JSON file in the fdalign saved-split format (see :func:`fdalign.data.fewshot.save_split`) or
    the paper's ``shot_K-seed_S.json`` index format is recognised too; for the latter,
    ``split_file`` (the matching CoOp ``split_zhou_*.json``, found beside it when not given) adds
    its ``test`` list. Data with train and val but no test split follows ImageNet's protocol
    (:func:`val_as_test`).
    """
    p = Path(data)
    if not p.exists():
        raise FDAlignError(f"data path {p} does not exist")
    if p.is_dir():
        if image_root is not None:
            raise FDAlignError("--image-root applies only to a JSON split file, not to a data folder")
        return val_as_test(load_imagefolder(p, classnames))
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return val_as_test(load_csv(p, classnames))
    if suffix == ".json":
        kind = fewshot.json_kind(p)
        if kind == "fdalign-split":
            split = fewshot.load_split(p, root=image_root)
            key = split.name.split("-")[0]  # "val-from-train" is a val split
            return _apply_classnames({key if key in SPLIT_NAMES else "test": split}, classnames)
        if kind == "indices":
            if image_root is None:
                raise FDAlignError(f"{p} is a few-shot index file; pass --image-root (the data set's image folder)")
            if split_file is None:
                split_file = fewshot.find_split_file(p, image_root)
            return _apply_classnames(fewshot.load_fewshot_indices(p, image_root, split_file), classnames)
        return val_as_test(load_coop_split(p, image_root, classnames, check_files=check_files))
    raise FDAlignError(
        f"don't know how to read {p}: pass a folder (ImageFolder layout), a .csv manifest or a CoOp split_zhou_*.json"
    )
