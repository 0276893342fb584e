"""K-shot sampling, the few-shot validation rule, and saving / replaying the exact shots.

Sampling is a *hash ranking*: within each class, images are ordered by
``sha256(f"{seed}/{relative path}")`` and the first ``k`` are taken. This was chosen over
``random.Random`` / numpy generators because it depends on nothing but the seed and the relative
paths: not on the input order, the Python or numpy version (whose sampling algorithms may change),
the machine or where the data is mounted. It also nests: the 4-shot set of a seed is the first four
of its 16-shot ranking, and the validation images carved from training (below) never overlap the
training shots.

Validation (as the authors do): ``min(k, 4)`` images per class from the ``val`` split, ranked the
same way; with no ``val`` split they are the next ``min(k, 4)`` images of each class's training
ranking, i.e. ranks ``k .. k + min(k, 4) - 1``, so they are held out from the ``k`` training shots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fdalign.data.datasets import SPLIT_NAMES, LabeledSplit, Sample
from fdalign.errors import FDAlignError
from fdalign.io import atomic_write_json, read_json

SPLIT_FORMAT = "fdalign-split"


def val_shots(k: int) -> int:
    """Validation images per class for a ``k``-shot run: ``min(k, 4)``."""
    return min(k, 4)


def _rank_key(seed: int, relpath: str) -> tuple[bytes, str]:
    # surrogateescape: a non-UTF-8 file name (bytes the OS gave back as surrogates) ranks by its bytes
    return hashlib.sha256(f"{seed}/{relpath}".encode("utf-8", "surrogateescape")).digest(), relpath


def _ranked_by_class(split: LabeledSplit, seed: int) -> list[list[int]]:
    """Sample indices of each class in hash-rank order: ``[C][n_c]``."""
    by_class: list[list[int]] = [[] for _ in split.classnames]
    for i, s in enumerate(split.samples):
        by_class[s.label].append(i)
    keys = [_rank_key(seed, split.relpath(s)) for s in split.samples]
    return [sorted(idx, key=keys.__getitem__) for idx in by_class]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise FDAlignError(f"shots must be a positive integer, got {k!r}")


def _take(split: LabeledSplit, seed: int, start: int, stop: int, name: str, what: str) -> LabeledSplit:
    chosen = []
    for c, idx in enumerate(_ranked_by_class(split, seed)):
        if len(idx) < stop:
            raise FDAlignError(
                f"class '{split.classnames[c]}' has {len(idx)} images in split '{split.name}' but "
                f"{what} needs {stop}; lower --shots or add images to that class"
            )
        chosen += idx[start:stop]
    chosen.sort(key=lambda i: (split.samples[i].label, split.relpath(split.samples[i])))
    return split.subset(chosen, name=name)


def sample_kshot(split: LabeledSplit, k: int, seed: int) -> LabeledSplit:
    """``k`` images of every class of ``split``, chosen deterministically by ``seed``.

    The result is ordered by (label, path); an error names any class with fewer than ``k`` images.
    """
    _check_k(k)
    return _take(split, seed, 0, k, split.name, f"{k}-shot sampling")


def fewshot_val(splits: dict[str, LabeledSplit], k: int, seed: int) -> LabeledSplit:
    """The validation set of a ``k``-shot run: ``min(k, 4)`` per class (see the module docstring).

    Named ``"val"`` when drawn from the ``val`` split and ``"val-from-train"`` when carved from the
    training images.
    """
    _check_k(k)
    v = val_shots(k)
    if "val" in splits:
        return _take(splits["val"], seed, 0, v, "val", f"{v}-shot validation")
    if "train" not in splits:
        raise FDAlignError(f"the data has no 'train' split to sample from (it has: {', '.join(splits)})")
    return _take(
        splits["train"],
        seed,
        k,
        k + v,
        "val-from-train",
        f"{k} training + {v} held-out validation shots (no val split)",
    )


def sample_fewshot(splits: dict[str, LabeledSplit], k: int, seed: int) -> dict[str, LabeledSplit]:
    """``{"train": k-shot training set, "val": its validation set}`` from loaded splits."""
    if "train" not in splits:
        raise FDAlignError(f"the data has no 'train' split to sample from (it has: {', '.join(splits)})")
    return {"train": sample_kshot(splits["train"], k, seed), "val": fewshot_val(splits, k, seed)}


# ----------------------------------------------------------------------------------------------
# fdalign's own split files


def save_split(split: LabeledSplit, path: str | os.PathLike) -> None:
    """Write ``split`` as JSON (paths relative to its root) so a run can replay the exact images."""
    samples = []
    for s in split.samples:
        row = [split.relpath(s), s.label]
        if s.domain is not None:
            row.append(s.domain)
        samples.append(row)
    atomic_write_json(
        path,
        {
            "format": SPLIT_FORMAT,
            "version": 1,
            "name": split.name,
            "root": split.root,
            "classnames": split.classnames,
            "class_keys": split.class_keys,
            "samples": samples,
        },
    )


def load_split(path: str | os.PathLike, root: str | os.PathLike | None = None) -> LabeledSplit:
    """Read a :func:`save_split` file; ``root`` replaces the recorded root (data moved)."""
    path = Path(path)
    d = read_json(path, "split file")
    if not isinstance(d, dict) or d.get("format") != SPLIT_FORMAT:
        raise FDAlignError(f'{path} is not an fdalign split file (no "format": "{SPLIT_FORMAT}")')
    try:
        samples = [Sample(str(r[0]), int(r[1]), r[2] if len(r) > 2 else None) for r in d["samples"]]
        return LabeledSplit(
            classnames=list(d["classnames"]),
            samples=samples,
            root=str(root) if root is not None else d.get("root"),
            name=d.get("name", "train"),
            class_keys=d.get("class_keys"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise FDAlignError(f"split file {path} is malformed ({e!r}); re-create it with save_split") from None


def json_kind(path: str | os.PathLike) -> str:
    """``"fdalign-split"``, ``"indices"`` (the paper's shot_K-seed_S.json) or ``"coop"`` (anything else)."""
    d = read_json(path, "JSON file")
    if isinstance(d, dict) and d.get("format") == SPLIT_FORMAT:
        return "fdalign-split"
    if isinstance(d, dict) and any(isinstance(d.get(s), dict) and "data" in d[s] for s in SPLIT_NAMES):
        return "indices"
    return "coop"


# ----------------------------------------------------------------------------------------------
# The paper code's index files: indices/<ds>/shot_K-seed_S.json


def _resolve_impath(impath: str, image_root: Path, strip: list[int]) -> str | None:
    """Relative path under ``image_root`` of an image recorded on another machine.

    Leading components are dropped one at a time (longest suffix first, so ``cat/1.jpg`` wins over
    ``1.jpg``) until the rest exists under ``image_root``; ``strip[0]`` remembers the count that worked so the next file tries it first.
    """
    parts = [x for x in impath.replace("\\", "/").split("/") if x and x != "."]
    if parts and parts[0].endswith(":"):  # a Windows drive
        parts = parts[1:]
    order = ([strip[0]] if strip else []) + list(range(len(parts)))
    for n in order:
        if n >= len(parts):
            continue
        rel = "/".join(parts[n:])
        if (image_root / rel).is_file():
            strip[:] = [n]
            return rel
    return None


_INDEX_NAME = re.compile(r"shot_(\d+)-seed_(\d+)\.json")


@dataclass(frozen=True)
class IndexFileInfo:
    """What an index file fixes: ``shots`` (K) and the ``seed`` it was drawn with (None if unknown)."""

    path: str
    shots: int
    seed: int | None


def index_file_info(path: str | os.PathLike) -> IndexFileInfo | None:
    """K and seed of the paper's ``shot_K-seed_S.json``; None when ``path`` is not an index file.

    Both come from the file name; K falls back to the largest per-class count of its train part.
    """
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file() or json_kind(p) != "indices":
        return None
    m = _INDEX_NAME.fullmatch(p.name)
    if m:
        return IndexFileInfo(str(p), int(m.group(1)), int(m.group(2)))
    rows = (read_json(p, "index file").get("train") or {}).get("data") or []
    counts: dict = {}
    for e in rows:
        if isinstance(e, dict) and "label" in e:
            counts[e["label"]] = counts.get(e["label"], 0) + 1
    if not counts:
        raise FDAlignError(f"index file {p} lists no training images")
    return IndexFileInfo(str(p), max(counts.values()), None)


def find_split_file(index_path: str | os.PathLike, image_root: str | os.PathLike | None) -> Path | None:
    """The CoOp ``split_zhou_*.json`` beside an index file, in ``image_root`` or its parent.

    CoOp keeps it next to the images folder (``dtd/split_zhou_DescribableTextures.json`` beside
    ``dtd/images``). None when there is none; an error when a folder holds several.
    """
    places = [Path(index_path).parent]
    if image_root is not None:
        places += [Path(image_root), Path(image_root).parent]
    for d in places:
        found = sorted(d.glob("split_zhou_*.json")) if d.is_dir() else []
        if len(found) > 1:
            raise FDAlignError(
                f"{d} holds several split files ({', '.join(f.name for f in found)}); pass --split-file "
                f"with the one {Path(index_path).name} was drawn from"
            )
        if found:
            return found[0]
    return None


def load_fewshot_indices(
    path: str | os.PathLike,
    image_root: str | os.PathLike,
    split_file: str | os.PathLike | None = None,
) -> dict[str, LabeledSplit]:
    """Read the paper code's ``shot_K-seed_S.json`` into ``{"train", "val"[, "test"]}`` splits.

    Format: ``{"train": {"data": [{"impath", "label", "classname"}, ...], "indices": [...]},
    "val": {...}}``. ``split_file`` is the data set's CoOp ``split_zhou_*.json``: the ``indices``
    of each part are positions in its list of the same name, which is exact, and its ``test``
    list becomes the test split (an index file has none). A folder instead (ImageNet, which has
    no split_zhou file) gives only its test split (its ``val/`` for ImageNet's layout). Without
    a JSON split file each ``impath`` (usually absolute, from the authors' machine) is resolved
    under ``image_root`` by its longest suffix that exists there (see :func:`_resolve_impath`).
    Classes get ImageNet wnid keys from the paths (:func:`~fdalign.data.datasets.infer_wnid_keys`).
    """
    from fdalign.data.datasets import infer_wnid_keys, load_coop_split, load_imagefolder, val_as_test

    path = Path(path)
    image_root = Path(image_root).resolve()
    if not image_root.is_dir():
        raise FDAlignError(f"image root {image_root} does not exist (from --image-root)")
    d = read_json(path, "index file")
    parts = [s for s in ("train", "val", "test") if isinstance(d, dict) and isinstance(d.get(s), dict)]
    if not parts:
        raise FDAlignError(f'{path} is not a few-shot index file (expected {{"train": {{"data": [...]}}}})')

    if split_file is not None and Path(split_file).is_dir():
        out = _indices_by_path(path, d, parts, image_root)
        test = val_as_test(load_imagefolder(Path(split_file))).get("test")  # a folder, as open_dataset reads it
        if test is None:
            raise FDAlignError(f"--split-file {split_file} has no test split (no test/ folder, nor train/ + val/)")
        out["test"] = test
        return out
    if split_file is None:
        return _indices_by_path(path, d, parts, image_root)

    source = load_coop_split(split_file, _split_root(split_file, image_root))
    out = {}
    for s in parts:
        idx = d[s].get("indices")
        if idx is None or s not in source:
            raise FDAlignError(f"{path}: part '{s}' has no 'indices' or {split_file} has no '{s}' list")
        n = len(source[s])
        bad = [i for i in idx if not (isinstance(i, int) and 0 <= i < n)]
        if bad:
            raise FDAlignError(f"{path}: {s} index {bad[0]!r} is outside {split_file}'s {s} list (size {n})")
        out[s] = source[s].subset(idx, name=s)
    if "test" not in out and "test" in source:
        out["test"] = source["test"]
    return {k: infer_wnid_keys(v) for k, v in out.items()}


def _split_root(split_file, image_root: Path) -> Path | None:
    """``image_root`` when the split file's first path lies under it, else None (let the loader guess)."""
    d = read_json(split_file, "split file")
    first = next((v[0][0] for v in (d.values() if isinstance(d, dict) else []) if isinstance(v, list) and v), None)
    return image_root if first is None or (image_root / str(first)).is_file() else None


def _indices_by_path(path: Path, d: dict, parts: list[str], image_root: Path) -> dict[str, LabeledSplit]:
    from fdalign.data.datasets import infer_wnid_keys

    names: dict[int, str] = {}
    out, missing, strip = {}, [], []
    for s in parts:
        samples = []
        for i, e in enumerate(d[s].get("data", [])):
            if not (isinstance(e, dict) and "impath" in e and "label" in e):
                raise FDAlignError(f'{path}: {s}.data[{i}] is {e!r}; expected {{"impath", "label", "classname"}}')
            y = int(e["label"])
            if "classname" in e:
                names.setdefault(y, str(e["classname"]))
            rel = _resolve_impath(str(e["impath"]), image_root, strip)
            if rel is None:
                missing.append(str(e["impath"]))
            else:
                samples.append(Sample(rel, y))
        out[s] = samples
    if missing:
        raise FDAlignError(
            f"{len(missing)} images of {path} were not found under image root {image_root} "
            f"(first: {', '.join(missing[:3])}); pass --image-root pointing at the data set's image "
            "folder, or give the split_zhou JSON to use the recorded indices"
        )
    num_classes = 1 + max((x.label for v in out.values() for x in v), default=-1)
    unnamed = [y for y in range(num_classes) if y not in names]
    if unnamed:
        raise FDAlignError(f"{path}: no 'classname' recorded for label(s) {unnamed[:5]}")
    classnames = [names[y] for y in range(num_classes)]
    splits = {
        s: LabeledSplit(classnames=list(classnames), samples=v, root=str(image_root), name=s) for s, v in out.items()
    }
    # keys from the union of the parts, so train and val always agree
    keyed = infer_wnid_keys(
        LabeledSplit(list(classnames), [x for v in out.values() for x in v], str(image_root), "all")
    )
    return {s: dataclasses.replace(v, class_keys=keyed.class_keys) for s, v in splits.items()}


def save_fewshot_indices(
    splits: dict[str, LabeledSplit],
    path: str | os.PathLike,
    source: dict[str, LabeledSplit] | None = None,
) -> None:
    """Write splits in the paper code's index format (impaths absolute on this machine).

    ``indices`` are positions in ``source[part]`` (e.g. the loaded split_zhou lists) when given,
    matched by relative path; without ``source`` they are omitted.
    """
    obj = {}
    for s, split in splits.items():
        data = [
            {"impath": os.path.abspath(split.resolve(x)), "label": x.label, "classname": split.classnames[x.label]}
            for x in split.samples
        ]
        part: dict = {"data": data}
        if source is not None and s in source:
            pos = {source[s].relpath(x): i for i, x in enumerate(source[s].samples)}
            try:
                part["indices"] = [pos[split.relpath(x)] for x in split.samples]
            except KeyError as e:
                raise FDAlignError(f"image {e.args[0]} of '{s}' is not in the source '{s}' list") from None
        obj[s] = part
    atomic_write_json(path, obj)
