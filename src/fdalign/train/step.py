"""The FD-Align step on one screen: forward ``f_t`` and ``f_0`` on the same images, CE + beta * KL.

The loss is :class:`fdalign.losses.FDAlignLoss`, the module users put in their own loops: there
is one FD-Align loss in the code.

Every training protocol (K-shot fine-tuning in :mod:`fdalign.train.trainer`, N-way K-shot
episodes) calls :func:`fdalign_forward` for its loss; they differ only in the ``head`` that turns
the fine-tuned features into logits (prototype head, linear head, episode prototypes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fdalign.losses import F0_MODES, FDAlignLoss, frozen_copy, set_frozen_mode


@dataclass(frozen=True)
class LossSettings:
    """What the step needs to know about the objective ``alpha * CE + beta * KL``.

    Attributes:
        alpha, beta: loss weights; ``beta == 0`` never runs ``f_0``.
        scale: temperature of the spurious softmax (CLIP's logit scale).
        direction: ``"paper"`` or ``"released"`` (see :func:`fdalign.losses.spurious_kl`).
        normalize_prototypes: L2-normalise the spurious prototypes before the cosine.
        train_encoder: False runs ``f_t`` without gradients (linear-probe phase).
    """

    alpha: float = 1.0
    beta: float = 0.0
    scale: float = 100.0
    direction: str = "paper"
    normalize_prototypes: bool = True
    train_encoder: bool = True


def fdalign_forward(
    ft: nn.Module,
    f0: nn.Module | None,
    head: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    spurious: torch.Tensor | None,
    s: LossSettings,
    log_p0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One FD-Align forward pass and its loss (the caller owns autocast, backward and the optimiser).

    Args:
        ft: encoder being trained, ``[B,3,H,W] -> [B,D]``.
        f0: its frozen copy (None when ``s.beta == 0`` or ``log_p0`` is given); sees the *same*
            augmented ``images``.
        head: ``[B,D] -> [B',C]`` logits (``B' = B`` for K-shot; the queries of an episode).
        labels: ``[B']`` class indices for ``head``'s logits.
        spurious: ``[K,D]`` (SPC-corrected) spurious prototypes.
        log_p0: ``[B,K]`` f0's spurious log-probabilities on these images, read from the f0 cache;
            then f0 is not run.

    Returns:
        ``(loss, parts)``: ``parts`` has ``"ce"`` and ``"kl"`` as in
        :func:`fdalign.losses.fdalign_loss`, and ``"log_p0"`` ``[B,K]`` (float32, for the cache)
        whenever the KL term was computed.
    """
    loss_fn = FDAlignLoss(
        spurious,
        f0=f0,
        alpha=s.alpha,
        beta=s.beta,
        scale=s.scale,
        kl_direction=s.direction,
        normalize_prototypes=s.normalize_prototypes,
    )
    if s.train_encoder:
        feat_t = ft(images)
    else:
        with torch.no_grad():
            feat_t = ft(images)
    if s.beta != 0 and log_p0 is None:
        log_p0 = loss_fn.f0_log_probs(images)  # f0 sees the same augmented images as ft
    return loss_fn(feat_t, labels, logits=head(feat_t), log_p0=log_p0)


__all__ = ["F0_MODES", "LossSettings", "frozen_copy", "set_frozen_mode", "fdalign_forward"]
