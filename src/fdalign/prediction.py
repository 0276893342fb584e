"""Classify new images with a finished run or an export: top-k classes and probabilities into a CSV.

Images are encoded in batches by :func:`fdalign.eval.extract_features` (the same pass ``fdalign
eval`` makes), so the logits are those of evaluation. A file that cannot be decoded never stops the
run: it gets a row with an ``error`` and is counted.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from fdalign.errors import FDAlignError


@dataclass
class Classifier:
    """An image encoder, its head, the head's class names and the images' preprocessing."""

    encoder: nn.Module
    head: nn.Module
    classnames: list[str]
    transform: Callable
    image_size: int
    name: str
    wiseft_alpha: float | None = None  # a run's WiSE-FT weight on the fine-tuned side (None: fine-tuned)


def target_kind(target: str | os.PathLike, wiseft_alpha: float | str | None = None, command: str = "predict") -> str:
    """``"export"`` or ``"run"`` (a finished one), checked without loading anything heavy."""
    from fdalign.exporting import MANIFEST_FILE, SELECTED, finished_run, parse_alpha
    from fdalign.train.run import CONFIG_FILE

    target = Path(target)
    if (target / MANIFEST_FILE).is_file():
        if wiseft_alpha not in (None, SELECTED):  # an export holds the weights it was made with
            raise FDAlignError(
                f"{target} is an export, whose weights are fixed; --wiseft-alpha applies to a run "
                "directory (or export again with --wiseft-alpha)"
            )
        return "export"
    if not (target / CONFIG_FILE).is_file():
        raise FDAlignError(
            f"{target} is neither an fdalign run directory (no {CONFIG_FILE}) nor an export "
            f"(no {MANIFEST_FILE}); pass the --out of `fdalign train` or `fdalign export`"
        )
    finished_run(target, command)
    parse_alpha(wiseft_alpha)
    return "run"


def load_classifier(
    target: str | os.PathLike,
    wiseft_alpha: float | str | None = None,
    device: str | torch.device = "cpu",
    backend=None,
    command: str = "predict",
) -> Classifier:
    """A finished run directory (its fine-tuned or WiSE-FT weights) or an ``fdalign export`` folder;
    ``backend``: the base CLIP of a run trained from a model given in Python."""
    if target_kind(target, wiseft_alpha, command) == "export":
        return _from_export(Path(target), device)
    return _from_run(Path(target), wiseft_alpha, device, backend)


def _from_run(run_dir: Path, wiseft_alpha, device, backend=None) -> Classifier:
    from fdalign.exporting import apply_weights, parse_alpha, resolve_alpha
    from fdalign.train.run import load_run

    alpha = parse_alpha(wiseft_alpha)
    loaded = load_run(run_dir, "cpu", backend=backend)
    alpha = resolve_alpha(loaded, alpha)
    head = apply_weights(loaded, alpha)
    backend = loaded.backend.to(device)
    name = f"{run_dir} ({'fine-tuned' if alpha is None else f'wiseft-{alpha:g}'})"
    return Classifier(
        backend.image_encoder,
        head.to(device),
        list(loaded.classnames),
        backend.preprocess_eval(),
        backend.image_spec.size,
        name,
        alpha,
    )


def _from_export(out: Path, device) -> Classifier:
    from fdalign.backends import load_clip
    from fdalign.exporting import HEAD_FILE, MANIFEST_FILE, load_head
    from fdalign.io import read_json

    manifest = read_json(out / MANIFEST_FILE, "export manifest")
    fmt = manifest.get("export_format")
    if fmt not in ("open_clip", "hf"):
        raise FDAlignError(f"{out / MANIFEST_FILE}: export_format {fmt!r} is not open_clip or hf")
    # open_clip reads its own local-dir layout; the HF backend a save_pretrained folder
    backend = load_clip(f"{'local-dir' if fmt == 'open_clip' else 'hf'}:{out.resolve()}", device=device)
    head, classnames = load_head(out / HEAD_FILE)
    return Classifier(
        backend.image_encoder, head.to(device), classnames, backend.preprocess_eval(), backend.image_spec.size, str(out)
    )


# ----------------------------------------------------------------------------------------------
# Images


def collect_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """Files named directly, and image files found by walking folders (recursively, sorted), in order.

    Returns ``(paths, missing)``. A named path that does not exist stays in ``paths`` (it becomes an
    unreadable row) and is also listed in ``missing``. Inside folders only files with an image
    extension count; a file named directly is always tried.
    """
    from fdalign.data.datasets import IMAGE_EXTENSIONS

    paths: dict[str, None] = {}
    missing = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                (p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                key=lambda p: p.as_posix(),
            )
            paths.update(dict.fromkeys(map(str, found)))
        else:
            paths[str(item)] = None
            if not item.exists():
                missing.append(str(item))
    return list(paths), missing


class ImageFiles(Dataset):
    """``(transform(image), index)``; an unreadable file gives a blank image and ``-1 - index``.

    The negative label travels through the batched feature pass (and DataLoader workers), so the
    caller can drop those rows afterwards instead of failing the whole run.
    """

    def __init__(self, paths: Sequence[str], transform: Callable, image_size: int):
        self.paths = list(paths)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(_open_rgb(self.paths[index])), index
        except Exception:  # any decoder failure (truncated, not an image, bomb check) is per-file
            return torch.zeros(3, self.image_size, self.image_size), -1 - index


def _open_rgb(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def unreadable_reason(path: str) -> str:
    """Why ``path`` could not be read (opened again, once, for the report)."""
    try:
        _open_rgb(path)
    except Exception as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]
    return "could not be transformed"


# ----------------------------------------------------------------------------------------------
# Prediction


def topk_probabilities(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, C]`` logits -> (probabilities ``[N, k]``, class indices ``[N, k]``), most probable first.

    Probabilities are the softmax over all ``C`` classes, so they are comparable across k.
    """
    k = min(k, logits.shape[1])
    return torch.softmax(logits.float(), dim=1).topk(k, dim=1)


