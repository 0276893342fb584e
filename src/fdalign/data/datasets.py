"""Labelled image lists and the loaders that build them.

Every data source (an ImageFolder tree, a CSV manifest, a CoOp ``split_zhou_*.json``) becomes a
``dict[str, LabeledSplit]`` keyed ``"train"`` / ``"val"`` / ``"test"`` (only the splits present).
A :class:`LabeledSplit` is a plain list of ``(path, label)`` plus class names; it knows nothing of
torch, so sampling, hashing and checking stay cheap. :class:`ImageDataset` turns one into the
``(image_tensor, label)`` dataset the training loop takes.

Data without train/val/test structure (a folder of class folders, a CSV without a ``split``
column) is returned as a single ``"test"`` split, since such data is almost always an evaluation
set (ImageNet-Sketch, -A, -R); :func:`pick_split` returns the only split whatever its name. Data
with ``train`` and ``val`` but no ``test`` (ImageNet) has its ``val`` as the test split
(:func:`val_as_test`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from torch.utils.data import Dataset

from fdalign.errors import FDAlignError
from fdalign.io import read_json

SPLIT_NAMES = ("train", "val", "test")
BUILTIN_CLASSNAMES = "imagenet"  # --classnames imagenet: the built-in list of fdalign.data.imagenet
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)


@dataclass
class Sample:
    """One labelled image. ``path`` is absolute or relative to its split's ``root`` (POSIX slashes)."""

    path: str
    label: int
    domain: str | None = None


@dataclass
class LabeledSplit:
    """A list of labelled images with the class names its labels index.

    Attributes:
        classnames: display names used to build prompts; ``labels`` index this list.
        samples: the images.
        root: directory that relative sample paths are relative to (None: paths are absolute or
            relative to the working directory).
        name: what the split is called in reports (``"train"``, ``"sketch"``, ...).
        class_keys: the raw class identifiers of the source (folder names such as ImageNet wnids),
            used to match OOD classes exactly; None when the source has none.
        source: the split of the source it was read as when that differs from its role (``"val"``
            for an ImageNet-style ``val/`` folder used as the test split); None otherwise.
    """

    classnames: list[str]
    samples: list[Sample]
    root: str | None
    name: str
    class_keys: list[str] | None = None
    source: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def class_counts(self) -> list[int]:
        """Images per class, ``[C]`` (zero for classes absent from this split)."""
        counts = [0] * len(self.classnames)
        for s in self.samples:
            counts[s.label] += 1
        return counts

    def subset(self, indices: Iterable[int], name: str | None = None) -> LabeledSplit:
        """The samples at ``indices`` (in that order), same classes and root."""
        return replace(self, samples=[self.samples[i] for i in indices], name=name or self.name)

    def resolve(self, sample: Sample | str) -> str:
        """Filesystem path of a sample (its path joined to ``root`` unless absolute)."""
        p = sample.path if isinstance(sample, Sample) else sample
        if self.root is None or os.path.isabs(p):
            return p
        return os.path.join(self.root, p)

    def relpath(self, sample: Sample) -> str:
        """Path relative to ``root`` (POSIX), or as stored when it lies outside ``root``.

        Used where a path must not depend on where the data happens to be mounted (hashes,
        sampling order, saved splits).
        """
        p = sample.path
        if not os.path.isabs(p):
            return p  # loaders store relative paths in POSIX form already
        if self.root is not None:
            try:
                rel = os.path.relpath(p, self.root)
            except ValueError:  # different drive on Windows
                return Path(p).as_posix()
            if not rel.startswith(".."):
                return Path(rel).as_posix()
        return Path(p).as_posix()

    def with_classnames(self, classnames: Sequence[str]) -> LabeledSplit:
        """Same split with other display names (same count)."""
        if len(classnames) != len(self.classnames):
            raise FDAlignError(
                f"{len(classnames)} class names given but split '{self.name}' has "
                f"{len(self.classnames)} classes; give one name per class, in label order"
            )
        return replace(self, classnames=list(classnames))


