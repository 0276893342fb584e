"""``fdalign.load_run``: a finished run as a model in memory, and ``fdalign.list_models``.

The run is read by the same loader as ``fdalign predict`` (:func:`fdalign.prediction.load_classifier`),
so ``load_run(run).predict(images)`` gives exactly the rows of ``fdalign predict RUN IMAGES``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class FineTunedModel:
    """A finished run's selected model: ``encoder`` (images ``[B, 3, H, W]`` -> features ``[B, D]``),
    ``head`` (features -> logits ``[B, C]``), ``classnames`` (the C columns), ``preprocess`` (PIL
    image -> ``[3, H, W]``) and ``wiseft_alpha`` (the WiSE-FT weight on the fine-tuned side; None:
    the fine-tuned weights themselves)."""

    def __init__(self, classifier, run_dir: Path):
        self.classifier = classifier
        self.encoder, self.head = classifier.encoder, classifier.head
        self.classnames: list[str] = list(classifier.classnames)
        self.preprocess = classifier.transform
        self.wiseft_alpha: float | None = classifier.wiseft_alpha
        self.run_dir = run_dir
        self.encoder.eval()
        self.head.eval()

    def __repr__(self) -> str:
        return f"FineTunedModel({self.classifier.name}, {len(self.classnames)} classes)"

    @property
    def device(self):
        return next(self.encoder.parameters()).device

    def encode_image(self, images) -> Any:
        """``[B, 3, H, W]`` preprocessed images -> ``[B, D]`` features (unnormalised, no grad)."""
        import torch

        with torch.no_grad():
            return self.encoder(images.to(self.device))

    def logits(self, images) -> Any:
        """``[B, 3, H, W]`` preprocessed images -> ``[B, C]`` logits over ``classnames``."""
        import torch

        with torch.no_grad():
            return self.head(self.encoder(images.to(self.device)))

    def predict(self, images: str | os.PathLike | Sequence[str | os.PathLike], *, topk: int = 5, batch_size: int = 64):
        """Top-``topk`` classes of image files (one path or a list; a folder is walked), as
        :class:`fdalign.prediction.Predictions` (the rows ``fdalign predict`` writes)."""
        from fdalign.prediction import collect_images, predict

        if isinstance(images, (str, os.PathLike)):
            images = [images]
        paths, _ = collect_images([str(i) for i in images])
        return predict(self.classifier, paths, topk=topk, batch_size=batch_size, device=self.device, progress=False)


def load_run(
    run: str | os.PathLike | Any,
    *,
    model: Any = None,
    wiseft_alpha: float | str | None = "selected",
    device: str = "cpu",
) -> FineTunedModel:
    """The model of a finished run directory (or :class:`~fdalign.workflows.kshot.Run`, or an export folder).

    Args:
        wiseft_alpha: ``"selected"`` (the WiSE-FT mix val chose: the run's selected model, as
            ``run.encoder``), ``"fine-tuned"``, or a number in [0, 1].
        model: the CLIP the run was trained from, when it was given in Python (``finetune(model=...)``).
        device: where the model goes (``auto``: CUDA when available).
    """
    from fdalign.prediction import load_classifier
    from fdalign.train.trainer import resolve_device

    run_dir = Path(getattr(run, "out", run))
    backend = None
    if model is not None:
        from fdalign.backends.custom import as_backend

        backend = as_backend(model)
    clf = load_classifier(run_dir, wiseft_alpha, resolve_device(device), backend=backend, command="load_run")
    return FineTunedModel(clf, run_dir)


def list_models() -> list[str]:
    """Model names ``model=`` / ``--model`` accepts: fdalign's built-in models, then open_clip's
    architectures, then those registered in open_clip at run time (``hf:<repo or dir>`` takes any
    Hugging Face CLIP)."""
    import open_clip

    from fdalign.backends.openclip import builtin_models

    return list(dict.fromkeys([*sorted(builtin_models()), *open_clip.list_models()]))


__all__ = ["FineTunedModel", "load_run", "list_models"]
