"""N-way K-shot episodes: class splits (base / val / novel, cross-domain targets) and the sampler.

Class splits. Meta-learning benchmarks split the *classes*, not the images: the encoder is
fine-tuned on the base classes, validated on the val classes and tested on the novel ones (and on
whole other data sets). :func:`load_class_splits` reads the two common layouts:

* miniImageNet's ``train.csv`` / ``val.csv`` / ``test.csv`` (header ``filename,label``, the
  label a WordNet id such as ``n01532829``) over one image folder (``ROOT/images/`` or
  ``--image-root``);
* folder-per-split roots ``ROOT/base/<class>/...``, ``ROOT/val/...``, ``ROOT/novel/...``
  (``train/`` and ``test/`` are accepted for base and novel).

:func:`load_target` reads any data set fdalign can open (ImageFolder, CSV, CoOp JSON) *whole*:
every split merged, every class a candidate for the episodes (CUB, Cars, Places, Plantae, ...).

Episodes. An episode is drawn on *indices* into a :class:`~fdalign.data.datasets.LabeledSplit`:
``classes [N]`` (labels of the split), ``support [N, K]`` and ``query [N, Q]`` (sample indices).
Episode ``i`` of seed ``s`` is a pure function of ``(s, i)``: its generator is seeded from
``sha256("fdalign-episode/s/i")`` and draws only uniform doubles (PCG64's ``random()``, a
stable stream), ranked with a stable sort. So the same episode comes out on every machine, in any
process, with any number of DataLoader workers, and in any order of asking.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fdalign.data.datasets import LabeledSplit, Sample, read_classnames_keyed
from fdalign.data.episode_spec import EVAL_FLAGS, ON_SMALL, TRAIN_FLAGS, EpisodeSpec  # noqa: F401 (re-exported)
from fdalign.data.opener import open_dataset
from fdalign.errors import FDAlignError

CLASS_ROLES = ("base", "val", "novel")
# file / folder names accepted for each role, in order of preference
_CSV_NAMES = {"base": "train.csv", "val": "val.csv", "novel": "test.csv"}
_DIR_NAMES = {"base": ("base", "train"), "val": ("val",), "novel": ("novel", "test")}
MISSING_SHOWN = 5


# ----------------------------------------------------------------------------------------------
# class splits


def load_class_splits(
    data: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    classnames: str | os.PathLike | None = None,
) -> dict[str, LabeledSplit]:
    """The base / val / novel class splits of ``data`` (only those present), keyed by role.

    Args:
        data: a miniImageNet-style folder with ``train.csv`` / ``val.csv`` / ``test.csv``, or a
            folder with ``base/`` / ``val/`` / ``novel/`` class folders.
        image_root: folder the CSV file names live in (default ``data/images``, else ``data``).
        classnames: optional file ``<wnid> <name>`` per line (or one name per line in the
            order of the sorted class keys of all splits); without it WordNet ids are turned into
            prompts as they are, which zero-shot CLIP does not understand.
    """
    root = Path(data)
    if not root.is_dir():
        raise FDAlignError(f"episode data {root} must be a folder (train.csv/val.csv/test.csv or base/ val/ novel/)")
    if any((root / f).is_file() for f in _CSV_NAMES.values()):
        splits = _load_csv_splits(root, image_root)
    else:
        if image_root is not None:
            raise FDAlignError("--image-root applies only to miniImageNet-style CSV split files")
        splits = _load_dir_splits(root)
    if not splits:
        raise FDAlignError(
            f"{root} holds no class splits: expected train.csv/val.csv/test.csv (miniImageNet) or "
            "base/ val/ novel/ folders of class folders"
        )
    _check_disjoint(splits, root)
    return _name_classes(splits, classnames) if classnames else splits


def _check_disjoint(splits: dict[str, LabeledSplit], root: Path) -> None:
    """Base, val and novel must not share a class: a shared one would leak into the test episodes."""
    roles = list(splits)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            both = sorted(
                set(splits[a].class_keys or splits[a].classnames) & set(splits[b].class_keys or splits[b].classnames)
            )
            if both:
                raise FDAlignError(
                    f"{root}: {len(both)} class(es) are in both the {a} and the {b} split ({', '.join(both[:5])}); "
                    "class splits must be disjoint (an ImageFolder with train/ and test/ of the same classes is a "
                    "K-shot data set: use it as a --target or with `fdalign train`)"
                )


def _load_dir_splits(root: Path) -> dict[str, LabeledSplit]:
    out = {}
    for role, names in _DIR_NAMES.items():
        d = next((root / n for n in names if (root / n).is_dir()), None)
        if d is not None:
            out[role] = replace(_only_split(open_dataset(d)), name=role)
    return out


def _only_split(splits: dict[str, LabeledSplit]) -> LabeledSplit:
    return next(iter(splits.values()))


def _load_csv_splits(root: Path, image_root) -> dict[str, LabeledSplit]:
    images = Path(image_root) if image_root is not None else (root / "images" if (root / "images").is_dir() else root)
    if not images.is_dir():
        raise FDAlignError(f"image folder {images} does not exist (from --image-root)")
    out = {}
    for role, fname in _CSV_NAMES.items():
        path = root / fname
        if path.is_file():
            out[role] = _read_split_csv(path, images.resolve(), role)
    return out


def _read_split_csv(path: Path, images: Path, role: str) -> LabeledSplit:
    """One miniImageNet split file: ``filename,label`` rows; labels become classes in sorted order."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "filename" not in header or "label" not in header:
            raise FDAlignError(
                f"split file {path} must have the header 'filename,label'; found {','.join(header) or 'nothing'}"
            )
        reader.fieldnames = header
        rows = [(r["filename"].strip(), r["label"].strip()) for r in reader]
    if not rows:
        raise FDAlignError(f"split file {path} lists no images")
    keys = sorted({label for _, label in rows})
    index = {k: i for i, k in enumerate(keys)}
    missing = [name for name, _ in rows if not (images / name).is_file()]
    if missing:
        raise FDAlignError(
            f"{len(missing)} of {len(rows)} images listed in {path} are missing under {images} (first: "
            f"{', '.join(missing[:MISSING_SHOWN])}); pass --image-root pointing at the folder holding them"
        )
    samples = [Sample(name, index[label]) for name, label in rows]
    return LabeledSplit(classnames=list(keys), samples=samples, root=str(images), name=role, class_keys=list(keys))