class ImageDataset(Dataset):
    """A map-style dataset over a :class:`LabeledSplit`: ``(transform(RGB image), label)``.

    ``draft``: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) whose both sides stay at least
    ``draft`` pixels (PIL's draft mode), before the transform resizes them: much less decoding for photos
    larger than twice the model's input, pixels slightly different from a full decode. None: exact."""

    def __init__(self, split: LabeledSplit, transform: Callable | None = None, draft: int | None = None):
        self.split = split
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        from PIL import Image

        s = self.split.samples[index]
        path = self.split.resolve(s)
        try:
            with Image.open(path) as im:
                if self.draft and im.format == "JPEG":
                    im.draft("RGB", (self.draft, self.draft))
                img = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
            # Found mid-run (evaluation sets are not decoded up front): stop with the file's name
            # rather than a traceback, and point at the check that finds all such files at once.
            raise FDAlignError(
                f"image {path} in split '{self.split.name}' cannot be read ({type(e).__name__}: {e}); "
                f"replace or remove it (`fdalign data check` lists every unreadable file)"
            ) from None
        if self.transform is not None:
            img = self.transform(img)
        return img, s.label


def draft_size(transform) -> int:
    """The side a JPEG may be DCT-downscaled to before ``transform`` (a torchvision ``Compose``): its
    ``Resize``'s short side, so the resize that follows still shrinks (never enlarges) the image."""
    from torchvision import transforms as T

    for step in getattr(transform, "transforms", []):
        if isinstance(step, T.Resize):
            size = step.size
            return int(size if isinstance(size, int) else min(size))
    raise FDAlignError(f"--jpeg-draft needs an evaluation transform with a Resize step; this one is {transform!r}")


# ----------------------------------------------------------------------------------------------
# Class names


def folder_to_classname(folder: str) -> str:
    """ImageFolder convention: ``golden_retriever`` -> ``golden retriever``."""
    return folder.replace("_", " ")


def normalize_classname(name: str) -> str:
    """Key for matching class names: case-insensitive, ``_`` = space, whitespace collapsed."""
    return " ".join(name.replace("_", " ").lower().split())


_WNID_LINE = re.compile(r"(n\d{8})\s+(\S.*)")


def read_classnames_keyed(path: str | os.PathLike) -> tuple[list[str] | None, list[str]]:
    """Read a class-names file: ``(keys or None, names)``.

    Three forms: one name per line in label order (blank lines ignored); ``<folder><TAB><name>``
    on every line, matched to class folders by name whatever the order; ``<wnid> <name>`` on every
    line (CoOp's ImageNet ``classnames.txt``: ``n01440764 tench``). The keyed forms return their
    keys, so folders get their names by key rather than by position. ``imagenet`` (not a file)
    is CLIP's / CoOp's 1000 ImageNet names keyed by wnid (:mod:`fdalign.data.imagenet`).
    """
    p = Path(path)
    if str(path) == BUILTIN_CLASSNAMES and not p.exists():
        from fdalign.data.imagenet import imagenet_classnames, imagenet_wnids

        return list(imagenet_wnids()), list(imagenet_classnames())
    if not p.is_file():
        raise FDAlignError(
            f"class-names file {p} does not exist; pass a text file with one name per line (or "
            f"'folder<TAB>name' lines), or --classnames {BUILTIN_CLASSNAMES} for ImageNet's names"
        )
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    lines = [x for x in lines if x]
    if not lines:
        raise FDAlignError(f"class-names file {p} is empty; write one class name per line")
    tabbed = [x.split("\t", 1) for x in lines]
    matches = [_WNID_LINE.fullmatch(x) for x in lines]
    if all(len(t) == 2 and t[0].strip() and t[1].strip() for t in tabbed):
        keys, names = [t[0].strip() for t in tabbed], [t[1].strip() for t in tabbed]
    elif any(len(t) == 2 for t in tabbed):
        bad = next(i for i, t in enumerate(tabbed, 1) if len(t) != 2 or not t[0].strip() or not t[1].strip())
        raise FDAlignError(
            f"class-names file {p}, line {bad}: some lines are 'folder<TAB>name' but this one is not; "
            "write every line as folder<TAB>name, or none (one name per line, in label order)"
        )
    elif all(matches):
        keys, names = [m.group(1) for m in matches], [m.group(2).strip() for m in matches]
    else:
        keys, names = None, lines
    dup = _duplicates(keys or names)
    if dup:
        raise FDAlignError(f"class-names file {p} lists {dup[0]!r} more than once")
    return keys, names


