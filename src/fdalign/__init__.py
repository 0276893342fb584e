"""FD-Align: fine-tune CLIP on a few images per class without losing out-of-distribution robustness."""

__version__ = "0.1.0"

from fdalign.errors import FDAlignError  # noqa: E402

__all__ = ["__version__", "FDAlignError"]