def _name_classes(splits: dict[str, LabeledSplit], classnames) -> dict[str, LabeledSplit]:
    """Display names from a class-names file, by key (``<wnid> <name>`` lines) or by position."""
    keys, names = read_classnames_keyed(classnames)
    all_keys = sorted({k for s in splits.values() for k in (s.class_keys or s.classnames)})
    if keys is None:
        if len(names) != len(all_keys):
            raise FDAlignError(
                f"class-names file {classnames} has {len(names)} names but the splits have {len(all_keys)} classes; "
                "write '<folder or wnid> <name>' lines, or one name per class in sorted key order"
            )
        keys = all_keys
    table = dict(zip(keys, names))
    out = {}
    for role, s in splits.items():
        own = s.class_keys or s.classnames
        unknown = [k for k in own if k not in table]
        if unknown:
            raise FDAlignError(f"class(es) {', '.join(unknown[:5])} of the {role} split are not in {classnames}")
        out[role] = replace(s, classnames=[table[k] for k in own])
    return out


def load_target(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, name: str = "target"
) -> LabeledSplit:
    """Any data set fdalign opens (ImageFolder, CSV, CoOp JSON), every split merged into one.

    Cross-domain targets are used whole: each of their classes may appear in an episode.
    """
    splits = open_dataset(path, image_root)
    first = _only_split(splits)
    if len(splits) == 1:
        return replace(first, name=name)
    # the splits of one data set share their classes (the loaders check it); paths made absolute
    samples = [Sample(s.resolve(smp), smp.label, smp.domain) for s in splits.values() for smp in s.samples]
    return replace(first, samples=samples, root=None, name=name)


# ----------------------------------------------------------------------------------------------
# episodes


@dataclass
class ClassPool:
    """The classes of a split that episodes may use, and their images.

    Attributes:
        classes: ``[C']`` labels of the eligible classes (of ``split``).
        members: ``members[j]``: sorted sample indices of class ``classes[j]``.
        skipped: labels of the classes left out for having fewer than ``K + Q`` images.
    """

    split: LabeledSplit
    classes: list[int]
    members: list[np.ndarray]
    skipped: list[int]


def class_pool(split: LabeledSplit, spec: EpisodeSpec, on_small: str = "skip", flags: dict | None = None) -> ClassPool:
    """Group ``split`` by class; classes with fewer than ``K + Q`` images are skipped (counted) or refused.

    ``flags``: the option names the error messages advise (:data:`EVAL_FLAGS` unless given)."""
    f = flags or EVAL_FLAGS
    if on_small not in ON_SMALL:
        raise FDAlignError(f"on-small must be one of {', '.join(ON_SMALL)}, not {on_small!r}")
    labels = np.asarray(split.labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=split.num_classes)
    groups = np.split(order, np.cumsum(counts)[:-1])
    small = [c for c in range(split.num_classes) if 0 < counts[c] < spec.per_class]
    if small and on_small == "error":
        names = ", ".join(f"{split.classnames[c]!r} ({counts[c]})" for c in small[:MISSING_SHOWN])
        raise FDAlignError(
            f"{len(small)} class(es) of '{split.name}' have fewer than K+Q = {spec.per_class} images: {names}; "
            f"lower {f['queries']} or pass --on-small skip to leave them out"
        )
    keep = [c for c in range(split.num_classes) if counts[c] >= spec.per_class]
    present = int((counts > 0).sum())
    if present < spec.n_way:
        raise FDAlignError(
            f"{spec.n_way}-way episodes need {spec.n_way} classes but '{split.name}' has {present}; lower {f['ways']}"
        )
    if len(keep) < spec.n_way:
        raise FDAlignError(
            f"{spec.n_way}-way episodes need {spec.n_way} classes with at least K+Q = {spec.per_class} images but only "
            f"{len(keep)} of the {present} classes of '{split.name}' have that many; lower {f['ways']}, {f['shots']} or "
            f"{f['queries']}"
        )
    return ClassPool(split, keep, [groups[c] for c in keep], small)