def is_plain_classname_list(path: str | os.PathLike | None) -> bool:
    """True when ``path`` names classes by position only (no keys), so label order decides."""
    return path is not None and read_classnames_keyed(path)[0] is None


def classname_table(split: LabeledSplit) -> list[tuple[int, str, str]]:
    """``[(label, folder or source key, display name)]``: which name each class was given."""
    keys = split.class_keys or [None] * split.num_classes
    return [(i, k if k is not None else "–", n) for i, (k, n) in enumerate(zip(keys, split.classnames))]


def read_classnames(path: str | os.PathLike) -> list[str]:
    """The names of a class-names file (see :func:`read_classnames_keyed`), in label order."""
    return read_classnames_keyed(path)[1]


def _duplicates(items: Sequence[str]) -> list[str]:
    seen, dup = set(), []
    for x in items:
        if x in seen:
            dup.append(x)
        seen.add(x)
    return dup


def _apply_classnames(splits: dict[str, LabeledSplit], classnames: str | None) -> dict[str, LabeledSplit]:
    if classnames is None:
        return splits
    keys, names = read_classnames_keyed(classnames)
    out = {}
    for k, s in splits.items():
        if keys is not None:
            # keyed names go by the source's class keys (folders), or by its own names when it has none
            index = dict(zip(keys, names))
            own = s.class_keys if s.class_keys is not None else s.classnames
            if s.class_keys is None:
                index = {normalize_classname(a): b for a, b in index.items()}
                own = [normalize_classname(c) for c in own]
            unknown = [c for c in own if c not in index]
            if unknown and str(classnames) == BUILTIN_CLASSNAMES:
                raise FDAlignError(
                    f"--classnames {BUILTIN_CLASSNAMES} names ImageNet's 1000 wnid folders (n01440764, ...), but "
                    f"split '{s.name}' has class(es) {', '.join(unknown[:5])}; pass a class-names file instead"
                )
            if unknown:
                raise FDAlignError(
                    f"class folder(s) {', '.join(unknown[:5])} of split '{s.name}' are not listed in "
                    f"the class-names file {classnames}"
                )
            out[k] = s.with_classnames([index[c] for c in own])
            continue
        if len(names) != s.num_classes:
            raise FDAlignError(
                f"class-names file {classnames} has {len(names)} names but the data has "
                f"{s.num_classes} classes; give one name per class, in label order (sorted folder "
                "order), or write 'folder<TAB>name' lines"
            )
        out[k] = s.with_classnames(names)
    return out


def pick_split(splits: dict[str, LabeledSplit], preferred: str) -> LabeledSplit:
    """``splits[preferred]``, or the only split when there is just one; otherwise an error."""
    if preferred in splits:
        return splits[preferred]
    if len(splits) == 1:
        return next(iter(splits.values()))
    promoted = preferred == "val" and "test" in splits and splits["test"].source == "val"
    why = "; its val/ folder is the test split (there is no test/ folder): pass --split test" if promoted else ""
    raise FDAlignError(f"the data has no '{preferred}' split (it has: {', '.join(splits)}){why}")


def val_as_test(splits: dict[str, LabeledSplit]) -> dict[str, LabeledSplit]:
    """ImageNet's layout: with ``train`` and ``val`` but no ``test``, ``val`` is the test split.

    ImageNet ships ``train/`` and ``val/`` only and its papers report accuracy on ``val/``; the
    few-shot validation images are then carved from ``train/`` (:func:`fdalign.data.fewshot_val`
    sees no ``val``), disjoint from the K shots, as in CoOp's protocol. So the reported set never
    chose anything.
    """
    if "test" in splits or "val" not in splits or "train" not in splits:
        return splits
    out = {k: v for k, v in splits.items() if k != "val"}
    out["test"] = replace(splits["val"], name="test", source="val")
    return out


