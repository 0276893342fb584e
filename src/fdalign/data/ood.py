"""Putting an out-of-distribution split on the in-distribution label space.

An OOD set (ImageNet-Sketch, -A, -R, -V2, a domain-shifted copy of a user's data) is labelled by
its own folders; evaluation needs the labels as indices into the ID classes the head was trained
on. :func:`match_classes` matches classes, per OOD class, by

1. exact key: the OOD folder name equals an ID class key (both sides ImageNet wnids ``n01440764``);
2. name: case-insensitive, ``_`` = space, whitespace collapsed (display name or folder name);
3. integer folder names, when *every* OOD class is a number and 1-2 did not place them all:
   ImageNet-V2's convention, folder ``k`` holds class ``k``. Of the ImageNet-1k order when the ID
   classes are ImageNet wnids (so a 100-class ImageNet subset still reads V2 right), else of the
   ID order.

An OOD set lacking some ID classes is scored with its logits restricted to the classes it has (the
usual protocol for the 200-class ImageNet-A / -R). That is declared (``--ood NAME=PATH:subset``,
or a name such as ``a`` / ``imagenet-r``) or warned about, never silent; :class:`OODSet` records it.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fdalign.data.datasets import LabeledSplit, Sample, normalize_classname
from fdalign.errors import FDAlignError

SUBSET_SUFFIX = ":subset"


@dataclass
class ClassMatch:
    """How the classes of an OOD set meet the ID classes (see :func:`match_classes`).

    Attributes:
        mapping: OOD label -> ID label, for every OOD class that matched.
        unknown: OOD class keys (folders) that match no ID class.
        ambiguous: ``(OOD name, [ID labels])`` for names shared by several ID classes.
        by_index: ``"imagenet"`` / ``"id"`` when integer folders were read as class indices.
        beyond: integer folders at or beyond the class count of that order.
        missing: ID labels no OOD class maps to.
    """

    mapping: dict[int, int]
    unknown: list[str] = field(default_factory=list)
    ambiguous: list[tuple[str, list[int]]] = field(default_factory=list)
    by_index: str | None = None
    beyond: list[str] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def imagenet_order(id_keys: list[str] | None) -> list[str] | None:
    """The ImageNet-1k wnid order when every ID key is one of its wnids, else None."""
    from fdalign.data.imagenet import imagenet_wnids, looks_like_wnids

    if not id_keys or not looks_like_wnids(id_keys):
        return None
    order = list(imagenet_wnids())
    return order if set(id_keys) <= set(order) else None


def _by_index(ood_keys: list[str], id_classnames: list[str], id_keys: list[str] | None) -> ClassMatch:
    by_key = {k: i for i, k in enumerate(id_keys or [])}
    order = imagenet_order(id_keys)
    m = ClassMatch({}, by_index="imagenet" if order else "id")
    for j, k in enumerate(ood_keys):
        n = int(k)
        if order is not None:
            if n >= len(order):
                m.beyond.append(k)
            elif order[n] in by_key:
                m.mapping[j] = by_key[order[n]]
            else:
                m.unknown.append(k)
        elif n < len(id_classnames):
            m.mapping[j] = n
        else:
            m.beyond.append(k)
    return m


def match_classes(ood: LabeledSplit, id_classnames: list[str], id_keys: list[str] | None = None) -> ClassMatch:
    """Match the classes of ``ood`` to the ID classes; never raises (see the module docstring)."""
    by_key = {k: i for i, k in enumerate(id_keys)} if id_keys else {}
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(id_classnames):
        by_name.setdefault(normalize_classname(n), []).append(i)
    ood_keys = list(ood.class_keys or ood.classnames)

    m = ClassMatch({})
    for j, name in enumerate(ood.classnames):
        key = ood_keys[j]
        if key in by_key:
            m.mapping[j] = by_key[key]
            continue
        hits = by_name.get(normalize_classname(name)) or by_name.get(normalize_classname(key))
        if hits is None:
            m.unknown.append(key)
        elif len(hits) > 1:
            m.ambiguous.append((name, hits))
        else:
            m.mapping[j] = hits[0]
    if (m.unknown or m.ambiguous) and all(re.fullmatch(r"\d+", k) for k in ood_keys):
        m = _by_index(ood_keys, id_classnames, id_keys)
    m.missing = sorted(set(range(len(id_classnames))) - set(m.mapping.values()))
    return m


def _index_error(ood: LabeledSplit, m: ClassMatch, id_classnames: list[str]) -> FDAlignError:
    c = len(id_classnames)
    if m.by_index == "imagenet":
        rule = (
            "folder k holds class k of the ImageNet-1k order, since the ID classes are ImageNet wnids, "
            "as for ImageNet-V2"
        )
    else:
        rule = f"folder k holds ID class k, as for ImageNet-V2 (ID order: {c} classes, indices 0..{c - 1})"
    parts = []
    if m.beyond:
        n_order = 1000 if m.by_index == "imagenet" else c
        parts.append(
            f"folder(s) {', '.join(m.beyond[:5])}{' ...' if len(m.beyond) > 5 else ''} "
            f"({len(m.beyond)} in all) are indices beyond the {n_order} classes"
        )
    if m.unknown:
        from fdalign.data.imagenet import imagenet_wnids

        wn = imagenet_wnids()
        named = ", ".join(f"{k} = {wn[int(k)]}" for k in m.unknown[:5])
        parts.append(
            f"folder(s) {named}{' ...' if len(m.unknown) > 5 else ''} ({len(m.unknown)} in all) are "
            f"ImageNet classes that are not among the {c} ID classes"
        )
    return FDAlignError(
        f"OOD set '{ood.name}' names its folders by class index ({rule}); {'; '.join(parts)}. Remove those "
        "folders, or evaluate with the ID classes they belong to"
    )


def map_ood_to_id(
    ood: LabeledSplit,
    id_classnames: list[str],
    id_keys: list[str] | None = None,
) -> tuple[LabeledSplit, list[int]]:
    """Relabel ``ood`` with ID class indices.

    Returns ``(split with classnames = id_classnames and labels in [0, C_id), sorted ID indices
    that occur in it)``. An OOD class with no match raises :class:`FDAlignError` naming it and up
    to five close ID names (for index folders: the index rule and the indices out of range); a
    name shared by several ID classes is an error too (use wnid folders).
    """
    mapped, present, _ = _map(ood, id_classnames, id_keys)
    return mapped, present


def _map(ood: LabeledSplit, id_classnames: list[str], id_keys: list[str] | None):
    m = match_classes(ood, id_classnames, id_keys)
    if m.by_index and (m.unknown or m.beyond):
        raise _index_error(ood, m, id_classnames)
    if m.ambiguous:
        name, hits = m.ambiguous[0]
        raise FDAlignError(
            f"OOD class {name!r} of '{ood.name}' matches {len(hits)} ID classes "
            f"({', '.join(id_classnames[h] for h in hits)} at {hits}); name the OOD folders by the "
            "ID class keys (e.g. ImageNet wnids) so they match exactly"
        )
    if m.unknown:
        keys = list(ood.class_keys or ood.classnames)
        j = keys.index(m.unknown[0])
        close = difflib.get_close_matches(ood.classnames[j], id_classnames, n=5, cutoff=0.6)
        hint = f"; close ID names: {', '.join(repr(c) for c in close)}" if close else ""
        others = f" ({len(m.unknown) - 1} more OOD classes unmatched)" if len(m.unknown) > 1 else ""
        raise FDAlignError(
            f"OOD class {ood.classnames[j]!r} of '{ood.name}' is not one of the {len(id_classnames)} "
            f"ID classes{hint}{others}; rename its folder or give matching class names"
        )

    samples = [Sample(s.path, m.mapping[s.label], s.domain) for s in ood.samples]
    present = sorted({s.label for s in samples})
    mapped = replace(ood, classnames=list(id_classnames), samples=samples, class_keys=id_keys)
    return mapped, present, m


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def parse_ood_arg(text: str) -> tuple[str, str]:
    """``"sketch=/data/sketch"`` -> ``("sketch", "/data/sketch")`` (split at the first ``=``)."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not path or not _NAME.fullmatch(name):
        raise FDAlignError(
            f"--ood {text!r}: expected NAME=PATH[:subset] with NAME made of letters, digits, '_', '-', '.' "
            "(e.g. --ood sketch=/data/imagenet-sketch)"
        )
    return name, path


