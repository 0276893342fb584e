"""Image transforms built from a backend's :class:`~fdalign.backends.base.ImageSpec`."""

from __future__ import annotations

from torchvision import transforms as T

from fdalign.backends.base import ImageSpec


def _interp(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)


def _to_rgb(img):
    return img.convert("RGB")


def eval_transform(spec: ImageSpec) -> T.Compose:
    """Resize (the short side to ``spec.resize or spec.size``), centre crop ``spec.size``, normalise:
    CLIP's eval preprocessing. Without ``center_crop`` the resize must give the final size itself."""
    resize = spec.resize if spec.resize is not None else spec.size
    ops = [T.Resize(resize if isinstance(resize, int) else tuple(resize), interpolation=_interp(spec.interpolation))]
    if spec.center_crop:
        ops.append(T.CenterCrop(spec.size))
    return T.Compose(ops + [_to_rgb, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


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
