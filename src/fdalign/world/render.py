"""The embedded world written out as ordinary image files, so every command can train on it offline.

Layout of ``fdalign world render --out DIR``::

    DIR/train/<class>/<style>-NNNN.png    the ID styles, ``train_per_class`` per class and style
    DIR/val/<class>/...                   ``val_per_class`` per class and style (few-shot val is drawn from it)
    DIR/test/<class>/...                  ``test_per_class`` per class and style
    DIR/ood/<style>/<class>/NNNN.png      one test folder per OOD style
    DIR/world.json                        the render settings and a hash of every file; written last

Class folders use ``_`` for spaces (``digit_seven``), which the ImageFolder reader maps back. Each
(split, style) block is a :func:`~fdalign.world.generator.render_grid` with its own seed derived
from ``seed``, the split and the style, so train, val, test and OOD never share a sample, and adding
a style leaves the other blocks' images unchanged.

Writes are atomic (:mod:`fdalign.io`) and a block whose files all exist is not rendered again, so an
interrupted render is resumed by running the same command; ``world.json`` appears only when every
file is there. A different setting for an existing folder is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fdalign.errors import FDAlignError
from fdalign.io import atomic_write_bytes, atomic_write_json, read_json

WORLD_FORMAT = "fdalign-world-render/1"
MANIFEST = "world.json"
SPEC_FILE = ".world-render-spec.json"  # the settings of a render in progress
SPLITS = ("train", "val", "test")


@dataclass
class RenderConfig:
    """What to render. Counts are images per class *and* style."""

    id_styles: tuple[str, ...] = ("photo",)
    ood_styles: tuple[str, ...] = ("sketch", "painting", "cartoon", "blurry", "pixelated", "dark")
    train_per_class: int = 16
    val_per_class: int = 4
    test_per_class: int = 12
    seed: int = 0
    image_size: int = 64
    classes: tuple[str, ...] | None = None  # None: every world class
    progress: bool = field(default=True, compare=False)

    def validate(self) -> RenderConfig:
        from fdalign.world.generator import CLASSES, STYLES

        def bad(name, why):
            raise FDAlignError(f"world render option --{name.replace('_', '-')} = {getattr(self, name)!r} {why}")

        for name in ("train_per_class", "val_per_class", "test_per_class", "image_size"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if not self.id_styles:
            bad("id_styles", "is empty; give at least one style to train and test on")
        for name in ("id_styles", "ood_styles"):
            unknown = [s for s in getattr(self, name) if s not in STYLES]
            if unknown:
                bad(name, f"has unknown styles {unknown}; choose from {', '.join(STYLES)}")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                bad(name, "lists a style twice")
        both = sorted(set(self.id_styles) & set(self.ood_styles))
        if both:
            bad("ood_styles", f"contains ID style(s) {both}; OOD styles must be held out")
        if self.classes is not None:
            unknown = [c for c in self.classes if c not in CLASSES]
            if unknown or len(self.classes) < 2:
                bad(
                    "classes",
                    f"must name two or more world classes (unknown: {unknown}); choose from {', '.join(CLASSES)}",
                )
        return self

    def spec(self) -> dict:
        """The settings that decide the pixels (what a resumed or repeated render must match)."""
        d = asdict(self)
        d.pop("progress")
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        from fdalign.world.generator import CLASSES

        d["classes"] = list(self.classes or CLASSES)
        return {"format": WORLD_FORMAT, **d}


def folder_name(name: str) -> str:
    """``digit seven`` -> ``digit_seven`` (ImageFolder class and OOD folder names)."""
    return name.replace(" ", "_")


def block_seed(seed: int, split: str, style: str) -> int:
    """A 32-bit render seed per (split, style): no two blocks share a sample stream."""
    digest = hashlib.sha256(json.dumps(["fdalign-world-render", seed, split, style]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class Block:
    """One (split, style) grid of images and where its files go."""

    split: str  # train / val / test / ood
    style: str
    per_class: int

    def path(self, root: Path, cls: str, i: int) -> Path:
        if self.split == "ood":
            return root / "ood" / folder_name(self.style) / folder_name(cls) / f"{i:04d}.png"
        return root / self.split / folder_name(cls) / f"{folder_name(self.style)}-{i:04d}.png"


def plan_blocks(cfg: RenderConfig) -> list[Block]:
    counts = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    blocks = [Block(s, st, counts[s]) for s in SPLITS for st in cfg.id_styles]
    return blocks + [Block("ood", st, cfg.test_per_class) for st in cfg.ood_styles]


def _png(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _read_settings(p: Path) -> dict:
    """The settings in ``world.json`` or the in-progress spec file; a damaged or foreign file is named."""
    doc = read_json(p, "world render settings")
    ok = isinstance(doc, dict) and (
        p.name != MANIFEST or (isinstance(doc.get("spec"), dict) and isinstance(doc.get("files"), dict))
    )
    if not ok:
        raise FDAlignError(
            f"{p} is not the file `fdalign world render` writes (a JSON {type(doc).__name__} without "
            "its settings); delete it and render again"
        )
    return doc.get("spec", doc) if p.name == MANIFEST else doc


def _check_existing(root: Path, spec: dict) -> bool:
    """True when ``root`` already holds exactly this render; raise when it holds another one."""
    for name in (MANIFEST, SPEC_FILE):
        p = root / name
        if p.is_file():
            old = _read_settings(p)
            if old != spec:
                diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
                raise FDAlignError(
                    f"{root} holds a world rendered with other settings ({', '.join(diff)} differ); "
                    "render into a new --out or delete that folder"
                )
            if name == MANIFEST:
                return True
    if root.is_dir() and any(root.iterdir()) and not (root / SPEC_FILE).is_file():
        raise FDAlignError(f"{root} exists and is not a rendered world; choose an empty or new --out")
    return False


def _sha256(p: Path) -> str | None:
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _repair(cfg: RenderConfig, root: Path, outcome: dict) -> Path:
    """Check every image of a finished render against the SHA-256 in ``world.json``; render the missing
    or changed ones again (the render is deterministic) and check the new bytes against the record."""
    from fdalign.world.generator import render_grid

    recorded = read_json(root / MANIFEST, "world manifest")["files"]
    bad = {}
    for rel, want in recorded.items():
        got = _sha256(root / rel)
        if got != want:
            bad[rel] = "missing" if got is None else "changed"
    outcome.update(
        checked=len(recorded),
        missing=sorted(r for r, w in bad.items() if w == "missing"),
        changed=sorted(r for r, w in bad.items() if w == "changed"),
        written=0,
    )
    classes = cfg.spec()["classes"]
    for b in plan_blocks(cfg):
        paths = [b.path(root, c, i) for c in classes for i in range(b.per_class)]
        todo = [p for p in paths if p.relative_to(root).as_posix() in bad]
        if not todo:
            continue
        batch = render_grid(
            b.per_class,
            block_seed(cfg.seed, b.split, b.style),
            classes=classes,
            styles=[b.style],
            image_size=cfg.image_size,
        )
        for p, image in zip(paths, batch.images):
            rel = p.relative_to(root).as_posix()
            if rel not in bad:
                continue
            data = _png(image)
            if hashlib.sha256(data).hexdigest() != recorded[rel]:
                raise FDAlignError(
                    f"{p} is {bad[rel]} and rendering it again does not give the bytes {root / MANIFEST} "
                    "records (another fdalign or Pillow version?); render into a new --out"
                )
            atomic_write_bytes(p, data)
            outcome["written"] += 1
    return root / MANIFEST


def render_world(cfg: RenderConfig, out: str | os.PathLike, outcome: dict | None = None) -> Path:
    """Render ``cfg`` into ``out`` (resuming a partial render); return the path of ``world.json``.

    ``world.json`` holds ``{"spec", "sets", "files"}``: the settings, the data paths (relative to
    ``out``) to pass to ``fdalign train`` (``--data`` and each ``--ood NAME=PATH``) and the SHA-256
    of every image. Over a finished render, every image is checked against those hashes and a missing
    or changed one rendered again. ``outcome`` (if given) is filled with ``written`` (images written
    now) and, for a finished render, ``checked``, ``missing`` and ``changed``.
    """
    from tqdm.auto import tqdm

    from fdalign.world.generator import render_grid

    cfg.validate()
    root = Path(out)
    spec = cfg.spec()
    outcome = {} if outcome is None else outcome
    if _check_existing(root, spec):
        return _repair(cfg, root, outcome)
    outcome["written"] = 0
    atomic_write_json(root / SPEC_FILE, spec)
    classes = spec["classes"]
    files: dict[str, str] = {}
    blocks = plan_blocks(cfg)
    bar = tqdm(
        total=sum(b.per_class * len(classes) for b in blocks),
        desc="rendering world",
        unit="img",
        disable=not cfg.progress,
        leave=False,
        dynamic_ncols=True,
    )
    for b in blocks:
        paths = [b.path(root, c, i) for c in classes for i in range(b.per_class)]
        if all(p.is_file() for p in paths):  # finished before an interruption: written atomically
            for p in paths:
                files[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
            bar.update(len(paths))
            continue
        # render_grid orders its images class-major, then index: the order of `paths`
        batch = render_grid(
            b.per_class,
            block_seed(cfg.seed, b.split, b.style),
            classes=classes,
            styles=[b.style],
            image_size=cfg.image_size,
        )
        for p, image in zip(paths, batch.images):
            data = _png(image)
            if not p.is_file():
                atomic_write_bytes(p, data)
                outcome["written"] += 1
            files[p.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
            bar.update(1)
    bar.close()
    sets = {"data": ".", "ood": {folder_name(s): f"ood/{folder_name(s)}" for s in cfg.ood_styles}}
    manifest = atomic_write_json(root / MANIFEST, {"spec": spec, "sets": sets, "files": dict(sorted(files.items()))})
    (root / SPEC_FILE).unlink(missing_ok=True)
    return manifest


def ood_args(root: str | os.PathLike) -> list[str]:
    """The ``--ood NAME=PATH`` values of a rendered world (one per OOD style, in render order)."""
    root = Path(root)
    spec = _read_settings(root / MANIFEST)
    return [f"{folder_name(s)}={root / 'ood' / folder_name(s)}" for s in spec["ood_styles"]]


__all__ = ["RenderConfig", "render_world", "ood_args", "block_seed", "folder_name", "MANIFEST"]
