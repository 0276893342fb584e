"""The images a CoOp set's official annotation files list, read by torchvision's own parsers.

CoOp's split file decides what the experiments use; the official lists say whether the archive
itself is complete (Pets' annotations, Flowers' ``setid.mat`` / ``imagelabels.mat``, DTD's
partitions, Food-101's ``meta/*.json``). Each reader copies the annotation files out of the
sources into a temporary folder laid out as torchvision expects (the images are not needed: the
parsers only join their names) and returns the listed images relative to CoOp's image folder, or
None when the annotation files were not given.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from fdalign.data.prepare.sources import Sources
from fdalign.errors import FDAlignError


def _stage(src: Sources, tmp: Path, files: dict[str, str], dirs: tuple[str, ...]) -> bool:
    """Copy the member matching each pattern to ``tmp/<path>``; False when one is not in the sources."""
    hits = {pattern: src.find(pattern) for pattern in files}
    if not all(hits.values()):
        return False
    for pattern, rel in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(src.read(hits[pattern][0][0]))
    for d in dirs:
        (tmp / d).mkdir(parents=True, exist_ok=True)
    return True


def torchvision_said(e: BaseException) -> str:
    """torchvision's error in our words: its 'You can use download=True' advice is for its own
    downloader, not for prepare (a failed integrity check is what 'not found or corrupted' means)."""
    text = str(e)
    if isinstance(e, RuntimeError) and "download=True" in text:
        if "corrupted" in text:
            return "torchvision's check of the file's MD5 failed: it is not the official file or is damaged"
        return "torchvision did not find the files it reads"
    return f"{type(e).__name__}: {text}"


def _parse(what: str, make: Callable[[], list[str]]) -> list[str]:
    try:
        return make()
    except (RuntimeError, ValueError, KeyError, IndexError, OSError) as e:
        raise FDAlignError(f"{what} cannot be read ({torchvision_said(e)}); download it again") from None


def pets(src: Sources) -> list[str] | None:
    from torchvision.datasets import OxfordIIITPet

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if not _stage(
            src,
            tmp,
            {
                r"annotations/(trainval\.txt)": "oxford-iiit-pet/annotations/trainval.txt",
                r"annotations/(test\.txt)": "oxford-iiit-pet/annotations/test.txt",
            },
            ("oxford-iiit-pet/images",),
        ):
            return None
        return _parse(
            "the Pets annotations (annotations.tar.gz)",
            lambda: [Path(f).name for split in ("trainval", "test") for f in OxfordIIITPet(t, split=split)._images],
        )


def flowers(src: Sources) -> list[str] | None:
    from torchvision.datasets import Flowers102

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if not _stage(
            src,
            tmp,
            {r"(imagelabels\.mat)": "flowers-102/imagelabels.mat", r"(setid\.mat)": "flowers-102/setid.mat"},
            ("flowers-102/jpg",),
        ):
            return None
        # torchvision also checks both files' MD5 against the official ones
        return _parse(
            "Flowers102's imagelabels.mat / setid.mat",
            lambda: [
                Path(f).name for split in ("train", "val", "test") for f in Flowers102(t, split=split)._image_files
            ],
        )


def dtd(src: Sources) -> list[str] | None:
    from torchvision.datasets import DTD

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        files = {rf"dtd/labels/({s}1\.txt)": f"dtd/dtd/labels/{s}1.txt" for s in ("train", "val", "test")}
        if not _stage(src, tmp, files, ("dtd/dtd/images",)):
            return None
        return _parse(
            "DTD's labels/*1.txt",
            lambda: [
                "/".join(Path(f).parts[-2:])
                for split in ("train", "val", "test")
                for f in DTD(t, split=split)._image_files
            ],
        )


def food101(src: Sources) -> list[str] | None:
    from torchvision.datasets import Food101

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        files = {rf"food-101/meta/({s}\.json)": f"food-101/meta/{s}.json" for s in ("train", "test")}
        if not _stage(src, tmp, files, ("food-101/images",)):
            return None
        return _parse(
            "Food-101's meta/train.json / test.json",
            lambda: [
                "/".join(Path(f).parts[-2:])
                for split in ("train", "test")
                for f in Food101(t, split=split)._image_files
            ],
        )


__all__ = ["pets", "flowers", "dtd", "food101", "torchvision_said"]
