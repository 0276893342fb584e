"""Base / novel class splits (the base-to-novel protocol of CoCoOp, MaPLe, PromptSRC, KgCoOp).

``first-half``: the first ``ceil(n / 2)`` classes *in label order* are base, the rest novel. Label
order is the data's own: sorted class folders for an ImageFolder, the label indices of a CoOp
``split_zhou_*.json`` (CoCoOp's convention: by index, not by class name). A file names the base
classes instead, one per line, by folder / class key or by class name.

Training, the few-shot val split and every selection see the base classes only; the novel classes
are a test set of their own, scored with the prototypes of the novel classes alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fdalign.data.datasets import LabeledSplit, normalize_classname
from fdalign.errors import FDAlignError

FIRST_HALF = "first-half"


def first_half(num_classes: int) -> list[int]:
    """Base label indices of ``first-half``: ``0 .. ceil(n/2) - 1``."""
    return list(range(math.ceil(num_classes / 2)))


def base_class_indices(spec: str, classnames: Sequence[str], class_keys: Sequence[str] | None = None) -> list[int]:
    """Label indices of the base classes, sorted, for ``spec`` (``first-half`` or a file of class names/keys).

    Raises :class:`FDAlignError` for a file that names an unknown class, no class, or every class."""
    n = len(classnames)
    if n < 2:
        raise FDAlignError(f"--base-classes needs two or more classes; the data have {n}")
    if spec == FIRST_HALF:
        return first_half(n)
    path = Path(spec)
    if not path.is_file():
        raise FDAlignError(
            f"--base-classes {spec}: no such file; give '{FIRST_HALF}' or a text file naming the "
            "base classes, one per line (folder name or class name)"
        )
    wanted = [
        ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")
    ]
    lookup: dict[str, int] = {}
    for i, name in enumerate(classnames):
        lookup.setdefault(normalize_classname(name), i)
    for i, key in enumerate(class_keys or []):
        lookup.setdefault(normalize_classname(key), i)
    unknown = [w for w in wanted if normalize_classname(w) not in lookup]
    if unknown:
        raise FDAlignError(
            f"--base-classes file {path} names class(es) the data do not have: "
            f"{', '.join(unknown[:5])}; use folder names or class names of --data"
        )
    base = sorted({lookup[normalize_classname(w)] for w in wanted})
    if not base or len(base) == n:
        raise FDAlignError(
            f"--base-classes file {path} names {len(base)} of the {n} classes; name at least one "
            "and leave at least one novel class"
        )
    return base


def restrict_classes(split: LabeledSplit, keep: Sequence[int], name: str | None = None) -> LabeledSplit:
    """The images of the classes ``keep`` (label indices of ``split``), relabelled ``0 .. len(keep) - 1`` in
    that order; class names and keys follow."""
    new = {old: i for i, old in enumerate(keep)}
    samples = [replace(s, label=new[s.label]) for s in split.samples if s.label in new]
    keys = [split.class_keys[i] for i in keep] if split.class_keys is not None else None
    return replace(
        split, classnames=[split.classnames[i] for i in keep], samples=samples, class_keys=keys, name=name or split.name
    )


def novel_of(base: Sequence[int], num_classes: int) -> list[int]:
    """The label indices not in ``base``, sorted."""
    b = set(base)
    return [i for i in range(num_classes) if i not in b]