def episode_seed(seed: int, index: int) -> int:
    """A 128-bit seed for episode ``index`` of a run seeded ``seed`` (independent of everything else)."""
    return int.from_bytes(hashlib.sha256(f"fdalign-episode/{seed}/{index}".encode()).digest()[:16], "little")


@dataclass
class Episodes:
    """A batch of ``E`` episodes as sample indices into ``pool.split``.

    Attributes:
        classes: ``[E, N]`` labels of the split; way ``n`` of episode ``e`` is class ``classes[e, n]``.
        support: ``[E, N, K]`` sample indices; query: ``[E, N, Q]`` sample indices.
        index: ``[E]`` episode numbers.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def sample_episode(
    pool: ClassPool, spec: EpisodeSpec, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Episode ``index`` of ``seed``: ``(classes [N], support [N, K], query [N, Q])``.

    Ways are the ``N`` eligible classes with the smallest random keys; within each class the
    ``K + Q`` images with the smallest keys, the first ``K`` the support: support and query are
    disjoint by construction.
    """
    rng = np.random.Generator(np.random.PCG64(episode_seed(seed, index)))
    ways = np.argsort(rng.random(len(pool.classes)), kind="stable")[: spec.n_way]
    picked = np.empty((spec.n_way, spec.per_class), dtype=np.int64)
    for n, w in enumerate(ways):
        members = pool.members[w]
        picked[n] = members[np.argsort(rng.random(len(members)), kind="stable")[: spec.per_class]]
    classes = np.asarray(pool.classes, dtype=np.int64)[ways]
    return classes, picked[:, : spec.k_shot], picked[:, spec.k_shot :]


def sample_episodes(pool: ClassPool, spec: EpisodeSpec, seed: int, indices) -> Episodes:
    """:func:`sample_episode` for each of ``indices``, stacked."""
    idx = np.asarray(list(indices), dtype=np.int64)
    parts = [sample_episode(pool, spec, seed, int(i)) for i in idx]
    if not parts:
        z = np.empty((0, spec.n_way), dtype=np.int64)
        return Episodes(z, z[..., None].repeat(spec.k_shot, -1), z[..., None].repeat(spec.q_query, -1), idx)
    c, s, q = (np.stack(x) for x in zip(*parts))
    return Episodes(c, s, q, idx)


def episode_labels(spec: EpisodeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Way labels of the flattened support ``[N*K]`` and queries ``[N*Q]`` (class-major: way 0's images first)."""
    return np.repeat(np.arange(spec.n_way), spec.k_shot), np.repeat(np.arange(spec.n_way), spec.q_query)


class EpisodeDataset:
    """Training episodes as a map-style dataset: item ``j`` is episode ``offset + j``.

    Returns ``(images [N*(K+Q), 3, H, W], classes [N])``: the support (class-major) then the queries.
    The augmentation of episode ``i`` runs under a torch seed derived from ``(seed, i)`` too, so a
    step's batch is the same with any number of workers and after a resume.
    """

    def __init__(self, pool: ClassPool, spec: EpisodeSpec, seed: int, transform, length: int, offset: int = 0):
        self.pool, self.spec, self.seed, self.transform = pool, spec, seed, transform
        self.length, self.offset = length, offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int):
        import torch

        from fdalign.data.datasets import ImageDataset

        i = self.offset + j
        classes, support, query = sample_episode(self.pool, self.spec, self.seed, i)
        ds = ImageDataset(self.pool.split, self.transform)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(episode_seed(self.seed, i) & ((1 << 63) - 1))
            images = [ds[int(k)][0] for k in np.concatenate([support.reshape(-1), query.reshape(-1)])]
        return torch.stack(images), torch.as_tensor(classes)


__all__ = [
    "CLASS_ROLES",
    "EVAL_FLAGS",
    "ON_SMALL",
    "TRAIN_FLAGS",
    "ClassPool",
    "EpisodeDataset",
    "EpisodeSpec",
    "Episodes",
    "class_pool",
    "episode_labels",
    "episode_seed",
    "load_class_splits",
    "load_target",
    "sample_episode",
    "sample_episodes",
]
