"""Putting an out-of-distribution split on the in-distribution label space.

An OOD set (ImageNet-Sketch, -A, -R, -V2, a domain-shifted copy of a user's data) is labelled by
its own folders; evaluation needs the labels as indices into the ID classes the head was trained
on. :func:`map_ood_to_id` matches classes, per OOD class, by

1. exact key: the OOD folder name equals an ID class key (both sides ImageNet wnids ``n01440764``);
2. name: case-insensitive, ``_`` = space, whitespace collapsed (display name or folder name);
3. integer folder names: when *every* OOD class is a number ``0 .. C-1`` and name matching did not
   place them all, the number is the ID index (ImageNet-V2 ships folders ``0`` .. ``999``).

The returned list of ID indices present lets evaluation restrict logits to them, the usual protocol
for the 200-class ImageNet-A / -R.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import replace

from fdalign.data.datasets import LabeledSplit, Sample, normalize_classname
from fdalign.errors import FDAlignError


def map_ood_to_id(
    ood: LabeledSplit,
    id_classnames: list[str],
    id_keys: list[str] | None = None,
) -> tuple[LabeledSplit, list[int]]:
    """Relabel ``ood`` with ID class indices.

    Returns ``(split with classnames = id_classnames and labels in [0, C_id), sorted ID indices
    that occur in it)``. An OOD class with no match raises :class:`FDAlignError` naming it and up
    to five close ID names; a name shared by several ID classes is an error too (use wnid folders).
    """
    by_key = {k: i for i, k in enumerate(id_keys)} if id_keys else {}
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(id_classnames):
        by_name.setdefault(normalize_classname(n), []).append(i)
    ood_keys = ood.class_keys or ood.classnames

    mapping: dict[int, int] = {}
    missing, ambiguous = [], []
    for j, name in enumerate(ood.classnames):
        key = ood_keys[j]
        if key in by_key:
            mapping[j] = by_key[key]
            continue
        hits = by_name.get(normalize_classname(name)) or by_name.get(normalize_classname(key))
        if hits is None:
            missing.append(j)
        elif len(hits) > 1:
            ambiguous.append((name, hits))
        else:
            mapping[j] = hits[0]

    if missing and all(re.fullmatch(r"\d+", k) and int(k) < len(id_classnames) for k in ood_keys):
        mapping = {j: int(k) for j, k in enumerate(ood_keys)}
        missing, ambiguous = [], []
    if ambiguous:
        name, hits = ambiguous[0]
        raise FDAlignError(
            f"OOD class {name!r} of '{ood.name}' matches {len(hits)} ID classes "
            f"({', '.join(id_classnames[h] for h in hits)} at {hits}); name the OOD folders by the "
            "ID class keys (e.g. ImageNet wnids) so they match exactly"
        )
    if missing:
        j = missing[0]
        close = difflib.get_close_matches(ood.classnames[j], id_classnames, n=5, cutoff=0.6)
        hint = f"; close ID names: {', '.join(repr(c) for c in close)}" if close else ""
        others = f" ({len(missing) - 1} more OOD classes unmatched)" if len(missing) > 1 else ""
        raise FDAlignError(
            f"OOD class {ood.classnames[j]!r} of '{ood.name}' is not one of the {len(id_classnames)} "
            f"ID classes{hint}{others}; rename its folder or give matching class names"
        )

    samples = [Sample(s.path, mapping[s.label], s.domain) for s in ood.samples]
    present = sorted({s.label for s in samples})
    mapped = replace(ood, classnames=list(id_classnames), samples=samples, class_keys=id_keys)
    return mapped, present


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def parse_ood_arg(text: str) -> tuple[str, str]:
    """``"sketch=/data/sketch"`` -> ``("sketch", "/data/sketch")`` (split at the first ``=``)."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not path or not _NAME.fullmatch(name):
        raise FDAlignError(
            f"--ood {text!r}: expected NAME=PATH with NAME made of letters, digits, '_', '-', '.' "
            "(e.g. --ood sketch=/data/imagenet-sketch)"
        )
    return name, path


def load_ood_sets(
    ood_args, id_classnames: list[str], id_keys: list[str] | None = None, reserved=()
) -> list[tuple[str, LabeledSplit, list[int] | None]]:
    """Open and map every ``--ood NAME=PATH``: ``[(name, split with ID labels, class subset)]``.

    The subset is the sorted ID class indices present in the set, or ``None`` when it has all ID
    classes (then no logits need restricting). Names must differ from each other and from
    ``reserved`` (the ID split names), since they key the metrics.
    """
    from fdalign.data.datasets import open_dataset, pick_split

    seen = set(reserved)
    out = []
    for text in ood_args:
        name, path = parse_ood_arg(text)
        if name in seen:
            raise FDAlignError(f"--ood {text!r}: the name {name!r} is already used; give every set its own name")
        seen.add(name)
        split = replace(pick_split(open_dataset(path), "test"), name=name)
        mapped, present = map_ood_to_id(split, id_classnames, id_keys)
        out.append((name, mapped, present if len(present) < len(id_classnames) else None))
    return out
