"""A CLIP the user already built, behind the :class:`CLIPBackend` interface (``finetune(config, model=...)``).

Three kinds are accepted by :func:`as_backend`:

- an open_clip model with its tokenizer and preprocessing: ``(model, tokenizer, preprocess)``;
- a Hugging Face ``transformers.CLIPModel`` with its processor: ``(model, processor)``;
- any object with the small interface of :class:`CLIPLike`: ``encode_image``, ``encode_text``,
  ``tokenize``, ``logit_scale`` and ``preprocess``.

The first two reuse the open_clip / Hugging Face backends themselves, so a run made from a model in
memory trains exactly as one made from the same weights on disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from fdalign.backends.base import CLIPBackend
from fdalign.backends.image import ImageSpec
from fdalign.errors import FDAlignError

INTERFACE = "encode_image, encode_text, tokenize, logit_scale and preprocess"


@runtime_checkable
class CLIPLike(Protocol):
    """The interface a model of your own meets to be fine-tuned with FD-Align.

    - ``encode_image(images [B, 3, H, W]) -> [B, D]``: the trainable image tower (projected
      features, not normalised); its gradients flow into the model's parameters.
    - ``tokenize(texts: list[str]) -> tokens`` and ``encode_text(tokens) -> [N, D]``: the text tower
      (frozen: it is only run once, without gradients, to build the prompt prototypes).
    - ``logit_scale``: CLIP's temperature *already exponentiated* (about 100 for OpenAI CLIP), a
      float or a 0-d tensor.
    - ``preprocess``: PIL image -> ``[3, H, W]``; a torchvision ``Compose`` of Resize / CenterCrop /
      ToTensor / Normalize (CLIP's), from which size, interpolation, mean and std are read, or an
      :class:`~fdalign.backends.image.ImageSpec`.
    """

    logit_scale: Any
    preprocess: Any

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, tokens: Any) -> torch.Tensor: ...

    def tokenize(self, texts: list[str]) -> Any: ...


class _ImageTower(nn.Module):
    """``model.encode_image`` as a module, so the trainer, f0's copy and WiSE-FT see one ``nn.Module``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


def spec_from_transform(preprocess) -> ImageSpec:
    """Read size, interpolation, mean and std off a torchvision ``Compose`` (CLIP's eval preprocessing)."""
    if isinstance(preprocess, ImageSpec):
        return preprocess
    from torchvision import transforms as T

    ops = list(getattr(preprocess, "transforms", []))
    norm = next((t for t in ops if isinstance(t, T.Normalize)), None)
    crop = next((t for t in ops if isinstance(t, (T.CenterCrop, T.RandomResizedCrop))), None)
    resize = next((t for t in ops if isinstance(t, T.Resize)), None)
    if norm is None or (crop is None and resize is None):
        raise FDAlignError(
            f"preprocess {type(preprocess).__name__} is not a torchvision Compose with Resize / CenterCrop and "
            "Normalize, so its image size, mean and std cannot be read; pass "
            "preprocess=fdalign.backends.ImageSpec(size, mean, std) instead"
        )
    size = (crop or resize).size
    size = size if isinstance(size, int) else size[0]
    interp = getattr(resize or crop, "interpolation", None)
    short = resize.size if resize is not None else None
    short = short[0] if isinstance(short, (list, tuple)) and len(short) == 1 else short
    return ImageSpec(
        size=int(size),
        mean=tuple(float(x) for x in norm.mean),
        std=tuple(float(x) for x in norm.std),
        interpolation=getattr(interp, "value", "bicubic"),
        resize=None if short in (None, size) else short,
        center_crop=crop is not None,
    )


def _digest(model: nn.Module, extra: str = "") -> str:
    """The weights' hash: keys the prompt-feature cache, so two models never share cached prototypes."""
    h = hashlib.sha256(extra.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class CustomCLIPBackend(CLIPBackend):
    """A :class:`CLIPLike` object as a backend. ``model`` is the user's object, trained in place."""

    def __init__(self, model, *, name: str | None = None):
        missing = [
            a for a in ("encode_image", "encode_text", "tokenize", "logit_scale", "preprocess") if not hasattr(model, a)
        ]
        if missing:
            raise FDAlignError(
                f"model {type(model).__name__} lacks {', '.join(missing)}; a model of your own needs {INTERFACE} "
                "(see fdalign.backends.custom.CLIPLike), or pass an open_clip (model, tokenizer, preprocess) or a "
                "Hugging Face (CLIPModel, processor)"
            )
        if not isinstance(model, nn.Module):
            raise FDAlignError(f"model {type(model).__name__} must be a torch.nn.Module (its weights are trained)")
        self.model = model.eval()
        self.name = name or type(model).__name__
        self._image_encoder = _ImageTower(model)
        self.logit_scale = float(torch.as_tensor(model.logit_scale).detach().float())
        self.image_spec = spec_from_transform(model.preprocess)
        self.fingerprint = _digest(model, f"custom|{type(model).__qualname__}|{self.image_spec}")
        self.embed_dim = int(self.encode_text(["a"]).shape[1])

    @property
    def image_encoder(self) -> nn.Module:
        return self._image_encoder

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        texts, out = list(texts), []
        dev = self.device
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tokens = self.model.tokenize(texts[i : i + batch_size])
                tokens = tokens.to(dev) if hasattr(tokens, "to") else tokens
                out.append(self.model.encode_text(tokens).float().cpu())
        return torch.cat(out) if out else torch.empty(0, getattr(self, "embed_dim", 0))

    def to(self, device: torch.device | str) -> CustomCLIPBackend:
        self.model.to(device)
        return self


def _is_hf_clip(model) -> bool:
    return hasattr(model, "vision_model") and hasattr(model, "visual_projection") and hasattr(model, "config")


def _is_open_clip(model) -> bool:
    return isinstance(getattr(model, "visual", None), nn.Module) and hasattr(model, "encode_text")


def _from_hf(model, processor, name: str | None) -> CLIPBackend:
    from fdalign.backends.hf import HFCLIPBackend

    if processor is None:
        raise FDAlignError("a Hugging Face CLIPModel needs its processor: pass model=(clip_model, processor)")
    tokenizer = getattr(processor, "tokenizer", processor)
    image_processor = getattr(processor, "image_processor", None)
    source = name or getattr(model.config, "_name_or_path", "") or "CLIPModel"
    return HFCLIPBackend(model, tokenizer, image_processor, source=source, fingerprint=_digest(model, "hf"))


def _from_open_clip(model, tokenizer, preprocess, name: str | None) -> CLIPBackend:
    from fdalign.backends.openclip import OpenCLIPBackend

    if tokenizer is None:
        raise FDAlignError(
            "an open_clip model needs its tokenizer: pass model=(model, open_clip.get_tokenizer(NAME), preprocess)"
        )
    backend = OpenCLIPBackend(
        model, tokenizer, model_name=name or type(model).__name__, pretrained=None, fingerprint=_digest(model, "oc")
    )
    if preprocess is not None:  # what the user evaluates with wins over the model's recorded config
        backend.image_spec = spec_from_transform(preprocess)
    return backend


def _split_parts(parts: Sequence) -> tuple[Any, Any, Any]:
    """``(model, tokenizer or processor, preprocess)`` from a tuple in the documented order, a transform
    given before the tokenizer accepted too (both are callables; a Compose is told apart)."""
    model, *rest = parts
    if len(rest) > 2:
        raise FDAlignError(
            f"model=(...) has {len(parts)} parts; pass (model, tokenizer, preprocess) or (model, processor)"
        )
    rest += [None] * (2 - len(rest))
    first, second = rest
    if hasattr(first, "transforms") and not hasattr(second, "transforms"):
        first, second = second, first
    return model, first, second


def as_backend(model, tokenizer=None, preprocess=None, *, name: str | None = None) -> CLIPBackend:
    """``model`` (a :class:`CLIPBackend`, an open_clip / Hugging Face model, a tuple of one with its
    tokenizer and preprocessing or processor, or a :class:`CLIPLike`) as a :class:`CLIPBackend`."""
    if isinstance(model, CLIPBackend):
        return model
    if isinstance(model, (tuple, list)):
        model, tok, pre = _split_parts(model)
        tokenizer, preprocess = tokenizer or tok, preprocess or pre
    if _is_hf_clip(model):
        return _from_hf(model, tokenizer, name)
    if _is_open_clip(model) and not hasattr(model, "tokenize"):
        return _from_open_clip(model, tokenizer, preprocess, name)
    return CustomCLIPBackend(model, name=name)


__all__ = ["CLIPLike", "CustomCLIPBackend", "as_backend", "spec_from_transform", "INTERFACE"]
