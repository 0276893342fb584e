"""ImageNet's class lists, taken from installed libraries rather than shipped again.

- The 1000 WordNet ids (wnids) in the standard order (sorted, ``n01440764`` = class 0): timm's
  ``imagenet_synsets.txt`` (timm is installed with open_clip).
- The class names: CLIP's 1000 cleaned names (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``).
  CoOp's ``imagenet/classnames.txt`` is a copy of CLIP's list ("The class names are copied from
  CLIP", CoOp's DATASETS.md), so these are the prompts the paper used.
- The 200-class ImageNet-A and ImageNet-R subsets: timm's ``imagenet_a_synsets.txt`` /
  ``imagenet_r_synsets.txt``.

``--classnames imagenet`` selects this list (keyed by wnid) wherever a class-names file is taken.
"""

from __future__ import annotations

import functools
import pkgutil
import re

from fdalign.errors import FDAlignError

WNID = re.compile(r"n\d{8}")
# OOD set names that declare a known class subset (matched after dropping case and punctuation)
SUBSET_BENCHMARKS = {"a": "a", "imageneta": "a", "r": "r", "imagenetr": "r"}


def _timm_list(name: str) -> list[str]:
    try:
        data = pkgutil.get_data("timm.data", f"_info/{name}")
    except (ImportError, OSError, FileNotFoundError):
        data = None
    if not data:
        raise FDAlignError(
            f"the ImageNet class list {name} comes from the timm package (installed with open_clip) but it "
            "was not found; upgrade it with `pip install -U timm`"
        )
    return data.decode("utf-8").split()


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order (``n01440764`` ... ``n15075141``)."""
    return tuple(_timm_list("imagenet_synsets.txt"))


@functools.cache
def imagenet_classnames() -> tuple[str, ...]:
    """CLIP's (= CoOp's) 1000 ImageNet class names, in the order of :func:`imagenet_wnids`."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


@functools.cache
def imagenet_subset_wnids(which: str) -> tuple[str, ...]:
    """The wnids of ImageNet-A (``"a"``) or ImageNet-R (``"r"``): 200 each, sorted."""
    return tuple(_timm_list(f"imagenet_{which}_synsets.txt"))


def subset_benchmark(name: str) -> str | None:
    """``"a"`` / ``"r"`` when an OOD set's name is ImageNet-A / -R (``a``, ``imagenet-r``, ...)."""
    return SUBSET_BENCHMARKS.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def looks_like_wnids(names) -> bool:
    """Every name is a WordNet id such as ``n01440764``."""
    names = list(names)
    return bool(names) and all(WNID.fullmatch(n.strip()) for n in names)


def wnid_name_warning(classnames, where: str) -> str | None:
    """The warning for prompts that would read "a photo of a n01440764.", or None."""
    if not looks_like_wnids(classnames):
        return None
    return (
        f"the class names of {where} are WordNet ids ({classnames[0]}, ...): prompts would read "
        f"'a photo of a {classnames[0]}.' and zero-shot accuracy collapses. Pass --classnames imagenet "
        "(CLIP's / CoOp's 1000 ImageNet names, built in) or a file of '<wnid> <name>' lines"
    )
