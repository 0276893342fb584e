"""The training step of every method: forward ``f_t`` (and ``f_0`` on the same images), objective + beta * regulariser.

FD-Align's loss is :class:`fdalign.losses.FDAlignLoss`, the module users put in their own loops: there
is one FD-Align loss in the code. The other methods (:mod:`fdalign.train.methods`) swap the
regulariser (a pure function of :mod:`fdalign.losses`) or the objective (FLYP's contrastive loss);
they go through this same function, so no method has a loop of its own.

Every training protocol (K-shot fine-tuning in :mod:`fdalign.train.trainer`, N-way K-shot
episodes) calls :func:`fdalign_forward` for its loss; they differ only in the ``head`` that turns
the fine-tuned features into logits (prototype head, linear head, episode prototypes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fdalign.losses import (
    F0_MODES,
    FDAlignLoss,
    classification_loss,
    clip_contrastive,
    feature_kd,
    frozen_copy,
    l2_sp,
    logit_kd,
    set_frozen_mode,
)


@dataclass(frozen=True)
class LossSettings:
    """What the step needs to know about the objective ``alpha * CE + beta * KL``.

    Attributes:
        alpha, beta: loss weights; ``beta == 0`` never runs ``f_0``.
        scale: temperature of the spurious softmax (CLIP's logit scale).
        direction: ``"paper"`` or ``"released"`` (see :func:`fdalign.losses.spurious_kl`).
        normalize_prototypes: L2-normalise the spurious prototypes before the cosine.
        train_encoder: False runs ``f_t`` without gradients (linear-probe phase).
        regulariser: what ``beta`` weighs (:data:`fdalign.train.methods.REGULARISERS`); for
            ``logit-kd`` the ``spurious`` argument of :func:`fdalign_forward` holds the class prototypes.
        objective: ``ce`` on ``head``'s logits, or ``contrastive`` (FLYP) on (image, caption) pairs.
    """

    alpha: float = 1.0
    beta: float = 0.0
    scale: float = 100.0
    direction: str = "paper"
    normalize_prototypes: bool = True
    train_encoder: bool = True
    regulariser: str = "spurious-kl"
    objective: str = "ce"


@dataclass
class TextSide:
    """The text tower being trained (FLYP, CLIP-LoRA) and the prompts the step feeds it.

    Attributes:
        tower: token ids ``[N, L]`` -> raw text features ``[N, D]``, with gradients.
        class_tokens: ``[C, T, L]`` token ids of every class's prompt under each of ``T`` templates.
        generator: draws which template captions each image (FLYP); seeded by the trainer.
    """

    tower: nn.Module
    class_tokens: torch.Tensor
    generator: torch.Generator | None = None

    def prototypes(self) -> torch.Tensor:
        """``[C, D]`` class prototypes from the tower as it is now: the renormalised mean over templates of the
        normalised prompt features (as :func:`fdalign.prototypes.class_prototypes`), with gradients."""
        c, t, length = self.class_tokens.shape
        feats = F.normalize(self.tower(self.class_tokens.reshape(c * t, length)).float(), dim=-1)
        return F.normalize(feats.reshape(c, t, -1).mean(dim=1), dim=-1)

    def captions(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids: image ``b``'s caption is its own class ``labels[b]`` under a template drawn
        from ``generator``."""
        t = self.class_tokens.shape[1]
        j = torch.randint(t, (labels.shape[0],), generator=self.generator).to(labels.device)
        return self.class_tokens[labels, j]


@dataclass
class StepExtras:
    """What methods other than FD-Align need beside the images: the text side (FLYP, CLIP-LoRA) and,
    for L2-SP, the trained parameters with their values before the first step."""

    text: TextSide | None = None
    params: list[torch.Tensor] | None = None
    start: list[torch.Tensor] | None = None


def fdalign_forward(
    ft: nn.Module,
    f0: nn.Module | None,
    head: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    spurious: torch.Tensor | None,
    s: LossSettings,
    log_p0: torch.Tensor | None = None,
    extras: StepExtras | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass and its loss, for every method (the caller owns autocast, backward and the optimiser).

    Args:
        ft: encoder being trained, ``[B,3,H,W] -> [B,D]``.
        f0: its frozen copy (None when ``s.beta == 0`` or ``log_p0`` is given); sees the *same*
            augmented ``images``.
        head: ``[B,D] -> [B',C]`` logits (``B' = B`` for K-shot; the queries of an episode).
        labels: ``[B']`` class indices for ``head``'s logits.
        spurious: ``[K,D]`` (SPC-corrected) spurious prototypes.
        log_p0: ``[B,K]`` f0's spurious log-probabilities on these images, read from the f0 cache;
            then f0 is not run.
        extras: see :class:`StepExtras` (FLYP and CLIP-LoRA need ``text``, L2-SP ``params`` / ``start``).

    Returns:
        ``(loss, parts)``: ``parts`` has ``"ce"`` (the objective: CE, or FLYP's contrastive loss) and
        ``"kl"`` (the regulariser's unweighted value, whatever it is) as in
        :func:`fdalign.losses.fdalign_loss`, and ``"log_p0"`` ``[B,K]`` (float32, for the cache)
        whenever a KL term was computed.
    """
    if s.regulariser != "spurious-kl" or s.objective != "ce":
        return _method_forward(ft, f0, head, images, labels, spurious, s, log_p0, extras or StepExtras())
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


def _method_forward(ft, f0, head, images, labels, reference, s: LossSettings, log_p0, extras: StepExtras):
    """The methods beside FD-Align: the objective, then ``beta`` times the regulariser."""
    with torch.set_grad_enabled(s.train_encoder and torch.is_grad_enabled()):
        feat_t = ft(images)
    if s.objective == "contrastive":
        if extras.text is None:
            raise ValueError("the contrastive objective (FLYP) needs extras.text")
        main = clip_contrastive(feat_t, extras.text.tower(extras.text.captions(labels)), s.scale)
    else:
        logits = head(feat_t)
        main = classification_loss(logits, labels)
    total = main if s.alpha == 1 else s.alpha * main
    parts = {"ce": main}
    if s.beta == 0 or s.regulariser == "none":
        parts["kl"] = torch.zeros((), device=main.device, dtype=main.dtype)
        return total, parts
    if s.regulariser == "logit-kd":
        loss_fn = FDAlignLoss(reference, f0=f0, scale=s.scale, normalize_prototypes=s.normalize_prototypes)
        if log_p0 is None:
            log_p0 = loss_fn.f0_log_probs(images)  # f0's class log-probabilities on the same images
        reg = logit_kd(logits, log_p0)
        parts["log_p0"] = log_p0.detach()
    elif s.regulariser == "feature-kd":
        with torch.inference_mode():
            feat_0 = f0(images.to(next(f0.parameters()).dtype))
        reg = feature_kd(feat_t, feat_0.clone())
    elif s.regulariser == "l2-sp":
        reg = l2_sp(extras.params or [], extras.start or [])
    else:
        raise ValueError(f"unknown regulariser {s.regulariser!r}")
    parts["kl"] = reg
    return total + s.beta * reg, parts


__all__ = [
    "F0_MODES",
    "LossSettings",
    "StepExtras",
    "TextSide",
    "frozen_copy",
    "set_frozen_mode",
    "fdalign_forward",
]