def split_subset_flag(path: str) -> tuple[str, bool]:
    """``"/data/r:subset"`` -> ``("/data/r", True)``: the set is declared a class subset."""
    if path.endswith(SUBSET_SUFFIX):
        return path[: -len(SUBSET_SUFFIX)], True
    return path, False


@dataclass
class OODSet:
    """One ``--ood`` set mapped onto the ID classes.

    Unpacks as ``(name, split, class_subset)`` for callers that need only those. ``class_subset``
    is the sorted ID labels present, or None when all are (no logits need restricting).
    """

    name: str
    split: LabeledSplit
    class_subset: list[int] | None
    num_id_classes: int
    declared_subset: bool = False
    missing: list[str] = field(default_factory=list)  # "key (name)" of absent ID classes
    warnings: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter((self.name, self.split, self.class_subset))

    def coverage(self) -> dict:
        """This set's class bookkeeping for metrics.json / report.md."""
        from fdalign.eval.metrics import class_coverage

        return class_coverage(
            self.num_id_classes, self.class_subset, declared=self.declared_subset, missing=self.missing
        )


def _label(i: int, names: list[str], keys: list[str] | None) -> str:
    return f"{keys[i]} ({names[i]})" if keys and keys[i] != names[i] else names[i]


def subset_warnings(name: str, m: ClassMatch, id_classnames, id_keys, declared: bool) -> list[str]:
    from fdalign.data.imagenet import imagenet_subset_wnids, subset_benchmark

    c, missing = len(id_classnames), m.missing
    out = []
    if missing and not declared:
        shown = ", ".join(_label(i, id_classnames, id_keys) for i in missing[:8])
        out.append(
            f"OOD set '{name}' lacks {len(missing)} of the {c} ID classes ({shown}{' ...' if len(missing) > 8 else ''}); "
            f"its logits are restricted to the {c - len(missing)} classes it has. Add the missing class folders, "
            f"or declare it a subset with --ood {name}=PATH{SUBSET_SUFFIX}"
        )
    bench = subset_benchmark(name)
    if bench and imagenet_order(id_keys):
        # a known subset must still have every one of its classes that the ID set has
        expected = set(imagenet_subset_wnids(bench)) & set(id_keys)
        lost = sorted(expected & {id_keys[i] for i in missing})
        if lost:
            out.append(
                f"OOD set '{name}' is ImageNet-{bench.upper()} but lacks {len(lost)} of its {len(expected)} classes "
                f"that the ID set has ({', '.join(lost[:8])}{' ...' if len(lost) > 8 else ''}); check the download"
            )
    return out


