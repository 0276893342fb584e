"""Classification heads on top of CLIP image features.

One head covers both settings FD-Align is run in:

* **frozen** (the paper): logits are ``scale * cos(f, P_c)`` against the zero-shot class
  prototypes; the head has no parameters, only the encoder learns.
* **trainable** (the authors' released code): a linear layer whose weight starts at the
  normalised prototypes times ``scale`` and whose bias starts at zero. Input features are still
  L2-normalised, but the weight rows are *not* renormalised after updates, so the head is free to
  change both directions and norms. At initialisation it computes exactly the frozen logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("frozen", "trainable")


class PrototypeHead(nn.Module):
    """Cosine classifier initialised from class prototypes.

    Args:
        prototypes: ``[C, D]`` class prototypes (normalised here).
        scale: logit scale, e.g. CLIP's ``logit_scale`` (100 for OpenAI CLIP).
        trainable: learn ``weight`` ``[C, D]`` and ``bias`` ``[C]`` (see the module docstring).
    """

    def __init__(self, prototypes: torch.Tensor, scale: float, trainable: bool = False):
        super().__init__()
        if prototypes.ndim != 2:
            raise ValueError(f"prototypes must be [C, D], got shape {tuple(prototypes.shape)}")
        p = F.normalize(prototypes.detach().float(), dim=-1)
        self.trainable = bool(trainable)
        self.scale = float(scale)
        if self.trainable:
            self.weight = nn.Parameter(p * self.scale)
            self.bias = nn.Parameter(torch.zeros(p.shape[0]))
        else:
            # a buffer, not a parameter: it moves with .to() and is saved, but never trained
            self.register_buffer("prototypes", p.clone())

    @property
    def kind(self) -> str:
        return "trainable" if self.trainable else "frozen"

    @property
    def num_classes(self) -> int:
        return (self.weight if self.trainable else self.prototypes).shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw image features -> ``[B, C]`` logits (float32 even under autocast)."""
        f = F.normalize(features.float(), dim=-1)
        if self.trainable:
            return F.linear(f, self.weight.float(), self.bias.float())
        return self.scale * f @ self.prototypes.t()

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, scale={self.scale:g}, kind={self.kind}"


def head_from_state_dict(state: dict[str, torch.Tensor], kind: str, scale: float) -> PrototypeHead:
    """Rebuild a :class:`PrototypeHead` saved with ``state_dict()`` (``kind`` and ``scale`` from metadata)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {HEAD_KINDS}")
    key = "weight" if kind == "trainable" else "prototypes"
    if key not in state:
        raise ValueError(f"a {kind} head state needs '{key}', got keys {sorted(state)}")
    head = PrototypeHead(torch.zeros_like(state[key]) + 1.0, scale, trainable=kind == "trainable")
    head.load_state_dict(state)
    return head


__all__ = ["HEAD_KINDS", "PrototypeHead", "head_from_state_dict"]
