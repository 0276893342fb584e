"""Accuracy and the bookkeeping for evaluating on a subset of the classes (ImageNet-A / -R)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of the true class in each row: ``[N, C], [N] -> [N]`` int64.

    Ties go to the lower class index, as :func:`torch.argmax` does, so the result is deterministic
    (``torch.topk`` leaves tie order unspecified): a true class tied with a lower-index class ranks
    after it, tied with a higher-index class ranks before it. A row holding NaN or inf ranks ``C``, i.e.
    wrong at every k: comparisons with NaN are all false, which would otherwise make it rank 0 (correct).
    """
    labels = labels.to(logits.device).long()
    true = logits.gather(1, labels.view(-1, 1))  # [N, 1]
    idx = torch.arange(logits.shape[1], device=logits.device).view(1, -1)
    ahead = (logits > true) | ((logits == true) & (idx < labels.view(-1, 1)))
    rank = ahead.sum(dim=1)
    return torch.where(torch.isfinite(logits).all(dim=1), rank, torch.full_like(rank, logits.shape[1]))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each ``k`` in ``ks``.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` int64 class indices in ``[0, C)``.
        ks: the k values; each is clipped to ``C`` (top-5 of a 3-class problem is top-3, i.e. 100%).

    Ties are broken toward the lower class index, and a row with NaN or inf counts as wrong (see
    :func:`true_class_rank`).

    Returns:
        ``{k: accuracy}`` keyed by the *requested* k, in percent. An empty input gives ``nan``.
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits [N,C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    n, c = logits.shape
    if n == 0:
        return {k: float("nan") for k in ks}
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
    # chunked so that N x C comparisons stay small for ImageNet-sized test sets
    rank = torch.cat([true_class_rank(logits[i : i + 4096], labels[i : i + 4096]) for i in range(0, n, 4096)])
    return {k: 100.0 * (rank < min(k, c)).float().mean().item() for k in ks}


def restrict_logits(logits: torch.Tensor, class_subset: Sequence[int] | None) -> torch.Tensor:
    """Keep only the columns of ``class_subset``: ``[N, C] -> [N, len(class_subset)]``.

    Evaluating a 200-class subset of a 1000-class head (ImageNet-A/-R) must not let the 800
    absent classes win. ``None`` returns the logits unchanged.
    """
    if class_subset is None:
        return logits
    idx = torch.as_tensor(list(class_subset), dtype=torch.long, device=logits.device)
    return logits.index_select(1, idx)


def remap_labels(labels: torch.Tensor, class_subset: Sequence[int] | None) -> torch.Tensor:
    """Map ID-class labels to positions in ``class_subset`` (the column order of :func:`restrict_logits`).

    Raises:
        ValueError: a label is not in the subset.
    """
    if class_subset is None:
        return labels
    subset = list(class_subset)
    lut = torch.full((max(subset) + 1,), -1, dtype=torch.long)
    lut[torch.as_tensor(subset, dtype=torch.long)] = torch.arange(len(subset))
    labels = labels.long().cpu()
    if labels.numel() and (labels.max() >= lut.numel() or (lut[labels] < 0).any()):
        bad = sorted(set(labels.tolist()) - set(subset))
        raise ValueError(f"labels {bad[:5]} are not in the class subset")
    return lut[labels]


def subset_accuracy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_subset: Sequence[int] | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """:func:`topk_accuracy` with logits restricted to ``class_subset`` and labels remapped to match.

    ``labels`` are indices into the full ``C`` classes (as :func:`fdalign.data.map_ood_to_id` gives).
    """
    return topk_accuracy(restrict_logits(logits, class_subset), remap_labels(labels, class_subset), ks)


def class_coverage(
    num_classes: int,
    class_subset: Sequence[int] | None,
    declared: bool = False,
    missing: Sequence[str] = (),
) -> dict:
    """What metrics.json / report.md record about a set's classes.

    ``{"classes": classes scored, "of": ID classes, "restricted": whether the logits were cut to
    them, "declared_subset": whether the user (or a known benchmark name) said so, "missing": the
    first 20 absent ID classes, "num_missing"}``.
    """
    n = num_classes if class_subset is None else len(class_subset)
    return {
        "classes": n,
        "of": num_classes,
        "restricted": class_subset is not None,
        "declared_subset": bool(declared),
        "missing": list(missing)[:20],
        "num_missing": num_classes - n,
    }


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (n-1; 0 for a single value) of e.g. accuracies over seeds."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
