"""Augmented views that are a function of ``(seed, epoch, index)`` alone.

A DataLoader's augmentations normally depend on which worker fetched an image and in what order,
so the view of image ``i`` changes with ``--num-workers`` or the number of processes. FD-Align
needs better: every run of a sweep that shares the seed and data should see identical views, so
that ``f_0``'s answers on them can be computed once (:mod:`fdalign.train.f0cache`), and a DDP run
must see the views a single process would. :class:`SeededViews` draws each item under a torch RNG
seeded with :func:`view_seed` and leaves the caller's RNG untouched.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The 63-bit torch seed of image ``index``'s augmentation in epoch ``epoch`` (0-based) of run ``seed``."""
    digest = hashlib.sha256(f"fdalign-view/{seed}/{epoch}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeededViews(Dataset):
    """``dataset[i]`` drawn under ``torch.manual_seed(view_seed(seed, epoch, i))``; yields ``(image, label, i)``.

    Call :meth:`set_epoch` before building each epoch's DataLoader (workers receive a copy of this
    object when their iterator starts). Transforms must draw their randomness from torch's RNG,
    as torchvision's do.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        # fork_rng: in the main process, dropout in f_t keeps drawing from the epoch's own stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, self.epoch, index))
            image, label = self.dataset[index]
        return image, label, index


__all__ = ["view_seed", "SeededViews"]