def _print_warning(text: str) -> None:
    print(f"fdalign: warning: {text}", file=sys.stderr)


def load_ood_sets(
    ood_args,
    id_classnames: list[str],
    id_keys: list[str] | None = None,
    reserved=(),
    warn: Callable[[str], None] | None = _print_warning,
) -> list[OODSet]:
    """Open and map every ``--ood NAME=PATH[:subset]``: a list of :class:`OODSet`.

    Names must differ from each other and from ``reserved`` (the ID split names), since they key
    the metrics. A set lacking ID classes is warned about through ``warn`` (stderr by default)
    unless declared a subset by ``:subset`` or by a known subset name (``a``, ``r``,
    ``imagenet-a``, ``imagenet-r``).
    """
    from fdalign.data.datasets import pick_split
    from fdalign.data.imagenet import subset_benchmark
    from fdalign.data.opener import open_dataset

    seen = set(reserved)
    out = []
    for text in ood_args:
        name, path = parse_ood_arg(text)
        path, declared = split_subset_flag(path)
        declared = declared or subset_benchmark(name) is not None
        if name in seen:
            raise FDAlignError(f"--ood {text!r}: the name {name!r} is already used; give every set its own name")
        seen.add(name)
        split = replace(pick_split(open_dataset(path), "test"), name=name)
        mapped, present, m = _map(split, id_classnames, id_keys)
        notes = subset_warnings(name, m, id_classnames, id_keys, declared)
        for w in notes if warn else ():
            warn(w)
        full = len(present) == len(id_classnames)
        out.append(
            OODSet(
                name,
                mapped,
                None if full else present,
                len(id_classnames),
                declared,
                [_label(i, id_classnames, id_keys) for i in m.missing],
                notes,
            )
        )
    return out
