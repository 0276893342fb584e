"""A torch ``Dataset`` over rendered world images, yielding ``(normalised [3,H,W] tensor, label)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fdalign.world.generator import WorldBatch

# open_clip's default (OpenAI) normalisation, which the shipped fdalign-world model uses.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def to_tensor(images, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (numpy or tensor) -> normalised float32 ``[N, 3, H, W]``."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def random_resized_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, scale=(0.6, 1.0), hflip: bool = True
) -> torch.Tensor:
    """Cheap tensor augmentation of one ``[3, H, W]`` image: random square crop, resize back, flip."""
    _, h, w = x.shape
    frac = torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
    side = max(2, int(round(min(h, w) * frac**0.5)))
    top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
    crop = x[:, top : top + side, left : left + side]
    out = F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    if hflip and torch.rand(1, generator=generator).item() < 0.5:
        out = out.flip(-1)
    return out


class WorldDataset(Dataset):
    """Rendered world images as a classification dataset.

    Args:
        batch: a :class:`~fdalign.world.generator.WorldBatch`.
        mean / std: the backbone's normalisation (``backend.image_spec.mean`` / ``.std``).
        augment: random crop-resize + horizontal flip on each access (off by default).
    """

    def __init__(self, batch: WorldBatch, mean=OPENAI_MEAN, std=OPENAI_STD, augment: bool = False):
        self.batch = batch
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.images = torch.from_numpy(batch.images)  # shared, uint8: normalise lazily per item
        self.labels = torch.as_tensor(batch.labels, dtype=torch.long)
        self.classes = list(batch.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = to_tensor(self.images[i : i + 1], self.mean, self.std)[0]
        if self.augment:
            x = random_resized_crop_flip(x)
        return x, int(self.labels[i])
