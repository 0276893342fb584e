"""Image transforms built from a backend's :class:`~fdalign.backends.base.ImageSpec`."""

from __future__ import annotations

from torchvision import transforms as T

from fdalign.backends.base import ImageSpec


def _interp(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)


def _to_rgb(img):
    return img.convert("RGB")


def eval_transform(spec: ImageSpec) -> T.Compose:
    """Resize the short side to ``spec.size``, centre crop, normalise (CLIP's eval preprocessing)."""
    return T.Compose(
        [
            T.Resize(spec.size, interpolation=_interp(spec.interpolation)),
            T.CenterCrop(spec.size),
            _to_rgb,
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )


def train_transform(
    spec: ImageSpec, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True
) -> T.Compose:
    """Random resized crop (+ optional horizontal flip), the usual CLIP fine-tuning augmentation.

    The authors' released setting is ``scale=(0.08, 1.0), hflip=False``.
    """
    ops = [T.RandomResizedCrop(spec.size, scale=scale, interpolation=_interp(spec.interpolation))]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [_to_rgb, T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(ops)
