"""Load a CLIP from any supported source behind the one :class:`CLIPBackend` interface.

``load_clip("ViT-B-32", "openai")`` goes to open_clip; ``load_clip("hf:openai/clip-vit-base-patch32")``
goes to Hugging Face transformers. A backend registers a loader under a name; a model string
``"<name>:<rest>"`` whose prefix is a registered name goes to that backend, anything else to
open_clip (which itself understands ``hf-hub:`` and ``local-dir:``).

Importing this package is cheap: the backends import open_clip / transformers only when loading.
"""

# Registration happens on import; both modules defer their heavy imports to load time.
from fdalign.backends import hf as _hf  # noqa: E402,F401
from fdalign.backends import openclip as _openclip  # noqa: E402,F401
from fdalign.backends.base import CLIPBackend, ImageSpec
from fdalign.backends.registry import (  # noqa: F401 (_BACKENDS: the registry itself, for tests)
    _BACKENDS,
    DEFAULT_BACKEND,
    PRECISIONS,
    list_backends,
    load_clip,
    register_backend,
)

__all__ = [
    "CLIPBackend",
    "ImageSpec",
    "DEFAULT_BACKEND",
    "PRECISIONS",
    "register_backend",
    "list_backends",
    "load_clip",
]
