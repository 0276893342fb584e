"""Model selection that cannot see the test set.

Everything fdalign picks from data (the epoch to keep, the WiSE-FT mixing weight, ...) is scored
through :func:`val_score` and chosen through :func:`select`. Both accept only an :class:`EvalSplit`
whose ``role`` is ``"val"``; a test or OOD split raises, so a selection leak is a crash rather
than an optimistic number. Each choice is written to ``selection.json`` with what it was made on.

The val split is the K-shot sample of ``val/`` (``min(K, 4)`` per class) or, without a ``val``
split, images held out from the training ranking (:func:`fdalign.data.fewshot_val`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

ROLES = ("train", "val", "test", "ood")


class SelectionLeakError(ValueError):
    """A non-validation split was passed where a selection is made: a programming error."""


@dataclass
class EvalSplit:
    """A dataset with the role it plays in the experiment.

    Attributes:
        dataset: yields ``(image, label)``.
        role: one of :data:`ROLES`; only ``"val"`` may drive a selection.
        description: how it was made, recorded in ``selection.json`` (e.g. "val (4-shot of val/, 40 images)").
        files: paths of the images behind ``dataset``; :func:`check_disjoint` compares their bytes
            with the test and OOD sets'.
    """

    dataset: Dataset
    role: str
    description: str = ""
    files: list[str] | None = None  # the image files behind ``dataset``, for :func:`check_disjoint`

    def scored_files(self) -> list[str] | None:
        """The image files selection really scores: read from ``dataset`` itself when it knows them (an
        :class:`~fdalign.data.ImageDataset`: ``dataset.split``), so that a list built beside it cannot
        vouch for other images; else ``files``."""
        split = getattr(self.dataset, "split", None)
        if split is not None and hasattr(split, "samples") and hasattr(split, "resolve"):
            return [str(split.resolve(s)) for s in split.samples]
        return None if self.files is None else [str(f) for f in self.files]

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not self.description:
            self.description = f"{self.role} ({len(self.dataset)} images)"


def _require_val(split: EvalSplit) -> None:
    if not isinstance(split, EvalSplit):
        raise SelectionLeakError(
            f"model selection needs an EvalSplit with role 'val', got {type(split).__name__}; wrap the "
            "validation set as EvalSplit(dataset, role='val')"
        )
    if split.role != "val":
        raise SelectionLeakError(
            f"refusing to select on a split with role {split.role!r} ({split.description}): choices may "
            "only be made on the validation split, never on test or OOD data"
        )


def check_disjoint(val: EvalSplit, others: Mapping[str, Iterable[str | os.PathLike]], shown: int = 5) -> int:
    """Refuse a val split that shares an image (by content) with a test or OOD set.

    A role label is not proof that the val images are not test images: a copied file, a val folder
    filled from the test set, or ImageNet's val/ used for both. Hashing every test image would be
    slow on ImageNet (50,000 files), so only test files whose *size* equals some val file's size
    are hashed; the val split is small.

    Args:
        val: the split selection will run on; its files are :meth:`EvalSplit.scored_files`.
        others: set name -> its image paths (the ID test set, each OOD set).

    Returns:
        the number of files that were hashed (for tests and logs).

    Raises:
        FDAlignError: naming the overlapping files and the fix.
    """
    from fdalign.data.hashing import file_sha256
    from fdalign.errors import FDAlignError

    files = val.scored_files()
    if files is None:
        raise ValueError("check_disjoint needs the val split's files (an ImageDataset, or EvalSplit.files)")
    by_size: dict[int, list[str]] = {}
    for f in files:
        by_size.setdefault(os.path.getsize(f), []).append(str(f))
    digests: dict[str, str] = {}

    def digest(path: str) -> str:
        if path not in digests:
            digests[path] = file_sha256(path)
        return digests[path]

    overlaps: list[tuple[str, str, str]] = []
    for name, paths in others.items():
        for p in paths:
            p = str(p)
            same_size = by_size.get(os.path.getsize(p), ())
            overlaps += [(v, name, p) for v in same_size if digest(v) == digest(p)]
    if overlaps:
        listed = "; ".join(f"{v} = {name} image {p}" for v, name, p in overlaps[:shown])
        more = f" (and {len(overlaps) - shown} more)" if len(overlaps) > shown else ""
        raise FDAlignError(
            f"the validation split ({val.description}) shares {len(overlaps)} image(s) with sets that are "
            f"reported: {listed}{more}. Model selection must never see a reported image: remove these "
            "files from the val data, or drop that set from the evaluation"
        )
    return len(digests)


def val_score(split: EvalSplit, score_fn: Callable[[Dataset], float]) -> float:
    """``score_fn(split.dataset)``, only for a val split (e.g. top-1 of the current weights)."""
    _require_val(split)
    return float(score_fn(split.dataset))


@dataclass
class SelectionLog:
    """What was chosen on what; saved as ``selection.json``."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.entries)

    def save(self, path: str | os.PathLike) -> Path:
        from fdalign.io import atomic_write_json

        atomic_write_json(Path(path), self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SelectionLog:
        p = Path(path)
        return cls(json.loads(p.read_text(encoding="utf-8"))) if p.is_file() else cls()


def select(
    what: str,
    scores: Mapping[Hashable, float],
    split: EvalSplit,
    log: SelectionLog | None = None,
    metric: str = "top1",
) -> Hashable:
    """Pick the candidate with the highest val score; ties go to the first in ``scores``' order.

    Args:
        what: name of the choice ("epoch", "wiseft_alpha"), the key in ``selection.json``.
        scores: candidate -> score, computed on ``split`` (via :func:`val_score`).
        split: the val split the scores come from; any other role raises.
        log: where to record the choice.
    """
    _require_val(split)
    if not scores:
        raise ValueError(f"no candidates to select {what} from")
    best_key, best = None, None
    for k, v in scores.items():
        if best is None or v > best:
            best_key, best = k, v
    if log is not None:
        log.entries[what] = {
            "chosen": best_key,
            "on": split.description,
            "metric": metric,
            "score": best,
            "scores": {str(k): v for k, v in scores.items()},
        }
    return best_key


def select_by(
    what: str,
    candidates: Iterable[Hashable],
    score_fn: Callable[[Hashable, Dataset], float],
    split: EvalSplit,
    log: SelectionLog | None = None,
    metric: str = "top1",
) -> tuple[Hashable, dict[Hashable, float]]:
    """Score every candidate on ``split`` with ``score_fn(candidate, dataset)`` and :func:`select`."""
    _require_val(split)
    scores = {c: val_score(split, lambda ds, c=c: score_fn(c, ds)) for c in candidates}
    return select(what, scores, split, log, metric), scores


def starting_point_notes(log: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What a run's report must say when its selection returned where training started.

    ``log``: ``selection.json``'s entries. WiSE-FT alpha 0 means the "selected" model is zero-shot
    CLIP; a val score that is the same for every candidate means the choice was a tie, which went to
    the first candidate (epoch 1, alpha 0), so val could not tell the candidates apart."""

    def flat(e) -> bool:
        scores = list((e.get("scores") or {}).values())
        return len(scores) > 1 and len(set(scores)) == 1

    notes = []
    ep = log.get("epoch") or {}
    if ep and flat(ep):
        notes.append(
            f"every epoch scored the same on {ep.get('on', 'val')} ({ep['score']:.2f}): epoch "
            f"{ep['chosen']} won a tie, so val could not tell the epochs apart"
        )
    wa = log.get("wiseft_alpha") or {}
    if wa and wa.get("chosen") is not None and float(wa["chosen"]) == 0.0:
        tie = " (every alpha scored the same on val: a tie, which goes to the first)" if flat(wa) else ""
        notes.append(
            f"val chose WiSE-FT alpha 0{tie}: the selected model is zero-shot CLIP, the starting point, "
            "and keeps none of the fine-tuning; the fine-tuned row shows what training gave"
        )
    return notes


__all__ = [
    "ROLES",
    "EvalSplit",
    "check_disjoint",
    "SelectionLeakError",
    "SelectionLog",
    "val_score",
    "select",
    "select_by",
    "starting_point_notes",
]
