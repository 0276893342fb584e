"""The training methods fdalign compares, as data: a method is a loss + which parameters learn.

Every method runs through the same loop (:mod:`fdalign.train.trainer`) and the same step
(:func:`fdalign.train.step.fdalign_forward`); a :class:`MethodSpec` only says

* the objective: cross-entropy of the class head, or CLIP's contrastive loss on (image, caption)
  pairs (FLYP);
* the regulariser and its weight (``beta`` for all of them, so one grid serves every method):
  FD-Align's spurious KL, the class-distribution KL (``logit-kd``), the feature cosine
  (``feature-kd``), the distance to the starting weights (``l2-sp``), or none;
* whether the text encoder learns, in which case the class prototypes are recomputed from it at every
  step (CLIP-LoRA) or at every epoch end (FLYP: its classifier is the fine-tuned text tower's
  zero-shot head);
* the config values the method fixes (``fine-tune``: ``beta`` 0; ``l2-sp``: no plain weight decay;
  ``linear-probe`` / ``lp-ft``: their ``mode``) and the defaults it brings (CLIP-LoRA's settings).

Definitions and sources: ``docs/methods.md``. Torch-free, like :mod:`fdalign.train.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("ce", "contrastive")
REGULARISERS = ("none", "spurious-kl", "logit-kd", "feature-kd", "l2-sp")
SPURIOUS_KINDS = ("real", "shuffled", "random")
# CLIP-LoRA trains with one prompt per data set (CoOp's); "a photo of a {}." is its generic one
CLIP_LORA_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class MethodSpec:
    """What one method changes in the shared loop.

    Attributes:
        name: the ``method`` value.
        objective: ``ce`` (class head) or ``contrastive`` (FLYP's image-caption loss).
        regulariser: one of :data:`REGULARISERS`, weighted by ``beta``.
        text_learns: the text tower is trained beside the image tower.
        prototypes_each_step: the class prototypes of the loss come from the text tower at every step
            (with gradients); otherwise from the frozen prompt features.
        prompt: the one template the text side uses for the class prototypes (None: every template).
        fixed: config values the method sets whatever the config says.
        defaults: config values a preset or ``--method`` starts from (the method's authors' settings).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    objective: str = "ce"
    regulariser: str = "none"
    text_learns: bool = False
    prototypes_each_step: bool = False
    prompt: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def needs_f0(self) -> bool:
        """Whether the frozen encoder runs beside the trained one (when ``beta != 0``)."""
        return self.regulariser in ("spurious-kl", "logit-kd", "feature-kd")


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("fd-align", regulariser="spurious-kl", summary="CE + beta * KL(P_spur(ft) || P_spur(f0))"),
        MethodSpec("fine-tune", fixed={"beta": 0.0}, summary="CE only, full fine-tuning of the image tower"),
        MethodSpec(
            "linear-probe",
            fixed={"beta": 0.0, "mode": "linear-probe"},
            summary="encoder frozen, a linear head learns with CE",
        ),
        MethodSpec(
            "lp-ft",
            regulariser="spurious-kl",
            fixed={"mode": "lp-ft"},
            summary="linear probe, then FD-Align (beta 0: plain LP-FT) from the probe's head",
        ),
        MethodSpec(
            "logit-kd",
            regulariser="logit-kd",
            summary="CE + beta * KL(P_class(ft) || P_class(f0)): LwF-style distillation toward zero-shot",
        ),
        MethodSpec("feature-kd", regulariser="feature-kd", summary="CE + beta * mean(1 - cos(ft(x), f0(x)))"),
        MethodSpec(
            "l2-sp",
            regulariser="l2-sp",
            fixed={"weight_decay": 0.0},
            summary="CE + beta * ||theta - theta0||^2 over the fine-tuned weights, no plain weight decay",
        ),
        MethodSpec(
            "flyp",
            objective="contrastive",
            text_learns=True,
            fixed={"beta": 0.0, "head": "frozen"},
            defaults={"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.1},
            summary="FLYP: both towers trained with CLIP's contrastive loss on class-name captions; "
            "the classifier is the fine-tuned text tower's zero-shot head",
        ),
        MethodSpec(
            "clip-lora",
            text_learns=True,
            prototypes_each_step=True,
            prompt=CLIP_LORA_TEMPLATE,
            fixed={"beta": 0.0, "head": "frozen"},
            defaults={
                "trainable": "lora",
                "lora_rank": 2,
                "lora_alpha": 1.0,
                "lora_dropout": 0.25,
                "lora_targets": "qkv",
                "optimizer": "adamw",
                "lr": 2e-4,
                "weight_decay": 1e-2,
                "adam_betas": [0.9, 0.999],
                "warmup_epochs": 0.0,
                "min_lr": 1e-6,
                "batch_size": 32,
                "selection": "last",
            },
            summary="CLIP-LoRA: LoRA (rank 2) on q/k/v of both towers, CE on prototypes recomputed "
            "from the adapted text tower at every step",
        ),
    )
}


def method_spec(name: str) -> MethodSpec:
    """The registry entry of ``name``; an unknown name is a one-line error listing the known ones."""
    from fdalign.errors import FDAlignError

    if name not in METHODS:
        raise FDAlignError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def clip_lora_iterations(shots: int) -> int:
    """CLIP-LoRA's schedule length: 500 x K optimiser steps (its authors' setting for every data set)."""
    return 500 * int(shots)


__all__ = [
    "CLIP_LORA_TEMPLATE",
    "METHODS",
    "MethodSpec",
    "OBJECTIVES",
    "REGULARISERS",
    "SPURIOUS_KINDS",
    "clip_lora_iterations",
    "method_spec",
]
