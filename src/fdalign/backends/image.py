"""What a backbone expects of its images (:class:`ImageSpec`) and the transforms built from it.

CLIP's eval preprocessing and the usual fine-tuning augmentation; torchvision loads on first use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSpec:
    """How a backbone expects its images: square size, normalisation and resize interpolation.

    Evaluation resizes to ``resize`` (an int: the short side; ``(h, w)``: exactly; None: ``size``)
    and centre-crops ``size`` when ``center_crop`` (a Hugging Face processor may ask otherwise).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: int | tuple[int, int] | None = None
    center_crop: bool = True


def _interp(name: str):
    from torchvision import transforms as T

    return T.InterpolationMode(name)


def _to_rgb(img):
    return img.convert("RGB")


def eval_transform(spec: ImageSpec):
    """Resize (the short side to ``spec.resize or spec.size``), centre crop ``spec.size``, normalise:
    CLIP's eval preprocessing. Without ``center_crop`` the resize must give the final size itself."""
    from torchvision import transforms as T

    resize = spec.resize if spec.resize is not None else spec.size
    ops = [T.Resize(resize if isinstance(resize, int) else tuple(resize), interpolation=_interp(spec.interpolation))]
    if spec.center_crop:
        ops.append(T.CenterCrop(spec.size))
    return T.Compose(ops + [_to_rgb, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def train_transform(spec: ImageSpec, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True):
    """Random resized crop (+ optional horizontal flip), the usual CLIP fine-tuning augmentation.

    The authors' released setting is ``scale=(0.08, 1.0), hflip=False``.
    """
    from torchvision import transforms as T

    ops = [T.RandomResizedCrop(spec.size, scale=scale, interpolation=_interp(spec.interpolation))]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [_to_rgb, T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(ops)
