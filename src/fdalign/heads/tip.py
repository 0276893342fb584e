"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022), on features from any image encoder.

With L2-normalised test features ``f`` ``[B, D]``, class prototypes ``W`` ``[C, D]`` (the zero-shot
text classifier), cache keys ``K`` ``[N, D]`` (normalised K-shot training features) and their one-hot
labels ``L`` ``[N, C]``::

    logits = s * f W^T + alpha * exp(-beta * (1 - f K^T)) L

where ``s`` is CLIP's logit scale (the zero-shot logits exactly as :class:`PrototypeHead` gives them)
or the authors' constant 100 (``HeadsConfig.logit_scale``).
``alpha = 0`` is zero-shot CLIP. Tip-Adapter is training-free; Tip-Adapter-F makes ``K`` a trainable
parameter, initialised from the cache, and trains it with cross-entropy for a few epochs (20 in the
paper). ``alpha`` and ``beta`` are chosen by a grid search on the validation split (the authors'
code searches on ImageNet's test set and picks Tip-F's epoch on test; fdalign never does): see
:func:`fit_tip`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fdalign.heads.cache import (
    DEFAULT_CHUNK,
    FitConfig,
    GridSpec,
    Memo,
    affinity,
    class_sums,
    fit_and_select_epoch,
    grid_values,
    in_chunks,
    normalize,
    search,
    top1,
)
from fdalign.selection import EvalSplit, SelectionLog


class TipAdapter(nn.Module):
    """Zero-shot logits plus Tip-Adapter's cache logits (see the module docstring).

    Args:
        prototypes: ``[C, D]`` class prototypes (normalised here).
        scale: the zero-shot logit scale ``s``.
        keys: ``[N, D]`` cache keys (normalised here; Tip-Adapter-F then trains them freely).
        labels: ``[N]`` int64 class of each key.
        alpha, beta: residual weight and affinity sharpness.
        trainable: make ``keys`` an ``nn.Parameter`` (Tip-Adapter-F).
        chunk: rows of test features per step; bounds the affinity slice to ``[chunk, N]``.
    """

    def __init__(
        self,
        prototypes,
        scale,
        keys,
        labels,
        alpha: float,
        beta: float,
        trainable: bool = False,
        chunk: int = DEFAULT_CHUNK,
    ):
        super().__init__()
        self.register_buffer("prototypes", normalize(prototypes.detach()))
        self.register_buffer("labels", labels.detach().long().clone())
        k = normalize(keys.detach()).clone()
        if trainable:
            self.keys = nn.Parameter(k)
        else:
            self.register_buffer("keys", k)
        self.scale, self.alpha, self.beta, self.chunk = float(scale), float(alpha), float(beta), int(chunk)

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw features -> ``[B, C]`` logits, ``chunk`` rows at a time."""
        return in_chunks(self._logits, features, self.chunk)

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        f = normalize(features)
        zero_shot = self.scale * f @ self.prototypes.t()
        return zero_shot + self.alpha * class_sums(affinity(f, self.keys, self.beta), self.labels, self.num_classes)

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, cache={self.keys.shape[0]}, alpha={self.alpha:g}, beta={self.beta:g}"


@dataclass
class TipConfig:
    """Search grids and Tip-Adapter-F training. The grids are the authors' ImageNet search (beta: 200
    values from 0.1 towards 7, alpha: 20 from 0.1 towards 3, upper ends excluded); 'lo:hi:n[:open]',
    'a,b,c' or a list. Tip-F trains from (``init_beta``, ``init_alpha``), as the authors do, or from
    Tip's searched point where they are None."""

    alpha: GridSpec = "0.1:3:20:open"
    beta: GridSpec = "0.1:7:200:open"
    fit: FitConfig = field(default_factory=FitConfig)
    init_alpha: float | None = None
    init_beta: float | None = None


def search_tip(
    head: TipAdapter, val: EvalSplit, cfg: TipConfig, log: SelectionLog | None, what: str, progress: bool = False
) -> TipAdapter:
    """Set ``head.alpha``/``head.beta`` to the grid point with the best val top-1 (beta-major grid order).

    The zero-shot logits and cosines to the keys are computed once; the affinities once per beta.
    """
    alphas, betas = grid_values(cfg.alpha, "tip.alpha"), grid_values(cfg.beta, "tip.beta")
    memo = Memo()

    @torch.no_grad()
    def score(c, feats, labels):
        beta, alpha = c
        dev = head.prototypes.device

        def base():
            f = normalize(feats.to(dev))
            return head.scale * f @ head.prototypes.t(), f @ head.keys.t()

        zero_shot, cos = memo.get("base", id(feats), base)
        cache = memo.get("beta", beta, lambda: class_sums(torch.exp(-beta * (1 - cos)), head.labels, head.num_classes))
        return top1(zero_shot + alpha * cache, labels)

    beta, alpha = search(what, [(b, a) for b in betas for a in alphas], score, val, log, progress)
    head.alpha, head.beta = float(alpha), float(beta)
    return head


def fit_tip(
    prototypes,
    scale,
    keys,
    labels,
    val: EvalSplit,
    cfg: TipConfig | None = None,
    log: SelectionLog | None = None,
    name: str = "Tip",
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> TipAdapter:
    """Tip-Adapter with ``alpha``, ``beta`` searched on ``val`` (an :class:`EvalSplit` of features, role val)."""
    cfg = cfg or TipConfig()
    head = TipAdapter(prototypes, scale, keys, labels, 1.0, 1.0, chunk=chunk).to(prototypes.device)
    return search_tip(head, val, cfg, log, f"{name}: beta, alpha", progress)


def fit_tip_f(
    tip: TipAdapter,
    train_features,
    train_labels,
    val: EvalSplit,
    cfg: TipConfig | None = None,
    log: SelectionLog | None = None,
    name: str = "Tip-F",
    progress: bool = False,
) -> TipAdapter:
    """Tip-Adapter-F from a fitted Tip-Adapter: train its keys, keep the best val epoch, re-search alpha/beta.

    ``train_features``: ``[N, D]`` or ``[V, N, D]`` augmented views (see :func:`fit_and_select_epoch`).

    Training starts from (``cfg.init_beta``, ``cfg.init_alpha``), each defaulting to ``tip``'s. With
    ``cfg.fit.epochs == 0`` the keys stay the cache and the search repeats Tip-Adapter's, so the
    result equals ``tip``.
    """
    cfg = cfg or TipConfig()
    alpha = tip.alpha if cfg.init_alpha is None else cfg.init_alpha
    beta = tip.beta if cfg.init_beta is None else cfg.init_beta
    head = TipAdapter(tip.prototypes, tip.scale, tip.keys, tip.labels, alpha, beta, trainable=True, chunk=tip.chunk).to(
        tip.prototypes.device
    )
    fit_and_select_epoch(f"{name}: epoch", head, [head.keys], train_features, train_labels, val, cfg.fit, log, progress)
    head.keys.requires_grad_(False)
    return search_tip(head, val, cfg, log, f"{name}: beta, alpha", progress)


__all__ = ["TipAdapter", "TipConfig", "fit_tip", "fit_tip_f", "search_tip"]