# ----------------------------------------------------------------------------------------------
# ImageFolder


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def hidden_image_dirs(d: Path) -> list[str]:
    """Folders of ``d`` skipped as hidden (name starts with '.', e.g. ``...``) that hold images directly."""
    out = []
    for c in sorted(d.iterdir(), key=lambda c: c.name):
        if c.name.startswith(".") and c.is_dir() and any(_is_image(p) for p in c.iterdir()):
            out.append(c.name)
    return out


def _class_dirs(d: Path) -> list[Path]:
    hidden = hidden_image_dirs(d)
    if hidden:  # a class folder such as '...' must not vanish without a word
        import sys

        print(
            f"fdalign: warning: skipping hidden folder(s) holding images in {d}: {', '.join(map(repr, hidden[:5]))}"
            " (names starting with '.'); rename them to use them as classes",
            file=sys.stderr,
        )
    return sorted((c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")), key=lambda c: c.name)


def _scan_class_dir(c: Path) -> list[str]:
    """Image files under a class folder (recursively), as sorted POSIX paths relative to its parent."""
    files = sorted(
        p.relative_to(c.parent).as_posix()
        for p in c.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(c).parts)
    )
    if not files:
        raise FDAlignError(
            f"class folder {c} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add its images"
        )
    return files


def _load_class_folders(d: Path, keys: list[str], name: str) -> LabeledSplit:
    samples = []
    for label, key in enumerate(keys):
        samples += [Sample(f, label) for f in _scan_class_dir(d / key)]
    return LabeledSplit(
        classnames=[folder_to_classname(k) for k in keys],
        samples=samples,
        root=str(d.resolve()),
        name=name,
        class_keys=list(keys),
    )


def load_imagefolder(root: str | os.PathLike, classnames: str | None = None) -> dict[str, LabeledSplit]:
    """Load ``root/{train,val,test}/<class>/<image>`` (any subset of the three).

    The class order is the sorted folder names of the first split present (train, then val, test);
    the other splits must have exactly the same folders. A folder with no split sub-folders but
    with class folders is loaded as a single ``"test"`` split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FDAlignError(f"data folder {root} does not exist")
    present = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if not present:
        keys = [c.name for c in _class_dirs(root)]
        if not keys:
            raise FDAlignError(
                f"{root} has neither train/, val/, test/ sub-folders nor class folders; "
                "lay images out as ROOT/train/<class>/<image> (and ROOT/test/...)"
            )
        return _apply_classnames({"test": _load_class_folders(root, keys, "test")}, classnames)

    ref = present[0]
    keys = [c.name for c in _class_dirs(root / ref)]
    if not keys:
        raise FDAlignError(f"{root / ref} has no class folders; expected {root / ref}/<class>/<image>")
    splits = {}
    for s in present:
        these = keys if s == ref else [c.name for c in _class_dirs(root / s)]
        extra = sorted(set(these) - set(keys))
        missing = sorted(set(keys) - set(these))
        if extra or missing:
            parts = []
            if extra:
                parts.append(f"extra class folder(s) not in {ref}/: {', '.join(extra[:5])}")
            if missing:
                parts.append(f"missing class folder(s) present in {ref}/: {', '.join(missing[:5])}")
            raise FDAlignError(
                f"{root / s} does not have the same classes as {root / ref}: {'; '.join(parts)}. "
                "Every split must have one folder per class (an empty class is an error)"
            )
        splits[s] = _load_class_folders(root / s, keys, s)
    return _apply_classnames(splits, classnames)


# ----------------------------------------------------------------------------------------------
# CSV manifest


def load_csv(path: str | os.PathLike, classnames: str | None = None) -> dict[str, LabeledSplit]:
    """Load a CSV manifest with header ``path,label[,domain][,split]``.

    ``label`` is a class name or an integer. With names, the class order is the sorted unique names
    unless a class-names file is given, which then fixes the order (every label must be in it).
    With integers, a class-names file is required (prompts need names). Relative paths are relative
    to the CSV's directory. Rows are grouped by the optional ``split`` column (train/val/test);
    without it the whole file is one split named after the file if it is ``train.csv`` /
    ``val.csv`` / ``test.csv``, else ``"test"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FDAlignError(f"CSV manifest {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header or "label" not in header:
            raise FDAlignError(
                f"CSV manifest {path} must start with a header row containing 'path' and 'label' "
                f"(optional 'domain', 'split'); found: {','.join(header) or '(empty file)'}"
            )
        reader.fieldnames = header
        rows = list(reader)
    if not rows:
        raise FDAlignError(f"CSV manifest {path} has a header but no rows")

    raw_labels = []
    for i, r in enumerate(rows, start=2):
        if not (r.get("path") or "").strip() or (r.get("label") or "").strip() == "":
            raise FDAlignError(f"{path}, line {i}: empty 'path' or 'label'")
        raw_labels.append(r["label"].strip())

    names_file = read_classnames(classnames) if classnames else None
    if all(re.fullmatch(r"\d+", x) for x in raw_labels):
        labels = [int(x) for x in raw_labels]
        if names_file is None:
            raise FDAlignError(
                f"CSV manifest {path} has integer labels; pass a class-names file "
                "(--classnames, one name per line in label order) or write class names in 'label'"
            )
        bad = [x for x in labels if x >= len(names_file)]
        if bad:
            raise FDAlignError(
                f"CSV manifest {path} has label {bad[0]} but the class-names file {classnames} "
                f"has only {len(names_file)} names"
            )
        names = names_file
    else:
        if names_file is None:
            names = sorted(set(raw_labels))
            index = {n: i for i, n in enumerate(names)}
            labels = [index[x] for x in raw_labels]
        else:
            names = names_file
            index = {normalize_classname(n): i for i, n in enumerate(names)}
            labels = []
            for i, x in enumerate(raw_labels):
                j = index.get(normalize_classname(x))
                if j is None:
                    raise FDAlignError(f"{path}, line {i + 2}: label {x!r} is not in the class-names file {classnames}")
                labels.append(j)

    base = path.parent.resolve()
    groups: dict[str, list[Sample]] = {}
    default = path.stem.lower() if path.stem.lower() in SPLIT_NAMES else "test"
    for i, (r, y) in enumerate(zip(rows, labels), start=2):
        split = (r.get("split") or "").strip().lower() or default
        if split not in SPLIT_NAMES:
            raise FDAlignError(f"{path}, line {i}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
        domain = (r.get("domain") or "").strip() or None
        groups.setdefault(split, []).append(Sample(Path(r["path"].strip()).as_posix(), y, domain))
    return {
        s: LabeledSplit(classnames=list(names), samples=groups[s], root=str(base), name=s)
        for s in SPLIT_NAMES
        if s in groups
    }


# ----------------------------------------------------------------------------------------------
# CoOp split_zhou JSON


def _guess_image_root(json_path: Path, first_rel: str | None) -> Path:
    """The JSON's folder, or its sub-folder holding the first listed file (CoOp keeps images in
    e.g. ``oxford_pets/images`` next to ``split_zhou_OxfordPets.json``)."""
    base = json_path.parent.resolve()
    if first_rel is None or (base / first_rel).exists():
        return base
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        if (sub / first_rel).exists():
            return sub
    return base


def load_coop_split(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    classnames: str | None = None,
    check_files: bool = True,
) -> dict[str, LabeledSplit]:
    """Load a CoOp ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

    Paths are relative to ``image_root`` (default: guessed, see :func:`_guess_image_root`). Class
    names come from the entries (CoOp's cleaned names). With ``check_files`` every listed file must
    exist, else an error says how many are missing and where it looked.
    """
    path = Path(path)
    data = read_json(path, "split file")
    if not isinstance(data, dict) or not any(k in data for k in SPLIT_NAMES):
        raise FDAlignError(f"split file {path} must be a JSON object with 'train', 'val' and/or 'test' lists")

    names: dict[int, str] = {}
    parsed: dict[str, list[Sample]] = {}
    for s in SPLIT_NAMES:
        if s not in data:
            continue
        items = []
        for i, e in enumerate(data[s]):
            if not (isinstance(e, (list, tuple)) and len(e) >= 2 and isinstance(e[1], int)):
                raise FDAlignError(f"split file {path}: {s}[{i}] is {e!r}; expected [relpath, label, classname]")
            rel, y = str(e[0]), int(e[1])
            if len(e) >= 3:
                prev = names.setdefault(y, str(e[2]))
                if prev != str(e[2]):
                    raise FDAlignError(f"split file {path}: label {y} is called both {prev!r} and {e[2]!r}")
            items.append(Sample(rel, y))
        if items:  # an empty list is a split that is not there
            parsed[s] = items
    num_classes = 1 + max((smp.label for v in parsed.values() for smp in v), default=-1)
    if num_classes == 0:
        raise FDAlignError(f"split file {path} lists no images")
    unnamed = [y for y in range(num_classes) if y not in names]
    if unnamed and classnames is None:
        raise FDAlignError(
            f"split file {path} gives no class name for label(s) {unnamed[:5]}; "
            "add names to the entries or pass --classnames"
        )
    class_list = [names.get(y, str(y)) for y in range(num_classes)]

    first = next((v[0].path for v in parsed.values() if v), None)
    root = Path(image_root).resolve() if image_root is not None else _guess_image_root(path, first)
    if image_root is not None and not root.is_dir():
        raise FDAlignError(f"image root {root} does not exist (from --image-root)")
    if check_files:
        missing = [smp.path for v in parsed.values() for smp in v if not (root / smp.path).is_file()]
        if missing:
            total = sum(len(v) for v in parsed.values())
            raise FDAlignError(
                f"{len(missing)} of {total} images listed in {path} are missing under image root "
                f"{root} (first: {', '.join(missing[:3])}); pass --image-root pointing at the folder "
                "those relative paths start from"
            )
    splits = {
        s: infer_wnid_keys(LabeledSplit(classnames=list(class_list), samples=v, root=str(root), name=s))
        for s, v in parsed.items()
    }
    if classnames is not None:
        splits = _apply_classnames(splits, classnames)
    return splits


def benchmark_from_filename(path: str | os.PathLike) -> str | None:
    """``.../split_zhou_OxfordPets.json`` -> ``"OxfordPets"``; None when the name does not match."""
    m = re.fullmatch(r"split_zhou_(.+)\.json", Path(path).name)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------------
# Dispatch


def infer_wnid_keys(split: LabeledSplit) -> LabeledSplit:
    """Give a split listed by file path (CoOp JSON, the authors' index files) ImageNet wnid keys.

    From the image paths when every class's images sit in one folder named by a wnid
    (``train/n01440764/x.JPEG``); else, for 1000 classes named as CLIP / CoOp name ImageNet's
    classes, from the shipped wnid list by label. Without keys, wnid-named OOD folders (Sketch,
    A, R) could not be matched.
    """
    from fdalign.data.imagenet import WNID, imagenet_classnames, imagenet_wnids

    if split.class_keys is not None:
        return split
    folders: list[set[str]] = [set() for _ in split.classnames]
    for x in split.samples:
        folders[x.label].add(PurePosixPath(split.relpath(x)).parent.name)
    keys = [next(iter(f)) if len(f) == 1 else None for f in folders]
    if all(k is not None and WNID.fullmatch(k) for k in keys) and len(set(keys)) == len(keys):
        return replace(split, class_keys=keys)
    if split.num_classes == 1000:
        same = sum(
            normalize_classname(a) == normalize_classname(b) for a, b in zip(split.classnames, imagenet_classnames())
        )
        if same >= 990:  # a few renamed classes still mean ImageNet's order
            return replace(split, class_keys=list(imagenet_wnids()))
    return split
