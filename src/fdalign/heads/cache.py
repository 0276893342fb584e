"""What the cache-model heads (Tip-Adapter, APE) share: affinities, class sums, streaming, grids,
the search through :mod:`fdalign.selection`, and the small training loop of their trained variants.

A cache model keeps the K-shot training features as *keys* ``[N, D]`` and their labels as *values*
(one-hot ``[N, C]``). A test feature ``f`` scores class ``c`` by the affinities to the keys of class
``c``: ``(A L)[:, c] = sum_{j: y_j = c} A[:, j]``. The one-hot product is done with ``index_add``
(``O(B N)``, not ``O(B N C)``), and a batch of test features is cut into row chunks so that only a
``[chunk, N]`` slice of the affinity matrix ever exists (16-shot ImageNet: N = 16,000).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from fdalign.errors import FDAlignError
from fdalign.selection import EvalSplit, SelectionLog, select, select_by, val_score

DEFAULT_CHUNK = 1024


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of ``[..., D]`` in float32."""
    return F.normalize(x.float(), dim=-1)


def affinity(features: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
    """Tip-Adapter's ``exp(-beta (1 - f k^T))``: ``[B, D], [N, D] -> [B, N]``.

    Both inputs are used as given; with L2-normalised rows ``f k^T`` is the cosine.
    """
    return torch.exp(-beta * (1.0 - features @ keys.t()))


def class_sums(a: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``a @ one_hot(labels)``: ``[B, N], [N] -> [B, C]``, summing each class's columns (differentiable)."""
    return a.new_zeros(a.shape[0], num_classes).index_add(1, labels, a)


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``fn`` over row chunks of ``x`` ``[B, ...]``, concatenated: bounds the ``[chunk, N]`` intermediates."""
    if x.shape[0] <= chunk:
        return fn(x)
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 in percent of ``[V, C]`` logits, on their device (a search scores thousands of candidates;
    copying each to the CPU would dominate). ``argmax`` returns the first maximum, so ties go to the
    lower class index exactly as in :func:`fdalign.eval.metrics.topk_accuracy`."""
    if logits.shape[0] == 0:
        return float("nan")
    right = (logits.argmax(1) == labels.to(logits.device)) & torch.isfinite(logits).all(1)  # a NaN row is wrong
    return 100.0 * right.double().mean().item()


# ------------------------------------------------------------------------------------------------
# grids


GridSpec = str | Sequence[float]


def grid_values(spec: GridSpec, field: str = "grid") -> tuple[float, ...]:
    """``"lo:hi:n"`` (n evenly spaced values, both ends included), ``"lo:hi:n:open"`` (``lo + (hi - lo) i / n``
    for i < n: ``hi`` excluded, the Tip-Adapter / APE authors' search grids), ``"a,b,c"`` or a list of numbers."""
    try:
        if isinstance(spec, str) and ":" in spec:
            lo, hi, n, *kind = spec.split(":")
            lo, hi, n = float(lo), float(hi), int(n)
            if n < 1 or kind not in ([], ["open"]):
                raise ValueError
            steps = n if kind else max(n - 1, 1)
            return tuple(round(lo + (hi - lo) * i / steps, 6) for i in range(n))
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise FDAlignError(
            f"heads config field '{field}' is {spec!r}; write 'lo:hi:n' (n values from lo to hi), 'lo:hi:n:open' "
            "(n values from lo, hi excluded), "
            "'a,b,c' or a YAML list of numbers"
        ) from None
    if not values or any(not math.isfinite(v) for v in values):
        raise FDAlignError(f"heads config field '{field}' is {spec!r}; it needs at least one finite number")
    return values


# ------------------------------------------------------------------------------------------------
# validation features and searches


def feature_split(features: torch.Tensor, labels: torch.Tensor, role: str, description: str) -> EvalSplit:
    """Encoded features ``[V, D]`` + labels ``[V]`` as an :class:`EvalSplit`; only role ``"val"`` can drive a search."""
    return EvalSplit(TensorDataset(features, labels), role, description)


class Memo:
    """Remembers the latest value per slot: searches visit candidates grouped by their costly part
    (e.g. all alphas of one beta), so one cached entry per slot avoids recomputing ``[V, N]`` matrices."""

    def __init__(self):
        self._slots: dict[str, tuple[Hashable, object]] = {}

    def get(self, slot: str, key: Hashable, make: Callable[[], object]):
        hit = self._slots.get(slot)
        if hit is None or hit[0] != key:
            hit = (key, make())
            self._slots[slot] = hit
        return hit[1]


def search(
    what: str,
    candidates: Iterable[tuple],
    score_fn: Callable[[tuple, torch.Tensor, torch.Tensor], float],
    split: EvalSplit,
    log: SelectionLog | None,
    progress: bool = False,
) -> tuple:
    """Grid search through :func:`fdalign.selection.select_by` (refuses any split but val).

    ``score_fn(candidate, val_features, val_labels)`` gives top-1; ties go to the first candidate in
    grid order, so the search is deterministic.
    """
    from tqdm.auto import tqdm

    candidates = list(candidates)
    bar = tqdm(total=len(candidates), desc=what, disable=not progress, leave=False)

    def score(c, ds):
        f, y = ds.tensors
        bar.update()
        return score_fn(c, f, y)

    try:
        chosen, scores = select_by(what, candidates, score, split, log)
    finally:
        bar.close()
    if log is not None:
        names = what.split(": ", 1)[-1].split(", ")
        log.entries[what]["grid_edges"] = grid_edges(chosen, candidates, names, scores)
        log.entries[what]["flat"] = len(candidates) > 1 and len(set(scores.values())) == 1
    return chosen


def grid_edges(chosen: tuple, candidates: list[tuple], names: list[str], scores: dict | None = None) -> list[str]:
    """Axes whose chosen value is the lowest or highest of the grid, e.g. ``["alpha (highest)"]``:
    the best value may lie outside the grid, which is then worth widening.

    With ``scores`` (candidate -> val score), an axis counts only when every candidate tied with the
    best sits at that same end: a point that merely won a tie with inner points says nothing about
    what lies beyond the grid."""
    winners = [chosen] if scores is None else [c for c in candidates if scores[c] == scores[chosen]]
    out = []
    for i, name in enumerate(names):
        values = {c[i] for c in candidates}
        lo, hi = min(values), max(values)
        if len(values) > 1 and chosen[i] in (lo, hi) and all(w[i] == chosen[i] for w in winners):
            out.append(f"{name} ({'lowest' if chosen[i] == lo else 'highest'})")
    return out


# ------------------------------------------------------------------------------------------------
# training the cache heads' parameters (Tip-Adapter-F keys, APE-T residuals)


@dataclass
class FitConfig:
    """The few-epoch training of Tip-Adapter-F / APE-T (AdamW + cosine, as in both papers)."""

    epochs: int = 20
    lr: float = 1e-3
    eps: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 256
    seed: int = 0


def fit_and_select_epoch(
    what: str,
    head: nn.Module,
    params: list[nn.Parameter],
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val: EvalSplit,
    cfg: FitConfig,
    log: SelectionLog | None,
    progress: bool = False,
) -> nn.Module:
    """Train ``params`` of ``head`` with cross-entropy; keep the best val epoch.

    ``train_features`` is ``[N, D]``, or ``[V, N, D]``: V encoded (augmented) views of the same
    images, epoch ``e`` reading view ``(e - 1) mod V``, as the papers draw a fresh augmentation of
    the K-shot images every epoch. After every epoch the head is scored on ``val`` (through
    :func:`val_score`) and the epoch is chosen with :func:`select`; a split that is not val raises
    before any training. Shuffling uses a generator seeded with ``cfg.seed``: the same inputs give
    the same weights. With ``cfg.epochs == 0`` the head is returned unchanged and nothing is logged.
    """
    from tqdm.auto import tqdm

    if cfg.epochs <= 0:
        return head
    val_score(val, lambda ds: 0.0)  # refuse a non-val split before spending any time
    views = train_features if train_features.ndim == 3 else train_features[None]
    n = views.shape[1]
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = params[0].device
    y = train_labels.to(device)
    scores, best, best_state = {}, None, None
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=what, disable=not progress, leave=False):
        head.train()
        x = views[(epoch - 1) % len(views)].to(device)
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            idx = idx.to(device)
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            scores[epoch] = val_score(val, lambda ds: top1(head(ds.tensors[0].to(device)), ds.tensors[1]))
        if best is None or scores[epoch] > best:  # the same rule as select(): first maximum wins
            best, best_state = scores[epoch], copy.deepcopy(head.state_dict())
    chosen = select(what, scores, val, log)
    assert scores[chosen] == best
    head.load_state_dict(best_state)
    return head


__all__ = [
    "DEFAULT_CHUNK",
    "FitConfig",
    "GridSpec",
    "Memo",
    "affinity",
    "class_sums",
    "feature_split",
    "fit_and_select_epoch",
    "grid_edges",
    "grid_values",
    "in_chunks",
    "normalize",
    "search",
    "top1",
]
