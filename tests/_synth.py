"""Synthetic image data for tests: tiny PNGs whose colour depends on the class.

Each class gets a fixed, well-separated hue; every image is that colour plus mild per-image noise,
so even a tiny model can learn the classes, and two images never have the same bytes (the hash
tests rely on that). Import as ``from _synth import make_imagefolder`` (tests/ is on sys.path when
pytest runs in rootdir-relative import mode, the default).
"""

from __future__ import annotations

import colorsys
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def class_colour(index: int, num_classes: int) -> tuple[int, int, int]:
    """Evenly spaced hues, full saturation: class ``index`` of ``num_classes`` as RGB 0..255."""
    r, g, b = colorsys.hsv_to_rgb(index / max(num_classes, 1), 0.9, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def make_image(colour: tuple[int, int, int], size: int, rng: np.random.Generator, noise: float = 20.0) -> Image.Image:
    base = np.array(colour, dtype=np.float32)[None, None, :]
    arr = base + rng.normal(0.0, noise, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _folder(name: str) -> str:
    return name.replace(" ", "_")


def _write_images(d: Path, classes: list[str], n: int, size: int, rng, ext: str = ".png") -> list[tuple[str, int, str]]:
    """Write ``n`` images per class into ``d/<class folder>/``; return (relpath to d, label, class)."""
    rows = []
    for c, name in enumerate(classes):
        cd = d / _folder(name)
        cd.mkdir(parents=True, exist_ok=True)
        colour = class_colour(c, len(classes))
        for i in range(n):
            rel = f"{_folder(name)}/{_folder(name)}_{i:04d}{ext}"
            make_image(colour, size, rng).save(d / rel)
            rows.append((rel, c, name))
    return rows


def make_imagefolder(
    root, classes: list[str], n_train: int, n_test: int, n_val: int = 0, size: int = 32, seed: int = 0
) -> Path:
    """``root/{train,val,test}/<class>/<class>_NNNN.png`` (class names with spaces get ``_``).

    A split with 0 images per class is not created. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if n > 0:
            _write_images(root / split, classes, n, size, rng)
    return root


def make_coop_split(
    root,
    classes: list[str],
    n_train: int,
    n_test: int,
    n_val: int = 0,
    name: str = "Synth",
    size: int = 32,
    seed: int = 0,
) -> Path:
    """CoOp layout: ``root/images/<class>/...png`` plus ``root/split_zhou_<name>.json`` listing
    ``[relpath under images/, label, classname]`` for train/val/test. Returns the JSON path.

    All images live in one pool per class (as in CoOp); the split lists partition them.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    total = n_train + n_val + n_test
    rows = _write_images(root / "images", classes, total, size, rng)
    split = {"train": [], "val": [], "test": []}
    for c in range(len(classes)):
        mine = [list(r) for r in rows if r[1] == c]
        split["train"] += mine[:n_train]
        split["val"] += mine[n_train : n_train + n_val]
        split["test"] += mine[n_train + n_val :]
    path = root / f"split_zhou_{name}.json"
    path.write_text(json.dumps({k: v for k, v in split.items() if v}))
    return path


def make_csv(
    root,
    classes: list[str],
    n_per_class: int,
    size: int = 32,
    seed: int = 0,
    int_labels: bool = False,
    domain: str | None = None,
    filename: str = "manifest.csv",
) -> Path:
    """Images under ``root/img/`` and ``root/<filename>`` with header ``path,label[,domain]``
    (relative paths; labels are class names, or indices with ``int_labels``). Returns the CSV path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = _write_images(root / "img", classes, n_per_class, size, rng)
    path = root / filename
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"] + (["domain"] if domain else []))
        for rel, c, name in rows:
            w.writerow([f"img/{rel}", c if int_labels else name] + ([domain] if domain else []))
    return path


def truncate_file(path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a truncated download). Returns the path."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


class NoisyTensors:
    """``n_per_class * classes`` random ``[3, size, size]`` images whose every access adds noise (and, with
    ``flip``, a random flip) drawn from the global torch RNG, as a main-process augmentation would."""

    def __init__(self, n_per_class: int = 4, classes: int = 3, size: int = 32, seed: int = 0, flip: bool = False):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n_per_class * classes, 3, size, size, generator=g)
        self.y = torch.arange(classes).repeat_interleave(n_per_class)
        self.flip = flip

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        import torch

        x = self.x[i] + 0.3 * torch.randn_like(self.x[i])
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.y[i])


def tiny_train_config(tiny: dict, data, templates, out, **overrides):
    """A :class:`fdalign.TrainConfig` training the tests' tiny CLIP (``tiny_openclip``) on CPU for one
    short epoch of 2-shot data; ``overrides`` set any other field."""
    import fdalign

    d = dict(
        model_config=str(tiny["config"]),
        pretrained=str(tiny["checkpoint"]),
        data=str(data),
        shots=2,
        epochs=1,
        batch_size=3,
        num_workers=0,
        templates=str(templates),
        device="cpu",
        lr=1e-3,
        progress=False,
        out=str(out),
    )
    return fdalign.TrainConfig(**{**d, **overrides})


def write_templates(path, templates) -> Path:
    """A prompt-template file (one template with ``{}`` per line), as ``--templates FILE`` reads it."""
    path = Path(path)
    path.write_text("\n".join(templates) + "\n")
    return path
