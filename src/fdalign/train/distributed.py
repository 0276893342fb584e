"""Data-parallel training across processes launched by ``torchrun`` (one process per GPU, or gloo on CPU).

The contract is exact equivalence with one process at the same *global* batch: every optimiser step
consumes the global batch ``epoch_order[b*B:(b+1)*B]`` that a single process would, each rank takes a
contiguous share of it, and gradients are averaged with weights ``n_rank / n_global`` so the update is
that of the global-batch mean loss. Augmented views depend on ``(seed, epoch, index)`` only
(:class:`fdalign.data.views.SeededViews`), so it does not matter which rank draws an image; a
checkpoint therefore resumes on any number of processes. Rank 0 alone writes files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def current() -> DistInfo:
    """The process group's view of this process (a single process when none is initialised)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return DistInfo()
    return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1).

    NCCL when the run uses CUDA, gloo otherwise; each rank takes GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (torch_dist.is_available() and torch_dist.is_initialized()):
        return current()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return current()


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda`` becomes ``cuda:<local_rank>`` under torchrun; anything else is kept."""
    if info.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


class GlobalBatchSampler:
    """This rank's share of every global batch of ``order``, and the weight of its loss.

    Global batch ``b`` is ``order[b*B:(b+1)*B]``; rank ``r`` takes the ``r``-th of ``world``
    contiguous, near-equal slices. A rank left with nothing (a last batch smaller than the world)
    re-uses the batch's first image with weight 0, so every rank still joins the gradient
    all-reduce. ``weights[b] = world * n_rank / n_global``: DDP averages gradients over ranks, so
    ``mean_r(weight_r * loss_r)`` is the global-batch mean loss.
    """

    def __init__(self, order: Sequence[int], batch_size: int, rank: int = 0, world: int = 1):
        self.batches: list[list[int]] = []
        self.weights: list[float] = []
        for start in range(0, len(order), batch_size):
            chunk = list(order[start : start + batch_size])
            per = math.ceil(len(chunk) / world)
            mine = chunk[rank * per : (rank + 1) * per]
            self.weights.append(world * len(mine) / len(chunk))
            self.batches.append(mine or chunk[:1])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def wrap_for_training(encoder: nn.Module, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel(encoder)`` under torchrun (gradients bucketed and overlapped with
    backward), the encoder itself otherwise."""
    if not info.enabled:
        return encoder
    from torch.nn.parallel import DistributedDataParallel

    dev = next(encoder.parameters()).device
    return DistributedDataParallel(encoder, device_ids=[dev.index] if dev.type == "cuda" else None)


def average_gradients(params: Sequence[nn.Parameter], info: DistInfo) -> None:
    """Mean over ranks of the gradients DDP does not manage (the head's), in one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not info.enabled or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch_dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def global_means(values: dict[str, float], weight: float, info: DistInfo) -> dict[str, float]:
    """``values`` (per-rank batch means) averaged over ranks with this rank's ``weight`` (for the log)."""
    if not info.enabled:
        return values
    t = torch.tensor([v * weight for v in values.values()], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(values, t.tolist())}


def merge_rows(buffer: torch.Tensor, filled: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine per-rank ``[N, K]`` buffers whose rows ``filled`` ``[N]`` (bool) each rank wrote."""
    if not info.enabled:
        return buffer, filled
    values = torch.where(filled[:, None], buffer, torch.zeros_like(buffer)).double()
    counts = filled.double()
    torch_dist.all_reduce(values)
    torch_dist.all_reduce(counts)
    return (values / counts.clamp(min=1)[:, None]).float(), counts > 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch_dist.barrier()


__all__ = [
    "DistInfo",
    "current",
    "init_from_env",
    "rank_device",
    "GlobalBatchSampler",
    "wrap_for_training",
    "average_gradients",
    "global_means",
    "merge_rows",
    "barrier",
]
