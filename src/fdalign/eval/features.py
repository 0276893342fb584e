"""Encode a dataset with an image encoder once, so that several heads can read the same features."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_context(device: torch.device | str, precision: str):
    """Mixed precision on CUDA for ``bf16``/``fp16``; a no-op otherwise (CPU fp16 is slow and lossy)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_AUTOCAST_DTYPES[precision])


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder`` over ``dataset`` (items ``(image [3,H,W], label)``) in eval mode.

    The module's train/eval mode is restored afterwards, so this is safe to call from inside a
    training loop (per-epoch validation).

    Returns:
        features ``[N, D]`` float32 on the CPU, *not* normalised, and labels ``[N]`` int64.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    try:
        for images, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            images = images.to(device, non_blocking=True)
            with autocast_context(device, precision):
                f = encoder(images)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y, dtype=torch.int64).cpu())
    finally:
        encoder.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)
