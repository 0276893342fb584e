"""The FD-Align step on one screen: forward ``f_t`` and ``f_0`` on the same images, CE + beta * KL.

Every training protocol (K-shot fine-tuning in :mod:`fdalign.train.trainer`, N-way K-shot
episodes) calls :func:`fdalign_forward` for its loss; they differ only in the ``head`` that turns
the fine-tuned features into logits (prototype head, linear head, episode prototypes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fdalign.losses import fdalign_loss, spurious_log_probs

F0_MODES = ("eval", "released")


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


def frozen_copy(encoder: nn.Module, mode: str = "eval", dtype: torch.dtype | None = None) -> nn.Module:
    """``f_0``: an independent deep copy of ``encoder`` as it is now, without gradients.

    ``mode="eval"`` (default) runs it deterministically (BatchNorm running stats, no dropout):
    the reference distribution is then the pretrained model's own test-time answer.
    ``mode="released"`` leaves it in train mode, as the authors' code does (their f0 is a
    second module that follows ``model.train()``); see :func:`set_frozen_mode`.
    ``dtype`` (e.g. bfloat16 on a GPU) stores and runs f0 in lower precision: its features only
    feed a softmax over ~20 spurious prototypes, computed in float32.
    """
    if mode not in F0_MODES:
        raise ValueError(f"f0 mode must be one of {F0_MODES}, got {mode!r}")
    f0 = copy.deepcopy(encoder)
    f0.requires_grad_(False)
    if dtype is not None:
        f0.to(dtype)
    set_frozen_mode(f0, mode)
    return f0


def set_frozen_mode(f0: nn.Module, mode: str) -> None:
    """Put ``f_0`` in the module mode its setting documents (called at every epoch start)."""
    f0.train(mode == "released")


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
    if s.train_encoder:
        feat_t = ft(images)
    else:
        with torch.no_grad():
            feat_t = ft(images)
    logits = head(feat_t)
    if s.beta != 0 and log_p0 is None:
        # inference mode: no autograd bookkeeping at all for the frozen pass
        with torch.inference_mode():
            f0_dtype = next(f0.parameters()).dtype  # bfloat16 when f0 was stored in lower precision
            log_p0 = spurious_log_probs(f0(images.to(f0_dtype)), spurious, s.scale, s.normalize_prototypes)
        log_p0 = log_p0.clone()  # a normal tensor again, usable by autograd-recording ops
    loss, parts = fdalign_loss(
        logits, labels, feat_t, None, spurious if s.beta != 0 else None,
        alpha=s.alpha, beta=s.beta, scale=s.scale, direction=s.direction,
        normalize_prototypes=s.normalize_prototypes, log_p0=log_p0 if s.beta != 0 else None,
    )
    if s.beta != 0:
        parts["log_p0"] = log_p0.detach()
    return loss, parts


__all__ = ["F0_MODES", "LossSettings", "frozen_copy", "set_frozen_mode", "fdalign_forward"]
