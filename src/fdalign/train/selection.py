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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

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
    """

    dataset: Dataset
    role: str
    description: str = ""

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
    def load(cls, path: str | os.PathLike) -> "SelectionLog":
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


__all__ = ["ROLES", "EvalSplit", "SelectionLeakError", "SelectionLog", "val_score", "select", "select_by"]
