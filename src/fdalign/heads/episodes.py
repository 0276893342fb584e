"""Heads for N-way K-shot episodes, batched over many episodes at once.

Shapes: ``E`` episodes, ``N`` ways, ``K`` shots, ``Q`` queries per way, ``D`` feature size.
Support features arrive as ``[E, N*K, D]`` in class-major order (way 0's K shots first), queries
as ``[E, M, D]`` (any ``M``); every head returns logits ``[E, M, N]``.

* **proto** (ProtoNet with cosine): the prototype of a way is the renormalised mean of its
  L2-normalised support features; logits are ``scale * cos(query, prototype)``. The scale is fixed
  or learned (:class:`ProtoNetHead`, initialised at 10 as in the authors' meta setting).
* **text**: zero-shot CLIP on the episode's classes: ``scale * cos(query, text prototype)`` with
  the class prototypes of :func:`fdalign.prototypes.build_prototypes` gathered per episode.
* **combined**: the two as a product of experts, ``(1 - w) log_softmax(proto) + w log_softmax(text)``.
  Adding log-probabilities rather than logits keeps the mix independent of the two heads'
  very different scales (support-to-query cosines are ~0.8, image-to-text ~0.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fdalign.data.episode_spec import EPISODE_HEADS, PROTO_SCALE_INIT  # torch-free, for the CLI; re-exported


def _unit(x: torch.Tensor, unit: bool) -> torch.Tensor:
    # ``unit``: the caller normalised the features once for all episodes (evaluation); skip the copy
    return x if unit else F.normalize(x.float(), dim=-1)


def support_prototypes(support: torch.Tensor, n_way: int, unit: bool = False) -> torch.Tensor:
    """``[E, N*K, D]`` class-major support features -> ``[E, N, D]`` unit-norm prototypes."""
    e, nk, d = support.shape
    if nk % n_way:
        raise ValueError(f"{nk} support features do not split into {n_way} ways")
    per_way = _unit(support, unit).reshape(e, n_way, nk // n_way, d)
    return F.normalize(per_way.mean(dim=2), dim=-1)


def cosine_to(
    query: torch.Tensor, prototypes: torch.Tensor, scale: torch.Tensor | float, unit: bool = False
) -> torch.Tensor:
    """``scale * cos``: ``[E, M, D]`` queries, ``[E, N, D]`` prototypes -> ``[E, M, N]`` logits.

    ``unit=True``: both inputs are already L2-normalised.
    """
    return scale * torch.bmm(_unit(query, unit), _unit(prototypes, unit).transpose(1, 2))


def proto_logits(
    support: torch.Tensor, query: torch.Tensor, n_way: int, scale: torch.Tensor | float, unit: bool = False
) -> torch.Tensor:
    """ProtoNet logits ``[E, M, N]`` from support ``[E, N*K, D]`` and queries ``[E, M, D]``."""
    return cosine_to(query, support_prototypes(support, n_way, unit), scale, unit)


def text_logits(
    query: torch.Tensor, class_prototypes: torch.Tensor, classes: torch.Tensor, scale: float, unit: bool = False
) -> torch.Tensor:
    """Zero-shot logits ``[E, M, N]``: queries ``[E, M, D]``, text prototypes ``[C, D]``, ``classes [E, N]``."""
    return cosine_to(query, class_prototypes[classes], scale, unit)


def combined_log_probs(proto: torch.Tensor, text: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """``(1 - weight) * log_softmax(proto) + weight * log_softmax(text)``, ``[E, M, N]`` (argmax = prediction)."""
    return (1.0 - weight) * F.log_softmax(proto, dim=-1) + weight * F.log_softmax(text, dim=-1)


class ProtoNetHead(nn.Module):
    """:func:`proto_logits` with a fixed or learned scale (``log``-parametrised so it stays positive)."""

    def __init__(self, scale: float = PROTO_SCALE_INIT, learn_scale: bool = True):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def forward(self, support: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
        return proto_logits(support, query, n_way, self.log_scale.exp())


def episode_logits(
    head: str,
    support: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    *,
    proto_scale: float = PROTO_SCALE_INIT,
    class_prototypes: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
    text_scale: float = 100.0,
    weight: float = 0.5,
    unit: bool = False,
) -> torch.Tensor:
    """Scores ``[E, M, N]`` of ``head`` (one of :data:`EPISODE_HEADS`); the argmax is the prediction.

    ``unit=True``: features and ``class_prototypes`` are already L2-normalised.
    """
    if head == "proto":
        return proto_logits(support, query, n_way, proto_scale, unit)
    if class_prototypes is None or classes is None:
        raise ValueError(f"the {head} head needs class_prototypes and classes")
    text = text_logits(query, class_prototypes, classes, text_scale, unit)
    if head == "text":
        return text
    if head == "combined":
        return combined_log_probs(proto_logits(support, query, n_way, proto_scale, unit), text, weight)
    raise ValueError(f"unknown episode head {head!r}; choose from {EPISODE_HEADS}")


__all__ = [
    "EPISODE_HEADS",
    "PROTO_SCALE_INIT",
    "ProtoNetHead",
    "combined_log_probs",
    "cosine_to",
    "episode_logits",
    "proto_logits",
    "support_prototypes",
    "text_logits",
]
