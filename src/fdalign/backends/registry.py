"""The backend registry: a loader per backend name, and :func:`load_clip`, which picks one.

The backends (``hf``, ``openclip``) register themselves here when :mod:`fdalign.backends` imports
them; this module imports none of them, so the registry sits below the backends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fdalign.backends.base import CLIPBackend
from fdalign.errors import FDAlignError

DEFAULT_BACKEND = "open_clip"
PRECISIONS = ("fp32", "fp16", "bf16")

# name -> loader(model, pretrained, model_config, device, precision) -> CLIPBackend
_BACKENDS: dict[str, Callable[..., CLIPBackend]] = {}


def register_backend(name: str) -> Callable:
    """Decorator registering a loader (a function or a class with a ``load`` classmethod).

    The loader is called as ``loader(model, pretrained=..., model_config=..., device=...,
    precision=...)`` with ``model`` stripped of the ``"<name>:"`` prefix.
    """

    def deco(obj):
        _BACKENDS[name] = obj.load if isinstance(obj, type) else obj
        return obj

    return deco


def list_backends() -> list[str]:
    """Names of the registered backends (usable as ``"<name>:<model>"`` prefixes)."""
    return sorted(_BACKENDS)


def _split_backend(model: str | None) -> tuple[str, str | None]:
    if model and ":" in model:
        prefix, rest = model.split(":", 1)
        if prefix in _BACKENDS:
            return prefix, rest
    return DEFAULT_BACKEND, model


def load_clip(
    model: str | None,
    pretrained: str | None = None,
    model_config: str | Path | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> CLIPBackend:
    """Load a CLIP and return it as a :class:`CLIPBackend`.

    Args:
        model: an open_clip model name (``"ViT-B-32"``), a built-in fdalign model
            (``"fdalign-world"``), ``"hf-hub:<repo>"`` / ``"local-dir:<dir>"`` (open_clip schemes), or
            ``"hf:<repo id or save_pretrained dir>"`` for Hugging Face transformers. May be ``None``
            when ``model_config`` is given (the name is then the JSON file's stem).
        pretrained: open_clip pretrained tag (``"openai"``), a checkpoint file (.pt/.bin/.pth/
            .safetensors), or ``"random"`` for an explicitly untrained model.
        model_config: path to an open_clip model-config JSON for a custom architecture.
        device: where to put the model.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` weights (text features are always float32).
    """
    if precision not in PRECISIONS:
        raise FDAlignError(f"precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    if not model and model_config is None:
        raise FDAlignError("no model given: pass a model name (e.g. ViT-B-32) or --model-config /path/to/config.json")
    name, rest = _split_backend(model)
    return _BACKENDS[name](rest, pretrained=pretrained, model_config=model_config, device=device, precision=precision)