@dataclass
class Predictions:
    """Per-image results; ``probs`` / ``indices`` ``[N, k]`` are rows for ``paths[ok[i]]``, ``indices``
    into ``classnames``. ``errors`` ``{path: why}`` lists the images that could not be classified;
    ``classifier`` is the model that made them."""

    paths: list[str]
    ok: list[int]
    probs: torch.Tensor
    indices: torch.Tensor
    errors: dict[str, str] = field(default_factory=dict)
    classnames: list[str] = field(default_factory=list)
    classifier: Classifier | None = field(default=None, repr=False)

    @property
    def num_unreadable(self) -> int:
        return len(self.errors)

    @property
    def labels(self) -> dict[str, str | None]:
        """``{path: its top-1 class name}`` in input order; None for an image that could not be classified."""
        top = {self.paths[j]: self.classnames[int(self.indices[r, 0])] for r, j in enumerate(self.ok)}
        return {p: top.get(p) for p in self.paths}

    def topk(self, path: str) -> list[tuple[str, float]]:
        """``[(class name, probability)]`` of ``path``, most probable first (empty if it was not classified)."""
        for r, j in enumerate(self.ok):
            if self.paths[j] == path:
                return [(self.classnames[int(c)], float(p)) for c, p in zip(self.indices[r], self.probs[r])]
        return []


def predict(
    classifier: Classifier,
    paths: Sequence[str],
    topk: int = 5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> Predictions:
    """Encode ``paths`` in batches, apply the head, keep the top-``topk`` classes of each readable image."""
    from fdalign.eval import apply_head, extract_features

    if topk < 1:
        raise FDAlignError(f"--topk must be >= 1 (got {topk})")
    ds = ImageFiles(paths, classifier.transform, classifier.image_size)
    feats, idx = extract_features(
        classifier.encoder,
        ds,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        precision=precision,
        progress=progress,
        desc="predict",
    )
    good = idx >= 0
    bad = (-1 - idx[~good]).tolist()
    errors = {paths[i]: unreadable_reason(paths[i]) for i in bad}
    k = min(topk, len(classifier.classnames))
    if good.any():
        logits = apply_head(classifier.head, feats[good])
        finite = torch.isfinite(logits).all(dim=1)  # a diverged model's NaN row has no top class and no probability
        ok = idx[good][finite.cpu()]
        for i in idx[good][~finite.cpu()].tolist():
            errors[paths[i]] = "the model's scores are NaN or inf (diverged or damaged model)"
        probs, top = topk_probabilities(logits[finite], k)
    else:
        ok = idx[good]
        probs, top = torch.empty(0, k), torch.empty(0, k, dtype=torch.int64)
    return Predictions(list(paths), ok.tolist(), probs, top, errors, list(classifier.classnames), classifier)


def predictions_csv(pred: Predictions, classnames: Sequence[str]) -> str:
    """CSV text: ``path, top1, top1_prob, ..., topk, topk_prob, error``; one row per input, in order."""
    k = pred.indices.shape[1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path"] + [c for i in range(1, k + 1) for c in (f"top{i}", f"top{i}_prob")] + ["error"])
    row_of = {pred.paths[j]: r for r, j in enumerate(pred.ok)}
    for p in pred.paths:
        if p in row_of:
            r = row_of[p]
            cells = [
                v
                for c, pr in zip(pred.indices[r].tolist(), pred.probs[r].tolist())
                for v in (classnames[c], f"{pr:.6g}")
            ]
            w.writerow([p] + cells + [""])
        else:
            w.writerow([p] + [""] * (2 * k) + [pred.errors.get(p, "unreadable")])
    return buf.getvalue()


__all__ = [
    "Classifier",
    "target_kind",
    "load_classifier",
    "collect_images",
    "ImageFiles",
    "topk_probabilities",
    "Predictions",
    "predict",
    "predictions_csv",
    "unreadable_reason",
]
