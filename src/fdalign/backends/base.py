"""The one interface every CLIP backend implements.

FD-Align needs four things from a CLIP: a trainable image encoder, a frozen text encoder, the
logit scale and the image preprocessing. :class:`CLIPBackend` exposes exactly those, so the rest of
the library never sees whether the weights came from open_clip or Hugging Face.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fdalign.backends.image import ImageSpec, eval_transform, train_transform


class CLIPBackend(ABC):
    """A loaded CLIP model.

    Attributes:
        name: what the user passed as ``--model`` (plus tag), for reports.
        fingerprint: a short hash of the weights and architecture; keys on-disk caches.
        embed_dim: D, the size of the joint image-text embedding.
        image_spec: image size / mean / std / interpolation.
        logit_scale: CLIP's learned temperature, already exponentiated (100 for OpenAI CLIP).
    """

    name: str
    fingerprint: str
    embed_dim: int
    image_spec: ImageSpec
    logit_scale: float

    @property
    @abstractmethod
    def image_encoder(self) -> nn.Module:
        """The trainable image tower: ``[B, 3, H, W] -> [B, D]`` (projected, *not* normalised)."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Encode strings with the frozen text tower, without gradients.

        Returns:
            ``[N, D]`` float32 features on the CPU, *not* normalised.
        """

    @property
    def text_tower(self) -> nn.Module | None:
        """The text tower as a trainable module (FLYP, CLIP-LoRA): token ids ``[N, L]`` (from
        :meth:`tokenize`) -> raw features ``[N, D]``, with gradients; its ``state_dict`` holds the text
        weights only. The same weights :meth:`encode_text` runs, so training it changes that too.
        None when the backend cannot train its text tower."""
        return None

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, L]`` int64 token ids of ``texts`` for :attr:`text_tower` (CPU)."""
        raise NotImplementedError(f"{type(self).__name__} has no trainable text tower")

    @abstractmethod
    def to(self, device: torch.device | str) -> CLIPBackend:
        """Move both towers to ``device``; returns self."""

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Trade compute for memory in the image tower; returns whether the backbone supports it."""
        return False

    @property
    def device(self) -> torch.device:
        return next(self.image_encoder.parameters()).device

    def preprocess_eval(self) -> Callable:
        """PIL image -> normalised ``[3, H, W]`` tensor (resize + centre crop)."""
        return eval_transform(self.image_spec)

    def preprocess_train(self, **kwargs) -> Callable:
        """PIL image -> augmented ``[3, H, W]`` tensor; see :func:`fdalign.backends.image.train_transform`."""
        return train_transform(self.image_spec, **kwargs)
